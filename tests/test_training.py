"""The headless trainer: learning, checkpoints, stop/resume, export."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.noise.pipeline import NoiseParams
from napari_emdenoise.training.checkpoints import load_checkpoint, save_checkpoint
from napari_emdenoise.training.datasets import (
    VARIANT_FRACTIONS,
    PairConfig,
    SyntheticPairs,
    make_training_pair,
)
from napari_emdenoise.training.trainer import (
    CheckpointEvent,
    DoneEvent,
    StepEvent,
    TrainConfig,
    Trainer,
    ValidationEvent,
)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        name="unit",
        model_config="tiny",
        pairs=PairConfig(
            patch_size=32,
            noise=NoiseParams.default("stem"),
            clean_pool=8,
            pool_image_size=64,
            seed=1,
        ),
        steps=40,
        batch_size=4,
        lr=3e-3,
        loss_weights={"adversarial": 0.0},
        val_size=4,
        val_every=20,
        checkpoint_every=10,
        num_workers=0,
        out_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_pairs_are_deterministic_and_splits_disjoint():
    cfg = PairConfig(patch_size=32, seed=3)
    a = make_training_pair(cfg, 5, "train")
    b = make_training_pair(cfg, 5, "train")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    v = make_training_pair(cfg, 5, "val")
    assert not np.array_equal(a[1], v[1])
    x, y = SyntheticPairs(cfg)[2]
    assert tuple(x.shape) == (1, 32, 32) and tuple(y.shape) == (1, 32, 32)


def test_loss_decreases_and_run_exports_a_loadable_model(tmp_path):
    from napari_emdenoise.models.registry import load_model

    events = list(Trainer(_config(tmp_path), resume=False).run())
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == list(range(1, 41))
    l1 = np.array([e.losses["l1"] for e in steps])
    assert l1[-10:].mean() < 0.8 * l1[:10].mean()
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    assert [v.step for v in vals] == [20, 40]
    assert vals[-1].psnr > vals[-1].psnr_input  # it learned to denoise the fixed noise
    done = events[-1]
    assert isinstance(done, DoneEvent) and not done.stopped and done.step == 40
    model, card = load_model(done.model_path)
    assert card.training["steps"] == 40 and card.metrics["val_psnr"] == pytest.approx(vals[-1].psnr)
    assert sum(isinstance(e, CheckpointEvent) for e in events) == 4


def test_stop_keeps_a_checkpoint_and_resume_continues_from_it(tmp_path):
    cfg = _config(tmp_path, steps=30)
    trainer = Trainer(cfg, resume=False)
    seen = []
    for event in trainer.run():
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 7:
            trainer.stop()
    done = seen[-1]
    assert isinstance(done, DoneEvent) and done.stopped and done.step == 7
    state, config = load_checkpoint(done.checkpoint)
    assert state["step"] == 7 and config["steps"] == 30

    resumed = list(Trainer(cfg, resume=True).run())
    steps = [e.step for e in resumed if isinstance(e, StepEvent)]
    assert steps == list(range(8, 31))
    assert resumed[-1].step == 30


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """Pairs depend only on their index, so stop + resume trains on exactly the same data."""
    import torch

    full = list(Trainer(_config(tmp_path / "a", steps=12), resume=False).run())
    cfg_b = _config(tmp_path / "b", steps=12)
    first = Trainer(cfg_b, resume=False)
    for event in first.run():
        if isinstance(event, StepEvent) and event.step == 6:
            first.stop()
    rest = list(Trainer(cfg_b, resume=True).run())
    loss_full = [e.losses["l1"] for e in full if isinstance(e, StepEvent)][6:]
    loss_rest = [e.losses["l1"] for e in rest if isinstance(e, StepEvent)]
    np.testing.assert_allclose(loss_rest, loss_full, rtol=1e-4)
    sa, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt")
    sb, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    for k in sa["generator"]:
        torch.testing.assert_close(sa["generator"][k], sb["generator"][k], rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    import torch

    from napari_emdenoise.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny").eval()
    x = torch.rand(2, 1, 24, 30)
    path = save_checkpoint(
        tmp_path / "c.pt", {"step": 3, "generator": model.state_dict()}, {"a": 1}
    )
    state, config = load_checkpoint(path)
    other = build_model("cgrdn", "tiny").eval()
    other.load_state_dict(state["generator"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)
    assert config == {"a": 1} and state["step"] == 3


def test_malicious_checkpoint_is_refused(tmp_path):
    import pickle

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {sentinel}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"config_json": "{}", "x": Evil()}))
    with pytest.raises(ValueError, match="not a loadable"):
        load_checkpoint(path)
    assert not sentinel.exists()


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="patch_size"):
        PairConfig(patch_size=4)
    with pytest.raises(ValueError, match="noise settings"):
        PairConfig(modality="stem", noise=NoiseParams.default("tem"))


def test_adversarial_training_steps_the_discriminator(tmp_path):
    cfg = _config(
        tmp_path, steps=3, loss_weights={"adversarial": 5e-4}, disc_channels=8, val_every=3
    )
    trainer = Trainer(cfg, resume=False)
    events = list(trainer.run())
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert all({"discriminator", "adversarial", "l1"} <= set(e.losses) for e in steps)
    state, _ = load_checkpoint(events[-1].checkpoint)
    assert "discriminator" in state and "opt_d" in state


def test_bad_worker_start_method_is_rejected():
    with pytest.raises(ValueError, match="worker_start_method"):
        TrainConfig(worker_start_method="thread")


def test_checkpoint_on_request_and_preview_of_a_user_image(tmp_path):
    cfg = _config(tmp_path, steps=6, val_every=3, checkpoint_every=1000)
    trainer = Trainer(cfg, resume=False)
    image = np.random.default_rng(3).poisson(30.0, (400, 41)).astype(np.uint16)
    trainer.set_preview_image(image)
    events = []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, StepEvent) and event.step == 2:
            trainer.request_checkpoint()
    checkpoints = [e for e in events if isinstance(e, CheckpointEvent)]
    assert [e.step for e in checkpoints] == [2]  # only the requested one (every 1000 steps)
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    assert [v.step for v in vals] == [3, 6]
    for v in vals:
        shown, restored = v.user_preview
        np.testing.assert_array_equal(shown, image[72:328].astype(np.float32))  # centred crop
        assert restored.shape == (256, 41) and np.isfinite(restored).all()
    assert trainer.model.training  # previewing does not leave the network in eval mode
    with pytest.raises(ValueError, match="preview image"):
        trainer.set_preview_image(np.zeros((3, 4, 5)))


def test_spawned_data_workers_give_the_same_batches(tmp_path):
    losses = {}
    for method in (None, "spawn"):
        cfg = _config(tmp_path / str(method), steps=2, num_workers=1, worker_start_method=method)
        events = list(Trainer(cfg, resume=False).run())
        losses[method] = [e.losses["total"] for e in events if isinstance(e, StepEvent)]
    np.testing.assert_allclose(losses["spawn"], losses[None], rtol=1e-5)


@pytest.mark.parametrize("arch", ["dncnn", "dncnn_bf"])
def test_the_deep_cnn_of_seed_002_trains_and_exports(tmp_path, arch):
    from napari_emdenoise.models.registry import load_model

    cfg = _config(tmp_path, arch=arch, steps=3, val_every=3, name=f"unit_{arch}")
    done = list(Trainer(cfg, resume=False).run())[-1]
    model, card = load_model(done.model_path)
    assert card.arch == arch and card.training["steps"] == 3
    assert np.isfinite(done.metrics["val_psnr"])


def test_pairs_are_mirrored_along_the_fast_scan_axis_half_of_the_time(monkeypatch):
    """Mirrored pairs keep a network from learning a preferred direction to move features."""
    import napari_emdenoise.training.datasets as ds

    cfg = PairConfig(modality="stem", kind="hr", patch_size=32, seed=3)
    monkeypatch.setattr(ds, "FAST_SCAN_FLIP_PROBABILITY", 0.0)
    plain = [make_training_pair(cfg, i) for i in range(12)]
    monkeypatch.setattr(ds, "FAST_SCAN_FLIP_PROBABILITY", 1.0)
    for i, (x, y) in enumerate(plain[:3]):
        xm, ym = make_training_pair(cfg, i)
        np.testing.assert_array_equal(xm, x[:, ::-1])
        np.testing.assert_array_equal(ym, y[:, ::-1])
    monkeypatch.setattr(ds, "FAST_SCAN_FLIP_PROBABILITY", 0.5)
    flipped = [
        not np.array_equal(make_training_pair(cfg, i)[0], x) for i, (x, _) in enumerate(plain)
    ]
    assert 2 <= sum(flipped) <= 10  # both outcomes occur (binomial(12, 0.5))


def test_a_stopped_run_exports_a_card_marked_as_checkpoint(tmp_path):
    cfg = TrainConfig(
        name="stopped",
        model_config="tiny",
        pairs=PairConfig(patch_size=32, seed=0),
        steps=50,
        batch_size=2,
        val_size=2,
        val_every=100,
        checkpoint_every=100,
        num_workers=0,
        out_dir=str(tmp_path),
    )
    trainer = Trainer(cfg)
    for event in trainer.run():
        if isinstance(event, StepEvent) and event.step == 3:
            trainer.stop()
    import json

    card = json.loads((tmp_path / "stopped.json").read_text())
    assert card["training"]["stopped"] is True and card["training"]["planned_steps"] == 50
    assert card["training"]["steps"] < 50


# ------------------------------------------------------------------- plain / high-dose pairs


def _off_plain_layers(params: NoiseParams) -> list[str]:
    """Enabled layers a plain pair must not have."""
    from napari_emdenoise.noise.pipeline import layers_for
    from napari_emdenoise.training.datasets import PLAIN_LAYERS

    both = {layer.name for layer in layers_for(params.modality) if layer.applies_to_target}
    return [
        name
        for name, p in params.layers.items()
        if p.enabled and name not in PLAIN_LAYERS and name not in both
    ]


@pytest.mark.parametrize(("modality", "kind"), [("stem", "hr"), ("tem", "lr")])
def test_zero_fractions_reproduce_the_paper_pairs_exactly(modality, kind):
    old = PairConfig(modality=modality, kind=kind, patch_size=32, seed=2, clean_pool=4)
    new = PairConfig(
        modality=modality,
        kind=kind,
        patch_size=32,
        seed=2,
        clean_pool=4,
        plain_fraction=0.0,
        high_dose_fraction=0.0,
    )
    assert new.to_dict() == old.to_dict()  # old checkpoints still resume
    assert "plain_fraction" not in new.to_dict()
    for split in ("train", "val"):
        for i in range(4):
            x0, y0, p0 = make_training_pair(old, i, split, return_params=True)
            x1, y1, p1 = make_training_pair(new, i, split, return_params=True)
            np.testing.assert_array_equal(x1, x0)
            np.testing.assert_array_equal(y1, y0)
            assert p1.to_dict() == p0.to_dict()


def _check_other_pairs_unchanged(fraction: str, seed: int, redrawn, check_redrawn) -> None:
    """With ``fraction`` = 0.4, a pair not ``redrawn`` equals the paper's pair exactly."""
    base = PairConfig(patch_size=32, seed=seed)
    mixed = PairConfig(patch_size=32, seed=seed, **{fraction: 0.4})
    kept = changed = 0
    for i in range(16):
        x0, y0, p0, i0 = make_training_pair(base, i, return_params=True, return_info=True)
        x1, y1, p1, i1 = make_training_pair(mixed, i, return_params=True, return_info=True)
        if redrawn((y0, p0), (y1, p1)):
            check_redrawn(p1, i1)
            changed += 1
        else:
            np.testing.assert_array_equal(x1, x0)
            np.testing.assert_array_equal(y1, y0)
            assert p1.to_dict() == p0.to_dict() and i1 == i0
            kept += 1
    assert kept and changed  # binomial(16, 0.4): both occur


