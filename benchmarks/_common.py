"""Helpers shared by the benchmark scripts: timing, FLOP counts, tables and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_flops_per_pixel(module: Any, device: Any = "cpu", side: int = 256) -> float:
    """Conv FLOPs (2·MACs of every Conv2d / ConvTranspose2d) of one forward pass per pixel.

    Counted with forward hooks on a ``side``² zero frame; inference is linear in
    pixels, so multiply by a frame's pixels for its useful work.
    """
    import torch

    total = [0]

    def hook(mod: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, torch.nn.ConvTranspose2d):
            total[0] += 2 * inputs[0].numel() * mod.out_channels // mod.groups * k
        else:
            total[0] += 2 * output.numel() * mod.in_channels // mod.groups * k

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 1, side, side, device=device))
    finally:
        for h in handles:
            h.remove()
    return total[0] / (side * side)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "processor": platform.processor(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine info) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path
