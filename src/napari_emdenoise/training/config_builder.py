"""Turn the plain values of a training form into a :class:`TrainConfig`, without Qt.

The Train dock widget collects what its editors show into a :class:`TrainForm`
(plain strings and numbers, plus the playground's :class:`NoiseParams` when one
is open) and calls :func:`build_train_config`. Every check that can fail says
what to change in words a microscopist recognises (:class:`ValueError`), before
any training thread starts. Scripts and tests can build the same configuration
without a viewer. Neither Qt, magicgui nor napari is imported here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..noise.pipeline import NoiseParams

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import TrainConfig

__all__ = [
    "NOISE_SOURCES",
    "TrainForm",
    "build_train_config",
    "default_runs_dir",
    "in_process_reason",
    "resolve_noise",
]

#: Where the distortion settings come from: new random ones for every pair (the
#: paper's ranges), the open noise-model playground, or a saved settings file.
NOISE_SOURCES: tuple[str, ...] = ("random", "playground", "file")
#: Modalities the Train form offers (the noise pipelines' and 4D-STEM patterns).
FORM_MODALITIES: tuple[str, ...] = ("stem", "tem", "sem", "diffraction")
#: Resolution regimes: atomic ("hr") and low ("lr") resolution.
FORM_KINDS: tuple[str, ...] = ("hr", "lr")
#: Validation pairs of a run started from the form (fewer than the trainer's default:
#: the preview refreshes often and every pair is restored on the training device).
FORM_VAL_SIZE = 8
#: Smallest side of the pooled clean images (the form's patches may be larger).
MIN_POOL_IMAGE = 256


def default_runs_dir() -> Path:
    """Folder of training runs: ``runs/`` beside the user-model folder."""
    from ..models.registry import user_models_dir

    return user_models_dir().parent / "runs"


@dataclass
class TrainForm:
    """The values of the Train dock's editors, as plain Python values.

    The defaults are the widget's first settings: CGRDN "small" (181 k
    parameters) on 96² patches, batch 8, for 1000 steps trains in about 10
    minutes on two CPU cores.

    Attributes
    ----------
    model_name : str
        Name of the trained model (a file stem; surrounding spaces are removed).
    arch : str
        Architecture key (``"cgrdn"``, ``"dncnn"``, ``"dncnn_bf"``, ``"pix2pix"``).
    model_config : str or None
        Named size of ``arch`` (``"tiny"``, ``"small"``, ``"full"``); ignored when
        fine-tuning (the source model's card decides).
    start_from : str or None
        Model to fine-tune from; None trains from scratch.
    modality : {"stem", "tem", "sem", "diffraction"}
        Kind of images; fixed noise settings replace it by their own modality.
    kind : {"hr", "lr"}
        Atomic ("hr") or low ("lr") resolution.
    noise_source : {"random", "playground", "file"}
        Where the distortion settings come from (:data:`NOISE_SOURCES`).
    noise_file : str, Path or None
        Settings file (JSON) for ``noise_source="file"``.
    playground_noise : NoiseParams or None
        Settings of the open noise-model playground (None: none is open).
    patch_size : int
        Side of the training crops, in pixels.
    clean_pool : int
        0: a new clean image for every pair; N: reuse N clean images.
    seed : int
        Base seed of the synthetic data.
    loss_weights : mapping of str to float
        Loss-weight overrides (:class:`napari_emdenoise.losses.LossWeights` fields).
    disc_channels : int
        Base channels of the patch discriminator (used when adversarial > 0).
    steps, batch_size : int
        Optimiser steps and pairs per step.
    lr : float
        Initial learning rate.
    device : str or None
        ``"cpu"``, ``"cuda"``, …; None or ``"auto"`` chooses automatically.
    val_every, checkpoint_every : int
        Steps between previews (validation) and between checkpoints.
    workers : int
        Data-worker processes asked for (0: make the data in this process).
    out_dir : str or Path
        Runs folder; the run is written to ``out_dir / model_name``.
    """

    model_name: str = "my_model"
    arch: str = "cgrdn"
    model_config: str | None = "small"
    start_from: str | None = None
    modality: str = "stem"
    kind: str = "hr"
    noise_source: str = "random"
    noise_file: str | Path | None = None
    playground_noise: NoiseParams | None = None
    patch_size: int = 96
    clean_pool: int = 64
    seed: int = 0
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    disc_channels: int = 32
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    device: str | None = None
    val_every: int = 50
    checkpoint_every: int = 200
    workers: int = 1
    out_dir: str | Path = field(default_factory=default_runs_dir)


def resolve_noise(
    source: str, noise_file: str | Path | None, playground_noise: NoiseParams | None
) -> NoiseParams | None:
    """The fixed noise settings chosen, or None for new random settings per pair.

    Parameters
    ----------
    source : {"random", "playground", "file"}
        Where the settings come from.
    noise_file : str, Path or None
        Settings file (JSON) read when ``source="file"``.
    playground_noise : NoiseParams or None
        The open playground's settings (None: no playground is open).

    Raises
    ------
    ValueError
        If the source is unknown, no playground is open, or the file is missing or unreadable.
    """
    if source == "random":
        return None
    if source == "playground":
        if playground_noise is None:
            raise ValueError(
                "no Noise-model playground is open: open it (Plugins ▸ EM Denoise) "
                "or choose another noise source"
            )
        return playground_noise
    if source != "file":
        raise ValueError(f"noise source must be one of {', '.join(NOISE_SOURCES)}, got {source!r}")
    path = Path(noise_file) if noise_file not in (None, "") else None
    if path is None or not path.is_file():
        raise ValueError(f"choose a noise settings file (got {str(noise_file or '')!r})")
    try:
        return NoiseParams.load(path)
    except (KeyError, TypeError) as exc:  # JSON, but not settings of ours (ValueError says so)
        raise ValueError(f"{path.name} is not a noise settings file: {exc}") from exc


def in_process_reason(workers: int, unguarded_script: str | None) -> str:
    """Why the data must be made in this process although data workers were asked for.

    Parameters
    ----------
    workers : int
        Data-worker processes asked for.
    unguarded_script : str or None
        The main script when it lacks an ``if __name__ == "__main__":`` guard
        (:func:`napari_emdenoise._widgets._spawn.unguarded_main_script`), else None.

    Returns
    -------
    str
        The reason, or ``""`` when the workers can be used.
    """
    if workers <= 0 or unguarded_script is None:
        return ""
    return (
        f"data made in the napari process (slower): {Path(unguarded_script).name} has no "
        '`if __name__ == "__main__":` guard, and data-worker processes would '
        "run it again (a second napari) instead of making data"
    )


def build_train_config(form: TrainForm, *, unguarded_script: str | None = None) -> TrainConfig:
    """The :class:`TrainConfig` a Train form describes.

    Parameters
    ----------
    form : TrainForm
        The form's values.
    unguarded_script : str or None
        The main script when it lacks a ``__main__`` guard: the data are then made
        in this process (``num_workers=0``, see :func:`in_process_reason`).

    Returns
    -------
    TrainConfig
        Ready for :class:`~napari_emdenoise.training.trainer.Trainer`.

    Raises
    ------
    ValueError
        With a readable message if a value cannot train (bad name, unknown size,
        missing noise settings, a count below its minimum, a negative loss weight…).
    """
    from ..models.registry import check_model_name
    from .datasets import PairConfig
    from .trainer import TrainConfig

    name = check_model_name(str(form.model_name).strip())
    init_from = _check_model_choice(form)
    _check_numbers(form)
    weights = _check_loss_weights(form.loss_weights)
    noise = resolve_noise(form.noise_source, form.noise_file, form.playground_noise)
    modality = noise.modality if noise is not None else form.modality
    _check_data_choice(modality, form.kind)
    patch = int(form.patch_size)
    workers = int(form.workers)
    if in_process_reason(workers, unguarded_script):
        workers = 0
    pairs = PairConfig(
        modality=modality,
        kind=form.kind,
        patch_size=patch,
        noise=noise,
        seed=int(form.seed),
        clean_pool=int(form.clean_pool),
        pool_image_size=max(MIN_POOL_IMAGE, patch),
    )
    return TrainConfig(
        name=name,
        arch=form.arch,
        model_config=form.model_config,
        pairs=pairs,
        steps=int(form.steps),
        batch_size=int(form.batch_size),
        lr=float(form.lr),
        disc_channels=int(form.disc_channels),
        loss_weights=weights,
        val_size=FORM_VAL_SIZE,
        val_every=int(form.val_every),
        checkpoint_every=int(form.checkpoint_every),
        num_workers=workers,
        worker_start_method="spawn",
        device=None if form.device in (None, "", "auto") else form.device,
        init_from=init_from,
        out_dir=str(Path(form.out_dir) / name),
    )


def _check_model_choice(form: TrainForm) -> str | None:
    """Check the architecture and size; return the model to fine-tune from (or None)."""
    from ..models.registry import ARCHITECTURES, named_configs

    if form.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {form.arch!r}: choose one of {', '.join(sorted(ARCHITECTURES))}"
        )
    init_from = form.start_from or None
    sizes = named_configs(form.arch)
    if init_from is None and sizes and form.model_config not in sizes:
        raise ValueError(
            f"size {form.model_config!r} is not offered for {form.arch}: choose one of "
            f"{', '.join(sizes)}"
        )
    return init_from


def _check_data_choice(modality: str, kind: str) -> None:
    if modality not in FORM_MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(FORM_MODALITIES)}, got {modality!r}")
    if kind not in FORM_KINDS:
        raise ValueError(f"kind must be 'hr' (atomic resolution) or 'lr' (low), got {kind!r}")


#: Integer fields of the form, their editor labels and smallest allowed values.
_MINIMA: tuple[tuple[str, str, int], ...] = (
    ("patch_size", "patch", 16),
    ("clean_pool", "clean-image pool", 0),
    ("seed", "seed", 0),
    ("disc_channels", "discriminator width", 1),
    ("steps", "steps", 1),
    ("batch_size", "batch", 1),
    ("val_every", "preview every [steps]", 1),
    ("checkpoint_every", "checkpoint every [steps]", 1),
    ("workers", "data workers", 0),
)


def _check_numbers(form: TrainForm) -> None:
    """Raise ValueError naming the editor of the first number out of range."""
    for attr, label, minimum in _MINIMA:
        value = getattr(form, attr)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            unit = " px" if attr == "patch_size" else ""
            raise ValueError(f"{label} must be a whole number ≥ {minimum}{unit}, got {value!r}")
    lr = form.lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a number > 0, got {lr!r}")


def _check_loss_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate loss-weight overrides now (not in the training thread); a plain dict of floats."""
    from dataclasses import fields

    from ..losses import LossWeights

    known = {f.name for f in fields(LossWeights)}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; known: {sorted(known)}")
    try:
        out = {name: float(value) for name, value in weights.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"loss weights must be numbers: {exc}") from exc
    LossWeights(**out)  # negative, infinite or zero σ_min: its own clear message
    return out
