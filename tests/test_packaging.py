"""The package installs as a napari plugin (normal and editable) and the engine stays headless.

These tests must pass from a virtual environment as well as from a system Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DISCOVER = """
import json, importlib.resources, npe2
pm = npe2.PluginManager.instance()
pm.discover()
mf = pm.get_manifest("napari-emdenoise")
import napari_emdenoise
manifest = importlib.resources.files("napari_emdenoise").joinpath("napari.yaml")
print(json.dumps({"manifest": str(manifest), "manifest_ok": manifest.is_file(),
                  "package": napari_emdenoise.__file__,
                  "widgets": [w.display_name for w in mf.contributions.widgets or []],
                  "samples": [s.key for s in mf.contributions.sample_data or []]}))
"""


def _discover(python: str, env: dict | None = None) -> dict:
    res = subprocess.run([python, "-c", DISCOVER], capture_output=True, text=True, cwd="/", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_manifest_validates():
    res = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-emdenoise"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_current_install_is_discovered():
    info = _discover(sys.executable)
    assert info["manifest"].endswith("napari.yaml") and info["manifest_ok"]
    assert "Noise-model playground" in info["widgets"]
    assert {"hrstem_grain_boundary", "lrstem_particles"} <= set(info["samples"])


@pytest.mark.slow
def test_wheel_ships_the_manifest_and_is_discovered(tmp_path):
    wheel_dir = tmp_path / "wheels"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = wheel_dir.glob("napari_emdenoise-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_emdenoise/napari.yaml" in names
        manifest = zf.read("napari_emdenoise/napari.yaml").decode()
        assert manifest.startswith("name: napari-emdenoise")  # a real file, not a link
        ep = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_emdenoise:napari.yaml" in zf.read(ep).decode()
        for model in ("hrstem", "hrtem"):  # bundled default models ship in the wheel
            assert f"napari_emdenoise/weights/{model}.safetensors" in names
            assert f"napari_emdenoise/weights/{model}.json" in names
    # install the wheel into a folder that shadows the editable install: a venv would not
    # do, since a venv made from inside a venv does not see the outer venv's packages
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
    }
    info = _discover(sys.executable, env)
    assert str(target) in info["package"], info
    assert str(target) in info["manifest"], info
    assert "Noise-model playground" in info["widgets"]


HEADLESS = """
import sys
import napari_emdenoise.noise.pipeline, napari_emdenoise.synth, napari_emdenoise.simulate
import napari_emdenoise.cli
bad = sorted(m for m in ("qtpy", "PyQt6", "napari", "magicgui", "torch") if m in sys.modules)
print(",".join(bad))
"""


def test_engine_imports_neither_qt_nor_napari_nor_torch():
    res = subprocess.run([sys.executable, "-c", HEADLESS], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"headless modules imported {res.stdout.strip()}"
