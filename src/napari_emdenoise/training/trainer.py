"""Headless GAN trainer for the restoration networks (Lobato, Friedrich & Van Aert 2023, "Methods").

:meth:`Trainer.run` is a generator: it trains the generator (and, when the
adversarial weight is positive, the relativistic patch discriminator) on
synthetic pairs drawn in background data-loader workers, and *yields* progress
events. The command line prints them, the napari widget plots them, a script
can do anything with them. :meth:`Trainer.stop` ends the run at the next step
boundary; the last checkpoint is always written before the generator returns.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import psnr, ssim
from .checkpoints import CHECKPOINT_NAME, check_resumable, load_checkpoint, save_checkpoint
from .datasets import VARIANT_FRACTIONS, PairConfig, SyntheticPairs

#: Longest side (pixels) of the user-image preview restored at every validation.
PREVIEW_MAX_SIDE = 256

__all__ = [
    "CheckpointEvent",
    "DoneEvent",
    "StepEvent",
    "TrainConfig",
    "Trainer",
    "copy_matching_tensors",
    "ValidationEvent",
]


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Attributes
    ----------
    name : str
        Model name written into the model card (``hrstem``, ``my_titan``…).
    arch : str
        Architecture key of :data:`napari_emdenoise.models.registry.ARCHITECTURES`.
    model_config : str or dict
        Named configuration (``"small"``, ``"full"``…) or explicit parameters.
    pairs : PairConfig
        Synthetic data (modality, kind, patch size, noise settings, seed).
    steps : int
        Number of optimiser steps.
    batch_size : int
        Pairs per step.
    lr : float
        Initial generator learning rate (Adam); cosine decay to
        ``lr * lr_final_fraction``.
    disc_lr : float
        Discriminator learning rate.
    disc_channels : int
        Base channels of the 70×70 patch discriminator (64 in the paper; 16–32
        keeps adversarial training affordable on a CPU).
    loss_weights : dict
        Overrides of :class:`napari_emdenoise.losses.LossWeights` fields
        (``{"l1": 10, "adversarial": 5e-4, ...}``); adversarial > 0 trains the
        discriminator too. For ``arch="pix2pix"`` only ``l1`` (Anscombe-domain
        L1), ``l2`` (here the squared error of local count sums,
        :func:`napari_emdenoise.models.pix2pix.local_count_mse`) and
        ``adversarial`` apply, with the defaults ``l1 = 100``, ``adversarial = 1``
        (GAN + 100·L1, Isola et al. 2017; Cao et al. 2024) and ``l2 = 2``.
    val_size, val_every : int
        Fixed validation pairs (never seen in training) and how often (steps)
        to evaluate them.
    checkpoint_every : int
        Steps between checkpoints.
    num_workers : int
        Data-loader worker processes (0: draw pairs in the training thread).
    worker_start_method : {"fork", "spawn", "forkserver"} or None
        How the data-loader workers are started (None: the platform default).
        Inside a GUI process with running threads use ``"spawn"``.
    threads : int or None
        ``torch.set_num_threads`` for the training process (None: leave).
    device : str or None
        ``"cpu"``, ``"cuda"``, … (None: automatic).
    init_from : str or None
        Bundled model name or ``.safetensors`` path to fine-tune from.
    init_partial : bool
        With ``init_from``: build the network from ``arch``/``model_config``
        (not from the source model's card) and copy every tensor whose name
        and shape match; the others keep their fresh initialisation. Used to
        carry a trained model over to a changed architecture (e.g. CGRDN
        with bilinear instead of transposed-convolution upsampling).
    out_dir : str
        Where checkpoints and the exported model go.
    """

    name: str = "custom"
    arch: str = "cgrdn"
    model_config: str | dict = "small"
    pairs: PairConfig = field(default_factory=PairConfig)
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    lr_final_fraction: float = 0.1
    disc_lr: float = 1e-4
    disc_channels: int = 64
    loss_weights: dict[str, float] = field(default_factory=dict)
    val_size: int = 16
    val_every: int = 100
    checkpoint_every: int = 200
    num_workers: int = 1
    worker_start_method: str | None = None
    threads: int | None = None
    device: str | None = None
    init_from: str | None = None
    init_partial: bool = False
    out_dir: str = "runs/custom"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.val_size < 1:
            raise ValueError("val_size must be ≥ 1")
        if not (self.lr > 0 and self.disc_lr > 0):
            raise ValueError("learning rates must be positive")
        if self.num_workers < 0:
            raise ValueError("num_workers must be ≥ 0")
        if self.worker_start_method not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(
                "worker_start_method must be None, 'fork', 'spawn' or 'forkserver', "
                f"got {self.worker_start_method!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in checkpoints and model cards)."""
        d = dataclasses.asdict(self)
        d["pairs"] = self.pairs.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["pairs"] = PairConfig.from_dict(d["pairs"])
        return cls(**d)


@dataclass
class StepEvent:
    """One optimiser step finished."""

    step: int
    total: int
    losses: dict[str, float]
    lr: float
    pairs_per_second: float


@dataclass
class ValidationEvent:
    """Validation on the fixed held-out pairs.

    ``preview`` is ``(distorted, target, restored)`` of the first validation pair;
    ``user_preview`` is ``(image, restored)`` of the image given to
    :meth:`Trainer.set_preview_image` (None if none was given).
    """

    step: int
    psnr: float
    ssim: float
    psnr_input: float
    preview: tuple[np.ndarray, np.ndarray, np.ndarray]
    user_preview: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class CheckpointEvent:
    """A checkpoint was written."""

    step: int
    path: Path


@dataclass
class DoneEvent:
    """The run ended (all steps done, or stopped)."""

    step: int
    stopped: bool
    checkpoint: Path
    model_path: Path | None
    metrics: dict[str, float]


class Trainer:
    """Train a restoration network on synthetic pairs.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` if it exists.
    """

    def __init__(self, config: TrainConfig, resume: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.out_dir = Path(config.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self._stop = False
        self._checkpoint_requested = False
        self._preview_image: np.ndarray | None = None

    def stop(self) -> None:
        """Ask the run to end after the current step (the checkpoint is kept)."""
        self._stop = True

    def request_checkpoint(self) -> None:
        """Write a checkpoint after the current step (thread-safe; yields a CheckpointEvent)."""
        self._checkpoint_requested = True

    @property
    def preview_image(self) -> np.ndarray | None:
        """The (cropped, float32) image restored at every validation, or None."""
        return self._preview_image

    def set_preview_image(self, image: np.ndarray | None, max_side: int = PREVIEW_MAX_SIDE) -> None:
        """Restore (a centred crop of) ``image`` at every validation as a live preview.

        Parameters
        ----------
        image : numpy.ndarray or None
            A 2-D image in any intensity scale (the network normalises each
            image itself); ``None`` switches the preview off.
        max_side : int
            Longest side of the centred crop, in pixels (keeps previews cheap).
        """
        if image is None:
            self._preview_image = None
            return
        from .._validation import as_float_image

        x = as_float_image(image, name="preview image", min_size=8)
        h, w = x.shape
        top, left = max((h - max_side) // 2, 0), max((w - max_side) // 2, 0)
        self._preview_image = np.ascontiguousarray(x[top : top + max_side, left : left + max_side])

    # ------------------------------------------------------------------ setup
    def _build(self):
        import torch

        from ..engine.device import resolve_device
        from ..losses import LossWeights
        from ..models.discriminators import PatchDiscriminator
        from ..models.registry import build_model, load_model

        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(cfg.pairs.seed)
        self.device = resolve_device(cfg.device)
        self.pix2pix = cfg.arch == "pix2pix"
        if self.pix2pix:
            self.weights = LossWeights(**{**PIX2PIX_LOSS_WEIGHTS, **cfg.loss_weights})
        else:
            self.weights = LossWeights(**cfg.loss_weights)
        if cfg.init_from:
            source, card = load_model(cfg.init_from, device="cpu")
            if card.arch != cfg.arch:
                raise ValueError(
                    f"cannot fine-tune {card.name!r} ({card.arch}) as architecture {cfg.arch!r}"
                )
            if cfg.init_partial:
                self.model = build_model(cfg.arch, cfg.model_config)
                self.model_config = _config_dict(self.model)
                copy_matching_tensors(source, self.model)
            else:
                self.model = source
                self.model_config = card.config
        else:
            self.model = build_model(cfg.arch, cfg.model_config)
            self.model_config = (
                cfg.model_config if isinstance(cfg.model_config, dict) else _config_dict(self.model)
            )
        multiple = int(getattr(self.model, "size_multiple", 1))
        if cfg.pairs.patch_size % multiple:
            raise ValueError(
                f"patch size {cfg.pairs.patch_size} is not a multiple of {multiple}, which this "
                f"{cfg.arch} configuration needs; choose a patch size of {multiple}·k pixels"
            )
        self.model.to(self.device).train()
        betas_g = (0.5, 0.999) if self.pix2pix else (0.9, 0.999)  # pix2pix: Adam β1 = 0.5
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=betas_g)
        self.disc = None
        self.opt_d = None
        if self.pix2pix and self.weights.adversarial > 0:
            from ..models.discriminators import MultiScalePatchDiscriminator

            # two-scale PatchGAN on concat(network view of x, sqrt-normalised pattern)
            self.disc = MultiScalePatchDiscriminator(
                n_scales=2,
                in_channels=self.model.feature_channels + 1,
                base_channels=cfg.disc_channels,
            )
            self.disc.to(self.device).train()
            self.opt_d = torch.optim.Adam(
                self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999)
            )
        elif self.weights.adversarial > 0:
            self.disc = PatchDiscriminator(base_channels=cfg.disc_channels)
            self.disc.to(self.device).train()
            self.opt_d = torch.optim.Adam(
                self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999)
            )
        self.step = 0
        if self.resume and self.checkpoint_path.exists():
            check_resumable(self.checkpoint_path, cfg.to_dict())
            state, _ = load_checkpoint(self.checkpoint_path)
            self.model.load_state_dict(state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            if self.disc is not None and "discriminator" in state:
                self.disc.load_state_dict(state["discriminator"])
                self.opt_d.load_state_dict(state["opt_d"])
            self.step = int(state["step"])
        val = SyntheticPairs(cfg.pairs, "val")
        self.val_x, self.val_y = val.arrays(cfg.val_size)

    def _lr_at(self, step: int) -> float:
        cfg = self.config
        t = min(step / max(cfg.steps, 1), 1.0)
        floor = cfg.lr * cfg.lr_final_fraction
        return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * t))

    def _loader(self):
        import torch
        from torch.utils.data import DataLoader

        cfg = self.config
        first = self.step * cfg.batch_size
        last = cfg.steps * cfg.batch_size
        kwargs: dict[str, Any] = {}
        if cfg.num_workers > 0:
            kwargs = {
                "num_workers": cfg.num_workers,
                "prefetch_factor": 4,
                "persistent_workers": False,
            }
        return DataLoader(
            SyntheticPairs(cfg.pairs, "train"),
            batch_size=cfg.batch_size,
            sampler=range(first, last),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.pairs.seed),
            multiprocessing_context=cfg.worker_start_method if cfg.num_workers > 0 else None,
            **kwargs,
        )

    # --------------------------------------------------------------- training
    def _train_step(self, x, y) -> dict[str, float]:
        import torch

        from ..engine.device import autocast_context
        from ..losses import generator_loss, relativistic_discriminator_loss

        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.pix2pix:
            return self._pix2pix_step(x, y)
        terms_out: dict[str, float] = {}
        with autocast_context(self.device):
            y_g = self.model(x)
        y_g = y_g.float()
        if self.disc is not None:
            # discriminator step (eq 15) on detached generator output
            for p in self.disc.parameters():
                p.requires_grad_(True)
            c_real = self.disc(torch.cat([x, y], 1))
            c_fake = self.disc(torch.cat([x, y_g.detach()], 1))
            d_loss = relativistic_discriminator_loss(c_real, c_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            terms_out["discriminator"] = float(d_loss.detach())
            for p in self.disc.parameters():
                p.requires_grad_(False)
            c_real = self.disc(torch.cat([x, y], 1))
            c_fake = self.disc(torch.cat([x, y_g], 1))
            total, terms = generator_loss(y_g, y, self.weights, c_real=c_real, c_fake=c_fake)
        else:
            total, terms = generator_loss(y_g, y, self.weights)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt_g.step()
        terms_out.update({k: float(v) for k, v in terms.items()})
        terms_out["total"] = float(total.detach())
        return terms_out

    def _pix2pix_step(self, x, y) -> dict[str, float]:
        """One pix2pix step: two-scale PatchGAN (vanilla GAN loss) and GAN + λ·L1 for G.

        The L1 term is :func:`napari_emdenoise.models.pix2pix.anscombe_l1`
        (Anscombe domain, per-pattern range); the discriminator judges the
        count-normalised square-root patterns
        (:func:`napari_emdenoise.models.pix2pix.loss_domain`), conditioned on
        the generator's view of the input.
        """
        import torch
        import torch.nn.functional as F

        from ..models.pix2pix import anscombe_l1, local_count_mse, loss_domain

        def bce(logits: list, real: bool):
            target = 1.0 if real else 0.0
            return sum(
                F.binary_cross_entropy_with_logits(c, torch.full_like(c, target)) for c in logits
            ) / len(logits)

        terms: dict[str, float] = {}
        y_g = self.model(x).float()
        fake = loss_domain(y_g)
        real = loss_domain(y)
        l1 = anscombe_l1(y_g, y)
        total = self.weights.l1 * l1
        if self.weights.l2 > 0:
            local = local_count_mse(y_g, y)
            total = total + self.weights.l2 * local
            terms["local_count_mse"] = float(local.detach())
        if self.disc is not None:
            with torch.no_grad():
                cond = self.model.features(x)
            for p in self.disc.parameters():
                p.requires_grad_(True)
            d_loss = 0.5 * (
                bce(self.disc(cond, real), True) + bce(self.disc(cond, fake.detach()), False)
            )
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            for p in self.disc.parameters():
                p.requires_grad_(False)
            gan = bce(self.disc(cond, fake), True)
            total = total + self.weights.adversarial * gan
            terms["discriminator"] = float(d_loss.detach())
            terms["adversarial"] = float(gan.detach())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt_g.step()
        terms["l1"] = float(l1.detach())
        terms["total"] = float(total.detach())
        return terms

    def validate(self) -> ValidationEvent:
        """Restore the fixed validation pairs and measure PSNR/SSIM against their targets."""
        import torch

        self.model.eval()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(self.val_x), 8):
                xb = torch.from_numpy(self.val_x[i : i + 8, None]).to(self.device)
                outs.append(self.model(xb).float().cpu().numpy()[:, 0])
            user_preview = None
            image = self._preview_image
            if image is not None and self.pix2pix:
                user_preview = (image, _restore_pattern(self.model, image, self.device))
            elif image is not None:
                from ..engine.predictor import restore

                user_preview = (
                    image,
                    restore(image, self.model, device=self.device, refine=False),
                )
        self.model.train()
        restored = np.concatenate(outs)
        val_y, val_x = self.val_y, self.val_x
        if self.config.pairs.modality == "diffraction":
            # Poisson counts: compare after the Anscombe transform 2·sqrt(x + 3/8)
            restored, val_y, val_x = (_anscombe(a) for a in (restored, val_y, val_x))
        p = float(np.mean([psnr(r, t) for r, t in zip(restored, val_y)]))
        s = float(np.mean([ssim(r, t) for r, t in zip(restored, val_y)]))
        p_in = float(np.mean([psnr(x, t) for x, t in zip(val_x, val_y)]))
        preview = (self.val_x[0], self.val_y[0], restored[0])
        return ValidationEvent(self.step, p, s, p_in, preview, user_preview)

    def save(self) -> Path:
        """Write the resumable checkpoint now."""
        state: dict[str, Any] = {
            "step": self.step,
            "generator": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
        }
        if self.disc is not None:
            state["discriminator"] = self.disc.state_dict()
            state["opt_d"] = self.opt_d.state_dict()
        return save_checkpoint(self.checkpoint_path, state, self.config.to_dict())

    def export(self, metrics: dict[str, float]) -> Path:
        """Save the generator as ``<name>.safetensors`` + model card in ``out_dir``."""
        from ..models.registry import ModelCard, save_model

        cfg = self.config
        card = ModelCard(
            name=cfg.name,
            arch=cfg.arch,
            config=self.model_config,
            modality=cfg.pairs.modality,
            kind=cfg.pairs.kind,
            training={
                "steps": self.step,
                "batch_size": cfg.batch_size,
                "patch_size": cfg.pairs.patch_size,
                "lr": cfg.lr,
                "seed": cfg.pairs.seed,
                "loss_weights": self.weights.to_dict(),
                "noise": _noise_description(cfg.pairs),
                "clean_pool": cfg.pairs.clean_pool,
                # Present only when used, as in PairConfig.to_dict (older cards unchanged).
                **{k: v for k, v in cfg.pairs.to_dict().items() if k in VARIANT_FRACTIONS},
                "init_from": cfg.init_from,
                **({"init_partial": True} if cfg.init_from and cfg.init_partial else {}),
                "device": str(self.device),
                # A run stopped before its last step is a checkpoint, not a finished
                # model: Restore marks it (a later run that finishes exports it again).
                **({"stopped": True, "planned_steps": cfg.steps} if self.step < cfg.steps else {}),
            },
            metrics=metrics,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            notes="trained with napari_emdenoise.training.Trainer",
        )
        return save_model(self.model, card, self.out_dir)

    def run(self) -> Iterator[StepEvent | ValidationEvent | CheckpointEvent | DoneEvent]:
        """Train, yielding events; ends with a :class:`DoneEvent`."""
        self._build()
        cfg = self.config
        last_val: ValidationEvent | None = None
        t_last = time.perf_counter()
        try:
            for x, y in self._loader():
                if self._stop:
                    break
                lr = self._lr_at(self.step)
                for group in self.opt_g.param_groups:
                    group["lr"] = lr
                losses = self._train_step(x, y)
                self.step += 1
                now = time.perf_counter()
                rate = cfg.batch_size / max(now - t_last, 1e-9)
                t_last = now
                yield StepEvent(self.step, cfg.steps, losses, lr, rate)
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    last_val = self.validate()
                    yield last_val
                if self.step % cfg.checkpoint_every == 0 or self._checkpoint_requested:
                    self._checkpoint_requested = False
                    yield CheckpointEvent(self.step, self.save())
                t_last = time.perf_counter()  # do not count validation/saving as step time
        finally:
            checkpoint = self.save()
        if last_val is None or last_val.step != self.step:
            last_val = self.validate()
            yield last_val
        metrics = {
            "val_psnr": last_val.psnr,
            "val_ssim": last_val.ssim,
            "val_psnr_input": last_val.psnr_input,
            "val_pairs": cfg.val_size,
        }
        model_path = self.export(metrics)
        yield DoneEvent(self.step, self._stop, checkpoint, model_path, metrics)


