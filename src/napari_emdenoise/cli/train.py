"""``emdenoise fit-noise`` and ``emdenoise train``: fit the noise model, train a network."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ._common import (
    add_dataset_arg,
    add_device_arg,
    check_output_dir,
    check_outputs,
    int_at_least,
    json_object,
    model_files,
    non_negative_float,
    non_negative_int,
    offset_value,
    positive_float,
    positive_int,
    probability,
    read_dataset,
    same_file,
)

#: Bundled model names and the (modality, kind) they are trained for.
_MODEL_TASKS = {
    f"{kind}{modality}": (modality, kind)
    for kind in ("hr", "lr")
    for modality in ("stem", "tem", "sem")
}


def _cmd_train(args: argparse.Namespace) -> int:
    from ..noise.pipeline import NoiseParams
    from ..training.datasets import PairConfig
    from ..training.trainer import (
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
    weights = json_object(args.loss_weights, "--loss-weights") if args.loss_weights else {}
    if args.adversarial is not None:
        weights["adversarial"] = args.adversarial
    model_config = (
        json_object(args.config, "--config")
        if args.config.lstrip().startswith("{")
        else args.config
    )
    diffraction = json_object(args.diffraction, "--diffraction") if args.diffraction else None
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
            texture_fraction=args.texture_fraction,
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
    from ..models.registry import check_model_name
    from ..training.checkpoints import CHECKPOINT_NAME, check_resumable

    check_model_name(args.model)  # it names the exported files: refuse it now, not at the end
    out_dir = Path(args.out)
    check_output_dir(out_dir)
    inputs = [args.noise, *(model_files(args.init_from) if args.init_from else [])]
    for written in (CHECKPOINT_NAME, f"{args.model}.safetensors", f"{args.model}.json"):
        for source in inputs:
            if source is not None and same_file(out_dir / written, Path(source)):
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
                    from ..models.registry import install_model

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

    from ..noise.fit import fit_noise
    from ..noise.pipeline import NoiseParams

    if args.out is not None:
        check_outputs(
            [Path(args.out)],
            inputs=[args.image, args.base],
            overwrite=args.overwrite,
            suffixes=(".json",),
        )
    data = np.asarray(read_dataset(args.image, args.dataset)[0])
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``emdenoise``."""
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
        type=offset_value,
        default=0.0,
        help="detector dark level: intensity of zero electrons, in image units (a HAADF "
        "detector's DC level; the fit warns when the data say it is not 0), or 'auto' to "
        "estimate it",
    )
    fn.add_argument("--block", type=int_at_least(4), default=16, help="tile size in pixels")
    add_dataset_arg(fn)
    fn.add_argument(
        "--clean-mean",
        type=positive_float,
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
    tr.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps")
    tr.add_argument("--batch", type=positive_int, default=8, help="pairs per step")
    tr.add_argument(
        "--patch", type=int_at_least(16), default=128, help="side of the training crops [px]"
    )
    tr.add_argument("--lr", type=positive_float, default=2e-4, help="learning rate (Adam)")
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
        type=non_negative_float,
        default=None,
        help="adversarial loss weight, 0 disables the discriminator (None: the default loss "
        "weights)",
    )
    tr.add_argument(
        "--disc-channels",
        type=positive_int,
        default=64,
        help="base channels of the patch discriminator",
    )
    tr.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data stream")
    tr.add_argument(
        "--clean-pool",
        type=non_negative_int,
        default=0,
        help="reuse N clean images with fresh noise (0: new image per pair)",
    )
    tr.add_argument(
        "--plain-fraction",
        type=probability,
        default=0.0,
        help="share of training pairs (0–1) with only shot and read noise, no blur, scan "
        "distortion or detector artefacts: teaches the network to keep sharp images sharp",
    )
    tr.add_argument(
        "--high-dose-fraction",
        type=probability,
        default=0.0,
        help="share of training pairs (0–1) recorded at a high dose, 100–10⁴ e⁻/pixel: "
        "teaches the network to leave well-exposed images alone",
    )
    tr.add_argument(
        "--fine-lattice-fraction",
        type=probability,
        default=0.0,
        help="share of atomic-resolution training pairs (0–1) showing a zone-axis crystal "
        "at 0.25–0.9 Å/pixel, whose columns repeat every few pixels: teaches the network "
        "to keep fine lattices",
    )
    tr.add_argument(
        "--pulse-spread-fraction",
        type=probability,
        default=0.0,
        help="share of S(T)EM/SEM training pairs (0–1) whose electrons give unequal "
        "detector pulses (relative spread 0.2–1.2), as real scintillator/PMT images do",
    )
    tr.add_argument(
        "--texture-fraction",
        type=probability,
        default=0.0,
        help="share of low-magnification training pairs (0–1) whose clean image gets an "
        "amorphous film's speckle and/or lattice fringes, which real low-magnification "
        "images show and the paper's scenes lack",
    )
    tr.add_argument("--val-size", type=positive_int, default=16, help="validation pairs")
    tr.add_argument("--val-every", type=positive_int, default=100, help="validate every N steps")
    tr.add_argument(
        "--checkpoint-every", type=positive_int, default=200, help="checkpoint every N steps"
    )
    tr.add_argument(
        "--workers",
        type=non_negative_int,
        default=1,
        help="data-loader processes making the pairs (0: in this process)",
    )
    tr.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (None: torch's)"
    )
    add_device_arg(tr)
    tr.add_argument("--init-from", default=None, help="model name or .safetensors to fine-tune")
    tr.add_argument(
        "--init-partial",
        action="store_true",
        help="with --init-from: build the network from --arch/--config and copy only the "
        "tensors whose name and shape match (carry a model over to a changed network)",
    )
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--log-every", type=positive_int, default=10, help="print every N steps")
    tr.add_argument(
        "--install",
        action="store_true",
        help="copy the trained model into the user-model folder (listed in napari)",
    )
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, model, card)")
    tr.set_defaults(func=_cmd_train)
