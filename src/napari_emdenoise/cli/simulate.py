"""``emdenoise simulate`` and ``emdenoise demo``: synthetic pairs, and a restored held-out image."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from ._common import (
    add_device_arg,
    atomic,
    check_disk_space,
    check_image_memory,
    check_output_dir,
    check_outputs,
    int_at_least,
    non_negative_int,
    positive_float,
    positive_int,
    write_plain_tif,
    write_text,
)

#: Peak memory of one simulated pair per pixel, measured with tracemalloc
#: (atomic-resolution images place and blur many more sites).
_SIMULATE_BYTES_PER_PIXEL = {"hr": 320, "lr": 128}


#: Smallest image side ``simulate`` generates, in pixels.
_MIN_SIMULATE_SIZE = 8


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..noise.pipeline import NoiseParams
    from ..simulate import simulate

    shape = (args.size, args.size) if args.height is None else (args.height, args.size)
    if min(shape) < _MIN_SIMULATE_SIZE:
        raise ValueError(
            f"--size and --height must be at least {_MIN_SIMULATE_SIZE} pixels, got {shape}"
        )
    check_image_memory(shape, _SIMULATE_BYTES_PER_PIXEL[args.kind], "a simulation")
    params = NoiseParams.load(args.params) if args.params else None
    if params is not None and params.modality != args.modality:
        raise ValueError(
            f"{args.params} holds {params.modality!r} settings but --modality is {args.modality!r}"
        )
    out = Path(args.out_dir)
    check_output_dir(out)
    check_disk_space(
        out, args.count * (2 * 4 * shape[0] * shape[1] + 65536), f"{args.count} pair(s)"
    )

    def stems() -> Iterable[str]:
        return ("" if args.count == 1 else f"{i:04d}_" for i in range(args.count))

    names = ("clean.tif", "distorted.tif", "params.json")
    if out.is_dir():
        check_outputs(
            (out / f"{stem}{name}" for stem in stems() for name in names),
            inputs=[args.params],
            overwrite=args.overwrite,
        )
    out.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems()):
        seed = args.seed + i
        sim = simulate(args.modality, args.kind, shape, seed, params, args.random_params)
        record = {
            "seed": seed,
            "modality": args.modality,
            "kind": args.kind,
            "shape": list(shape),
            "noise": sim.params.to_dict(),
            "specimen": sim.info,
        }
        write_plain_tif(out / f"{stem}clean.tif", sim.target)
        write_plain_tif(out / f"{stem}distorted.tif", sim.distorted)
        write_text(out / f"{stem}params.json", json.dumps(record, indent=2))
    print(f"wrote {args.count} pair(s) to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine.predictor import restore
    from ..metrics import psnr, ssim
    from ..models.registry import list_models
    from ..training.datasets import PairConfig, make_training_pair

    cards = list_models()
    if args.model not in cards:
        raise ValueError(f"no model {args.model!r}; available: {sorted(cards)}")
    card = cards[args.model]
    out_dir = Path(args.out)
    check_output_dir(out_dir)
    names = ("distorted.tif", "restored.tif", "clean.tif", "noise_params.json", "demo.png")
    if out_dir.is_dir():
        check_outputs((out_dir / name for name in names), overwrite=args.overwrite)
    check_image_memory((args.size, args.size), _SIMULATE_BYTES_PER_PIXEL[card.kind], "a demo image")
    cfg = PairConfig(modality=card.modality, kind=card.kind, patch_size=args.size)
    # the benchmarks' held-out stream: never seen in training or validation
    distorted, target, params, info = make_training_pair(
        cfg, args.index, "test", return_params=True, return_info=True
    )
    pixel_nm = info.get("pixel_size_A", 0.0) / 10.0  # atomic-resolution images only
    if args.dose is not None:  # same clean image and noise stream, chosen dose
        params = params.with_dose(args.dose)
        cfg = dataclasses.replace(cfg, noise=params)
        distorted, target = make_training_pair(cfg, args.index, "test")
    out_dir.mkdir(parents=True, exist_ok=True)
    restored = restore(distorted, model=args.model, device=args.device)
    for name, img in (("distorted", distorted), ("restored", restored), ("clean", target)):
        write_plain_tif(out_dir / f"{name}.tif", img.astype(np.float32), pixel_nm)
    write_text(out_dir / "noise_params.json", json.dumps(params.to_dict(), indent=2))
    atomic(out_dir / "demo.png", lambda tmp: _save_triptych(tmp, distorted, restored, target))
    dose = next((p.dose for p in params.layers.values() if hasattr(p, "dose")), float("nan"))
    print(
        f"{card.kind.upper()}-{card.modality.upper()} test image #{args.index} "
        f"({args.size}x{args.size}, dose {dose:.3g} e-/pixel), model {args.model}:"
    )
    print(
        f"  distorted: PSNR {psnr(distorted, target):6.2f} dB  SSIM {ssim(distorted, target):.3f}"
    )
    print(f"  restored : PSNR {psnr(restored, target):6.2f} dB  SSIM {ssim(restored, target):.3f}")
    print(f"wrote distorted.tif, restored.tif, clean.tif, demo.png to {out_dir}")
    return 0


def _save_triptych(path: Path, *images) -> None:
    """Side-by-side 8-bit PNG, each panel scaled to its own 0.5–99.5 % range."""
    import numpy as np
    from PIL import Image

    panels = []
    for im in images:
        lo, hi = np.percentile(im, [0.5, 99.5])
        panels.append(np.clip((im - lo) / max(hi - lo, 1e-6), 0, 1))
    gap = np.ones((images[0].shape[0], 8))
    row = np.concatenate(
        [p for pair in zip(panels, [gap] * len(panels)) for p in pair][:-1], axis=1
    )
    Image.fromarray((255 * row).astype(np.uint8)).save(path, format="PNG")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``emdenoise``."""
    sim = sub.add_parser(
        "simulate",
        help="generate clean/distorted synthetic pairs with the EM distortion model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument(
        "--modality", choices=["stem", "tem", "sem"], default="stem", help="imaging modality"
    )
    sim.add_argument(
        "--kind", choices=["hr", "lr"], default="hr", help="high (atomic) or low resolution"
    )
    sim.add_argument("--size", type=positive_int, default=512, help="width (and height) in pixels")
    sim.add_argument(
        "--height", type=positive_int, default=None, help="height in pixels (None: --size)"
    )
    sim.add_argument("--seed", type=non_negative_int, default=0, help="seed of the first pair")
    sim.add_argument(
        "--count", type=positive_int, default=1, help="number of pairs (seeds seed, seed+1, …)"
    )
    sim.add_argument("--params", type=Path, default=None, help="noise settings JSON (playground)")
    sim.add_argument(
        "--random-params", action="store_true", help="draw the noise parameters as the paper does"
    )
    sim.add_argument("--out-dir", type=Path, required=True, help="folder for the TIFF files")
    sim.add_argument("--overwrite", action="store_true", help="replace files already in --out-dir")
    sim.set_defaults(func=_cmd_simulate)
    dm = sub.add_parser(
        "demo",
        help="restore a held-out synthetic image with a bundled model and report PSNR/SSIM",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dm.add_argument("--model", default="hrstem", help="bundled or user model name")
    dm.add_argument(
        "--size", type=int_at_least(16), default=512, help="image width and height in pixels"
    )
    dm.add_argument("--index", type=non_negative_int, default=0, help="which held-out test image")
    dm.add_argument(
        "--dose",
        type=positive_float,
        default=None,
        help="electron dose in e-/pixel (None: drawn as in training)",
    )
    add_device_arg(dm)
    dm.add_argument(
        "--out",
        type=Path,
        default=Path("demo_out"),
        help="folder for distorted/restored/clean.tif, noise_params.json and demo.png",
    )
    dm.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    dm.set_defaults(func=_cmd_demo)
