"""How much memory one training step needs, estimated without running it, for the tiers' budgets.

A training step holds, at its peak (the start of the backward pass):

* the **parameters** (frozen ones in their storage dtype, e.g. Stable Diffusion's fp16 weights);
* a **gradient** and the **optimizer state** of every trainable parameter (fp32 master weights:
  4 bytes of gradient and, for Adam/AdamW, 8 bytes of moments per number);
* the **activations** autograd saved for the backward pass. These are counted exactly, not
  guessed: the model is built on PyTorch's ``meta`` device (shapes and dtypes, no storage, no
  arithmetic), one forward pass runs at the real size and batch under
  ``torch.autograd.graph.saved_tensors_hooks``, and every saved tensor that is not a parameter
  is summed (each tensor once; views of one tensor are counted separately, so this errs high).

With **gradient checkpointing** of some modules (``segments``), only a segment's input is kept
through the forward pass and the segment's inner activations are recomputed one segment at a
time in the backward pass; the estimate is then everything saved outside the segments, plus
the segments' inputs, plus the largest segment's inner activations.

What it leaves out, and the margin that covers it (:data:`MARGIN`): cuDNN/cuBLAS workspaces,
the gradients of activations alive during the backward pass (about one layer's worth),
allocator fragmentation, the CUDA context (the tiers' budgets already leave room for that).
The numbers are *estimates*: the docs' tier tables say which were checked on a real card.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

MARGIN = 1.15
"""Multiplier on the counted bytes for workspaces, activation gradients and fragmentation."""
GIB = 2**30


@dataclass
class StepMemory:
    """Bytes of one training step's peak, by kind; ``total`` includes :data:`MARGIN`."""

    params: int
    grads: int
    optimizer: int
    activations: int
    trainable: int = 0                    # number of trainable parameters
    flops: float = 0.0                    # floating-point operations of the step (forward, backward, recomputation)
    segments: dict[str, int] = field(default_factory=dict)   # inner activations per checkpointed segment

    @property
    def counted(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    @property
    def total(self) -> int:
        return int(math.ceil(self.counted * MARGIN))

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def row(self) -> dict[str, float]:
        """GiB per kind, for a table."""
        return {"parameters": self.params / GIB, "gradients": self.grads / GIB, "optimizer": self.optimizer / GIB,
                "activations": self.activations / GIB, f"total (x{MARGIN})": self.total_gib}

    def check(self, budget_gib: float, what: str) -> None:
        """Raise :class:`MemoryBudgetError` if the step does not fit ``budget_gib``."""
        if self.total_gib > budget_gib:
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in self.row().items())
            raise MemoryBudgetError(f"{what}: about {self.total_gib:.1f} GiB per training step ({kinds} GiB) "
                                    f"does not fit the {budget_gib:g} GiB budget")


class MemoryBudgetError(RuntimeError):
    """A training configuration's estimated peak exceeds the device's budget."""


class _SavedTensors:
    """Counts bytes autograd saves, live, with the peak; tensors in ``skip`` (parameters) are free."""

    def __init__(self, skip: Iterable[torch.Tensor]):
        self.skip = {id(t) for t in skip}
        self.live: dict[int, tuple[int, weakref.finalize]] = {}
        self.current = self.peak = 0
        self.owner: str | None = None
        self.by_owner: dict[str, int] = {}

    def pack(self, t: torch.Tensor):
        key = id(t)
        base = t._base if t._base is not None else t          # a view of a parameter (weight.t()) is free too
        if key in self.skip or id(base) in self.skip or key in self.live:
            return t
        nbytes = t.numel() * t.element_size()
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        if self.owner is not None:
            self.by_owner[self.owner] = self.by_owner.get(self.owner, 0) + nbytes

        def freed(key=key, nbytes=nbytes):
            self.current -= nbytes
            self.live.pop(key, None)

        self.live[key] = (nbytes, weakref.finalize(t, freed))
        return t

    @staticmethod
    def unpack(t):
        return t