def test_a_pair_that_stays_a_paper_pair_is_unchanged_by_the_fraction():
    def redrawn(a, b):
        return a[1].to_dict() != b[1].to_dict()

    def check(params, _info):
        assert not _off_plain_layers(params)

    _check_other_pairs_unchanged("plain_fraction", 4, redrawn, check)


@pytest.mark.parametrize("modality", ["stem", "tem", "sem"])
def test_plain_pairs_keep_only_counting_and_read_noise(modality):
    paper = PairConfig(modality=modality, kind="hr", patch_size=32, seed=5)
    plain = PairConfig(modality=modality, kind="hr", patch_size=32, seed=5, plain_fraction=1.0)
    removed = 0
    for i in range(8):
        _, _, p0 = make_training_pair(paper, i, return_params=True)
        x, y, p1 = make_training_pair(plain, i, return_params=True)
        assert not _off_plain_layers(p1)
        assert np.isfinite(x).all() and np.isfinite(y).all()
        removed += len(_off_plain_layers(p0))
        for name, p in p1.layers.items():  # the kept layers are the paper draw's
            if name not in _off_plain_layers(p0):
                assert p.to_dict() == p0.layers[name].to_dict()
    assert removed  # the paper's draws did have blur, jitter, … to remove


@pytest.mark.parametrize("modality", ["stem", "tem"])
def test_high_dose_pairs_are_drawn_in_the_high_dose_range(modality):
    from napari_emdenoise.training.datasets import HIGH_DOSE_RANGE

    cfg = PairConfig(modality=modality, kind="lr", patch_size=32, seed=6, high_dose_fraction=1.0)
    low, high = HIGH_DOSE_RANGE
    doses = []
    for i in range(8):
        _, _, params = make_training_pair(cfg, i, return_params=True)
        dosed = [p.dose for p in params.layers.values() if hasattr(p, "dose")]
        assert dosed and len(set(dosed)) == 1  # one dose for every layer of a pair
        doses.append(dosed[0])
    assert all(low <= d <= high for d in doses)
    assert len(set(doses)) == len(doses)  # redrawn per pair


