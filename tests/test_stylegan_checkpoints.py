"""The micro StyleGAN trainer's checkpoints, resume and non-finite checks (8 px networks, a few steps)."""
from __future__ import annotations

import copy

import pytest
import torch

from comicutils import checkpoints
from comicutils import stylegan as sg

pytestmark = pytest.mark.usefixtures("one_thread")


def networks(size: int = 8, seed: int = 0) -> tuple[sg.Generator, sg.Discriminator]:
    torch.manual_seed(seed)
    channels = {r: 8 for r in [2 ** i for i in range(2, size.bit_length())]}
    G = sg.Generator(sg.GeneratorConfig(size=size, style_dim=8, n_mlp=1, channels=channels))
    return G, sg.Discriminator(size, channels)


def trainer(size: int = 8, seed: int = 0, **kwargs) -> sg.GANTrainer:
    G, D = networks(size, seed)
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("r1_every", 2)
    return sg.GANTrainer(G, D, **kwargs)


def images(size: int = 8) -> torch.Tensor:
    return torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(5))


def params(tr: sg.GANTrainer) -> dict[str, dict[str, torch.Tensor]]:
    return {name: copy.deepcopy(m.state_dict()) for name, m in (("G", tr.G), ("D", tr.D), ("G_ema", tr.G_ema))}


def assert_same(a: dict, b: dict, parts=("G", "D", "G_ema")) -> None:
    for part in parts:
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"


def temps(path) -> list:
    return [p for p in (checkpoints.temp_path(path),) if p.exists()]


# --------------------------------------------------------------------------- history numbering
def test_history_numbers_steps_from_one_and_steps_count_in_total():
    tr = trainer()
    tr.fit(images(), 3)
    assert [r["step"] for r in tr.history] == [1, 2, 3] and tr.step == 3
    assert "r1" in tr.history[0] and "r1" not in tr.history[1]        # lazy R1 on steps 1, 3, ...
    tr.fit(images(), 3)                                                # already there: nothing to do
    assert tr.step == 3
    tr.fit(images(), 5)
    assert [r["step"] for r in tr.history] == [1, 2, 3, 4, 5]


def test_training_leaves_the_global_random_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    tr = trainer()
    torch.manual_seed(123)
    tr.fit(images(), 2)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- non-finite losses
def test_nan_extra_term_stops_before_the_generator_step(tmp_path):
    def bad(t, n, step):
        return torch.full((n,), float("nan")) if step == 1 else torch.zeros(n)

    tr = trainer(extra_losses={"bad": (1.0, bad)})
    path = tmp_path / "run.pt"
    tr.fit(images(), 1, checkpoint=path)
    saved, before = path.read_bytes(), params(tr)
    with pytest.raises(checkpoints.NonFiniteState, match=r"'bad' became nan at step 2") as err:
        tr.fit(images(), 3, checkpoint=path, checkpoint_every=1)
    assert "\n" not in str(err.value)
    assert_same(before, params(tr), parts=("G", "G_ema"))               # the poisoned step changed neither
    assert tr.step == 1 and len(tr.history) == 1
    assert path.read_bytes() == saved and not temps(path)               # no checkpoint after it


def test_nan_images_stop_before_the_discriminator_step():
    tr = trainer()
    before = params(tr)
    with pytest.raises(checkpoints.NonFiniteState, match="discriminator loss 'd' became nan at step 1"):
        tr.fit(torch.full((4, 3, 8, 8), float("nan")), 2)
    assert_same(before, params(tr))
    assert tr.step == 0 and tr.history == []


def test_diverging_learning_rate_is_caught_with_finite_weights(tmp_path):
    tr = trainer(lr=1e30)
    with pytest.raises(checkpoints.NonFiniteState, match="at step"):
        tr.fit(images(), 20)
    for part in params(tr).values():
        assert all(torch.isfinite(v).all() for v in part.values() if v.is_floating_point())


def test_non_finite_weights_are_not_saved(tmp_path):
    tr = trainer()
    with torch.no_grad():
        tr.G.conv1.conv.weight[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(checkpoints.NonFiniteState, match="conv1.conv.weight"):
        tr.save_checkpoint(tmp_path / "run.pt")
    assert not (tmp_path / "run.pt").exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- resume
def test_resumed_run_repeats_an_uninterrupted_one(tmp_path):
    anchor_z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))

    def make(seed):
        return trainer(seed=seed, extra_losses={"anchor": (0.5, sg.reconstruction_term(anchor_z, images()))})

    whole = make(0).fit(images(), 5)
    path = tmp_path / "run.pt"
    make(0).fit(images(), 3, checkpoint=path)
    resumed = make(7)                                     # other initial weights: all come from the file
    resumed.fit(images(), 5, checkpoint=path)
    assert resumed.history == whole.history
    assert_same(params(whole), params(resumed))
    assert checkpoints.load_file(path)["step"] == 5


