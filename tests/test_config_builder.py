"""The Train form's values become a TrainConfig without Qt, a viewer or napari: defaults,
carried values, noise sources, in-process data, and clear messages for bad values."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from napari_emdenoise.noise.pipeline import NoiseParams
from napari_emdenoise.training.config_builder import (
    TrainForm,
    build_train_config,
    default_runs_dir,
    in_process_reason,
    resolve_noise,
)


def _build(tmp_path, **values):
    return build_train_config(TrainForm(out_dir=tmp_path, **values))


def test_defaults_are_the_first_settings_of_the_dock(tmp_path):
    cfg = _build(tmp_path)
    assert (cfg.name, cfg.arch, cfg.model_config) == ("my_model", "cgrdn", "small")
    assert (cfg.steps, cfg.batch_size, cfg.lr) == (1000, 8, 2e-4)
    assert (cfg.disc_channels, cfg.val_size, cfg.val_every, cfg.checkpoint_every) == (
        32,
        8,
        50,
        200,
    )
    assert cfg.loss_weights == {}  # the trainer's defaults (the paper's, or Pix2Pix's)
    assert (cfg.num_workers, cfg.worker_start_method) == (1, "spawn")
    assert cfg.device is None and cfg.init_from is None
    assert cfg.out_dir == str(tmp_path / "my_model")
    pairs = cfg.pairs
    assert (pairs.modality, pairs.kind, pairs.patch_size, pairs.noise) == ("stem", "hr", 96, None)
    assert (pairs.seed, pairs.clean_pool, pairs.pool_image_size) == (0, 64, 256)


def test_form_values_are_carried_over(tmp_path):
    cfg = _build(
        tmp_path,
        model_name="  titan_hr  ",
        arch="dncnn",
        model_config="tiny",
        modality="tem",
        kind="lr",
        patch_size=320,
        clean_pool=0,
        seed=7,
        loss_weights={"l1": 3, "adversarial": 0.0},
        disc_channels=16,
        steps=12,
        batch_size=2,
        lr=1e-3,
        device="cpu",
        val_every=3,
        checkpoint_every=6,
        workers=0,
    )
    assert cfg.name == "titan_hr" and cfg.out_dir == str(tmp_path / "titan_hr")
    assert (cfg.arch, cfg.model_config) == ("dncnn", "tiny")
    assert (cfg.pairs.modality, cfg.pairs.kind, cfg.pairs.seed) == ("tem", "lr", 7)
    # patches larger than 256 px: pooled clean images at least as large
    assert cfg.pairs.patch_size == 320 and cfg.pairs.pool_image_size == 320
    assert cfg.loss_weights == {"l1": 3.0, "adversarial": 0.0}
    assert all(type(v) is float for v in cfg.loss_weights.values())
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.disc_channels) == (12, 2, 1e-3, 16)
    assert (cfg.val_every, cfg.checkpoint_every, cfg.num_workers) == (3, 6, 0)
    assert cfg.device == "cpu"
    assert _build(tmp_path, device="auto").device is None


def test_fine_tuning_names_the_source_model_and_ignores_the_size(tmp_path):
    cfg = _build(tmp_path, start_from="hrstem", model_config="no such size")
    assert cfg.init_from == "hrstem"


def test_pix2pix_trains_on_diffraction_patterns(tmp_path):
    cfg = _build(tmp_path, arch="pix2pix", model_config="tiny", modality="diffraction")
    assert cfg.arch == "pix2pix" and cfg.pairs.modality == "diffraction"
    assert cfg.pairs.diffraction is not None


def test_playground_noise_sets_the_modality(tmp_path):
    params = NoiseParams.default("tem")
    cfg = _build(tmp_path, modality="stem", noise_source="playground", playground_noise=params)
    assert cfg.pairs.modality == "tem"
    assert cfg.pairs.noise.to_dict() == params.to_dict()
    # the playground's settings are ignored unless it is the chosen source
    assert _build(tmp_path, playground_noise=params).pairs.noise is None


def test_noise_settings_file(tmp_path):
    path = NoiseParams.default("sem").save(tmp_path / "scope.json")
    cfg = _build(tmp_path, noise_source="file", noise_file=str(path))
    assert cfg.pairs.modality == "sem"
    assert cfg.pairs.noise.to_dict() == NoiseParams.load(path).to_dict()


@pytest.mark.parametrize(
    ("source", "noise_file", "match"),
    [
        ("playground", None, "no Noise-model playground is open"),
        ("file", None, "choose a noise settings file"),
        ("file", "/nonexistent/noise.json", "choose a noise settings file"),
        ("dose", None, "noise source must be one of random, playground, file"),
    ],
)
def test_missing_noise_settings_say_what_to_do(source, noise_file, match):
    with pytest.raises(ValueError, match=match):
        resolve_noise(source, noise_file, None)


def test_a_file_that_is_not_noise_settings(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid noise-parameter JSON file"):
        resolve_noise("file", garbage, None)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"modality": "stem", "layers": {"no such layer": {}}}))
    with pytest.raises(ValueError, match="no such layer"):
        resolve_noise("file", other, None)


def test_a_script_without_main_guard_makes_the_data_in_process(tmp_path):
    cfg = _build(tmp_path, workers=2)
    assert cfg.num_workers == 2
    form = TrainForm(out_dir=tmp_path, workers=2)
    cfg = build_train_config(form, unguarded_script="/home/me/show_napari.py")
    assert cfg.num_workers == 0
    reason = in_process_reason(2, "/home/me/show_napari.py")
    assert "show_napari.py" in reason and "__main__" in reason
    assert in_process_reason(0, "/home/me/show_napari.py") == ""
    assert in_process_reason(2, None) == ""


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"model_name": "../escape"}, "model name '../escape' is not a valid file stem"),
        ({"model_name": "   "}, "model name '' is not a valid file stem"),
        ({"arch": "unet"}, "unknown architecture 'unet': choose one of cgrdn, dncnn"),
        ({"model_config": "huge"}, "size 'huge' is not offered for cgrdn: choose one of"),
        ({"steps": 0}, "steps must be a whole number ≥ 1, got 0"),
        ({"steps": 2.5}, "steps must be a whole number ≥ 1, got 2.5"),
        ({"batch_size": 0}, "batch must be a whole number ≥ 1"),
        ({"patch_size": 8}, "patch must be a whole number ≥ 16 px, got 8"),
        ({"clean_pool": -1}, "clean-image pool must be a whole number ≥ 0"),
        ({"val_every": 0}, r"preview every \[steps\] must be"),
        ({"checkpoint_every": 0}, r"checkpoint every \[steps\] must be"),
        ({"workers": -1}, "data workers must be a whole number ≥ 0"),
        ({"disc_channels": 0}, "discriminator width must be"),
        ({"lr": 0.0}, "learning rate must be a number > 0, got 0.0"),
        ({"lr": math.nan}, "learning rate must be a number > 0"),
        ({"loss_weights": {"l1": -1.0}}, "loss weight l1 must be a finite number >= 0"),
        ({"loss_weights": {"sigma_min": 0.0}}, "sigma_min must be a finite number > 0"),
        ({"loss_weights": {"l3": 1.0}}, r"unknown loss weight\(s\) \['l3'\]"),
        ({"loss_weights": {"l1": "a lot"}}, "loss weights must be numbers"),
        ({"modality": "xray"}, "modality must be one of stem, tem, sem, diffraction"),
        ({"kind": "mid"}, "kind must be 'hr' .* or 'lr'"),
    ],
)
def test_bad_values_give_clear_messages(tmp_path, values, match):
    with pytest.raises(ValueError, match=match):
        _build(tmp_path, **values)


def test_default_runs_folder_is_beside_the_user_models(tmp_path, monkeypatch):
    monkeypatch.setenv("EMDENOISE_MODELS_DIR", str(tmp_path / "models"))
    assert default_runs_dir() == tmp_path / "runs"
    assert TrainForm().out_dir == tmp_path / "runs"


HEADLESS_BUILD = """
import sys
from napari_emdenoise.training.config_builder import TrainForm, build_train_config
cfg = build_train_config(TrainForm(model_name="x", out_dir="runs"))
assert cfg.name == "x"
print(",".join(sorted(m for m in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari",
                                   "magicgui", "superqt") if m in sys.modules)))
"""


def test_building_a_config_imports_neither_qt_nor_napari(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", HEADLESS_BUILD], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", f"imported {res.stdout.strip()}"