@pytest.mark.parametrize("name", VARIANT_FRACTIONS)
@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), float("inf")])
def test_fractions_outside_zero_one_are_rejected(name, value):
    with pytest.raises(ValueError, match=name):
        PairConfig(patch_size=32, **{name: value})


@pytest.mark.parametrize("name", VARIANT_FRACTIONS)
def test_fractions_do_not_apply_to_diffraction(name):
    with pytest.raises(ValueError, match="diffraction"):
        PairConfig(modality="diffraction", patch_size=32, **{name: 0.5})
    PairConfig(modality="diffraction", patch_size=32, **{name: 0.0})  # the default is fine


def test_fine_lattice_pairs_are_zone_axis_crystals_at_coarse_sampling():
    from napari_emdenoise.training.datasets import FINE_LATTICE_PIXEL_RANGE

    cfg = PairConfig(patch_size=48, seed=8, fine_lattice_fraction=1.0)
    low, high = FINE_LATTICE_PIXEL_RANGE
    sizes = []
    for i in range(6):
        x, y, info = make_training_pair(cfg, i, return_info=True)
        assert np.isfinite(x).all() and np.isfinite(y).all()
        assert info["specimen"]["type"] == "crystalline"
        assert info["specimen"]["orientation"] == "zone_axis"
        assert low <= info["pixel_size_A"] <= high
        sizes.append(info["pixel_size_A"])
    assert len(set(sizes)) == len(sizes)  # drawn per pair


