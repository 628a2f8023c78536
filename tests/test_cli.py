"""The ``emdenoise`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_emdenoise.cli import main
from napari_emdenoise.noise.pipeline import NoiseParams


def test_simulate_writes_pair_and_params(tmp_path):
    out = tmp_path / "sim"
    assert (
        main(
            [
                "simulate",
                "--modality",
                "stem",
                "--kind",
                "hr",
                "--size",
                "64",
                "--seed",
                "0",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    clean = tifffile.imread(out / "clean.tif")
    distorted = tifffile.imread(out / "distorted.tif")
    assert clean.shape == distorted.shape == (64, 64)
    assert clean.dtype == np.float32 and 0 <= clean.min() and clean.max() <= 1 + 1e-6
    record = json.loads((out / "params.json").read_text())
    assert record["seed"] == 0 and record["noise"]["modality"] == "stem"
    NoiseParams.from_dict(record["noise"])  # the written settings load back
    # same seed -> same files
    out2 = tmp_path / "sim2"
    main(["simulate", "--size", "64", "--seed", "0", "--out-dir", str(out2)])
    np.testing.assert_array_equal(tifffile.imread(out2 / "distorted.tif"), distorted)


def test_simulate_uses_a_settings_file(tmp_path):
    params = NoiseParams.default("tem")
    path = params.save(tmp_path / "tem.json")
    assert (
        main(
            [
                "simulate",
                "--modality",
                "tem",
                "--size",
                "48",
                "--params",
                str(path),
                "--out-dir",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "o" / "params.json").read_text())
    assert record["noise"] == params.to_dict()


def test_mismatched_settings_file_is_a_clear_error(tmp_path, capsys):
    path = NoiseParams.default("tem").save(tmp_path / "tem.json")
    code = main(
        [
            "simulate",
            "--modality",
            "stem",
            "--params",
            str(path),
            "--size",
            "32",
            "--out-dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "--modality" in capsys.readouterr().err


def test_console_script_runs():
    res = subprocess.run(
        [sys.executable, "-m", "napari_emdenoise.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "simulate" in res.stdout


def test_restore_reads_writes_and_keeps_the_pixel_size(tmp_path, tiny_user_model):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.io.readers import read_em
    from napari_emdenoise.io.writers import write_tif

    data = (np.random.default_rng(1).random((45, 61)) * 3000).astype(np.uint16)
    src = tmp_path / "in.tif"
    write_tif(src, data, {"scale": (0.02, 0.02), "units": ("nm", "nm")})
    dst = tmp_path / "out.tif"
    assert (
        main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model, "--residual"]) == 0
    )
    ((out, meta),) = read_em(dst)
    assert out.shape == data.shape
    assert tuple(meta["scale"]) == pytest.approx((0.02, 0.02))
    np.testing.assert_allclose(out, restore(data, model=tiny_user_model), rtol=1e-5, atol=1e-3)
    assert (tmp_path / "out_residual.tif").exists()
    np.testing.assert_array_equal(read_em(src)[0][0], data)  # input untouched


def test_restore_no_refine_writes_the_network_output_alone(tmp_path, tiny_user_model):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.io.readers import read_em

    data = (np.random.default_rng(3).poisson(30.0, (80, 72))).astype(np.float32)
    src = tmp_path / "in.npy"
    np.save(src, data)
    outs = {}
    for flag in ([], ["--no-refine"]):
        dst = tmp_path / f"out{len(flag)}.tif"
        assert main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model, *flag]) == 0
        outs[bool(flag)] = read_em(dst)[0]
    (plain, _), (refined, _) = outs[True], outs[False]
    ref_plain = restore(data, model=tiny_user_model, refine=False)
    np.testing.assert_allclose(plain, ref_plain, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(refined, restore(data, model=tiny_user_model), rtol=1e-5, atol=1e-3)
    assert not np.allclose(plain, refined, atol=1e-3)


def test_restore_no_lattice_skips_the_lattice_pass(tmp_path, tiny_user_model, monkeypatch):
    """--no-lattice gives the Wiener refinement alone; the default runs the lattice pass
    (replaced here by a marker, so that the test does not depend on what the tiny model
    erases)."""
    from napari_emdenoise.engine import predictor
    from napari_emdenoise.io.readers import read_em

    data = np.random.default_rng(4).poisson(20.0, (96, 128)).astype(np.float32)
    src = tmp_path / "in.npy"
    np.save(src, data)
    wiener_only = predictor.restore(data, model=tiny_user_model, lattice=False)
    # restore runs its steps at unit scale (zero mean, unit standard deviation): one unit
    # there is the input's standard deviation here
    monkeypatch.setattr(predictor, "restore_lattice", lambda image, restored: restored + 10.0)
    outs = {}
    for flag in ([], ["--no-lattice"]):
        dst = tmp_path / f"out{len(flag)}.tif"
        assert main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model, *flag]) == 0
        outs[bool(flag)] = read_em(dst)[0][0]
    np.testing.assert_allclose(outs[True], wiener_only, rtol=1e-5, atol=1e-3)
    shifted = wiener_only + 10.0 * data.std(dtype=np.float64)
    np.testing.assert_allclose(outs[False], shifted, rtol=1e-5, atol=1e-2)


def test_restore_keep_defects_runs_the_pass_last(tmp_path, tiny_user_model, monkeypatch):
    """--keep-defects adds the keep-defects pass (a marker here) after the default steps."""
    from napari_emdenoise.engine import predictor
    from napari_emdenoise.io.readers import read_em

    data = np.random.default_rng(5).poisson(20.0, (96, 128)).astype(np.float32)
    src = tmp_path / "in.npy"
    np.save(src, data)
    default = predictor.restore(data, model=tiny_user_model)
    # one unit of the steps' scale is the input's standard deviation (see above)
    monkeypatch.setattr(predictor, "restore_deviations", lambda image, restored: restored - 0.5)
    outs = {}
    for flag in ([], ["--keep-defects"]):
        dst = tmp_path / f"out{len(flag)}.tif"
        assert main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model, *flag]) == 0
        outs[bool(flag)] = read_em(dst)[0][0]
    np.testing.assert_allclose(outs[False], default, rtol=1e-5, atol=1e-3)
    shifted = default - 0.5 * data.std(dtype=np.float64)
    np.testing.assert_allclose(outs[True], shifted, rtol=1e-5, atol=1e-3)


def test_restore_refuses_to_overwrite(tmp_path, tiny_user_model, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.ones((16, 16), np.float32))
    assert main(["restore", str(src), "-o", str(src), "--model", tiny_user_model]) == 2
    assert "must not overwrite the input" in capsys.readouterr().err
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.zeros((4, 4), np.float32))
    assert main(["restore", str(src), "-o", str(other), "--model", tiny_user_model]) == 2
    np.testing.assert_array_equal(tifffile.imread(other), np.zeros((4, 4), np.float32))


def test_restore_reports_corrupt_files(tmp_path, tiny_user_model, capsys):
    bad = tmp_path / "bad.dm4"
    bad.write_bytes(b"not a dm4 file at all" * 10)
    assert (
        main(["restore", str(bad), "-o", str(tmp_path / "o.tif"), "--model", tiny_user_model]) == 2
    )
    assert "error" in capsys.readouterr().err


def test_demo_writes_calibrated_tiffs(tmp_path):
    from napari_emdenoise.io.readers import read_em
    from napari_emdenoise.training.datasets import PairConfig, make_training_pair

    out = tmp_path / "demo"
    assert main(["demo", "--size", "64", "--index", "2", "--out", str(out)]) == 0
    *_, info = make_training_pair(
        PairConfig(modality="stem", kind="hr", patch_size=64), 2, "test", return_info=True
    )
    for name in ("distorted", "restored", "clean"):
        (_, meta), *_ = read_em(out / f"{name}.tif")
        assert meta["units"] == ("nm", "nm")
        assert meta["scale"][0] == pytest.approx(info["pixel_size_A"] / 10.0, rel=1e-4)


def test_restore_fast_scan_axis_y_transposes_and_a_mismatch_is_warned(tmp_path, tiny_user_model):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.io.readers import read_em
    from napari_emdenoise.io.writers import write_tif

    rng = np.random.default_rng(4)
    # noise spread along the columns: an image whose fast-scan axis is y
    noise = rng.normal(0.0, 30.0, (80, 64))
    data = (1000.0 + noise + 0.6 * np.roll(noise, 1, axis=0)).astype(np.float32)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    write_tif(src, data, {})
    with pytest.warns(RuntimeWarning, match="fast-scan-axis y"):
        assert main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model]) == 0
    args = ["restore", str(src), "-o", str(dst), "--model", tiny_user_model, "--overwrite"]
    assert main([*args, "--fast-scan-axis", "y"]) == 0
    ((out, _meta),) = read_em(dst)
    expected = restore(data, model=tiny_user_model, fast_scan_axis="y")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert not np.allclose(out, restore(data, model=tiny_user_model), atol=1e-3)
