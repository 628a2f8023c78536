"""Throughput of the 4D-STEM engine (restore_4dstem): diffraction patterns per second.

Rows: pattern size (64², 128²) × back end (torch, ONNX Runtime) × how the
blocks run: inline in one process with one thread, and on a dask
``LocalCluster`` of 1 … N single-threaded worker processes (scaling), plus a
CUDA row when a GPU is present. The inline rows are timed with and without
the neighbour-residual stage (``neighbour_residuals``, on by default), which
runs in the calling process after the blocks. The model is the bundled ``pix2pix-4dstem``
when it is installed, else an untrained ``build_model("pix2pix", "small")``
(same architecture, so the same speed). Each timing restores the whole scan
after one warm-up call (which also exports the ONNX graph and starts the
workers); the machine's load average is recorded before and after, since the
numbers only mean something on a quiet machine.

Usage::

    nice -n 10 python benchmarks/stem4d_speed.py --sizes 64 128 --workers 1 2

Prints a markdown table and writes ``benchmarks/results/stem4d_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

TARGET_64 = 200.0  # patterns/s at 64² on the 2-core CPU (issue 10)


def _model() -> tuple[Any, str]:
    from napari_emdenoise.models.registry import build_model, list_models, load_model

    if "pix2pix-4dstem" in list_models():
        return load_model("pix2pix-4dstem")[0], "pix2pix-4dstem (bundled)"
    import torch

    torch.manual_seed(0)
    return build_model("pix2pix", "small").eval(), 'build_model("pix2pix", "small") (untrained)'


def _time(run, repeats: int) -> float:
    run()  # warm-up: export, worker start, first allocation
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def _run_cuda(restore: Any, data: np.ndarray, model: Any) -> None:
    import torch

    restore(data, model=model, device="cuda")
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--scan", type=int, default=32, help="scan side (scan² patterns)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cluster", action="store_true", help="inline rows only")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "stem4d_speed.json"
    )
    args = parser.parse_args(argv)

    import torch

    from napari_emdenoise import restore_4dstem

    torch.set_num_threads(1)
    model, model_name = _model()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)

    def record(size: int, backend: str, how: str, seconds: float, n: int) -> None:
        rate = n / seconds
        rows.append(
            {
                "pattern": size,
                "backend": backend,
                "executor": how,
                "seconds": seconds,
                "patterns": n,
                "patterns_per_s": rate,
            }  # fmt: skip
        )
        print(f"  {size}² {backend:12s} {how:28s} {rate:8.1f} patterns/s", flush=True)

    for size in args.sizes:
        data = rng.poisson(2.0, (args.scan, args.scan, size, size)).astype(np.float32)
        n = args.scan * args.scan
        for backend in args.backends:
            inline = partial(restore_4dstem, data, model=model, device="cpu", backend=backend)
            record(size, backend, "inline, 1 thread", _time(inline, args.repeats), n)
            # the same without the neighbour-residual stage: what that stage costs
            alone = partial(inline, neighbour_residuals=False)
            how = "inline, 1 thread, no pooling"
            record(size, backend, how, _time(alone, args.repeats), n)
        if not args.no_cluster:
            from distributed import Client, LocalCluster

            for workers in args.workers:
                with (
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                    ) as cluster,
                    Client(cluster) as client,
                ):
                    for backend in args.backends:
                        on_cluster = partial(
                            restore_4dstem,
                            data,
                            model=model,
                            device="cpu",
                            backend=backend,
                            executor=client,
                            torch_threads=1,
                            max_block_bytes=4 * size * size * 64,
                        )
                        how = f"dask LocalCluster, {workers} proc"
                        record(size, backend, how, _time(on_cluster, args.repeats), n)
        if torch.cuda.is_available():
            gpu_model = model.to("cuda")
            big = np.concatenate([data] * 8)
            cuda = partial(_run_cuda, restore_4dstem, big, gpu_model)
            record(size, "torch", f"CUDA {torch.cuda.get_device_name()}", _time(cuda, 3), 8 * n)
            model = model.to("cpu")

    load_after = os.getloadavg()
    print()
    print(
        markdown_table(
            ["pattern", "backend", "executor", "patterns/s"],
            [
                [f"{r['pattern']}²", r["backend"], r["executor"], f"{r['patterns_per_s']:.0f}"]
                for r in rows
            ],
        )
    )
    print(f"\nmodel: {model_name}; load average before {load_before}, after {load_after}")
    best64 = max((r["patterns_per_s"] for r in rows if r["pattern"] == 64), default=None)
    if best64 is not None:
        verdict = "met" if best64 >= TARGET_64 else "NOT met"
        print(f"target >= {TARGET_64:.0f} patterns/s at 64² on the CPU: {verdict} ({best64:.0f})")
    path = write_json(
        args.out,
        {
            "model": model_name,
            "scan": args.scan,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "target_64_patterns_per_s": TARGET_64,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
