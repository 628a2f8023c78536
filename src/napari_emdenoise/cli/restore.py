"""``emdenoise restore`` and ``emdenoise export-onnx``: micrographs and stacks through a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import (
    add_dataset_arg,
    add_device_arg,
    add_fast_scan_axis_arg,
    check_image_memory,
    check_outputs,
    model_files,
    non_negative_int,
    positive_int,
    progress_printer,
    read_dataset,
)

#: Working memory of ``restore`` per input pixel: float32 input copy, output,
#: residual, plus the tiles in flight.
_RESTORE_BYTES_PER_PIXEL = 16


def _cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine.deviations import WORKING_BYTES_PER_PIXEL as DEVIATION_BYTES
    from ..engine.device import resolve_device
    from ..engine.lattice import WORKING_BYTES_PER_PIXEL as LATTICE_BYTES
    from ..engine.predictor import _check_tiling_args, restore
    from ..engine.scan_axis import scan_rows
    from ..engine.wiener import WORKING_BYTES_PER_PIXEL as WIENER_BYTES
    from ..io.writers import write_tif
    from ..models.registry import load_model

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    res_path = dst.with_name(dst.stem + "_residual" + dst.suffix) if args.residual else None
    outputs = [dst] if res_path is None else [dst, res_path]
    check_outputs(outputs, inputs=[src], overwrite=args.overwrite, suffixes=(".tif", ".tiff"))
    _check_tiling_args(args.tile_size, None, None)
    device = resolve_device(args.device)
    module, _card = load_model(args.model, device=device)

    data, meta = read_dataset(src, args.dataset)
    if meta.get("rgb"):
        raise ValueError(
            f"dataset {args.dataset} of {src} is a colour (RGB) image; restore needs greyscale "
            "intensities as recorded by the detector"
        )
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(
            f"dataset {args.dataset} of {src} has shape {data.shape}; restore needs an image "
            "(Y, X) or a stack of frames (T, Y, X)"
        )
    frames = 1 if data.ndim == 2 else data.shape[0]
    # the frames and their results, plus one frame's refinement at a time (the Wiener
    # filter, then the lattice pass, which needs more)
    working = 0 if args.no_refine else (WIENER_BYTES if args.no_lattice else LATTICE_BYTES)
    if args.keep_defects:
        working = max(working, DEVIATION_BYTES)
    per_pixel = _RESTORE_BYTES_PER_PIXEL + working / frames
    check_image_memory((frames * data.shape[-2], data.shape[-1]), per_pixel, "restoring data")
    options = dict(
        tile_size=args.tile_size,
        ensemble=args.ensemble,
        refine=not args.no_refine,
        lattice=not args.no_lattice,
        keep_defects=args.keep_defects,
    )
    band_weights: list[tuple[float, ...]] = []
    if args.adapt_steps is not None:
        # The adaptation and its risk estimate treat the rows as the scan lines too:
        # hand them the transposed frames when the fast-scan axis is y.
        view = scan_rows(data, args.fast_scan_axis)
        out = scan_rows(_quality_mode(args, view, module, device, options), args.fast_scan_axis)
    else:
        out = restore(
            data,
            model=module,
            device=device,
            progress=progress_printer("tiles"),
            safeguard=args.safeguard,
            safeguard_report=lambda _i, r: band_weights.append(r.band_weights),
            fast_scan_axis=args.fast_scan_axis,
            **options,
        )
    meta = {
        **meta,
        "emdenoise_model": args.model,
        "emdenoise_wiener_refinement": not args.no_refine,
        "emdenoise_lattice_pass": not (args.no_refine or args.no_lattice),
        "emdenoise_keep_defects": bool(args.keep_defects),
        "source": str(src),
    }
    if args.ensemble > 1:
        meta["emdenoise_ensemble"] = args.ensemble
    if args.fast_scan_axis != "x":
        meta["emdenoise_fast_scan_axis"] = args.fast_scan_axis
    residual = None if res_path is None else data.astype(np.float32) - out
    write_tif(dst, out, meta, overwrite=args.overwrite)
    print(f"restored {src} ({'x'.join(map(str, data.shape))}) with {args.model} -> {dst}")
    if band_weights:
        from ..engine.safeguard import describe_band_weights

        print(describe_band_weights(band_weights))
    if res_path is not None:
        write_tif(res_path, residual, meta, overwrite=args.overwrite)
        print(f"residual (input - restored) -> {res_path}")
    return 0


def _quality_mode(args: argparse.Namespace, data, module, device, options: dict):
    """``--adapt-steps``: adapt ``args.model`` to the input (not saved), then restore.

    With ``--adapt-choice risk`` the output is whichever of the bundled model,
    the adapted network and the adapted network without the Wiener step has
    the lowest unbiased risk estimate (:mod:`napari_emdenoise.engine.risk`).
    """
    import numpy as np

    from ..engine.predictor import restore
    from ..training.adapt import AdaptConfig, adapt
    from ..training.adapt_select import ESTIMATE_PIXELS, restore_with_adapted

    print(f"adapting {args.model} to the input for {args.adapt_steps} steps …", flush=True)
    # The step count bounds the run; the hour is only a backstop.
    result = adapt(
        args.model,
        data,
        minutes=60.0,
        steps=args.adapt_steps,
        config=AdaptConfig(device=str(device), seed=args.adapt_seed),
    )
    print(
        f"adapted in {result.seconds:.0f} s ({result.mask.describe()}); held-out loss "
        f"{result.initial_held_out:.5g} -> {result.best_held_out:.5g} (step {result.best_step} "
        f"of {result.steps}; step 0 is the model as it was)"
    )
    for note in result.notes:
        print(f"  note: {note}")
    if args.adapt_choice == "adapted" or result.noise_fit is None:
        if args.adapt_choice == "risk":
            print("  no noise model was fitted, so the adapted network is used unchecked")
        return restore(
            data,
            model=result.model,
            device=device,
            progress=progress_printer("tiles"),
            safeguard=args.safeguard,
            **options,
        )
    choice = restore_with_adapted(
        data,
        result,
        parent=module,
        rng=np.random.default_rng(args.adapt_seed),
        device=device,
        progress=lambda name: print(f"  restoring and checking: {name} …", flush=True),
        max_pixels=ESTIMATE_PIXELS,
        safeguard=args.safeguard,
        **options,
    )
    where = "the noisy input" if choice.region is None else "a central crop of the input"
    print(f"{choice.describe()} (unbiased risk estimate from {where})")
    return choice.output


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..models.onnx_export import OnnxExportError, export_onnx, onnx_card_path

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out.name!r}")
    if out.parent.is_dir():  # a missing folder is created by export_onnx
        check_outputs(
            [out, onnx_card_path(out)], inputs=model_files(args.model), overwrite=args.overwrite
        )
    try:
        path = export_onnx(
            args.model,
            args.out,
            opset=args.opset,
            check=not args.no_check,
            overwrite=args.overwrite,
        )
    except (ImportError, OnnxExportError) as exc:
        print(f"emdenoise export-onnx: error: {exc}", file=sys.stderr)
        return 1
    card = onnx_card_path(path)
    info = json.loads(card.read_text(encoding="utf-8"))["onnx"]
    diff = info["max_abs_diff_vs_torch"]
    compared = (
        "not run against torch (onnxruntime missing or --no-check)"
        if diff is None
        else f"max |onnx - torch| = {diff:.2g} on inputs {info['check_shapes']}"
    )
    print(f"wrote {path} (opset {info['opset']}) and its card {card}; {compared}")
    print(f"graph: {info['contract']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``emdenoise``."""
    rs = sub.add_parser(
        "restore",
        help="restore an EM image or frame stack with a trained model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rs.add_argument("input", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file")
    rs.add_argument("-o", "--output", type=Path, required=True, help="output .tif")
    rs.add_argument("--model", default="hrstem", help="bundled model name or .safetensors path")
    add_device_arg(rs)
    rs.add_argument(
        "--tile-size", type=positive_int, default=None, help="tile size in pixels (>= 64)"
    )
    add_dataset_arg(rs)
    rs.add_argument("--residual", action="store_true", help="also write input - restored")
    rs.add_argument(
        "--safeguard",
        action="store_true",
        help="keep, per frequency band, the share of the network's change that lowers the "
        "estimated error (SURE); for counting-noise-limited images: it assumes pixel-independent "
        "noise and gives back corrections of scan distortions",
    )
    add_fast_scan_axis_arg(
        rs,
        "the image axis the beam was scanned fast along: x (the rows, as the S(T)EM/SEM "
        "models were trained) or y (the columns: an image scanned rotated by 90 degrees or "
        "stored transposed); a warning says when the image's noise points to the other axis",
    )
    rs.add_argument(
        "--ensemble",
        type=int,
        choices=(1, 2, 8),
        default=1,
        help="average the restorations of this many flips/rotations of the image (time × N): 2 "
        "adds the upside-down image (any model); 8 all flips and 90° rotations (TEM/SEM, or "
        "S(T)EM limited by counting noise: it turns scan distortions off the fast-scan axis)",
    )
    rs.add_argument(
        "--no-refine",
        action="store_true",
        help="the network's output alone, without the Wiener refinement that gives back the "
        "details of the raw image the network attenuated more than its noise requires (and "
        "without the lattice pass)",
    )
    rs.add_argument(
        "--no-lattice",
        action="store_true",
        help="skip the lattice pass, which adds back the lattice fringes (Bragg peaks standing "
        "out of the noise) that the restoration removed from the raw image",
    )
    rs.add_argument(
        "--keep-defects",
        action="store_true",
        help="last, put the raw image back wherever the restoration differs from it by more "
        "than 3 noise deviations at the scale of an atom column (vacancies, dopant columns "
        "averaged away); it also puts back scan distortions the network corrected",
    )
    rs.add_argument(
        "--adapt-steps",
        type=positive_int,
        default=None,
        help="quality mode: first fine-tune the model on this input (self-supervised, as "
        "`emdenoise adapt` does; about 0.35 s per step on one CPU core whatever the image size) "
        "and restore with the adapted network, which is not saved (`emdenoise adapt` keeps it); "
        "see --adapt-choice. 200 steps: about 70 s on one core, whatever the image size; "
        "50 steps (about 20 s) gave 0.25-0.5 dB less on multislice test images",
    )
    rs.add_argument(
        "--adapt-choice",
        choices=("risk", "adapted"),
        default="risk",
        help="with --adapt-steps: 'risk' (default) keeps whichever of the bundled model, the "
        "adapted network and the adapted network without the Wiener step has the lowest "
        "error estimated from the noisy input (Stein's unbiased risk estimate with the fitted "
        "noise, judged on a central 1024x1024 crop of larger images; costs about 5 more "
        "restorations, of the crop where there is one); 'adapted' always uses the adapted network",
    )
    rs.add_argument(
        "--adapt-seed", type=non_negative_int, default=0, help="seed of the adaptation's draws"
    )
    rs.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (never the input)"
    )
    rs.set_defaults(func=_cmd_restore)
    ox = sub.add_parser(
        "export-onnx",
        help="export a model to ONNX (dynamic batch/height/width) plus its card",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ox.add_argument("model", help="model name (bundled or user) or .safetensors path")
    ox.add_argument("--out", type=Path, required=True, help="output .onnx file")
    ox.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 18 (None: torch's)")
    ox.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ox.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ox.set_defaults(func=_cmd_export_onnx)
