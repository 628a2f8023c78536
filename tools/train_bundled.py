"""Train (or resume) one of the bundled restoration models on this package's synthetic pairs.

Usage::

    python tools/train_bundled.py hrstem --steps 4000 --out runs/hrstem \
        [--init-from OLD.safetensors]

The run resumes from ``OUT/checkpoint`` when re-started with the same arguments.
The exported ``OUT/<name>.safetensors`` + ``.json`` are what ship in
``src/napari_emdenoise/weights/`` (see ``weights/MODEL_CARD.md``).
"""

from __future__ import annotations

import argparse
import signal
import sys

TASKS = {
    "hrstem": ("stem", "hr"),
    "lrstem": ("stem", "lr"),
    "hrtem": ("tem", "hr"),
    "lrtem": ("tem", "lr"),
    "hrsem": ("sem", "hr"),
    "lrsem": ("sem", "lr"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("name", choices=sorted(TASKS))
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--config", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--clean-pool", type=int, default=384)
    ap.add_argument("--init-from", default=None, help="trained .safetensors to warm-start from")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from napari_emdenoise.training.datasets import PairConfig
    from napari_emdenoise.training.trainer import (
        DoneEvent,
        StepEvent,
        TrainConfig,
        Trainer,
        ValidationEvent,
    )

    modality, kind = TASKS[args.name]
    cfg = TrainConfig(
        name=args.name,
        arch="cgrdn",
        model_config=args.config,
        pairs=PairConfig(
            modality=modality,
            kind=kind,
            patch_size=args.patch,
            seed=args.seed,
            clean_pool=args.clean_pool,
        ),
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        loss_weights={"l1": 10.0, "adversarial": 0.0},
        val_size=24,
        val_every=250,
        checkpoint_every=250,
        num_workers=args.workers,
        threads=args.threads,
        device="cpu",
        init_from=args.init_from,
        init_partial=args.init_from is not None,
        out_dir=args.out,
    )
    trainer = Trainer(cfg, resume=True)
    signal.signal(signal.SIGTERM, lambda *_: trainer.stop())
    for event in trainer.run():
        if isinstance(event, StepEvent) and event.step % 50 == 0:
            terms = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
            print(
                f"step {event.step}/{event.total} {event.pairs_per_second:.1f} pairs/s {terms}",
                flush=True,
            )
        elif isinstance(event, ValidationEvent):
            print(
                f"step {event.step} val PSNR {event.psnr:.2f} (input {event.psnr_input:.2f})"
                f" SSIM {event.ssim:.4f}",
                flush=True,
            )
        elif isinstance(event, DoneEvent):
            print(f"done: {event}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
