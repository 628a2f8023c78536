"""Everything this project wants from a lent GPU, in one run of about eight and a half minutes.

A GPU is lent to this project only now and then, for about 15 minutes all
told, machine start included. This script is the one command to give it
(``PYTHONPATH=src python3 benchmarks/gpu_session.py --out $OUT``); it needs
only numpy, scipy, scikit-image, torch and safetensors (napari, dask and
zarr are not used), and writes everything under ``--out``:

1. ``restore_gpu.json``: :func:`napari_emdenoise.engine.restore` on the GPU
   (autocast on, the default) with the bundled ``hrstem`` network alone and
   with the default refinement, and the full-size CGRDN (random weights), at
   2048² and 4096²; median of 3 after a warm-up, synchronised.
2. The out-of-memory fallback, for real: a frame too large for one pass of
   the full-size CGRDN, given as one tile, must come back restored (the
   engine halves the tile until it fits) and equal to the tiled result.
3. ``stem4d_gpu.json``: :func:`napari_emdenoise.restore_4dstem` on 65,536
   patterns of 128² (a 256 × 256 scan held in memory as uint16), the issue's
   target being under 60 s.
4. ``train_full.log``, ``hrstem_full_fp16.safetensors`` and its card: the
   full-size CGRDN trained with autocast on 256² tiles of the ``hrstem``
   recipe for ``--train-seconds``, with as many steps as a short
   calibration run says fit (so the learning rate decays to its end).
5. ``physics_gpu.json``: that model and the bundled ``hrstem`` on the HAADF
   images of the multislice physics set at 2 / 5 / 20 counts/pixel (the
   noise draws of ``restore_quality.py``), network alone and default, beside
   the BM3D-GAT scores of ``benchmarks/results/restore_quality_hr.json``.

Each part is timed and guarded: a failing part is recorded in
``summary.json`` and the next one runs. ``--device cpu --quick`` runs the
same code paths with tiny sizes (a check that the script works, not a
measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("EMDENOISE_MODELS_DIR", "/tmp/emdenoise-models")
from _common import median_seconds  # noqa: E402

PHYSICS_DOSES = (2.0, 5.0, 20.0)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` with the device synchronised after each call."""

    def synced() -> None:
        fn()
        _sync(device)

    return median_seconds(synced, repeats=repeats)


