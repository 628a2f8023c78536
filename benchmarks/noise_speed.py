"""Speed of every distortion layer and of the whole TEM / S(T)EM pipelines.

Usage::

    python benchmarks/noise_speed.py [--sizes 256 512 1024 2048] [--repeats 7] \
        [--out bench_out/noise_speed.json]

Prints a markdown table (median milliseconds per call) and writes JSON.
Target (issue 2): full S(T)EM pipeline at 512² < 50 ms on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median_seconds, write_json  # noqa: E402

from napari_emdenoise.noise.pipeline import NoiseParams, distort, layers_for  # noqa: E402
from napari_emdenoise.synth import generate_clean  # noqa: E402


def _all_enabled(modality: str) -> NoiseParams:
    """Default parameters with every detector/scan layer switched on (worst case)."""
    p = NoiseParams.default(modality)
    for layer in layers_for(modality):
        p = p.replace_layer(layer.name, p[layer.name].replace(enabled=True))
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench_out/noise_speed.json"))
    args = ap.parse_args(argv)

    results: list[dict] = []
    for size in args.sizes:
        clean = generate_clean("hr", (size, size), rng=np.random.default_rng(0))
        repeats = args.repeats if size <= 1024 else max(3, args.repeats // 2)
        for modality in ("tem", "stem"):
            params = _all_enabled(modality)
            for layer in layers_for(modality):
                lp = params[layer.name]
                inp = np.stack([clean, clean]) if layer.applies_to_target else clean
                rng = np.random.default_rng(1)
                t = median_seconds(lambda f=layer.func, a=inp, q=lp, g=rng: f(a, q, g), repeats)
                results.append(
                    {"size": size, "modality": modality, "layer": layer.name, "ms": 1000 * t}
                )
            default = NoiseParams.default(modality)
            for label, p in (("pipeline (defaults)", default), ("pipeline (all on)", params)):
                rng = np.random.default_rng(2)
                t = median_seconds(
                    lambda c=clean, m=modality, q=p, g=rng: distort(c, m, q, g), repeats
                )
                results.append({"size": size, "modality": modality, "layer": label, "ms": 1000 * t})

    sizes = args.sizes
    rows = []
    keys = []
    for r in results:
        k = (r["modality"], r["layer"])
        if k not in keys:
            keys.append(k)
    for modality, layer in keys:
        cells = []
        for s in sizes:
            ms = next(
                r["ms"]
                for r in results
                if r["size"] == s and r["modality"] == modality and r["layer"] == layer
            )
            cells.append(f"{ms:.2f}")
        rows.append([modality, layer, *cells])
    print(markdown_table(["modality", "layer", *[f"{s}² [ms]" for s in sizes]], rows))
    stem512 = [
        r["ms"]
        for r in results
        if r["size"] == 512 and r["modality"] == "stem" and r["layer"] == "pipeline (all on)"
    ]
    if stem512:
        verdict = "meets" if stem512[0] < 50 else "MISSES"
        print(
            f"\nS(T)EM pipeline, all layers on, 512²: {stem512[0]:.1f} ms "
            f"({verdict} the 50 ms target)"
        )
    path = write_json(
        args.out,
        {
            "benchmark": "noise_speed",
            "unit": "ms (median)",
            "repeats": args.repeats,
            "results": results,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