#: pix2pix loss weights: GAN + 100·L1 (Isola et al. 2017; Cao et al. 2024), plus
#: 2 × the local-count squared error that keeps Bragg-disk intensities unbiased.
PIX2PIX_LOSS_WEIGHTS: dict[str, float] = {"l1": 100.0, "adversarial": 1.0, "l2": 2.0}


def _noise_description(pairs: PairConfig) -> Any:
    if pairs.modality == "diffraction":
        return {
            "model": "synthetic 4D-STEM patterns and detector (napari_emdenoise.synth.diffraction)",
            "diffraction": dict(pairs.diffraction or {}),
        }
    if pairs.noise is None:
        return "random (Lobato et al. 2023 ranges)"
    return pairs.noise.to_dict()


def _anscombe(x: np.ndarray) -> np.ndarray:
    """Anscombe transform 2·sqrt(x + 3/8) of counts (negative read noise clipped to 0)."""
    return 2.0 * np.sqrt(np.clip(x, 0.0, None) + 0.375)


def _restore_pattern(model, image: np.ndarray, device) -> np.ndarray:
    """One 2-D pattern through a pix2pix model, edge-padded to its size multiple."""
    import torch

    m = int(getattr(model, "size_multiple", 1))
    h, w = image.shape
    ph, pw = (-h) % m, (-w) % m
    padded = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")
    with torch.inference_mode():
        out = model(torch.from_numpy(padded[None, None].astype(np.float32)).to(device))
    out = out.float().cpu().numpy()[0, 0][ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    total, kept = float(np.clip(image, 0, None).sum()), float(out.sum())
    return out * (total / kept) if kept > 0 else out  # the padding's counts are not the image's


def _config_dict(model) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def copy_matching_tensors(source, target) -> list[str]:
    """Copy every parameter/buffer of ``source`` whose name and shape ``target`` shares.

    Parameters
    ----------
    source, target : torch.nn.Module
        Trained network and freshly built network (changed architecture).

    Returns
    -------
    list of str
        Names of the tensors copied (the rest of ``target`` is untouched).
    """
    import torch

    src = source.state_dict()
    dst = target.state_dict()
    copied = [k for k, v in dst.items() if k in src and src[k].shape == v.shape]
    with torch.no_grad():
        for k in copied:
            dst[k].copy_(src[k])
    return copied
