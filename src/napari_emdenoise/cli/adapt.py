"""``emdenoise adapt``: fine-tune a bundled model on the user's own micrograph."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    add_dataset_arg,
    add_device_arg,
    add_fast_scan_axis_arg,
    check_output_dir,
    check_outputs,
    float_in,
    model_files,
    non_negative_int,
    positive_float,
    positive_int,
    read_dataset,
)


def _cmd_adapt(args: argparse.Namespace) -> int:
    """``emdenoise adapt``: self-supervised fine-tuning of a model on one micrograph."""
    import numpy as np

    from ..engine.scan_axis import scan_rows
    from ..models.registry import (
        bundled_weights_dir,
        check_model_name,
        list_models,
        user_models_dir,
    )
    from ..training.adapt import AdaptConfig, adapt

    check_model_name(args.out)
    if (bundled_weights_dir() / f"{args.out}.json").exists():
        raise ValueError(f"{args.out!r} is a bundled model's name; choose another --out name")
    src = Path(args.image)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    folder = Path(args.dir) if args.dir is not None else user_models_dir()
    check_output_dir(folder)
    if folder.is_dir():
        check_outputs(
            [folder / f"{args.out}.safetensors", folder / f"{args.out}.json"],
            inputs=[src, *model_files(args.model)],
            overwrite=args.overwrite,
        )
    existing = list_models().get(args.out)
    if args.dir is None and existing is not None and not args.overwrite:
        raise FileExistsError(f"a model named {args.out!r} exists; pass --overwrite to replace it")
    data, meta = read_dataset(src, args.dataset)
    if meta.get("rgb"):
        raise ValueError(f"dataset {args.dataset} of {src} is a colour (RGB) image")
    data = scan_rows(np.asarray(data), args.fast_scan_axis)  # scan lines along the rows
    cfg = AdaptConfig(threads=args.threads, device=args.device, seed=args.seed)

    def progress(event) -> None:
        if event.held_out is not None:
            print(
                f"step {event.step}: held-out loss {event.held_out:.5g} "
                f"(best {event.best_held_out:.5g}), {event.elapsed:.0f} s",
                flush=True,
            )

    result = adapt(
        args.model,
        data,
        minutes=args.minutes,
        mask=args.mask,
        anchor=args.anchor,
        progress=progress,
        steps=args.steps,
        config=cfg,
    )
    path = result.save(args.out, folder)
    print(
        f"adapted {result.parent} to {src} in {result.seconds / 60:.2f} min, {result.steps} "
        f"steps ({result.stopped}); {result.mask.describe()}; held-out loss "
        f"{result.initial_held_out:.5g} -> {result.best_held_out:.5g} (step {result.best_step})"
    )
    for note in result.notes:
        print(f"  note: {note}")
    axis = " --fast-scan-axis y" if args.fast_scan_axis == "y" else ""
    print(
        f"saved {path}; restore with: emdenoise restore IMAGE -o OUT.tif --model {args.out}{axis}"
    )
    if result.noise_fit is not None:
        _compare_on_image(data, result, args)
    return 0


def _compare_on_image(data, result, args: argparse.Namespace) -> None:
    """Print the restorations' errors estimated from the image (parent vs adapted)."""
    import numpy as np

    from ..training.adapt_select import ESTIMATE_PIXELS, restore_with_adapted

    choice = restore_with_adapted(
        data,
        result,
        parent=args.model,
        rng=np.random.default_rng(args.seed),
        device=args.device,
        candidates=("bundled", "adapted"),
        max_pixels=ESTIMATE_PIXELS,
    )
    labels = {"bundled": str(result.parent), "adapted": args.out}
    better = labels[choice.name]
    if choice.name == "bundled":
        better += " (the model you started from)"
    print(f"on this image, {choice.describe(labels)}: {better} is likely the closer to the truth")


def add_parser(sub) -> None:
    ad = sub.add_parser(
        "adapt",
        help="fine-tune a model on your own noisy micrograph (self-supervised, no clean image)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ad.add_argument("image", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file (image or stack)")
    ad.add_argument("--model", default="hrstem", help="model to start from (name or .safetensors)")
    ad.add_argument(
        "--minutes", type=positive_float, default=2.0, help="wall-time budget in minutes"
    )
    ad.add_argument(
        "--anchor",
        type=float_in(0.0, strict=False, name="weight"),
        default=0.5,
        help="weight of synthetic pairs with the fitted noise, in [0, 1)",
    )
    ad.add_argument(
        "--mask",
        choices=["auto", "pixel", "rows", "columns"],
        default="auto",
        help="blind spot: auto (line along the fast-scan axis if the noise is correlated)",
    )
    ad.add_argument("--steps", type=positive_int, default=None, help="also stop after N steps")
    ad.add_argument(
        "--out", required=True, help="name of the adapted model (saved as a user model)"
    )
    ad.add_argument(
        "--dir", type=Path, default=None, help="save here instead of the user-model folder"
    )
    add_dataset_arg(ad)
    ad.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_device_arg(ad)
    ad.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random choices")
    add_fast_scan_axis_arg(
        ad,
        "the image's fast-scan axis: y adapts to the transposed frames (scan lines along "
        "the columns); restore with --fast-scan-axis y afterwards",
    )
    ad.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    ad.set_defaults(func=_cmd_adapt)
