"""Command line: ``emdenoise simulate | restore | demo | export-onnx | fit-noise | train | adapt``.

Every sub-command is a thin wrapper over the headless engine; heavy imports
happen inside the sub-command that needs them.

What happens to the user's files: every output path is checked before any
work starts (extension, folder, existing files, and that it is not one of the
command's input files, compared by file identity so that hard links and
symlinks count); nothing is replaced without ``--overwrite``, and an input
never, even with it; every file is written to a temporary file beside its
target and moved into place only when complete. Sizes that cannot fit in
memory are refused up front.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = ["main"]

#: Peak memory of one simulated pair per pixel, measured with tracemalloc
#: (atomic-resolution images place and blur many more sites).
_SIMULATE_BYTES_PER_PIXEL = {"hr": 320, "lr": 128}
#: Working memory of ``restore`` per input pixel: float32 input copy, output,
#: residual, plus the tiles in flight.
_RESTORE_BYTES_PER_PIXEL = 16
#: Smallest image side ``simulate`` generates, in pixels.
_MIN_SIMULATE_SIZE = 8


# --------------------------------------------------------------------------- argument types


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _float_in(low: float, *, strict: bool, name: str = "number") -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _finite_float(text)
        if value < low or (strict and value == low):
            relation = "greater than" if strict else "at least"
            raise argparse.ArgumentTypeError(f"must be {relation} {low:g}, got {value:g}")
        return value

    parse.__name__ = name
    return parse


def _probability(text: str) -> float:
    """A finite number in [0, 1] (argparse type of the ``train`` pair fractions)."""
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def _offset_value(text: str) -> float | str:
    """``auto`` or a finite number (argparse type of ``fit-noise --offset``)."""
    return "auto" if text.strip().lower() == "auto" else _finite_float(text)


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
_positive_float = _float_in(0.0, strict=True)
_non_negative_float = _float_in(0.0, strict=False)


# --------------------------------------------------------------------------- output checks


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file on disk (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks; None if it does not exist."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _check_outputs(
    outputs: Iterable[Path],
    *,
    inputs: Iterable[Path | None] = (),
    overwrite: bool,
    suffixes: tuple[str, ...] | None = None,
) -> None:
    """Check every file a command will write, before it does any work.

    Raises
    ------
    ValueError
        For a wrong extension, an output that is one of the inputs (also via
        a hard link or symlink; refused even with ``--overwrite``), or two
        outputs that are the same file.
    FileExistsError
        For an existing output without ``--overwrite``.
    FileNotFoundError, NotADirectoryError, IsADirectoryError
        For a missing output folder, or a folder where a file is expected.
    """
    given = [Path(p) for p in inputs if p is not None]
    seen_paths: set[Path] = set()
    seen_files: set[tuple[int, int]] = set()
    for out in outputs:
        if suffixes is not None and out.suffix.lower() not in suffixes:
            raise ValueError(f"{out}: the output must end in {' or '.join(suffixes)}")
        parent = out.parent
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"cannot write {out}: {parent} is not a folder")
        if not parent.exists():
            raise FileNotFoundError(f"cannot write {out}: the folder {parent} does not exist")
        if out.is_dir():
            raise IsADirectoryError(f"cannot write {out}: it is a folder")
        for src in given:
            if _same_file(out, src) or out.absolute() == src.absolute():
                raise ValueError(
                    f"the output {out} must not overwrite the input file {src} "
                    "(inputs are never modified, not even with --overwrite)"
                )
        identity = _file_identity(out)
        if out.absolute() in seen_paths or (identity is not None and identity in seen_files):
            raise ValueError(f"two outputs would be the same file: {out}")
        if os.path.lexists(out) and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        seen_paths.add(out.absolute())
        if identity is not None:
            seen_files.add(identity)


def _check_output_dir(folder: Path) -> None:
    """An output folder must be a folder (it is created if missing)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in its folder, moved into place on success."""
    from .io.writers import _replace_atomically

    _replace_atomically(Path(path), write)


def _write_plain_tif(path: Path, image: object, pixel_nm: float = 0.0) -> None:
    """TIFF, atomically; with ``pixel_nm`` > 0 calibrated with ImageJ tags (read by Fiji)."""
    import tifffile

    if pixel_nm > 0:
        kwargs = {
            "imagej": True,
            "resolution": (1.0 / pixel_nm, 1.0 / pixel_nm),
            "metadata": {"unit": "nm"},
        }
    else:
        kwargs = {}
    _atomic(path, lambda tmp: tifffile.imwrite(tmp, image, **kwargs))


def _write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _check_image_memory(shape: tuple[int, int], bytes_per_pixel: float, what: str) -> None:
    """Refuse an image size that would not fit in memory; say what would."""
    from ._validation import available_memory, check_fits_in_memory

    height, width = shape
    available = available_memory()
    hint = ""
    if available is not None:
        side = int(math.sqrt(0.8 * available / bytes_per_pixel))
        hint = f"at most about {side}×{side} pixels fit now"
    check_fits_in_memory(
        height * width * bytes_per_pixel, f"{what} of {height}×{width} pixels", hint=hint
    )


# --------------------------------------------------------------------------- shared by commands


def _read_dataset(src: Path, index: int, *, lazy: bool = False) -> tuple[object, dict]:
    """``(data, metadata)`` of dataset ``index`` of ``src`` (``--dataset``), range-checked."""
    from .io.readers import read_em

    datasets = read_em(src, lazy=True) if lazy else read_em(src)
    if index >= len(datasets):
        raise ValueError(
            f"{src} holds {len(datasets)} dataset(s); --dataset {index} is out of range"
        )
    return datasets[index]


def _progress_printer(unit: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` printing to stderr each time another 10 % of ``unit`` is done."""
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct // 10 != last[0] // 10:
            last[0] = pct
            print(f"  {pct:3d} % ({done}/{total} {unit})", file=sys.stderr, flush=True)

    return progress


