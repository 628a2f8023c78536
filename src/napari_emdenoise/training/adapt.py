"""Adapt a trained restoration network to the user's own noisy micrograph (self-supervised).

:func:`adapt` fine-tunes a bundled or user model on one or more noisy images
that have no clean counterpart. The loss is a blind-spot loss: some pixels
are hidden (their value replaced), the network predicts them from their
surroundings, and the squared difference to the hidden *noisy* value is
minimised. With noise that is independent from pixel to pixel and has zero
mean, its expectation is the squared error against the clean image plus a
constant, so the network learns to denoise without ever seeing a clean image
(Krull, Buchholz & Jug, "Noise2Void — learning denoising from single noisy
images", 2019, arXiv:1811.10980; Batson & Royer, "Noise2Self: blind
denoising by self-supervision", 2019, arXiv:1901.11365). Scan noise that is
correlated along the fast-scan axis is hidden with a line mask (Broaddus,
Krull, Weigert, Schmidt & Myers, "Removing structured noise with
self-supervised blind-spot networks", ISBI 2020), chosen from the image's
measured noise correlation (:mod:`._masks`).

Three safeguards keep the fine-tuning from going astray on a single image:

* **Anchor.** Every batch also holds synthetic supervised pairs distorted
  with the noise fitted to the user's image (:func:`napari_emdenoise.noise.
  fit.fit_noise`), weighted by ``anchor``: the loss is ``(1 − anchor)·L_self
  + anchor·L_synthetic``.
* **Held-out pixels.** A fixed random set of the image's pixels is never a
  training target. The blind-spot loss on them (the *held-out loss*) measures
  how well the network predicts noise it has not been fitted to; it is
  evaluated before the first step (the parent model) and every
  ``val_every`` steps, and the state with the lowest held-out loss is
  returned (the parent itself if nothing beat it).
* **Early stop.** Training stops when the held-out loss has not improved for
  ``patience`` evaluations, when the time budget (``minutes``, setup
  included) or the optional step limit is reached, or when ``cancel()``
  returns True; the best state so far is returned in every case.

Where adapted models go: :meth:`AdaptResult.save` writes
``<name>.safetensors`` and its card into the user-model folder
(:func:`napari_emdenoise.models.registry.user_models_dir`,
``$EMDENOISE_MODELS_DIR`` if set), never into the package's weights. The
registry lists that folder next to the bundled models, so
``restore(image, model="<name>")``, ``emdenoise restore … --model <name>``
and the Restore widget find an adapted model by its name.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._masks import MaskSpec, centre_count, choose_mask, mask_patch

if TYPE_CHECKING:  # pragma: no cover
    from ..models.registry import ModelCard
    from ..noise.fit import NoiseFit

__all__ = ["AdaptConfig", "AdaptProgress", "AdaptResult", "MIN_SIDE", "adapt"]

#: Smallest image side adaptation accepts, in pixels.
MIN_SIDE = 32


@dataclass
class AdaptConfig:
    """Settings of :func:`adapt` beyond the time budget, mask and anchor weight.

    Attributes
    ----------
    patch_size : int
        Side of the training patches, in pixels (16–512; reduced to the
        image's smaller side when that is smaller).
    batch_size : int
        Patches of the user's image per step (≥ 1).
    anchor_batch : int
        Synthetic supervised pairs per step when ``anchor`` > 0 (≥ 1).
    lr : float
        Adam learning rate (> 0), constant.
    mask_fraction : float
        Fraction of a patch's pixels that are blind spots per step (0–0.2);
        fewer for a line mask, so that at most 25 % of a patch is corrupted.
    held_out_fraction : float
        Fraction of the pixels of the validation crops held out (0–0.2).
    val_crops : int
        Number of validation crops (≥ 1), spread over the images.
    val_size : int
        Side of the validation crops, in pixels (≥ 16).
    val_every : int
        Steps between held-out evaluations (≥ 1).
    patience : int
        Evaluations without improvement before stopping (≥ 1).
    min_improvement : float
        Relative decrease of the held-out loss that counts as improvement.
    preview_size : int
        Side of the centred crop restored at every evaluation for a live
        preview (0: no preview), in pixels.
    threads : int or None
        ``torch.set_num_threads`` during the run (None: leave as is).
    device : str or None
        ``"cpu"``, ``"cuda"``, … (None: automatic).
    seed : int
        Seed of every random choice (patches, masks, held-out pixels, pairs).
    """

    patch_size: int = 64
    batch_size: int = 8
    anchor_batch: int = 4
    lr: float = 3e-4
    mask_fraction: float = 0.02
    held_out_fraction: float = 0.02
    val_crops: int = 4
    val_size: int = 128
    val_every: int = 20
    patience: int = 8
    min_improvement: float = 1e-3
    preview_size: int = 0
    threads: int | None = None
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 16 <= int(self.patch_size) <= 512:
            raise ValueError(f"patch_size must be 16–512 pixels, got {self.patch_size}")
        for name in ("batch_size", "anchor_batch", "val_crops", "val_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if int(self.val_size) < 16:
            raise ValueError(f"val_size must be at least 16 pixels, got {self.val_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("mask_fraction", "held_out_fraction"):
            v = getattr(self, name)
            if not 0 < v <= 0.2:
                raise ValueError(f"{name} must be in (0, 0.2], got {v}")
        if self.preview_size < 0:
            raise ValueError("preview_size must be ≥ 0")


@dataclass
class AdaptProgress:
    """What :func:`adapt` reports after every step (``held_out`` only at evaluations).

    Attributes
    ----------
    step : int
        Optimiser steps done (0: the parent model's evaluation).
    elapsed : float
        Seconds since the call began.
    budget : float
        Time budget, seconds.
    max_steps : int or None
        Step limit, if one was given.
    losses : dict
        ``"self-supervised"`` and (with an anchor) ``"synthetic"`` losses
        of the step, in units of the image variance.
    held_out : float or None
        Held-out blind-spot loss at this step (evaluations only).
    best_held_out : float
        Lowest held-out loss so far.
    preview : numpy.ndarray or None
        The centred crop restored by the current network (evaluations only,
        when ``preview_size`` > 0), in the image's intensity units.
    """

    step: int
    elapsed: float
    budget: float
    max_steps: int | None
    losses: dict[str, float]
    held_out: float | None
    best_held_out: float
    preview: np.ndarray | None = None

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]: the larger of the time and step fractions."""
        f = self.elapsed / self.budget if self.budget > 0 else 0.0
        if self.max_steps:
            f = max(f, self.step / self.max_steps)
        return min(max(f, 0.0), 1.0)


@dataclass
class AdaptResult:
    """Outcome of :func:`adapt`.

    Attributes
    ----------
    model : torch.nn.Module
        The network in its best state (lowest held-out loss), eval mode. The
        parent's own state if no step improved the held-out loss.
    parent : str
        Name of the model that was adapted.
    parent_card : ModelCard or None
        Its card (None for a bare network without a known architecture).
    mask : MaskSpec
        The blind spot used.
    anchor : float
        Weight of the synthetic pairs.
    noise_fit : NoiseFit or None
        The noise fitted to the first image (None if the fit failed; the
        anchor then used the training noise ranges).
    image_hash : str
        SHA-256 (hex) of the images' float32 values and shapes.
    image_shapes : list of tuple
        Shapes of the images (frames of a stack count separately).
    steps : int
        Optimiser steps done.
    best_step : int
        Step of the returned state (0: the parent).
    seconds : float
        Wall time of the call, seconds.
    budget_minutes : float
        The time budget asked for.
    held_out_curve : list of (int, float)
        Held-out loss at each evaluation, ``(step, loss)``, step 0 first.
    train_curve : list of (int, float)
        Self-supervised training loss of every step.
    stopped : str
        ``"converged"`` (held-out loss stopped improving), ``"time"``,
        ``"steps"`` or ``"cancelled"``.
    notes : list of str
        Warnings (fit fallback, shrunk patches, …).
    weights_path : pathlib.Path or None
        Where :meth:`save` wrote the model (None until saved).
    """

    model: Any
    parent: str
    parent_card: Any
    mask: MaskSpec
    anchor: float
    noise_fit: Any
    image_hash: str
    image_shapes: list[tuple[int, ...]]
    steps: int
    best_step: int
    seconds: float
    budget_minutes: float
    held_out_curve: list[tuple[int, float]]
    train_curve: list[tuple[int, float]]
    stopped: str
    notes: list[str] = field(default_factory=list)
    weights_path: Path | None = None

    @property
    def initial_held_out(self) -> float:
        """Held-out loss of the parent model."""
        return self.held_out_curve[0][1]

    @property
    def best_held_out(self) -> float:
        """Held-out loss of the returned state."""
        return min(v for _, v in self.held_out_curve)

    def card(self, name: str) -> ModelCard:
        """The model card of the adapted model under ``name``."""
        from ..models.registry import ModelCard, check_model_name

        check_model_name(name)
        pc = self.parent_card
        if pc is None:
            raise ValueError(
                "the adapted network has no model card (it was given as a bare module of "
                "an unknown architecture); adapt a model by name or path to save it"
            )
        fit = self.noise_fit
        return ModelCard(
            name=name,
            arch=pc.arch,
            config=dict(pc.config),
            modality=pc.modality,
            kind=pc.kind,
            training={
                "method": "self-supervised adaptation (blind-spot loss) to one user image",
                "adapted_from": self.parent,
                "parent_training": dict(pc.training),
                "image_sha256": self.image_hash,
                "image_shapes": [list(s) for s in self.image_shapes],
                "steps": self.steps,
                "best_step": self.best_step,
                "minutes": round(self.seconds / 60.0, 3),
                "budget_minutes": self.budget_minutes,
                "mask": self.mask.to_dict(),
                "anchor": self.anchor,
                "noise_fit": None if fit is None else fit.summary(),
                "held_out_loss": [[int(s), float(v)] for s, v in self.held_out_curve],
                "stopped": self.stopped,
                "notes": list(self.notes),
            },
            metrics={
                "held_out_loss_parent": self.initial_held_out,
                "held_out_loss": self.best_held_out,
            },
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            notes=(
                f"{pc.name} adapted to one image with a blind-spot loss (Krull et al., "
                "Noise2Void, 2019, arXiv:1811.10980; Batson & Royer, Noise2Self, 2019, "
                "arXiv:1901.11365; Broaddus et al., structN2V, 2020)"
            ),
        )

    def save(self, name: str, directory: str | Path | None = None) -> Path:
        """Write the model and its card into the user-model folder (or ``directory``).

        Parameters
        ----------
        name : str
            Model name (letters, digits, ``_ . -``); not the name of a bundled
            model, which it would hide.
        directory : str or pathlib.Path, optional
            Target folder; default :func:`~napari_emdenoise.models.registry.
            user_models_dir`. Models there are listed by ``list_models`` and
            found by ``restore(..., model=name)``.

        Returns
        -------
        pathlib.Path
            The ``.safetensors`` file. Widgets listening to
            :func:`~napari_emdenoise.models.registry.on_models_changed` are told.
        """
        import tempfile

        from ..models.registry import bundled_weights_dir, install_model, save_model

        if (bundled_weights_dir() / f"{name}.json").exists():
            raise ValueError(
                f"{name!r} is the name of a bundled model; choose another name for the "
                "adapted model (it would hide the bundled one)"
            )
        card = self.card(name)
        with tempfile.TemporaryDirectory(prefix="emdenoise-adapt-") as tmp:
            written = save_model(self.model, card, Path(tmp))
            self.weights_path = install_model(written, directory)
        return self.weights_path


# --------------------------------------------------------------------------- input


def _as_frames(images: Any) -> list[np.ndarray]:
    """The user's images as a list of checked float32 2-D frames."""
    from .._validation import as_float_image, tensor_to_numpy

    if isinstance(images, (list, tuple)):
        items = list(images)
        if not items:
            raise ValueError("no image given to adapt to")
    else:
        items = [images]
    frames: list[np.ndarray] = []
    for k, item in enumerate(items):
        name = "image" if len(items) == 1 else f"image {k}"
        arr = tensor_to_numpy(item)
        shape = tuple(int(s) for s in getattr(arr, "shape", np.shape(arr)))
        if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
            raise ValueError(
                f"{name} of shape {shape} looks like an RGB(A) picture, not a micrograph; "
                "adapt to the grey-level data as recorded (or convert it to grey first)"
            )
        data = as_float_image(arr, ndim=(2, 3), name=name)
        stack = data[None] if data.ndim == 2 else data
        if min(stack.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"{name} of shape {shape} is too small to adapt to: each side needs at least "
                f"{MIN_SIDE} pixels (a blind-spot loss needs many pixels of the same noise)"
            )
        for frame in stack:
            if float(frame.max()) == float(frame.min()):
                raise ValueError(f"{name} is constant: it holds no noise to adapt to")
            frames.append(np.ascontiguousarray(frame))
    return frames


def _image_hash(frames: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(str(f.shape).encode())
        h.update(np.ascontiguousarray(f, dtype=np.float32).tobytes())
    return h.hexdigest()


def _resolve(model: Any, device: Any) -> tuple[Any, Any, str]:
    """(network copy, card or None, parent name)."""
    import torch

    from ..models.registry import ModelCard, load_model

    if isinstance(model, torch.nn.Module):
        net = copy.deepcopy(model).to(device)
        card = None
        cfg = getattr(net, "config", None)
        arch = {"CGRDN": "cgrdn", "DnCNN": "dncnn"}.get(type(net).__name__)
        if arch is not None and cfg is not None:
            config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
            card = ModelCard(name="module", arch=arch, config=config, modality="stem", kind="hr")
        return net, card, "module"
    if isinstance(model, (str, Path)):
        net, card = load_model(model, device=device)
        return net, card, card.name
    raise ValueError(
        f"model must be a model name, a .safetensors path or a torch.nn.Module, "
        f"got {type(model).__name__}"
    )


# --------------------------------------------------------------------------- data


class _Frames:
    """The images, as fed to the network, with their scale and held-out pixels."""

    def __init__(self, frames: list[np.ndarray], normalizes: bool, floor: float) -> None:
        from ..models._normalization import normalization_stats

        self.fed: list[np.ndarray] = []
        self.k: list[float] = []  # loss factor: 1 / (image scale in fed units)
        self.affine: list[tuple[float, float]] = []  # fed = a·x + b
        for f in frames:
            mean, scale = normalization_stats(f, floor)
            if normalizes:
                a, b = 1.0 / scale, -mean / scale
            else:
                a, b = 1.0, 0.0
            self.fed.append((a * f.astype(np.float64) + b).astype(np.float32))
            self.affine.append((a, b))
            self.k.append(1.0 / (scale * a))
        self.excluded = [np.zeros(f.shape, dtype=bool) for f in frames]


def _val_set(
    data: _Frames, spec: MaskSpec, cfg: AdaptConfig, rng: np.random.Generator
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]]:
    """Fixed validation crops: (frame, masked input, target, held-out weights, loss factor).

    Marks the held-out pixels (and their mask lines) as excluded training targets.
    """
    out = []
    n_frames = len(data.fed)
    for j in range(cfg.val_crops):
        i = j % n_frames
        img = data.fed[i]
        h, w = img.shape
        vh, vw = (min(cfg.val_size, s) // 2 * 2 for s in (h, w))
        top = int(rng.integers(0, h - vh + 1))
        left = int(rng.integers(0, w - vw + 1))
        crop = img[top : top + vh, left : left + vw]
        n = centre_count(spec, (vh, vw), cfg.held_out_fraction)
        flat = rng.choice(vh * vw, size=n, replace=False)
        centres = np.stack(np.unravel_index(flat, (vh, vw)), axis=1)
        masked = mask_patch(crop, centres, spec, rng)
        weights = np.zeros((vh, vw), dtype=np.float32)
        weights[centres[:, 0], centres[:, 1]] = 1.0
        out.append((i, masked, crop.copy(), weights, data.k[i]))
        ex = data.excluded[i]
        rr, cc = centres[:, 0] + top, centres[:, 1] + left
        ex[rr, cc] = True
        if spec.kind == "line":
            reach = min(spec.span, ex.shape[spec.axis] - 1)
            for off in range(-reach, reach + 1):
                if spec.axis == 1:
                    ex[rr, np.clip(cc + off, 0, ex.shape[1] - 1)] = True
                else:
                    ex[np.clip(rr + off, 0, ex.shape[0] - 1), cc] = True
        if i == 0 and n_frames == 1 and cfg.val_crops > 1 and vh == h and vw == w:
            break  # the crop is the whole (small) image: one is enough
    return out


def _training_batch(
    data: _Frames, spec: MaskSpec, cfg: AdaptConfig, patch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked inputs, targets, loss weights), each (B, 1, P, P) float32."""
    areas = np.array([f.size for f in data.fed], dtype=np.float64)
    xs, ys, ws = [], [], []
    n_centres = centre_count(spec, (patch, patch), cfg.mask_fraction)
    for _ in range(cfg.batch_size):
        i = int(rng.choice(len(data.fed), p=areas / areas.sum()))
        img, ex = data.fed[i], data.excluded[i]
        h, w = img.shape
        top = int(rng.integers(0, h - patch + 1))
        left = int(rng.integers(0, w - patch + 1))
        crop = img[top : top + patch, left : left + patch]
        held = ex[top : top + patch, left : left + patch]
        # flips keep the rows rows: a line mask stays along the correlated axis
        if rng.random() < 0.5:
            crop, held = crop[::-1], held[::-1]
        if rng.random() < 0.5:
            crop, held = crop[:, ::-1], held[:, ::-1]
        crop = np.ascontiguousarray(crop)
        flat = rng.choice(patch * patch, size=n_centres, replace=False)
        centres = np.stack(np.unravel_index(flat, (patch, patch)), axis=1)
        weights = np.zeros((patch, patch), dtype=np.float32)
        keep = ~held[centres[:, 0], centres[:, 1]]
        weights[centres[keep, 0], centres[keep, 1]] = data.k[i] ** 2
        xs.append(mask_patch(crop, centres, spec, rng))
        ys.append(crop)
        ws.append(weights)
    return (np.stack(xs)[:, None], np.stack(ys)[:, None], np.stack(ws)[:, None])


class _Anchor:
    """Synthetic supervised pairs distorted with the noise fitted to the user's image."""

    def __init__(
        self, card: Any, fit: Any, patch: int, seed: int, normalizes: bool, floor: float
    ) -> None:
        from .datasets import PairConfig

        modality = card.modality if card is not None else "stem"
        modality = modality if modality in ("stem", "tem", "sem") else "stem"
        kind = card.kind if card is not None else "hr"
        noise = None
        if fit is not None:
            noise = fit.to_noise_params(modality, clean_mean=0.5, target_rows=patch)
        pool_side = max(2 * patch, 128)
        self.cfg = PairConfig(
            modality=modality,
            kind=kind,
            patch_size=patch,
            noise=noise,
            seed=int(seed),
            clean_pool=16,
            pool_image_size=pool_side,
        )
        self.index = 0
        self.normalizes = normalizes
        self.floor = floor

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ..models._normalization import normalization_stats
        from .datasets import make_training_pair

        xs, ys, ks = [], [], []
        for _ in range(n):
            x, y = make_training_pair(self.cfg, self.index, "train")
            self.index += 1
            mean, scale = normalization_stats(x, self.floor)
            if self.normalizes:
                x = (x - mean) / scale
                y = (y - mean) / scale
                ks.append(1.0)
            else:
                ks.append(1.0 / scale)
            xs.append(x.astype(np.float32))
            ys.append(y.astype(np.float32))
        k = np.array(ks, dtype=np.float32)[:, None, None, None]
        return np.stack(xs)[:, None], np.stack(ys)[:, None], k


# --------------------------------------------------------------------------- the run


def adapt(
    model: Any,
    images: Any,
    minutes: float = 2.0,
    mask: str = "auto",
    anchor: float = 0.5,
    progress: Callable[[AdaptProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    steps: int | None = None,
    config: AdaptConfig | None = None,
    name: str | None = None,
    directory: str | Path | None = None,
) -> AdaptResult:
    """Fine-tune a restoration network on the user's noisy image(s), without clean data.

    Parameters
    ----------
    model : str, pathlib.Path or torch.nn.Module
        Bundled or user model name (``"hrstem"``), ``.safetensors`` path, or a
        network (copied; the caller's module is never changed).
    images : array_like or sequence of array_like
        One 2-D noisy image ``(y, x)``, a stack of frames ``(frames, y, x)``
        or a list of them, in the detector's intensity units (counts); at
        least 32 pixels per side, finite. Never modified.
    minutes : float
        Wall-time budget of the whole call (noise fit and setup included),
        minutes (> 0).
    mask : {"auto", "pixel", "rows", "columns"}
        Blind spot, see :func:`._masks.choose_mask`: ``"auto"`` measures the
        noise correlation between neighbours and uses a line mask along the
        correlated (fast-scan) axis when it is at least 0.1, a single pixel
        otherwise.
    anchor : float
        Weight of the synthetic supervised pairs in [0, 1): the loss is
        ``(1 − anchor)·L_self + anchor·L_synthetic``; 0 switches them off.
    progress : callable, optional
        Called with an :class:`AdaptProgress` after every step and
        evaluation (in the calling thread).
    cancel : callable, optional
        Polled before every step; True ends the run, which then returns the
        best state so far (no exception).
    steps : int, optional
        Also stop after this many optimiser steps (reproducible runs).
    config : AdaptConfig, optional
        Patch size, batch, learning rate, mask density, validation, seed, …
    name : str, optional
        If given, save the adapted model under this name (see
        :meth:`AdaptResult.save`) before returning.
    directory : str or pathlib.Path, optional
        Where :meth:`AdaptResult.save` writes (default: the user-model folder).

    Returns
    -------
    AdaptResult
        The best network (lowest held-out blind-spot loss), the loss curves
        and what is needed for the model card.

    Raises
    ------
    ValueError
        For images that are NaN/inf, empty, smaller than 32 pixels per side,
        constant, RGB(A) pictures or not 2-D/3-D; for a bad ``minutes``,
        ``anchor``, ``mask``, ``steps`` or model; for an invalid ``name``.
    """
    import torch

    from ..engine.device import resolve_device
    from ..models._normalization import NORM_REL_FLOOR

    t0 = time.monotonic()
    cfg = config or AdaptConfig()
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        raise ValueError(f"minutes must be a number, got {minutes!r}")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    if isinstance(anchor, bool) or not isinstance(anchor, (int, float)):
        raise ValueError(f"anchor must be a number in [0, 1), got {anchor!r}")
    if not 0.0 <= float(anchor) < 1.0:
        raise ValueError(f"anchor must be in [0, 1), got {anchor!r}")
    if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
        raise ValueError(f"steps must be ≥ 1, got {steps!r}")
    if name is not None:
        from ..models.registry import check_model_name

        check_model_name(name)
    frames = _as_frames(images)
    spec = choose_mask(frames, mask)
    budget = 60.0 * float(minutes)
    notes: list[str] = []

    device = resolve_device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        net, card, parent = _resolve(model, device)
        fit = _fit(frames[0], card, notes)
        normalizes = bool(getattr(net, "normalize", False))
        floor = float(getattr(net, "std_floor", NORM_REL_FLOOR))
        data = _Frames(frames, normalizes, floor)
        rng = np.random.default_rng(cfg.seed)
        side = min(min(f.shape) for f in frames)
        patch = min(cfg.patch_size, side) // 2 * 2
        if patch < cfg.patch_size:
            notes.append(f"patches shrunk to {patch} px (the image is {side} px)")
        val = _val_set(data, spec, cfg, rng)
        anchor_src = (
            _Anchor(card, fit, max(patch, 32), cfg.seed, normalizes, floor) if anchor > 0 else None
        )
        plan = _Plan(data, val, spec, anchor_src, float(anchor), patch, rng, t0, budget, steps)
        run = _Run(net, device, normalizes, cfg)
        try:
            outcome = run.loop(plan, progress, cancel)
        finally:
            run.restore_state()
        result = AdaptResult(
            model=run.net,
            parent=parent,
            parent_card=card,
            mask=spec,
            anchor=float(anchor),
            noise_fit=fit,
            image_hash=_image_hash(frames),
            image_shapes=[tuple(f.shape) for f in frames],
            seconds=time.monotonic() - t0,
            budget_minutes=float(minutes),
            notes=notes,
            **outcome,
        )
        if name is not None:
            result.save(name, directory)
        return result
    finally:
        if cfg.threads:
            torch.set_num_threads(old_threads)


def _fit(frame: np.ndarray, card: Any, notes: list[str]) -> NoiseFit | None:
    """The noise fitted to the first frame, or None (then noted) if the fit fails."""
    from ..noise.fit import fit_noise

    modality = card.modality if card is not None else "stem"
    modality = modality if modality in ("stem", "tem", "sem") else "stem"
    try:
        return fit_noise(frame, modality=modality, offset="auto")
    except ValueError as exc:
        notes.append(f"noise fit failed ({exc}); synthetic pairs use the training noise ranges")
        return None


@dataclass
class _Plan:
    """Everything one run of :meth:`_Run.loop` works on."""

    data: _Frames
    val: list
    spec: MaskSpec
    anchor_src: _Anchor | None
    anchor: float
    patch: int
    rng: np.random.Generator
    t0: float
    budget: float
    max_steps: int | None


class _Run:
    """The optimisation loop and the network's state bookkeeping."""

    def __init__(self, net: Any, device: Any, normalizes: bool, cfg: AdaptConfig) -> None:
        import torch

        self.net = net
        self.device = device
        self.cfg = cfg
        self.normalizes = normalizes
        if normalizes:
            net.normalize = False  # whole-frame normalisation, as restore() does
        net.train()
        for m in net.modules():  # one image cannot re-estimate batch statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        self.opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    def restore_state(self) -> None:
        if self.normalizes:
            self.net.normalize = True
        self.net.eval()

    def _t(self, a: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def held_out_loss(self, val) -> float:
        import torch

        total, weight = 0.0, 0.0
        self.net.eval()
        with torch.inference_mode():
            for _i, masked, target, w, k in val:
                out = self.net(self._t(masked[None, None])).float().cpu().numpy()[0, 0]
                total += float(np.sum(w * (out - target) ** 2)) * k * k
                weight += float(w.sum())
        self._train_mode()
        return total / max(weight, 1.0)

    def _train_mode(self) -> None:
        import torch

        self.net.train()
        for m in self.net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    def preview(self, data: _Frames) -> np.ndarray | None:
        import torch

        size = self.cfg.preview_size
        if size <= 0:
            return None
        img = data.fed[0]
        h, w = img.shape
        ph, pw = (min(size, s) // 2 * 2 for s in (h, w))
        top, left = (h - ph) // 2, (w - pw) // 2
        self.net.eval()
        with torch.inference_mode():
            crop = img[top : top + ph, left : left + pw]
            out = self.net(self._t(crop[None, None])).float().cpu().numpy()[0, 0]
        self._train_mode()
        a, b = data.affine[0]
        return ((out - b) / a).astype(np.float32)

    def step(self, x, y, w, anchor_batch, anchor: float) -> dict[str, float]:
        import torch

        xb, yb, wb = self._t(x), self._t(y), self._t(w)
        out = self.net(xb)
        l_self = torch.sum(wb * (out - yb) ** 2) / torch.clamp(torch.count_nonzero(wb), min=1)
        losses = {"self-supervised": float(l_self.detach())}
        total = l_self
        if anchor_batch is not None:
            ax, ay, ak = (self._t(a) for a in anchor_batch)
            l_syn = torch.mean((ak * (self.net(ax) - ay)) ** 2)
            losses["synthetic"] = float(l_syn.detach())
            total = (1.0 - anchor) * l_self + anchor * l_syn
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        return losses

    def loop(
        self,
        plan: _Plan,
        progress: Callable[[AdaptProgress], None] | None,
        cancel: Callable[[], bool] | None,
    ) -> dict[str, Any]:
        """Train until a stop condition; load the best state; return the curves and counts."""
        cfg, p = self.cfg, plan

        def snapshot() -> dict:
            return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

        def report(step, losses, held, best, preview=None) -> None:
            if progress is not None:
                elapsed = time.monotonic() - p.t0
                progress(
                    AdaptProgress(step, elapsed, p.budget, p.max_steps, losses, held, best, preview)
                )

        t_val = time.monotonic()
        best = self.held_out_loss(p.val)
        t_val = time.monotonic() - t_val
        best_state, best_step = snapshot(), 0
        curve: list[tuple[int, float]] = [(0, best)]
        train: list[tuple[int, float]] = []
        report(0, {}, best, best, self.preview(p.data))
        step, stale, stopped = 0, 0, "time"
        step_time = 0.0
        while True:
            if cancel is not None and cancel():
                stopped = "cancelled"
                break
            if p.max_steps is not None and step >= p.max_steps:
                stopped = "steps"
                break
            # stop before a step (and its evaluation) that would overrun the budget
            if time.monotonic() - p.t0 + step_time + t_val > p.budget:
                stopped = "time"
                break
            t_step = time.monotonic()
            x, y, w = _training_batch(p.data, p.spec, cfg, p.patch, p.rng)
            ab = p.anchor_src.batch(cfg.anchor_batch) if p.anchor_src is not None else None
            losses = self.step(x, y, w, ab, p.anchor)
            step += 1
            step_time = time.monotonic() - t_step
            train.append((step, losses["self-supervised"]))
            held = None
            preview = None
            if step % cfg.val_every == 0:
                t_val = time.monotonic()
                held = self.held_out_loss(p.val)
                curve.append((step, held))
                if held < best * (1.0 - cfg.min_improvement):
                    best, best_state, best_step, stale = held, snapshot(), step, 0
                else:
                    stale += 1
                preview = self.preview(p.data)
                t_val = time.monotonic() - t_val
            report(step, losses, held, best, preview)
            if stale >= cfg.patience:
                stopped = "converged"
                break
        if curve[-1][0] != step:
            held = self.held_out_loss(p.val)
            curve.append((step, held))
            if held < best * (1.0 - cfg.min_improvement):
                best_state, best_step = snapshot(), step
        self.net.load_state_dict(best_state)
        return {
            "steps": step,
            "best_step": best_step,
            "held_out_curve": curve,
            "train_curve": train,
            "stopped": stopped,
        }
