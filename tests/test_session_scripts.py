"""The GPU-session script runs end to end (on the CPU, tiny sizes), and the cost table's
FLOP counter counts what a convolution costs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(_BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_BENCH))
    return module


def _run_on_one_haadf_image(name: str, out: Path, *extra: str) -> dict:
    """``benchmarks/<name>.py --quick`` on one HAADF image at 5 counts/px; its JSON."""
    bench = _load(name)
    sys.path.insert(0, str(_BENCH))  # it reads restore_quality's noisy draws
    try:
        argv = ["--quick", "--techniques", "HAADF", "--doses", "5", *extra, "--out", str(out)]
        assert bench.main(argv) == 0
    finally:
        sys.path.remove(str(_BENCH))
    return json.loads(out.read_text())


def test_conv_flops_of_one_convolution():
    qps = _load("quality_per_second")
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    # 2 · (3 outputs × 2 inputs × 9 taps) FLOP per pixel = 108 GFLOP per megapixel / 1000
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), conv)
    assert qps.conv_gflop_per_mpix(net) == pytest.approx(2 * 2 * 1e-3 + 108e-3)


@pytest.mark.slow
def test_gpu_session_script_runs_on_cpu(tmp_path, monkeypatch):
    session = _load("gpu_session")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    out = tmp_path / "out"
    sys.path.insert(0, str(_BENCH))
    try:
        assert session.main(["--out", str(out), "--device", "cpu", "--quick"]) == 0
    finally:
        sys.path.remove(str(_BENCH))
    summary = json.loads((out / "summary.json").read_text())
    failed = {k: v.get("error") for k, v in summary["parts"].items() if not v["ok"]}
    assert not failed, failed
    assert set(summary["parts"]) == {
        "restore_speed",
        "oom_fallback",
        "stem4d_speed",
        "train_full",
        "physics_eval",
    }
    # the trained model came back in half precision, under the 16 MiB a returned file may have
    weights = out / "hrstem_full_fp16.safetensors"
    assert 0 < weights.stat().st_size < 16 * 2**20
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(weights)).values())
    physics = json.loads((out / "physics_gpu.json").read_text())["mean_psnr_db"]
    assert {"hrstem, alone", "full CGRDN (this run), default", "bm3d-gat"} <= set(physics)
    assert summary["parts"]["oom_fallback"]["max_rel_diff_vs_tiled"] < 1e-5


@pytest.mark.slow
def test_adapt_physics_script_runs_on_one_image(tmp_path):
    """The quality-mode benchmark end to end on one image, two adaptation steps."""
    result = _run_on_one_haadf_image(
        "adapt_physics", tmp_path / "adapt_physics.json", "--steps", "2"
    )
    assert result["complete"] and result["steps"] == 2
    rows = {r["method"]: r for r in result["rows"]}
    assert {"raw", "default", "adapted-net", "adapted", "selected"} <= set(rows)
    assert rows["adapted"]["adapt_steps"] == 2 and rows["adapted"]["column_rms_pm"] > 0
    # the quality mode is the candidate with the lowest estimated error, and scores as it
    chosen, estimates = rows["selected"]["chosen"], rows["selected"]["estimated_mse"]
    assert set(estimates) == {"default", "adapted", "adapted-net"}
    assert estimates[chosen] == min(estimates.values())
    assert rows["selected"]["psnr"] == rows[chosen]["psnr"]
    # the same noisy draw as restore_quality.py: its recorded default score comes back
    recorded = json.loads((_BENCH / "results" / "restore_quality_hr.json").read_text())
    (default,) = [
        r["psnr"]
        for r in recorded["rows"]
        if r["group"] == "physics"
        and r["case"] == rows["default"]["case"]
        and r["dose"] == 5.0
        and r["method"] == "refined:hrstem"
    ]
    assert rows["default"]["psnr"] == pytest.approx(default, abs=0.02)
    assert result["summary"]["HAADF@5"]["n_images"] == 1


@pytest.mark.slow
def test_risk_accuracy_script_runs_on_one_image(tmp_path):
    """The risk-estimate check end to end on one image: rows, pair counts, JSON."""
    result = _run_on_one_haadf_image("risk_accuracy", tmp_path / "risk_accuracy.json")
    rows = result["rows"]
    assert [r["method"] for r in rows] == list(_load("risk_accuracy").METHODS)
    entry = result["summary"]["HAADF@5"]
    assert entry["n_images"] == 1 and entry["fitted"]["pairs"] == 6
    # on this SrTiO3 image the estimate orders (almost) every pair like the true error
    assert entry["fitted"]["misordered"] <= 1 and entry["true"]["misordered"] <= 1
    for r in rows:
        assert 0.5 < r["estimate_true"] / r["mse"] < 2.0