class _FusedAttention(torch.autograd.Function):
    """Stands in for a GPU's fused attention (flash / memory-efficient SDPA) on the meta device:
    it saves what those kernels save (q, k, v, the output and one float32 log-sum-exp per query),
    not the (L x L) attention matrix that the math fallback of the meta device would keep."""

    flops = 0.0                           # counted here: the dispatch-level counter cannot see inside

    @staticmethod
    def forward(ctx, q, k, v):
        _FusedAttention.flops += 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1] * 3.5   # fwd 1 + bwd 2.5
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def estimate_training_step(build: Callable[[], nn.Module], inputs: Callable[[], Sequence[torch.Tensor]], *,
                           step: Callable[..., torch.Tensor] | None = None, compute_dtype: torch.dtype = torch.float32,
                           frozen_dtype: torch.dtype | None = None, optimizer_states: int = 2,
                           segments: Callable[[nn.Module], Iterable[nn.Module]] | None = None,
                           fused_attention: bool = True) -> StepMemory:
    """Estimate one training step's peak memory (see the module docstring).

    ``build()`` returns the model (called on the meta device: nothing is allocated); parameters
    with ``requires_grad`` are the trainable ones. ``inputs()`` returns the batch (also built on
    the meta device). ``step(model, *inputs) -> loss`` is the forward pass and loss; by default
    the mean of ``model(*inputs)`` (or of its ``.sample``). ``compute_dtype``: the autocast dtype
    (activations are stored in it); ``frozen_dtype``: the storage dtype of frozen parameters
    (default ``compute_dtype`` if that is half precision, else float32). ``optimizer_states``:
    fp32 numbers per trainable parameter (Adam/AdamW: 2; SGD with momentum: 1). ``segments(model)``
    lists the modules run under gradient checkpointing (none by default). ``fused_attention``:
    count ``scaled_dot_product_attention`` as a GPU's fused kernels store it (PyTorch picks them on
    CUDA for fp16/bf16); ``False`` counts the full attention matrix (the math path, e.g. fp32 on a T4).
    """
    half = compute_dtype in (torch.float16, torch.bfloat16)
    frozen_dtype = frozen_dtype or (compute_dtype if half else torch.float32)
    with torch.device("meta"):
        model = build()
        batch = [x.to(compute_dtype) if x.is_floating_point() else x for x in inputs()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    params = 4 * n_train + sum(p.numel() for p in frozen) * torch.empty((), dtype=frozen_dtype).element_size()
    for p in model.parameters():           # activations in the compute dtype (autocast's effect on storage)
        p.data = p.data.to(compute_dtype)
    model.train()

    counter = _SavedTensors(model.parameters())
    handles = []
    names: dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
    inputs_bytes: dict[str, int] = {}
    for seg in (segments(model) if segments else ()):
        name = names.get(seg, seg.__class__.__name__)

        def enter(mod, args, name=name):
            if counter.owner is None:              # the outermost segment owns what nested ones save
                counter.owner = name
                inputs_bytes[name] = inputs_bytes.get(name, 0) + sum(_nbytes(a) for a in args if isinstance(a, torch.Tensor))

        def leave(mod, args, out, name=name):
            if counter.owner == name:
                counter.owner = None

        handles += [seg.register_forward_pre_hook(enter), seg.register_forward_hook(leave)]
    from torch.utils.flop_counter import FlopCounterMode

    sdpa = torch.nn.functional.scaled_dot_product_attention
    if fused_attention:
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    _FusedAttention.flops = 0.0
    flop_counter = FlopCounterMode(display=False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack), flop_counter:
            loss = step(model, *batch) if step else _default_loss(model(*batch))
            saved = counter.current
            loss.backward()
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    flops = float(flop_counter.get_total_flops()) + _FusedAttention.flops
    if counter.by_owner:
        inner = sum(counter.by_owner.values())
        activations = saved - inner + sum(inputs_bytes.values()) + max(counter.by_owner.values())
    else:
        activations = counter.peak
    return StepMemory(params=params, grads=4 * n_train, optimizer=4 * optimizer_states * n_train,
                      activations=activations, trainable=n_train, segments=dict(counter.by_owner),
                      flops=flops * (1.3 if counter.by_owner else 1.0))   # checkpointing reruns the forward (~1/3 of a step)


CHECKPOINTED_BLOCKS = frozenset({"ResnetBlock2D", "Transformer2DModel", "UNetMidBlock2D", "UpDecoderBlock2D"})
"""The diffusers blocks its ``enable_gradient_checkpointing()`` recomputes one at a time (U-Net
ResNet and transformer blocks, the VAE decoder's mid and up blocks)."""


def diffusers_segments(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that diffusers' gradient checkpointing wraps: pass as ``segments``
    (build the model *without* enabling checkpointing, so the estimate can see inside them)."""
    return [m for m in model.modules() if type(m).__name__ in CHECKPOINTED_BLOCKS]


PEAK_TFLOPS = {"T4": 65.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "A100": 312.0, "H100": 989.0, "H200": 989.0}
"""Dense fp16/bf16 tensor-core peaks from NVIDIA's datasheets (T4 65, A100 312, H100 SXM 989 TFLOPS)."""
PEAK_TFLOPS_FP32 = {"T4": 8.1, "L4": 60.0, "A10": 62.5, "V100": 15.7, "A100": 156.0, "H100": 494.0, "H200": 494.0}
"""Float32 training peaks from the same datasheets: plain FP32 below compute capability 8.0 (T4 8.1,
V100 15.7 TFLOPS), dense TF32 from 8.0 (A100 156, H100 SXM 494), which PyTorch uses for cuDNN
convolutions by default (``torch.backends.cudnn.allow_tf32``)."""
UTILIZATION = 0.3
"""Assumed share of that peak a diffusers training step reaches: an assumption, checked only where the
docs' tier table says a card measured it."""


def step_seconds(est: StepMemory, gpu_name: str, dtype: str = "float16") -> float | None:
    """Estimated seconds per step on the named card: ``flops / (peak x UTILIZATION)``, the peak of
    ``dtype`` (:data:`PEAK_TFLOPS` for half precision, :data:`PEAK_TFLOPS_FP32` for float32); None if unknown."""
    peaks = PEAK_TFLOPS_FP32 if dtype == "float32" else PEAK_TFLOPS
    peak = next((peaks[k] for k in sorted(peaks, key=len, reverse=True) if k in gpu_name.upper()), None)
    return None if peak is None or not est.flops else est.flops / (peak * 1e12 * UTILIZATION)


def plan(est: StepMemory, what: str, steps: int, tier=None, *, dtype: str | None = None) -> str:
    """One line for a notebook before a long training cell: what it does on this device, the step's
    estimated memory against the tier's budget, and the expected time on a GPU tier.

    Raises :class:`MemoryBudgetError` up front when the step does not fit (full mode: an 80 GB
    card's budget), instead of running out of memory later. ``tier`` defaults to
    :func:`comicutils.runtime.device_tier`; ``dtype`` names the precision the estimate assumed.
    """
    from .runtime import FULL_BUDGET_GIB, device_tier, get_mode

    tier = tier or device_tier()
    full = get_mode() == "full"
    budget = FULL_BUDGET_GIB if full else tier.budget_gib
    est.check(budget, what)
    dtype = dtype or ("bfloat16" if full else tier.dtype)
    head = (f"{what}, {dtype}: about {est.total_gib:.1f} GiB per step "
            f"(estimate; budget {budget:g} GiB), {steps} steps")
    per_step = step_seconds(est, tier.gpu, dtype) if tier.is_gpu else None
    if per_step is None:
        return f"{head}; the progress bar below shows the rate on this device"
    return (f"{head}, expected about {per_step * steps / 60:.0f} min on {tier.gpu} (estimate: "
            f"{est.flops / 1e12:.3g} TFLOP per step at {UTILIZATION:.0%} of the card's datasheet peak)")


def _default_loss(out) -> torch.Tensor:
    out = getattr(out, "sample", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float().mean()
