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


def _all_enabled(modality: str, post: bool = True) -> NoiseParams:
    """Default parameters with every layer (optionally without post-processing) switched on."""
    from napari_emdenoise.noise.post import POST_LAYERS

    skip = set() if post else {layer.name for layer in POST_LAYERS}
    p = NoiseParams.default(modality)
    for layer in layers_for(modality):
        if layer.name not in skip:
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
            variants = (
                ("pipeline (defaults)", default),
                ("pipeline (all detector/scan layers on)", _all_enabled(modality, post=False)),
                ("pipeline (all on, incl. post-processing)", params),
            )
            for label, p in variants:
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
        if r["size"] == 512 and r["modality"] == "stem" and r["layer"].startswith("pipeline")
    ]
    for label, ms in zip(("defaults", "all detector/scan layers", "all incl. post"), stem512):
        verdict = "meets" if ms < 50 else "MISSES"
        print(f"S(T)EM pipeline at 512², {label}: {ms:.1f} ms ({verdict} the 50 ms target)")
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