def restore_speed(device: str, sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Seconds per frame on ``device``: bundled hrstem alone / default, full CGRDN alone."""
    from napari_emdenoise.engine import restore
    from napari_emdenoise.models.registry import build_model, load_model

    bundled = load_model("hrstem", device=device)[0]
    full = build_model("cgrdn", "full").eval().to(device)
    rows = []
    for size in sizes:
        frame = np.random.default_rng(size).poisson(5.0, (size, size)).astype(np.float32)
        for label, module, kwargs in (
            ("hrstem, network alone", bundled, {"refine": False}),
            ("hrstem, default (Wiener + lattice pass on the CPU)", bundled, {}),
            ("CGRDN full (random weights), network alone", full, {"refine": False}),
        ):
            seconds = _median_time(
                lambda m=module, kw=kwargs, f=frame: restore(f, model=m, device=device, **kw),
                device,
                repeats,
            )
            rows.append({"size": size, "what": label, "seconds": seconds})
            print(f"restore {size}² {label}: {seconds:.3f} s", flush=True)
    return {"rows": rows}


def oom_fallback(device: str, side: int) -> dict[str, Any]:
    """One whole-frame tile too large for memory: the engine must shrink it and finish."""
    import torch

    from napari_emdenoise.engine import restore
    from napari_emdenoise.models.registry import build_model

    full = build_model("cgrdn", "full").eval().to(device)
    frame = np.random.default_rng(1).poisson(5.0, (side, side)).astype(np.float32)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    retries: list[str] = []

    class _Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "out of memory" in record.getMessage():
                retries.append(record.getMessage())

    handler = _Count()
    engine_log = logging.getLogger("napari_emdenoise.engine.predictor")
    engine_log.addHandler(handler)
    t0 = time.perf_counter()
    try:
        whole = restore(frame, model=full, device=device, refine=False, tile_size=side, overlap=128)
    finally:
        engine_log.removeHandler(handler)
    seconds = time.perf_counter() - t0
    tiled = restore(frame, model=full, device=device, refine=False, tile_size=1024, overlap=128)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    diff = float(np.max(np.abs(whole - tiled)) / max(float(np.ptp(tiled)), 1e-12))
    print(
        f"OOM fallback {side}²: {len(retries)} retries, {seconds:.1f} s, "
        f"max |whole − tiled| / range {diff:.2e}"
    )
    return {
        "side": side,
        "oom_retries": retries,
        "seconds": seconds,
        "max_rel_diff_vs_tiled": diff,
        "peak_gib": peak,
    }


def stem4d_speed(device: str, scan: int, det: int) -> dict[str, Any]:
    """restore_4dstem on scan² patterns of det² held in memory."""
    from napari_emdenoise import restore_4dstem

    rng = np.random.default_rng(4)
    # 256 distinct noisy patterns (Poisson, 1000 counts) tiled over the scan: the
    # network's time does not depend on the content.
    base = rng.poisson(1000.0 / (det * det), (16, 16, det, det)).astype(np.uint16)
    data = np.tile(base, (scan // 16, scan // 16, 1, 1))
    n = scan * scan
    result: dict[str, Any] = {"patterns": n, "pattern_side": det}
    # The network's throughput first (the neighbour-residual stage runs on the
    # CPU in the calling process afterwards), then the default with that stage.
    runs = (("float32", False, False), ("amp", True, False), ("float32 + pooling", False, True))
    for label, amp, pooled in runs:
        if label != "float32" and result["float32"]["seconds"] > 90:
            break  # no time for the other passes in this lease
        t0 = time.perf_counter()
        out = restore_4dstem(data, device=device, amp=amp, neighbour_residuals=pooled)
        seconds = time.perf_counter() - t0
        print(f"restore_4dstem {n} patterns of {det}² ({label}): {seconds:.1f} s")
        result[label] = {
            "seconds": seconds,
            "patterns_per_s": n / seconds,
            "finite": bool(np.isfinite(np.asarray(out)).all()),
        }
        del out
    return result


def _train_config(steps: int, out_dir: Path, device: str, quick: bool) -> Any:
    from napari_emdenoise.training.datasets import PairConfig
    from napari_emdenoise.training.trainer import TrainConfig

    workers = 0 if quick else max(1, min(14, (os.cpu_count() or 2) - 2))
    return TrainConfig(
        name="hrstem_full",
        arch="cgrdn",
        model_config="tiny" if quick else "full",
        pairs=PairConfig(
            modality="stem",
            kind="hr",
            patch_size=64 if quick else 256,
            seed=5,
            plain_fraction=0.5,
            high_dose_fraction=0.2,
            fine_lattice_fraction=0.3,
        ),
        steps=steps,
        batch_size=2 if quick else 16,
        lr=2e-4,
        loss_weights={"l1": 10.0, "adversarial": 0.0},
        val_size=4 if quick else 24,
        val_every=max(10, steps // 4),
        checkpoint_every=max(10, steps // 4),
        num_workers=workers,
        device=device,
        out_dir=str(out_dir),
    )


def train_full(device: str, seconds: float, work: Path, out: Path, quick: bool) -> dict[str, Any]:
    """Calibrate steps/s on a short run, then train for about ``seconds``."""
    from napari_emdenoise.training.trainer import DoneEvent, StepEvent, Trainer

    calib_steps = 8 if quick else 60
    trainer = Trainer(_train_config(calib_steps, work / "calib", device, quick), resume=False)
    stamps = []
    for event in trainer.run():
        if isinstance(event, StepEvent):
            stamps.append(time.perf_counter())
    half = len(stamps) // 2
    rate = (len(stamps) - 1 - half) / max(stamps[-1] - stamps[half], 1e-9)
    steps = max(20, int(rate * seconds * 0.9))
    print(f"calibration: {rate:.2f} steps/s → {steps} steps", flush=True)
    log = (out / "train_full.log").open("w")
    trainer = Trainer(_train_config(steps, work / "full", device, quick), resume=False)
    t0 = time.perf_counter()
    done = None
    for event in trainer.run():
        if isinstance(event, StepEvent) and (event.step % 100 == 0 or event.step == 1):
            terms = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
            log.write(f"step {event.step}/{steps} {time.perf_counter() - t0:.0f}s {terms}\n")
            log.flush()
        elif isinstance(event, DoneEvent):
            done = event
        if time.perf_counter() - t0 > 1.15 * seconds:
            trainer.stop()
    log.close()
    if done is None or done.model_path is None:
        raise RuntimeError("training ended without a model")
    _export_fp16(Path(done.model_path), out)
    return {
        "steps_per_s_calibration": rate,
        "steps": done.step,
        "seconds": time.perf_counter() - t0,
        "model": str(done.model_path),
        "metrics": done.metrics,
    }


def _export_fp16(model_path: Path, out: Path) -> None:
    """float16 copy of the weights (the returned files are limited to 16 MiB each) and its card."""
    import shutil

    from safetensors.torch import load_file, save_file

    tensors = {k: v.half() for k, v in load_file(str(model_path)).items()}
    save_file(tensors, str(out / "hrstem_full_fp16.safetensors"))
    card = model_path.with_suffix(".json")
    if card.exists():
        shutil.copy(card, out / "hrstem_full.json")


def physics_eval(device: str, model_path: str | None, quick: bool) -> dict[str, Any]:
    """Mean PSNR on the HAADF physics images: bundled hrstem and the trained model."""
    import restore_quality as rq

    from napari_emdenoise.engine import restore
    from napari_emdenoise.evaluation import psnr
    from napari_emdenoise.models.registry import load_model

    cases = [
        c
        for c in rq.physics_cases(rq.DOSES, 0.5, quick, rq.physics_set.DEFAULT_DIR)
        if c.meta["technique"] == "HAADF" and c.dose in PHYSICS_DOSES
    ]
    names = {c.name for c in cases}
    # loaded once: a name or path given to restore is loaded again on every call
    models = {"hrstem": load_model("hrstem", device=device)[0]}
    if model_path is not None:
        models["full CGRDN (this run)"] = load_model(model_path, device=device)[0]
    scores: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        for name, model in models.items():
            for label, kwargs in (("alone", {"refine": False}), ("default", {})):
                out = restore(case.noisy, model=model, device=device, **kwargs)
                key = f"{name}, {label}"
                scores.setdefault(key, {}).setdefault(str(case.dose), []).append(
                    psnr(out, case.clean)
                )
    reference = HERE / "results" / "restore_quality_hr.json"
    if reference.exists():
        rows = json.loads(reference.read_text())["rows"]
        for method in ("bm3d-gat", "ref:sfr_hrstem"):
            for r in rows:
                if (
                    r["group"] == "physics"
                    and r["case"] in names
                    and r["method"] == method
                    and r["dose"] in PHYSICS_DOSES
                ):
                    scores.setdefault(method, {}).setdefault(str(r["dose"]), []).append(r["psnr"])
    table = {k: {d: float(np.mean(v)) for d, v in per.items()} for k, per in scores.items()}
    for k, per in table.items():
        print(f"physics HAADF {k}: " + " / ".join(f"{per[d]:.2f}" for d in sorted(per, key=float)))
    return {"images": len(names), "mean_psnr_db": table}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=510.0,
        help="wall-clock budget of the whole run; training gets what the other parts leave",
    )
    ap.add_argument("--train-seconds", type=float, default=300.0, help="most seconds to train")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs")
    args = ap.parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "emdenoise_gpu_session"
    quick = args.quick
    summary: dict[str, Any] = {
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "parts": {},
    }
    start = time.perf_counter()

    def train_seconds() -> float:
        # leave about 100 s: calibration, the model's export and the physics evaluation
        left = args.budget_s - (time.perf_counter() - start) - 100.0
        return 20.0 if quick else max(30.0, min(args.train_seconds, left))

    parts: list[tuple[str, str | None, Callable[[], Any]]] = [
        (
            "restore_speed",
            "restore_gpu.json",
            lambda: restore_speed(
                args.device, (256,) if quick else (2048, 4096), 1 if quick else 3
            ),
        ),
        ("oom_fallback", None, lambda: oom_fallback(args.device, 256 if quick else 16384)),
        (
            "stem4d_speed",
            "stem4d_gpu.json",
            lambda: stem4d_speed(args.device, 16 if quick else 256, 32 if quick else 128),
        ),
        (
            "train_full",
            None,
            lambda: train_full(args.device, train_seconds(), work, args.out, quick),
        ),
    ]
    for name, filename, run in parts:
        t0 = time.perf_counter()
        try:
            result = run()
            summary["parts"][name] = {"ok": True, "seconds": time.perf_counter() - t0, **result}
            if filename:
                (args.out / filename).write_text(json.dumps(result, indent=1))
        except Exception as exc:  # record and go on: the lease is too short to stop
            summary["parts"][name] = {
                "ok": False,
                "seconds": time.perf_counter() - t0,
                "error": "".join(traceback.format_exception_only(type(exc), exc)).strip(),
            }
            traceback.print_exc()
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    trained = summary["parts"].get("train_full", {}).get("model")
    t0 = time.perf_counter()
    try:
        result = physics_eval(args.device, trained, quick)
        summary["parts"]["physics_eval"] = {"ok": True, "seconds": time.perf_counter() - t0}
        (args.out / "physics_gpu.json").write_text(json.dumps(result, indent=1))
    except Exception as exc:
        summary["parts"]["physics_eval"] = {"ok": False, "error": repr(exc)}
        traceback.print_exc()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
