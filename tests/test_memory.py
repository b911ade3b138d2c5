"""The training-step memory estimate: exact on models whose saved tensors can be counted by hand."""
import pytest
import torch
from torch import nn

from comicutils import memory

N, D, L = 8, 64, 4


def mlp():
    return nn.Sequential(*[nn.Sequential(nn.Linear(D, D), nn.ReLU()) for _ in range(L)])


def test_an_mlp_step_counts_parameters_gradients_adam_and_saved_activations_exactly():
    est = memory.estimate_training_step(mlp, lambda: [torch.randn(N, D)])
    n = L * (D * D + D)
    assert est.trainable == n and est.params == 4 * n and est.grads == 4 * n and est.optimizer == 8 * n
    # autograd keeps the first Linear's input and every ReLU's output (the next Linear's input)
    assert est.activations == (1 + L) * N * D * 4
    assert est.total == pytest.approx(est.counted * memory.MARGIN, abs=1)


def test_activations_scale_with_batch_and_halve_in_half_precision():
    one = memory.estimate_training_step(mlp, lambda: [torch.randn(N, D)])
    four = memory.estimate_training_step(mlp, lambda: [torch.randn(4 * N, D)])
    half = memory.estimate_training_step(mlp, lambda: [torch.randn(N, D)], compute_dtype=torch.float16)
    assert four.activations == 4 * one.activations and half.activations * 2 == one.activations
    assert half.params == one.params            # trainable weights stay fp32 master copies


def test_frozen_weights_count_in_their_storage_dtype_and_get_no_gradient():
    def lora_like():
        m = mlp().requires_grad_(False)
        m.append(nn.Linear(D, 2))                # the only trainable part
        return m
    est = memory.estimate_training_step(lora_like, lambda: [torch.randn(N, D)], compute_dtype=torch.float16)
    frozen, train = L * (D * D + D), 2 * D + 2
    assert est.trainable == train and est.grads == 4 * train and est.params == 2 * frozen + 4 * train


def test_checkpointing_keeps_segment_inputs_and_recomputes_one_segment_at_a_time():
    def deep():                                    # 4 segments of 3 Linear+ReLU each
        return nn.Sequential(*[nn.Sequential(*[nn.Sequential(nn.Linear(D, D), nn.ReLU()) for _ in range(3)])
                               for _ in range(4)])
    unit = N * D * 4
    plain = memory.estimate_training_step(deep, lambda: [torch.randn(N, D)])
    ckpt = memory.estimate_training_step(deep, lambda: [torch.randn(N, D)], segments=lambda m: list(m))
    assert plain.activations == (1 + 12) * unit
    # kept: the 4 segment inputs; recomputed at a time: one segment (its input and 3 ReLU outputs)
    assert ckpt.activations == 4 * unit + 4 * unit
    assert sorted(ckpt.segments.values()) == [3 * unit] * 3 + [4 * unit]   # a later segment's input is the last one's output


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 1, D)).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_fused_attention_saves_no_attention_matrix():
    seq = 256
    fused = memory.estimate_training_step(Attention, lambda: [torch.randn(2, seq, D)])
    full = memory.estimate_training_step(Attention, lambda: [torch.randn(2, seq, D)], fused_attention=False)
    qkv = 2 * seq * 3 * D * 4
    # the input, the qkv projection, its out and one log-sum-exp per query (q, k, v are views of qkv)
    assert fused.activations <= 2 * seq * D * 4 + 2 * qkv + 2 * seq * D * 4 + 2 * seq * 4
    assert full.activations - fused.activations >= 2 * seq * seq * 4      # at least the (L x L) weights


def test_a_step_over_budget_is_a_one_line_error():
    est = memory.estimate_training_step(mlp, lambda: [torch.randn(N, D)])
    est.check(1.0, "tiny")                                               # fits
    with pytest.raises(memory.MemoryBudgetError) as err:
        est.check(est.total_gib / 2, "the MLP at batch 8")
    assert "the MLP at batch 8" in str(err.value) and "\n" not in str(err.value)


def test_nothing_is_allocated_and_sdpa_is_restored():
    sdpa = torch.nn.functional.scaled_dot_product_attention
    memory.estimate_training_step(lambda: nn.Linear(10_000, 10_000), lambda: [torch.randn(10_000, 10_000)])  # 400 MB if real
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


def test_flops_are_counted_and_turned_into_seconds_on_known_cards():
    est = memory.estimate_training_step(mlp, lambda: [torch.randn(N, D)])
    # forward 2·N·D·D per Linear, backward about twice that (the first layer needs no input gradient)
    assert 4 * L * N * D * D <= est.flops <= 6 * L * N * D * D
    t4, a100 = memory.step_seconds(est, "Tesla T4"), memory.step_seconds(est, "NVIDIA A100-SXM4-40GB")
    assert t4 == pytest.approx(est.flops / (65e12 * memory.UTILIZATION)) and a100 == pytest.approx(t4 * 65 / 312)
    assert memory.step_seconds(est, "a CPU") is None
