"""The ``emdenoise`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
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