def test_a_pair_not_drawn_as_fine_lattice_is_unchanged_by_the_fraction():
    def redrawn(a, b):
        return not np.array_equal(a[0], b[0])

    def check(_params, info):
        assert info["specimen"]["orientation"] == "zone_axis"

    _check_other_pairs_unchanged("fine_lattice_fraction", 9, redrawn, check)


def test_pulse_spread_pairs_have_unequal_pulses_and_keep_the_paper_draw_otherwise():
    from napari_emdenoise.training.datasets import PULSE_SPREAD_RANGE

    paper = PairConfig(modality="stem", patch_size=32, seed=10)
    spread = PairConfig(modality="stem", patch_size=32, seed=10, pulse_spread_fraction=1.0)
    values = []
    for i in range(6):
        x0, y0, p0 = make_training_pair(paper, i, return_params=True)
        x1, y1, p1 = make_training_pair(spread, i, return_params=True)
        s = p1["detector_noise"].pulse_spread
        assert PULSE_SPREAD_RANGE[0] <= s <= PULSE_SPREAD_RANGE[1]
        values.append(s)
        assert p1.replace_layer("detector_noise", p0["detector_noise"]).to_dict() == p0.to_dict()
        np.testing.assert_array_equal(y1, y0)  # same target: only the noise differs
        assert not np.array_equal(x1, x0)
    assert len(set(values)) == len(values)  # drawn per pair


def test_a_pair_not_drawn_with_pulse_spread_is_unchanged_by_the_fraction():
    def redrawn(a, b):
        return a[1].to_dict() != b[1].to_dict()

    def check(params, _info):
        assert params["detector_noise"].pulse_spread > 0

    _check_other_pairs_unchanged("pulse_spread_fraction", 11, redrawn, check)


def test_pulse_spread_needs_a_scintillator_detector():
    with pytest.raises(ValueError, match="pulse_spread_fraction"):
        PairConfig(modality="tem", patch_size=32, pulse_spread_fraction=0.5)
    PairConfig(modality="sem", patch_size=32, pulse_spread_fraction=0.5)


def test_fine_lattices_need_atomic_resolution_images():
    from napari_emdenoise.synth import generate_clean

    with pytest.raises(ValueError, match="fine_lattice_fraction"):
        PairConfig(kind="lr", patch_size=32, fine_lattice_fraction=0.5)
    with pytest.raises(ValueError, match="atomic options"):
        generate_clean("lr", (32, 32), rng=0, atomic={"pixel_size": 0.3})


def test_fractions_round_trip_through_the_config_dict():
    import json

    cfg = PairConfig(
        patch_size=32,
        seed=7,
        plain_fraction=0.3,
        high_dose_fraction=0.2,
        fine_lattice_fraction=0.5,
        pulse_spread_fraction=0.6,
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["plain_fraction"] == 0.3 and data["high_dose_fraction"] == 0.2
    assert data["fine_lattice_fraction"] == 0.5 and data["pulse_spread_fraction"] == 0.6
    again = PairConfig.from_dict(data)
    assert again.plain_fraction == 0.3 and again.high_dose_fraction == 0.2
    assert again.fine_lattice_fraction == 0.5 and again.pulse_spread_fraction == 0.6
    assert again.to_dict() == cfg.to_dict()
    for i in range(3):
        a, b = make_training_pair(cfg, i), make_training_pair(again, i)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    train = TrainConfig(pairs=cfg)
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))).pairs.to_dict() == (
        cfg.to_dict()
    )