def _add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (None: the fastest found)")


def _add_dataset_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=_non_negative_int, default=0, help="dataset index in multi-dataset files"
    )


# --------------------------------------------------------------------------- commands


def _check_disk_space(folder: Path, nbytes: float, what: str) -> None:
    """Refuse to start writing ``nbytes`` into ``folder`` (or its nearest existing parent)."""
    import shutil

    from ._validation import format_bytes

    existing = folder.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if nbytes > free:
        raise OSError(
            f"{what} needs about {format_bytes(nbytes)} of disk space, but only "
            f"{format_bytes(free)} are free in {existing}"
        )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .noise.pipeline import NoiseParams
    from .simulate import simulate

    shape = (args.size, args.size) if args.height is None else (args.height, args.size)
    if min(shape) < _MIN_SIMULATE_SIZE:
        raise ValueError(
            f"--size and --height must be at least {_MIN_SIMULATE_SIZE} pixels, got {shape}"
        )
    _check_image_memory(shape, _SIMULATE_BYTES_PER_PIXEL[args.kind], "a simulation")
    params = NoiseParams.load(args.params) if args.params else None
    if params is not None and params.modality != args.modality:
        raise ValueError(
            f"{args.params} holds {params.modality!r} settings but --modality is {args.modality!r}"
        )
    out = Path(args.out_dir)
    _check_output_dir(out)
    _check_disk_space(
        out, args.count * (2 * 4 * shape[0] * shape[1] + 65536), f"{args.count} pair(s)"
    )

    def stems() -> Iterable[str]:
        return ("" if args.count == 1 else f"{i:04d}_" for i in range(args.count))

    names = ("clean.tif", "distorted.tif", "params.json")
    if out.is_dir():
        _check_outputs(
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
        _write_plain_tif(out / f"{stem}clean.tif", sim.target)
        _write_plain_tif(out / f"{stem}distorted.tif", sim.distorted)
        _write_text(out / f"{stem}params.json", json.dumps(record, indent=2))
    print(f"wrote {args.count} pair(s) to {out}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.deviations import WORKING_BYTES_PER_PIXEL as DEVIATION_BYTES
    from .engine.device import resolve_device
    from .engine.lattice import WORKING_BYTES_PER_PIXEL as LATTICE_BYTES
    from .engine.predictor import _check_tiling_args, restore
    from .engine.wiener import WORKING_BYTES_PER_PIXEL as WIENER_BYTES
    from .io.writers import write_tif
    from .models.registry import load_model

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    res_path = dst.with_name(dst.stem + "_residual" + dst.suffix) if args.residual else None
    outputs = [dst] if res_path is None else [dst, res_path]
    _check_outputs(outputs, inputs=[src], overwrite=args.overwrite, suffixes=(".tif", ".tiff"))
    _check_tiling_args(args.tile_size, None, None)
    device = resolve_device(args.device)
    module, _card = load_model(args.model, device=device)

    data, meta = _read_dataset(src, args.dataset)
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
    _check_image_memory((frames * data.shape[-2], data.shape[-1]), per_pixel, "restoring data")
    progress = _progress_printer("tiles")
    band_weights: list[tuple[float, ...]] = []
    out = restore(
        data,
        model=module,
        device=device,
        tile_size=args.tile_size,
        progress=progress,
        safeguard=args.safeguard,
        safeguard_report=lambda _i, r: band_weights.append(r.band_weights),
        ensemble=args.ensemble,
        refine=not args.no_refine,
        lattice=not args.no_lattice,
        keep_defects=args.keep_defects,
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
    residual = None if res_path is None else data.astype(np.float32) - out
    write_tif(dst, out, meta, overwrite=args.overwrite)
    print(f"restored {src} ({'x'.join(map(str, data.shape))}) with {args.model} -> {dst}")
    if band_weights:
        from .engine.safeguard import describe_band_weights

        print(describe_band_weights(band_weights))
    if res_path is not None:
        write_tif(res_path, residual, meta, overwrite=args.overwrite)
        print(f"residual (input - restored) -> {res_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.predictor import restore
    from .metrics import psnr, ssim
    from .models.registry import list_models
    from .training.datasets import PairConfig, make_training_pair

    cards = list_models()
    if args.model not in cards:
        raise ValueError(f"no model {args.model!r}; available: {sorted(cards)}")
    card = cards[args.model]
    out_dir = Path(args.out)
    _check_output_dir(out_dir)
    names = ("distorted.tif", "restored.tif", "clean.tif", "noise_params.json", "demo.png")
    if out_dir.is_dir():
        _check_outputs((out_dir / name for name in names), overwrite=args.overwrite)
    _check_image_memory(
        (args.size, args.size), _SIMULATE_BYTES_PER_PIXEL[card.kind], "a demo image"
    )
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
        _write_plain_tif(out_dir / f"{name}.tif", img.astype(np.float32), pixel_nm)
    _write_text(out_dir / "noise_params.json", json.dumps(params.to_dict(), indent=2))
    _atomic(out_dir / "demo.png", lambda tmp: _save_triptych(tmp, distorted, restored, target))
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


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .models.onnx_export import OnnxExportError, export_onnx, onnx_card_path

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {out.name!r}")
    if out.parent.is_dir():  # a missing folder is created by export_onnx
        _check_outputs(
            [out, onnx_card_path(out)], inputs=_model_files(args.model), overwrite=args.overwrite
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


def _model_files(model: str) -> list[Path]:
    """The weights and card of a model name or ``.safetensors`` path (those that exist)."""
    from .models.registry import list_models

    cards = list_models()
    weights = cards[model].weights_path if model in cards else Path(model)
    if weights is None:
        return []
    return [p for p in (Path(weights), Path(weights).with_suffix(".json")) if p.exists()]


def _json_object(text: str, option: str) -> dict:
    """Parse a JSON object given on the command line, with a clear message if it is not one."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{option} must be a JSON object such as '{{\"l1\": 30}}': {exc}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from .noise.pipeline import NoiseParams
    from .training.datasets import PairConfig
    from .training.trainer import (
        CheckpointEvent,
        DoneEvent,
        StepEvent,
        TrainConfig,
        Trainer,
        ValidationEvent,
    )

    if args.init_partial and not args.init_from:
        raise ValueError(
            "--init-partial needs --init-from: it says which model's tensors to copy "
            "into the network built from --arch/--config"
        )
    modality, kind = _MODEL_TASKS.get(args.model, (args.modality, args.kind))
    noise = NoiseParams.load(args.noise) if args.noise else None
    if noise is not None:
        modality = noise.modality
    weights = _json_object(args.loss_weights, "--loss-weights") if args.loss_weights else {}
    if args.adversarial is not None:
        weights["adversarial"] = args.adversarial
    model_config = (
        _json_object(args.config, "--config")
        if args.config.lstrip().startswith("{")
        else args.config
    )
    diffraction = _json_object(args.diffraction, "--diffraction") if args.diffraction else None
    cfg = TrainConfig(
        name=args.model,
        arch=args.arch,
        model_config=model_config,
        pairs=PairConfig(
            modality=modality,
            kind=kind,
            patch_size=args.patch,
            noise=noise,
            seed=args.seed,
            clean_pool=args.clean_pool,
            plain_fraction=args.plain_fraction,
            high_dose_fraction=args.high_dose_fraction,
            fine_lattice_fraction=args.fine_lattice_fraction,
            pulse_spread_fraction=args.pulse_spread_fraction,
            diffraction=diffraction,
        ),
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        loss_weights=weights,
        disc_channels=args.disc_channels,
        val_size=args.val_size,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.workers,
        threads=args.threads,
        device=args.device,
        init_from=args.init_from,
        init_partial=args.init_partial,
        out_dir=str(args.out),
    )
    from .models.registry import check_model_name
    from .training.checkpoints import CHECKPOINT_NAME, check_resumable

    check_model_name(args.model)  # it names the exported files: refuse it now, not at the end
    out_dir = Path(args.out)
    _check_output_dir(out_dir)
    inputs = [args.noise, *(_model_files(args.init_from) if args.init_from else [])]
    for written in (CHECKPOINT_NAME, f"{args.model}.safetensors", f"{args.model}.json"):
        for source in inputs:
            if source is not None and _same_file(out_dir / written, Path(source)):
                raise ValueError(
                    f"the run would write {out_dir / written}, which is the input {source}; "
                    "choose another --out folder or --model name"
                )
    if not args.restart:
        check_resumable(out_dir / CHECKPOINT_NAME, cfg.to_dict())
    trainer = Trainer(cfg, resume=not args.restart)
    log_every = max(1, args.log_every)
    # SIGTERM (e.g. `kill`) ends the run like Ctrl-C: stop at the next step, keep the
    # checkpoint and export the model.
    signal.signal(signal.SIGTERM, lambda *_: trainer.stop())
    try:
        for event in trainer.run():
            if isinstance(event, StepEvent) and (event.step % log_every == 0 or event.step == 1):
                terms = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
                print(
                    f"step {event.step}/{event.total} lr={event.lr:.2e} "
                    f"{event.pairs_per_second:.1f} pairs/s {terms}",
                    flush=True,
                )
            elif isinstance(event, ValidationEvent):
                print(
                    f"step {event.step} validation: PSNR {event.psnr:.2f} dB "
                    f"(input {event.psnr_input:.2f} dB) SSIM {event.ssim:.4f}",
                    flush=True,
                )
            elif isinstance(event, CheckpointEvent):
                print(f"step {event.step} checkpoint {event.path}", flush=True)
            elif isinstance(event, DoneEvent):
                if args.install:
                    from .models.registry import install_model

                    installed = install_model(event.model_path)
                    print(f"installed as a user model: {installed}", flush=True)
                print(
                    f"done at step {event.step}: model {event.model_path} "
                    f"metrics {json.dumps(event.metrics)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted: checkpoint kept", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise ValueError(
            f"the checkpoint in {out_dir} does not fit this network (it belongs to another "
            "configuration or version); start afresh with --restart (the checkpoint is "
            "replaced) or choose another --out folder"
        ) from exc
    return 0


def _cmd_fit_noise(args: argparse.Namespace) -> int:
    import numpy as np

    from .noise.fit import fit_noise
    from .noise.pipeline import NoiseParams

    if args.out is not None:
        _check_outputs(
            [Path(args.out)],
            inputs=[args.image, args.base],
            overwrite=args.overwrite,
            suffixes=(".json",),
        )
    data = np.asarray(_read_dataset(args.image, args.dataset)[0])
    if data.ndim != 2:
        raise ValueError(
            f"dataset {args.dataset} of {args.image} has shape {data.shape}; fit-noise needs one "
            "2-D image (save a single frame)"
        )
    fit = fit_noise(data, modality=args.modality, offset=args.offset, block=args.block)
    print(f"{args.image}: {fit.summary()}")
    print(
        f"  gain a = {fit.gain:.6g} ± {fit.gain_stderr:.2g} per e-, read variance b = "
        f"{fit.read_variance:.6g} ± {fit.read_variance_stderr:.2g}, offset {fit.offset:g}, "
        f"image mean {fit.image_mean:.6g}, fast-axis noise correlation {fit.noise_correlation:.2f}"
    )
    rows = fit.rows
    if rows.n_lines:
        print(
            f"  row lines: {rows.n_lines} in {rows.n_rows} rows, factors "
            f"{rows.factor_min:.2f}-{rows.factor_max:.2f}, longest {rows.max_length:.0%} of a row"
        )
    if fit.message:
        print(f"  note: {fit.message}")
    if args.out is not None:
        base = NoiseParams.load(args.base) if args.base else None
        params = fit.to_noise_params(args.modality, base=base, clean_mean=args.clean_mean)
        print(f"wrote {params.save(args.out)} (for emdenoise train --noise / simulate --params)")
    return 0


# --------------------------------------------------------------------------- adapt (issue 12)


def _cmd_adapt(args: argparse.Namespace) -> int:
    """``emdenoise adapt``: self-supervised fine-tuning of a model on one micrograph."""
    import numpy as np

    from .models.registry import bundled_weights_dir, check_model_name, list_models, user_models_dir
    from .training.adapt import AdaptConfig, adapt

    check_model_name(args.out)
    if (bundled_weights_dir() / f"{args.out}.json").exists():
        raise ValueError(f"{args.out!r} is a bundled model's name; choose another --out name")
    src = Path(args.image)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    folder = Path(args.dir) if args.dir is not None else user_models_dir()
    _check_output_dir(folder)
    if folder.is_dir():
        _check_outputs(
            [folder / f"{args.out}.safetensors", folder / f"{args.out}.json"],
            inputs=[src, *_model_files(args.model)],
            overwrite=args.overwrite,
        )
    existing = list_models().get(args.out)
    if args.dir is None and existing is not None and not args.overwrite:
        raise FileExistsError(f"a model named {args.out!r} exists; pass --overwrite to replace it")
    data, meta = _read_dataset(src, args.dataset)
    if meta.get("rgb"):
        raise ValueError(f"dataset {args.dataset} of {src} is a colour (RGB) image")
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
        np.asarray(data),
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
    print(f"saved {path}; restore with: emdenoise restore IMAGE -o OUT.tif --model {args.out}")
    return 0


def _add_adapt_parser(sub) -> None:
    ad = sub.add_parser(
        "adapt",
        help="fine-tune a model on your own noisy micrograph (self-supervised, no clean image)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ad.add_argument("image", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file (image or stack)")
    ad.add_argument("--model", default="hrstem", help="model to start from (name or .safetensors)")
    ad.add_argument(
        "--minutes", type=_positive_float, default=2.0, help="wall-time budget in minutes"
    )
    ad.add_argument(
        "--anchor",
        type=_float_in(0.0, strict=False, name="weight"),
        default=0.5,
        help="weight of synthetic pairs with the fitted noise, in [0, 1)",
    )
    ad.add_argument(
        "--mask",
        choices=["auto", "pixel", "rows", "columns"],
        default="auto",
        help="blind spot: auto (line along the fast-scan axis if the noise is correlated)",
    )
    ad.add_argument("--steps", type=_positive_int, default=None, help="also stop after N steps")
    ad.add_argument(
        "--out", required=True, help="name of the adapted model (saved as a user model)"
    )
    ad.add_argument(
        "--dir", type=Path, default=None, help="save here instead of the user-model folder"
    )
    _add_dataset_arg(ad)
    ad.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    _add_device_arg(ad)
    ad.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the random choices")
    ad.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    ad.set_defaults(func=_cmd_adapt)


# --------------------------------------------------------------------------- end of adapt


# --------------------------------------------------------------------------- restore-4d (issue 10)


def _cmd_restore_4d(args: argparse.Namespace) -> int:
    """``emdenoise restore-4d``: denoise a 4D-STEM dataset into a resumable zarr store."""
    from .engine.predictor import Cancelled
    from .engine.stack4d import parse_region_text, restore_4dstem

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    if dst.suffix.lower() != ".zarr":
        raise ValueError(f"{dst}: the output must be a .zarr store")
    if _same_file(dst, src) or dst.absolute() == src.absolute():
        raise ValueError(f"the output {dst} must not be the input {src}")
    if not dst.absolute().parent.is_dir():
        raise FileNotFoundError(f"cannot write {dst}: the folder {dst.parent} does not exist")
    region = parse_region_text(args.region) if args.region else None
    data, meta = _read_dataset(src, args.dataset, lazy=True)
    if len(getattr(data, "shape", ())) != 4:
        raise ValueError(
            f"dataset {args.dataset} of {src} has shape {tuple(data.shape)}; restore-4d needs "
            "4D-STEM data (scan_y, scan_x, det_y, det_x)"
        )
    progress = _progress_printer("patterns")
    calibration = {k: meta[k] for k in ("scale", "units", "translate", "axis_names", "name")}
    kwargs = {
        "model": args.model,
        "device": args.device,
        "batch_size": args.batch_size,
        "out": dst,
        "progress": progress,
        "region": region,
        "calibration": calibration,
        "overwrite": args.overwrite,
        "local_counts_sigma": args.local_counts_sigma or None,
    }
    try:
        if args.scheduler is None and args.workers == 0:
            out = restore_4dstem(data, executor="inline", **kwargs)
        else:
            out = _restore_4d_on_cluster(restore_4dstem, data, args, kwargs)
    except (KeyboardInterrupt, Cancelled):
        print(
            f"interrupted: finished blocks are kept in {dst}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"restored {src} ({'x'.join(map(str, data.shape))}) with {args.model} -> {dst} "
        f"({'x'.join(map(str, out.shape))} float32)"
    )
    return 0


def _restore_4d_on_cluster(run: Callable, data: object, args: argparse.Namespace, kwargs: dict):
    """Run ``restore_4dstem`` on ``--scheduler`` or on a LocalCluster of ``--workers`` threads."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(
            "restore-4d --workers/--scheduler needs dask.distributed (pip install distributed); "
            "use --workers 0 to run in this process"
        ) from exc
    if args.scheduler is not None:
        with Client(args.scheduler) as client:
            return run(data, executor=client, **kwargs)
    # Threads in this process: lazy readers' arrays need not be picklable, torch releases
    # the GIL, and every block runs torch single-threaded.
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=args.workers,
            processes=False,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        return run(data, executor=client, torch_threads=1, **kwargs)


def _add_restore_4d_parser(sub: argparse._SubParsersAction) -> None:
    r4 = sub.add_parser(
        "restore-4d",
        help="denoise a 4D-STEM dataset (mib, blo, EMPAD xml/raw, emd/hdf5, zarr, npy) into a "
        "resumable zarr store",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r4.add_argument("input", type=Path, help="4D-STEM file (scan_y, scan_x, det_y, det_x)")
    r4.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .zarr store; re-running the same command resumes an interrupted run",
    )
    r4.add_argument(
        "--model", default="pix2pix-4dstem", help="diffraction model name or .safetensors path"
    )
    r4.add_argument(
        "--workers",
        type=_non_negative_int,
        default=min(4, os.cpu_count() or 1),
        help="threads of the local dask cluster (0: run in this process without dask)",
    )
    r4.add_argument(
        "--scheduler",
        default=None,
        help="address of a running dask.distributed scheduler (e.g. tcp://host:8786); the "
        "output must be on storage its workers share",
    )
    r4.add_argument("--region", default=None, help="scan region y0:y1,x0:x1 (None: the whole scan)")
    r4.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="patterns per forward pass (None: 16 of 64² on the CPU, 1024 on CUDA)",
    )
    r4.add_argument(
        "--local-counts-sigma",
        type=_non_negative_float,
        default=1.0,
        metavar="PX",
        help="put the raw counts back at scales above this many detector pixels, so Bragg-disk "
        "and virtual-detector intensities stay unbiased (default 1; 0: the network output as is)",
    )
    _add_device_arg(r4)
    _add_dataset_arg(r4)
    r4.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an existing output store made by restore-4d (never the input)",
    )
    r4.set_defaults(func=_cmd_restore_4d)


def _add_drift_parser(sub: argparse._SubParsersAction) -> None:
    from .drift.__main__ import build_parser as build_drift_parser
    from .drift.__main__ import run

    drift = sub.add_parser(
        "drift",
        help="align a drifting frame stack (denoise, normalised cross-correlation, CNN "
        "refinement) and write the drift table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build_drift_parser(drift)
    drift.set_defaults(func=run)


#: Bundled model names and the (modality, kind) they are trained for.
_MODEL_TASKS = {
    f"{kind}{modality}": (modality, kind)
    for kind in ("hr", "lr")
    for modality in ("stem", "tem", "sem")
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emdenoise`` command."""
    parser = argparse.ArgumentParser(
        prog="emdenoise",
        description="Restore electron-microscopy images (napari-emdenoise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    sim.add_argument("--size", type=_positive_int, default=512, help="width (and height) in pixels")
    sim.add_argument(
        "--height", type=_positive_int, default=None, help="height in pixels (None: --size)"
    )
    sim.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the first pair")
    sim.add_argument(
        "--count", type=_positive_int, default=1, help="number of pairs (seeds seed, seed+1, …)"
    )
    sim.add_argument("--params", type=Path, default=None, help="noise settings JSON (playground)")
    sim.add_argument(
        "--random-params", action="store_true", help="draw the noise parameters as the paper does"
    )
    sim.add_argument("--out-dir", type=Path, required=True, help="folder for the TIFF files")
    sim.add_argument("--overwrite", action="store_true", help="replace files already in --out-dir")
    sim.set_defaults(func=_cmd_simulate)

    rs = sub.add_parser(
        "restore",
        help="restore an EM image or frame stack with a trained model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rs.add_argument("input", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file")
    rs.add_argument("-o", "--output", type=Path, required=True, help="output .tif")
    rs.add_argument("--model", default="hrstem", help="bundled model name or .safetensors path")
    _add_device_arg(rs)
    rs.add_argument(
        "--tile-size", type=_positive_int, default=None, help="tile size in pixels (>= 64)"
    )
    _add_dataset_arg(rs)
    rs.add_argument("--residual", action="store_true", help="also write input - restored")
    rs.add_argument(
        "--safeguard",
        action="store_true",
        help="keep, per frequency band, the share of the network's change that lowers the "
        "estimated error (SURE); for counting-noise-limited images: it assumes pixel-independent "
        "noise and gives back corrections of scan distortions",
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
        "--overwrite", action="store_true", help="replace existing outputs (never the input)"
    )
    rs.set_defaults(func=_cmd_restore)

    dm = sub.add_parser(
        "demo",
        help="restore a held-out synthetic image with a bundled model and report PSNR/SSIM",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dm.add_argument("--model", default="hrstem", help="bundled or user model name")
    dm.add_argument(
        "--size", type=_int_at_least(16), default=512, help="image width and height in pixels"
    )
    dm.add_argument("--index", type=_non_negative_int, default=0, help="which held-out test image")
    dm.add_argument(
        "--dose",
        type=_positive_float,
        default=None,
        help="electron dose in e-/pixel (None: drawn as in training)",
    )
    _add_device_arg(dm)
    dm.add_argument(
        "--out",
        type=Path,
        default=Path("demo_out"),
        help="folder for distorted/restored/clean.tif, noise_params.json and demo.png",
    )
    dm.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    dm.set_defaults(func=_cmd_demo)

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

    fn = sub.add_parser(
        "fit-noise",
        help="fit the noise model (dose, read noise, row lines) to a micrograph",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fn.add_argument("image", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file with a 2-D image")
    fn.add_argument(
        "--modality", choices=["stem", "tem", "sem"], default="stem", help="imaging modality"
    )
    fn.add_argument(
        "--offset",
        type=_offset_value,
        default=0.0,
        help="detector dark level: intensity of zero electrons, in image units (a HAADF "
        "detector's DC level; the fit warns when the data say it is not 0), or 'auto' to "
        "estimate it",
    )
    fn.add_argument("--block", type=_int_at_least(4), default=16, help="tile size in pixels")
    _add_dataset_arg(fn)
    fn.add_argument(
        "--clean-mean",
        type=_positive_float,
        default=0.5,
        help="mean of the clean [0, 1] training images",
    )
    fn.add_argument("--base", type=Path, default=None, help="settings JSON to start from")
    fn.add_argument("--out", type=Path, default=None, help="write the noise settings JSON here")
    fn.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    fn.set_defaults(func=_cmd_fit_noise)

    tr = sub.add_parser(
        "train",
        help="train a restoration network on synthetic pairs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tr.add_argument(
        "--model",
        default="hrstem",
        help="model name; hrstem, hrtem, lrstem, … also pick modality and kind",
    )
    tr.add_argument(
        "--arch",
        default="cgrdn",
        choices=["cgrdn", "dncnn", "dncnn_bf", "pix2pix"],
        help="network: CGRDN (Lobato et al. 2023), DnCNN, bias-free DnCNN or Pix2Pix "
        "(4D-STEM diffraction patterns, Cao et al. 2024; use --modality diffraction)",
    )
    tr.add_argument(
        "--config",
        default="small",
        help="network size: tiny, small (train in minutes on a CPU) or full (7 M parameters "
        "for CGRDN, meant for a GPU), or a JSON object of the architecture's settings, "
        'e.g. \'{"ngf": 16, "pattern_size": 64, "prior_sigma": 2.0}\' for pix2pix',
    )
    tr.add_argument(
        "--modality",
        choices=["stem", "tem", "sem", "diffraction"],
        default="stem",
        help="imaging modality (set by --model for the standard names; diffraction: 4D-STEM "
        "patterns, 10–1e5 counts each)",
    )
    tr.add_argument(
        "--kind",
        choices=["hr", "lr"],
        default="hr",
        help="high (atomic) or low resolution (set by --model for the standard names)",
    )
    tr.add_argument(
        "--noise",
        type=Path,
        default=None,
        help="noise settings JSON from the playground or fit-noise (None: the paper's random "
        "ranges)",
    )
    tr.add_argument("--steps", type=_positive_int, default=1000, help="optimiser steps")
    tr.add_argument("--batch", type=_positive_int, default=8, help="pairs per step")
    tr.add_argument(
        "--patch", type=_int_at_least(16), default=128, help="side of the training crops [px]"
    )
    tr.add_argument("--lr", type=_positive_float, default=2e-4, help="learning rate (Adam)")
    tr.add_argument(
        "--loss-weights",
        default=None,
        help='loss weights as a JSON object, e.g. \'{"l1": 30, "l2": 10}\' (pix2pix: '
        "Anscombe L1 and local-count squared error); --adversarial overrides its key",
    )
    tr.add_argument(
        "--diffraction",
        default=None,
        help="with --modality diffraction: settings of the synthetic 4D-STEM patterns as a "
        'JSON object, e.g. \'{"overlap_probability": 0.5, "coherent_probability": 0.7}\'',
    )
    tr.add_argument(
        "--adversarial",
        type=_non_negative_float,
        default=None,
        help="adversarial loss weight, 0 disables the discriminator (None: the default loss "
        "weights)",
    )
    tr.add_argument(
        "--disc-channels",
        type=_positive_int,
        default=64,
        help="base channels of the patch discriminator",
    )
    tr.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the data stream")
    tr.add_argument(
        "--clean-pool",
        type=_non_negative_int,
        default=0,
        help="reuse N clean images with fresh noise (0: new image per pair)",
    )
    tr.add_argument(
        "--plain-fraction",
        type=_probability,
        default=0.0,
        help="share of training pairs (0–1) with only shot and read noise, no blur, scan "
        "distortion or detector artefacts: teaches the network to keep sharp images sharp",
    )
    tr.add_argument(
        "--high-dose-fraction",
        type=_probability,
        default=0.0,
        help="share of training pairs (0–1) recorded at a high dose, 100–10⁴ e⁻/pixel: "
        "teaches the network to leave well-exposed images alone",
    )
    tr.add_argument(
        "--fine-lattice-fraction",
        type=_probability,
        default=0.0,
        help="share of atomic-resolution training pairs (0–1) showing a zone-axis crystal "
        "at 0.25–0.9 Å/pixel, whose columns repeat every few pixels: teaches the network "
        "to keep fine lattices",
    )
    tr.add_argument(
        "--pulse-spread-fraction",
        type=_probability,
        default=0.0,
        help="share of S(T)EM/SEM training pairs (0–1) whose electrons give unequal "
        "detector pulses (relative spread 0.2–1.2), as real scintillator/PMT images do",
    )
    tr.add_argument("--val-size", type=_positive_int, default=16, help="validation pairs")
    tr.add_argument("--val-every", type=_positive_int, default=100, help="validate every N steps")
    tr.add_argument(
        "--checkpoint-every", type=_positive_int, default=200, help="checkpoint every N steps"
    )
    tr.add_argument(
        "--workers",
        type=_non_negative_int,
        default=1,
        help="data-loader processes making the pairs (0: in this process)",
    )
    tr.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (None: torch's)"
    )
    _add_device_arg(tr)
    tr.add_argument("--init-from", default=None, help="model name or .safetensors to fine-tune")
    tr.add_argument(
        "--init-partial",
        action="store_true",
        help="with --init-from: build the network from --arch/--config and copy only the "
        "tensors whose name and shape match (carry a model over to a changed network)",
    )
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--log-every", type=_positive_int, default=10, help="print every N steps")
    tr.add_argument(
        "--install",
        action="store_true",
        help="copy the trained model into the user-model folder (listed in napari)",
    )
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, model, card)")
    tr.set_defaults(func=_cmd_train)
    _add_adapt_parser(sub)  # issue 12
    _add_restore_4d_parser(sub)
    _add_drift_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdenoise`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args))
    except (ValueError, OSError, ImportError) as exc:
        print(f"emdenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(
            f"emdenoise {args.command}: error: out of memory ({exc or 'no details'}); "
            "try a smaller size, fewer frames or a lazy/tiled workflow",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