def test_rerunning_the_same_call_after_an_interruption_finishes_the_run(tmp_path):
    def interrupt_at(k):
        def term(t, n, step):
            if step == k:
                raise KeyboardInterrupt
            return torch.zeros(n)
        return term

    whole = trainer(extra_losses={"x": (1.0, interrupt_at(-1))}).fit(images(), 4)
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        trainer(extra_losses={"x": (1.0, interrupt_at(2))}).fit(images(), 4, checkpoint=path, checkpoint_every=1)
    assert checkpoints.load_file(path)["step"] == 2
    again = trainer(extra_losses={"x": (1.0, interrupt_at(-1))}).fit(images(), 4, checkpoint=path, checkpoint_every=1)
    assert again.history == whole.history and [r["step"] for r in again.history] == [1, 2, 3, 4]
    assert_same(params(whole), params(again))
    assert not temps(path)


def test_checkpoint_holds_state_config_and_keeps_the_new_learning_rate(tmp_path):
    path = tmp_path / "run.pt"
    tr = trainer(extra_losses={"zero": (0.25, lambda t, n, s: torch.zeros(n))})
    tr.fit(images(), 2, checkpoint=path, snapshot_every=1, snapshot_seeds=(0, 1))
    ckpt = checkpoints.load_file(path)
    assert ckpt["config"]["generator"]["size"] == 8 and ckpt["config"]["discriminator"]["channels"] == {4: 8, 8: 8}
    assert ckpt["config"]["trainer"]["extra_losses"] == {"zero": 0.25} and ckpt["config"]["trainer"]["batch_size"] == 2
    assert torch.equal(ckpt["rng"], tr.gen.get_state()) and set(ckpt["snapshots"]) == {1, 2}
    slower = trainer(seed=3, lr=1e-4)
    slower.load_checkpoint(path)
    assert slower.step == 2 and slower.history == tr.history
    assert torch.equal(slower.G_ema.w_avg, tr.G_ema.w_avg)
    assert all(g["lr"] == 1e-4 for g in slower.opt_g.param_groups + slower.opt_d.param_groups)


# --------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_unreadable_checkpoint_is_one_line_value_error(tmp_path, damage):
    path = tmp_path / "run.pt"
    tr = trainer()
    tr.save_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated"
                     else bytes(torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(0)).tolist()))
    fresh = trainer(seed=2)
    before = params(fresh)
    with pytest.raises(ValueError, match="not a readable course checkpoint") as err:
        fresh.load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert_same(before, params(fresh))


def test_another_programs_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    checkpoints.save_state({"format": "comicutils.pix2pix/1", "generator": {}}, path)
    with pytest.raises(ValueError, match="not a micro StyleGAN trainer checkpoint"):
        trainer().load_checkpoint(path)
    checkpoints.save_state({"format": "comicutils.stylegan.trainer/1", "step": 3}, path)
    with pytest.raises(ValueError, match=r"incomplete .*\(no config, G, D,"):
        trainer().load_checkpoint(path)


def test_checkpoint_of_another_size_is_refused_before_any_weight_is_loaded(tmp_path):
    path = tmp_path / "run.pt"
    trainer(size=8).fit(images(8), 1, checkpoint=path)
    tr = trainer(size=16)
    before = params(tr)
    with pytest.raises(checkpoints.ProvenanceMismatch, match=r"generator\.size: saved 8, now 16") as err:
        tr.fit(images(16), 2, checkpoint=path)
    assert "discriminator.size: saved 8, now 16" in str(err.value) and "\n" not in str(err.value)
    assert_same(before, params(tr))
    assert tr.step == 0


# --------------------------------------------------------------------------- atomic writes
def test_failing_save_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    tr = trainer()
    tr.fit(images(), 1, checkpoint=path)
    saved = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tr.fit(images(), 2, checkpoint=path)
    assert path.read_bytes() == saved and not temps(path)


def test_the_stale_temp_file_of_a_killed_save_is_removed_by_the_next_save_and_nothing_else(tmp_path):
    path = tmp_path / "run.pt"
    stale = checkpoints.temp_path(path)                 # the one name a save writes to
    assert stale == tmp_path / ".run.pt.partial"
    stale.write_bytes(b"partial")
    swap = tmp_path / ".run.pt.swp"                     # an editor's file: not ours
    swap.write_bytes(b"keep me")
    trainer().save_checkpoint(path)
    assert not stale.exists() and path.is_file() and swap.read_bytes() == b"keep me"
    assert checkpoints.load_file(path)["format"] == "comicutils.stylegan.trainer/1"
