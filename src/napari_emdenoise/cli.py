"""Command line: ``emdenoise simulate | restore | train | models``.

Every sub-command is a thin wrapper over the headless engine; heavy imports
happen inside the sub-command that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    import tifffile

    from .noise.pipeline import NoiseParams
    from .simulate import simulate

    params = NoiseParams.load(args.params) if args.params else None
    if params is not None and params.modality != args.modality:
        raise ValueError(
            f"{args.params} holds {params.modality!r} settings but --modality is {args.modality!r}"
        )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = (args.size, args.size) if args.height is None else (args.height, args.size)
    for i in range(args.count):
        seed = args.seed + i
        sim = simulate(args.modality, args.kind, shape, seed, params, args.random_params)
        stem = "" if args.count == 1 else f"{i:04d}_"
        tifffile.imwrite(out / f"{stem}clean.tif", sim.target)
        tifffile.imwrite(out / f"{stem}distorted.tif", sim.distorted)
        record = {
            "seed": seed,
            "modality": args.modality,
            "kind": args.kind,
            "shape": list(shape),
            "noise": sim.params.to_dict(),
            "specimen": sim.info,
        }
        (out / f"{stem}params.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"wrote {args.count} pair(s) to {out}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.predictor import restore
    from .io.readers import read_em
    from .io.writers import write_tif

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError("the output must not overwrite the input file")
    datasets = read_em(src)
    if args.dataset >= len(datasets):
        raise ValueError(
            f"{src} holds {len(datasets)} dataset(s); --dataset {args.dataset} is out of range"
        )
    data, meta = datasets[args.dataset]
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(
            f"dataset {args.dataset} of {src} has shape {data.shape}; restore needs an image "
            "(Y, X) or a stack of frames (T, Y, X)"
        )
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct // 10 != last[0] // 10:
            last[0] = pct
            print(f"  {pct:3d} % ({done}/{total} tiles)", file=sys.stderr, flush=True)

    out = restore(
        data, model=args.model, device=args.device, tile_size=args.tile_size, progress=progress
    )
    meta = {**meta, "emdenoise_model": args.model, "source": str(src)}
    write_tif(dst, out, meta, overwrite=args.overwrite)
    print(f"restored {src} ({'x'.join(map(str, data.shape))}) with {args.model} -> {dst}")
    if args.residual:
        res_path = dst.with_name(dst.stem + "_residual" + dst.suffix)
        write_tif(res_path, data.astype(np.float32) - out, meta, overwrite=args.overwrite)
        print(f"residual (input - restored) -> {res_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile

    from .engine.predictor import restore
    from .metrics import psnr, ssim
    from .models.registry import list_models
    from .training.datasets import PairConfig, make_training_pair

    cards = list_models()
    if args.model not in cards:
        raise ValueError(f"no model {args.model!r}; available: {sorted(cards)}")
    card = cards[args.model]
    cfg = PairConfig(modality=card.modality, kind=card.kind, patch_size=args.size)
    # the benchmarks' held-out stream: never seen in training or validation
    distorted, target, params = make_training_pair(cfg, args.index, "test", return_params=True)
    if args.dose is not None:  # same clean image and noise stream, chosen dose
        params = params.with_dose(args.dose)
        cfg = dataclasses.replace(cfg, noise=params)
        distorted, target = make_training_pair(cfg, args.index, "test")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    restored = restore(distorted, model=args.model, device=args.device)
    for name, img in (("distorted", distorted), ("restored", restored), ("clean", target)):
        tifffile.imwrite(out_dir / f"{name}.tif", img.astype(np.float32))
    (out_dir / "noise_params.json").write_text(json.dumps(params.to_dict(), indent=2))
    _save_triptych(out_dir / "demo.png", distorted, restored, target)
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
    Image.fromarray((255 * row).astype(np.uint8)).save(path)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .models.onnx_export import OnnxExportError, export_onnx, onnx_card_path

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

    modality, kind = _MODEL_TASKS.get(args.model, (args.modality, args.kind))
    noise = NoiseParams.load(args.noise) if args.noise else None
    if noise is not None:
        modality = noise.modality
    weights = {"adversarial": args.adversarial} if args.adversarial is not None else {}
    cfg = TrainConfig(
        name=args.model,
        arch=args.arch,
        model_config=args.config,
        pairs=PairConfig(
            modality=modality,
            kind=kind,
            patch_size=args.patch,
            noise=noise,
            seed=args.seed,
            clean_pool=args.clean_pool,
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
        out_dir=str(args.out),
    )
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
    return 0


def _cmd_fit_noise(args: argparse.Namespace) -> int:
    import numpy as np

    from .io.readers import read_em
    from .noise.fit import fit_noise
    from .noise.pipeline import NoiseParams

    datasets = read_em(args.image)
    if args.dataset >= len(datasets):
        raise ValueError(
            f"{args.image} holds {len(datasets)} dataset(s); "
            f"--dataset {args.dataset} is out of range"
        )
    data = np.asarray(datasets[args.dataset][0])
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


#: Bundled model names and the (modality, kind) they are trained for.
_MODEL_TASKS = {
    f"{kind}{modality}": (modality, kind)
    for kind in ("hr", "lr")
    for modality in ("stem", "tem", "sem")
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emdenoise`` command."""
    parser = argparse.ArgumentParser(
        prog="emdenoise", description="Restore electron-microscopy images (napari-emdenoise)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate", help="generate clean/distorted synthetic pairs with the EM distortion model"
    )
    sim.add_argument("--modality", choices=["stem", "tem", "sem"], default="stem")
    sim.add_argument("--kind", choices=["hr", "lr"], default="hr")
    sim.add_argument("--size", type=int, default=512, help="width (and height) in pixels")
    sim.add_argument("--height", type=int, default=None, help="height in pixels (default: size)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--count", type=int, default=1, help="number of pairs (seeds seed, seed+1, …)")
    sim.add_argument("--params", type=Path, default=None, help="noise settings JSON (playground)")
    sim.add_argument(
        "--random-params", action="store_true", help="draw the noise parameters as the paper does"
    )
    sim.add_argument("--out-dir", type=Path, required=True)
    sim.set_defaults(func=_cmd_simulate)

    rs = sub.add_parser("restore", help="restore an EM image or frame stack with a trained model")
    rs.add_argument("input", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file")
    rs.add_argument("-o", "--output", type=Path, required=True, help="output .tif")
    rs.add_argument("--model", default="hrstem", help="bundled model name or .safetensors path")
    rs.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    rs.add_argument("--tile-size", type=int, default=None, help="tile size in pixels")
    rs.add_argument("--dataset", type=int, default=0, help="dataset index in multi-dataset files")
    rs.add_argument("--residual", action="store_true", help="also write input - restored")
    rs.add_argument("--overwrite", action="store_true")
    rs.set_defaults(func=_cmd_restore)

    dm = sub.add_parser(
        "demo", help="restore a held-out synthetic image with a bundled model and report PSNR/SSIM"
    )
    dm.add_argument("--model", default="hrstem")
    dm.add_argument("--size", type=int, default=512)
    dm.add_argument("--index", type=int, default=0, help="which held-out test image")
    dm.add_argument(
        "--dose",
        type=float,
        default=None,
        help="electron dose in e-/pixel (default: drawn as in training)",
    )
    dm.add_argument("--device", default=None)
    dm.add_argument("--out", type=Path, default=Path("demo_out"))
    dm.set_defaults(func=_cmd_demo)

    ox = sub.add_parser(
        "export-onnx", help="export a model to ONNX (dynamic batch/height/width) plus its card"
    )
    ox.add_argument("model", help="model name (bundled or user) or .safetensors path")
    ox.add_argument("--out", type=Path, required=True, help="output .onnx file")
    ox.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 18; default: torch's)")
    ox.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ox.add_argument("--overwrite", action="store_true")
    ox.set_defaults(func=_cmd_export_onnx)

    fn = sub.add_parser(
        "fit-noise", help="fit the noise model (dose, read noise, row lines) to a micrograph"
    )
    fn.add_argument("image", type=Path, help="dm3/dm4/emd/ser/mrc/tif/npy file with a 2-D image")
    fn.add_argument("--modality", choices=["stem", "tem", "sem"], default="stem")
    fn.add_argument("--offset", type=float, default=0.0, help="detector dark level (image units)")
    fn.add_argument("--block", type=int, default=16, help="tile size in pixels")
    fn.add_argument("--dataset", type=int, default=0, help="dataset index in multi-dataset files")
    fn.add_argument(
        "--clean-mean", type=float, default=0.5, help="mean of the clean [0, 1] training images"
    )
    fn.add_argument("--base", type=Path, default=None, help="settings JSON to start from")
    fn.add_argument("--out", type=Path, default=None, help="write the noise settings JSON here")
    fn.set_defaults(func=_cmd_fit_noise)

    tr = sub.add_parser("train", help="train a restoration network on synthetic pairs")
    tr.add_argument(
        "--model",
        default="hrstem",
        help="model name; hrstem, hrtem, lrstem, … also pick modality and kind",
    )
    tr.add_argument("--arch", default="cgrdn", choices=["cgrdn", "dncnn", "dncnn_bf"])
    tr.add_argument("--config", default="small", help="architecture configuration name")
    tr.add_argument("--modality", choices=["stem", "tem", "sem"], default="stem")
    tr.add_argument("--kind", choices=["hr", "lr"], default="hr")
    tr.add_argument(
        "--noise",
        type=Path,
        default=None,
        help="noise settings JSON from the playground (default: paper's random ranges)",
    )
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--patch", type=int, default=128)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument(
        "--adversarial",
        type=float,
        default=None,
        help="adversarial loss weight (0 disables the discriminator)",
    )
    tr.add_argument(
        "--disc-channels", type=int, default=64, help="base channels of the patch discriminator"
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--clean-pool",
        type=int,
        default=0,
        help="reuse N clean images with fresh noise (0: new image per pair)",
    )
    tr.add_argument("--val-size", type=int, default=16)
    tr.add_argument("--val-every", type=int, default=100)
    tr.add_argument("--checkpoint-every", type=int, default=200)
    tr.add_argument("--workers", type=int, default=1)
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--device", default=None)
    tr.add_argument("--init-from", default=None, help="model name or .safetensors to fine-tune")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument(
        "--install",
        action="store_true",
        help="copy the trained model into the user-model folder (listed in napari)",
    )
    tr.add_argument("--out", type=Path, required=True)
    tr.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdenoise`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"emdenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
