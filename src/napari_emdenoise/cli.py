"""Command line: ``emdenoise simulate | restore | train | models``.

Every sub-command is a thin wrapper over the headless engine; heavy imports
happen inside the sub-command that needs them.
"""

from __future__ import annotations

import argparse
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


def _cmd_train(args: argparse.Namespace) -> int:
    from .noise.pipeline import NoiseParams
    from .training.datasets import PairConfig
    from .training.trainer import CheckpointEvent, DoneEvent, StepEvent, TrainConfig, Trainer
    from .training.trainer import ValidationEvent

    modality, kind = _MODEL_TASKS.get(args.model, (args.modality, args.kind))
    noise = NoiseParams.load(args.noise) if args.noise else None
    if noise is not None:
        modality = noise.modality
    weights = {"adversarial": args.adversarial} if args.adversarial is not None else {}
    cfg = TrainConfig(
        name=args.model,
        arch=args.arch,
        model_config=args.config,
        pairs=PairConfig(modality=modality, kind=kind, patch_size=args.patch, noise=noise,
                         seed=args.seed, clean_pool=args.clean_pool),
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        loss_weights=weights,
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
                print(f"step {event.step}/{event.total} lr={event.lr:.2e} "
                      f"{event.pairs_per_second:.1f} pairs/s {terms}", flush=True)
            elif isinstance(event, ValidationEvent):
                print(f"step {event.step} validation: PSNR {event.psnr:.2f} dB "
                      f"(input {event.psnr_input:.2f} dB) SSIM {event.ssim:.4f}", flush=True)
            elif isinstance(event, CheckpointEvent):
                print(f"step {event.step} checkpoint {event.path}", flush=True)
            elif isinstance(event, DoneEvent):
                print(f"done at step {event.step}: model {event.model_path} "
                      f"metrics {json.dumps(event.metrics)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: checkpoint kept", file=sys.stderr)
        return 130
    return 0


#: Bundled model names and the (modality, kind) they are trained for.
_MODEL_TASKS = {
    f"{kind}{modality}": (modality, kind) for kind in ("hr", "lr") for modality in ("stem", "tem", "sem")
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

    tr = sub.add_parser("train", help="train a restoration network on synthetic pairs")
    tr.add_argument("--model", default="hrstem",
                    help="model name; hrstem, hrtem, lrstem, … also pick modality and kind")
    tr.add_argument("--arch", default="cgrdn", choices=["cgrdn", "dncnn", "dncnn_bf"])
    tr.add_argument("--config", default="small", help="architecture configuration name")
    tr.add_argument("--modality", choices=["stem", "tem", "sem"], default="stem")
    tr.add_argument("--kind", choices=["hr", "lr"], default="hr")
    tr.add_argument("--noise", type=Path, default=None,
                    help="noise settings JSON from the playground (default: paper's random ranges)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--patch", type=int, default=128)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--adversarial", type=float, default=None,
                    help="adversarial loss weight (0 disables the discriminator)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--clean-pool", type=int, default=0,
                    help="reuse N clean images with fresh noise (0: new image per pair)")
    tr.add_argument("--val-size", type=int, default=16)
    tr.add_argument("--val-every", type=int, default=100)
    tr.add_argument("--checkpoint-every", type=int, default=200)
    tr.add_argument("--workers", type=int, default=1)
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--device", default=None)
    tr.add_argument("--init-from", default=None, help="model name or .safetensors to fine-tune")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--log-every", type=int, default=10)
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
