"""Generator and discriminator losses of the CGRDN GAN (Lobato et al. 2023, eqs 2–15).

All functions take batches of shape ``(B, C, H, W)``: ``y_g`` the generated
(restored) images and ``y`` the undistorted ground truth, in the same
intensity unit. "Per image" statistics are taken over ``(C, H, W)`` of each
batch element, standard deviations are population ones (divisor ``C·H·W``),
and every loss returns a scalar tensor averaged over the batch. This module
imports torch; import it lazily from code that must start fast.

Reference: I. Lobato, T. Friedrich and S. Van Aert, "Deep convolutional neural
networks to restore single-shot electron microscopy images", arXiv:2303.17025
(2023); equation numbers refer to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "FOURIER_EPS",
    "SIGMA_MIN",
    "LossWeights",
    "contrast_weight",
    "contrast_weighted_l1",
    "contrast_weighted_l2",
    "fourier_loss",
    "generator_loss",
    "local_whitening",
    "mean_loss",
    "mlwt_loss",
    "relativistic_adversarial_loss",
    "relativistic_discriminator_loss",
    "std_loss",
]

#: Default σ_min of eqs 5 and 7, in image intensity units. Clean training
#: images are normalised to a maximum of 1 (Lobato et al. 2023, eq 26) with std/mean
#: ratios of 0.01–0.35, so their standard deviations span ≈0.005–0.3; 0.01
#: caps the contrast weight at 100 for nearly flat images.
SIGMA_MIN: float = 0.01

#: Added to ``|F|²`` in the Fourier loss (eq 9) so that ``|F|^γ`` has a finite
#: gradient at zero; the value of a term then deviates from ``|F|^γ`` only for
#: ``|F| ≲ 1e-6`` and is ``FOURIER_EPS^(γ/2)`` (≈0.18 for γ = 1/8) at zero.
FOURIER_EPS: float = 1e-12

_STD_EPS = 1e-12  # keeps d std / d x finite for constant images


# --------------------------------------------------------------------------- helpers
def _check_pair(y_g: object, y: object) -> None:
    for name, t in (("y_g", y_g), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    assert isinstance(y_g, torch.Tensor) and isinstance(y, torch.Tensor)
    if y_g.shape != y.shape:
        raise ValueError(
            f"y_g and y must have the same shape, got {tuple(y_g.shape)} and {tuple(y.shape)}"
        )


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _image_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(1, 2, 3))


def _image_std(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(t.var(dim=(1, 2, 3), correction=0) + _STD_EPS)


# --------------------------------------------------------------------- pixel losses
def contrast_weight(y: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Per-image weight ``w_y = 1 / max(σ_min, Std{y})`` (Lobato et al. 2023, eq 5).

    Parameters
    ----------
    y : torch.Tensor
        Ground-truth batch ``(B, C, H, W)``.
    sigma_min : float
        Floor of the standard deviation, in intensity units of ``y``.

    Returns
    -------
    torch.Tensor
        Weights of shape ``(B,)``, in inverse intensity units.
    """
    _check_positive("sigma_min", sigma_min)
    var = y.var(dim=(1, 2, 3), correction=0)
    return torch.rsqrt(var.clamp_min(sigma_min**2))


def contrast_weighted_l1(
    y_g: torch.Tensor, y: torch.Tensor, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """Contrast-weighted L1 loss, ``E{w_y |y - y_g|}`` (Lobato et al. 2023, eqs 4–5).

    The mean absolute error of each image is multiplied by its weight
    :func:`contrast_weight` (so every example counts equally whatever its
    contrast) and averaged over the batch. Dimensionless.
    """
    _check_pair(y_g, y)
    w = contrast_weight(y, sigma_min)
    return (w * _image_mean((y - y_g).abs())).mean()


def contrast_weighted_l2(
    y_g: torch.Tensor, y: torch.Tensor, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """Contrast-weighted L2 loss, ``E{w_y |y - y_g|²}`` (Lobato et al. 2023, eq 6).

    As printed in the paper the weight is not squared, so this term (unlike
    eq 4) scales linearly with the image intensity; it penalises outliers
    (zingers, dead pixels) that the residual architecture tends to copy.
    """
    _check_pair(y_g, y)
    w = contrast_weight(y, sigma_min)
    return (w * _image_mean((y - y_g) ** 2)).mean()


def local_whitening(y: torch.Tensor, window: int, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Local whitening transform ``y^S`` with an ``S × S`` box (Lobato et al. 2023, eq 7).

    ``y^S_ij = (y_ij - E_S{y}_ij) / max(σ_min, Std_S{y}_ij)``, where the local
    mean and (population) standard deviation are taken over the ``S × S``
    window at stride 1. For an even ``S`` the window of pixel ``(i, j)``
    covers rows ``i - S/2 + 1 … i + S/2`` (and likewise columns); for an odd
    ``S`` it is centred. The image is extended by reflection (without
    repeating the edge pixel) so the output has the input's shape; this needs
    ``H, W > S // 2``.

    Parameters
    ----------
    y : torch.Tensor
        Batch ``(B, C, H, W)``; channels are transformed independently.
    window : int
        Window side ``S``, in pixels.
    sigma_min : float
        Floor of the local standard deviation, in intensity units.

    Returns
    -------
    torch.Tensor
        Whitened batch, same shape as ``y``, dimensionless.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    _check_positive("sigma_min", sigma_min)
    before, after = (window - 1) // 2, window // 2
    if min(y.shape[-2:]) <= after:
        raise ValueError(
            f"images of size {tuple(y.shape[-2:])} are too small for a {window}×{window} "
            f"whitening window: height and width must exceed {after} pixels"
        )
    pad = (before, after, before, after)

    def box_mean(t: torch.Tensor) -> torch.Tensor:
        if after:
            t = F.pad(t, pad, mode="reflect")
        return F.avg_pool2d(t, kernel_size=window, stride=1)

    b, c, h, w = y.shape
    flat = y.reshape(b * c, 1, h, w)
    mean = box_mean(flat)
    var = (box_mean(flat * flat) - mean * mean).clamp_min(0.0)
    scale = torch.sqrt(var.clamp_min(sigma_min**2))
    return ((flat - mean) / scale).reshape(b, c, h, w)


def mlwt_loss(
    y_g: torch.Tensor,
    y: torch.Tensor,
    windows: Sequence[int] = (2, 4, 8, 16),
    sigma_min: float = SIGMA_MIN,
) -> torch.Tensor:
    """Multi-local whitening transform loss (Lobato et al. 2023, eqs 7–8).

    ``(1/|windows|) Σ_S E{|y^S - y_g^S|}`` with ``y^S`` from
    :func:`local_whitening` (each image whitened with its own local
    statistics). Dimensionless. Images must be larger than ``max(windows)//2``.
    """
    _check_pair(y_g, y)
    if len(windows) == 0:
        raise ValueError("windows must contain at least one window size")
    terms = [
        (local_whitening(y, s, sigma_min) - local_whitening(y_g, s, sigma_min)).abs().mean()
        for s in windows
    ]
    return torch.stack(terms).mean()


def fourier_loss(
    y_g: torch.Tensor,
    y: torch.Tensor,
    gamma: float = 0.125,
    *,
    eps: float = FOURIER_EPS,
    norm: str = "ortho",
) -> torch.Tensor:
    """Fourier-space loss ``E[|F(y - y_g)|^γ]`` (Lobato et al. 2023, eq 9).

    Computed as the mean over batch, channels and frequencies of
    ``(|F|² + eps)^(γ/2)``; ``eps`` keeps the gradient finite where the
    difference spectrum vanishes; for identical images the loss is
    ``eps^(γ/2)`` and its gradient zero.

    Parameters
    ----------
    y_g, y : torch.Tensor
        Generated and ground-truth batches ``(B, C, H, W)``.
    gamma : float
        Power in ``(0, 1]``; the paper uses 0.125 to lift the weak
        high-frequency components.
    eps : float
        Added to ``|F|²`` (intensity² units).
    norm : {"ortho", "backward", "forward"}
        Normalisation of :func:`torch.fft.fft2`. ``"ortho"`` (default) keeps
        ``|F|`` independent of the image size, so the loss weight does not
        depend on the tile size; the paper does not specify it.
    """
    _check_pair(y_g, y)
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    _check_positive("eps", eps)
    spectrum = torch.fft.fft2(y - y_g, norm=norm)
    power = spectrum.real.square() + spectrum.imag.square()
    return (power + eps).pow(gamma / 2).mean()


def mean_loss(y_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean-intensity constraint ``|E{y} - E{y_g}|`` per image, batch-averaged (eq 10).

    In intensity units of ``y``.
    """
    _check_pair(y_g, y)
    return (_image_mean(y) - _image_mean(y_g)).abs().mean()


def std_loss(y_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Contrast constraint ``|Std{y} - Std{y_g}|`` per image, batch-averaged (eq 11).

    In intensity units of ``y``; the standard deviations use a 1e-12 variance
    offset so the gradient stays finite for a constant ``y_g``.
    """
    _check_pair(y_g, y)
    return (_image_std(y) - _image_std(y_g)).abs().mean()


# ------------------------------------------------------------------ adversarial
Logits = torch.Tensor | Sequence[torch.Tensor]


def _as_scales(c_real: Logits, c_fake: Logits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    reals = [c_real] if isinstance(c_real, torch.Tensor) else list(c_real)
    fakes = [c_fake] if isinstance(c_fake, torch.Tensor) else list(c_fake)
    if not reals or len(reals) != len(fakes):
        raise ValueError(
            f"c_real and c_fake must be tensors or equally long non-empty sequences of "
            f"tensors (one per discriminator scale), got {len(reals)} and {len(fakes)}"
        )
    for r, f in zip(reals, fakes, strict=True):
        if not (isinstance(r, torch.Tensor) and isinstance(f, torch.Tensor)):
            raise ValueError("discriminator logits must be torch.Tensors")
        if r.shape != f.shape or r.numel() == 0:
            raise ValueError(
                f"logit maps must be non-empty and of equal shape, got "
                f"{tuple(r.shape)} and {tuple(f.shape)}"
            )
    return list(zip(reals, fakes, strict=True))


def _relativistic_bce(c_real: Logits, c_fake: Logits, real_target: float) -> torch.Tensor:
    losses = []
    for r, f in _as_scales(c_real, c_fake):
        real_rel = r - f.mean()  # logit of D_Rap(y, y_g), eq 2
        fake_rel = f - r.mean()  # logit of D_Rap(y_g, y), eq 3
        losses.append(
            F.binary_cross_entropy_with_logits(real_rel, torch.full_like(real_rel, real_target))
            + F.binary_cross_entropy_with_logits(
                fake_rel, torch.full_like(fake_rel, 1.0 - real_target)
            )
        )
    return torch.stack(losses).mean()


def relativistic_adversarial_loss(c_real: Logits, c_fake: Logits) -> torch.Tensor:
    """Relativistic average adversarial (generator) loss (Lobato et al. 2023, eq 12 with eqs 2–3).

    ``-E{log(1 - D_Rap(y, y_g))} - E{log D_Rap(y_g, y)}`` with
    ``D_Rap(a, b) = σ(C(a) - E{C(b)})``, evaluated from the raw logits with
    :func:`torch.nn.functional.binary_cross_entropy_with_logits` for
    stability. ``E{C(·)}`` is the mean over the batch and all patch
    positions.

    Parameters
    ----------
    c_real, c_fake : torch.Tensor or sequence of torch.Tensor
        Discriminator logits ``C(y)`` and ``C(y_g)`` (equal shapes), or one of
        each per scale of a multi-scale discriminator (the per-scale losses
        are averaged). For the generator step ``c_real`` may be detached.

    Returns
    -------
    torch.Tensor
        Scalar loss (nats).
    """
    return _relativistic_bce(c_real, c_fake, real_target=0.0)


def relativistic_discriminator_loss(c_real: Logits, c_fake: Logits) -> torch.Tensor:
    """Relativistic average discriminator loss (Lobato et al. 2023, eq 15).

    ``-E{log D_Rap(y, y_g)} - E{log(1 - D_Rap(y_g, y))}``; arguments as for
    :func:`relativistic_adversarial_loss` (pass ``C(y_g)`` computed from a
    detached ``y_g``).
    """
    return _relativistic_bce(c_real, c_fake, real_target=1.0)


# ----------------------------------------------------------------- total loss
@dataclass(frozen=True)
class LossWeights:
    """Weights λ of the generator loss (Lobato et al. 2023, eqs 13–14) and loss settings.

    The defaults are the training configuration the authors released with their
    models: ``l1 = 10`` and ``adversarial = 5e-4``, every other term off.
    Terms with weight 0 are not computed. The other terms are meant to be
    switched on with weights that keep them at a fraction of the L1 term;
    :meth:`all_terms` is such a balanced starting point.

    Attributes
    ----------
    l1, l2, mlwt, fourier, mean, std, adversarial : float
        λ_1, λ_2, λ_mlwt, λ_fs-γ, λ_mean, λ_std and λ_Adv (≥ 0).
    sigma_min : float
        σ_min of eqs 5 and 7, in intensity units.
    fourier_gamma : float
        γ of eq 9.
    mlwt_windows : tuple of int
        Window sizes S of eq 8, in pixels.
    """

    l1: float = 10.0
    l2: float = 0.0
    mlwt: float = 0.0
    fourier: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    adversarial: float = 5e-4
    sigma_min: float = SIGMA_MIN
    fourier_gamma: float = 0.125
    mlwt_windows: tuple[int, ...] = (2, 4, 8, 16)

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "mlwt", "fourier", "mean", "std", "adversarial"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")
        _check_positive("sigma_min", self.sigma_min)
        if not 0 < self.fourier_gamma <= 1:
            raise ValueError(f"fourier_gamma must be in (0, 1], got {self.fourier_gamma!r}")
        windows = tuple(self.mlwt_windows)
        if not windows or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in windows
        ):
            raise ValueError(f"mlwt_windows must be positive ints, got {self.mlwt_windows!r}")
        object.__setattr__(self, "mlwt_windows", windows)

    @classmethod
    def all_terms(cls) -> LossWeights:
        """Every term of eq 14 switched on, balanced against the L1 term.

        Not values from the paper: chosen from the gradient norms of each
        term for a batch of synthetic lattice images (128², intensities
        ≤ 1) with a residual error of 5 % of their standard deviation. With
        these weights the L1 gradient dominates; MLWT reaches ≈1/6 of it, mean
        and std ≈1/8 while the means/contrasts are off, L2 ≈1/75 (but twice
        the L1 pull on an outlier pixel with an error of 1), and the Fourier
        term 1/300 for white residuals up to 1/4 for spatially correlated
        ones (its gradient grows like ``|F|^(γ-1)`` on weak frequencies).
        """
        return cls(l1=10.0, l2=10.0, mlwt=1.0, fourier=0.01, mean=10.0, std=10.0, adversarial=5e-4)

    @classmethod
    def pixelwise_only(cls) -> LossWeights:
        """The default weights without the adversarial term (no discriminator)."""
        return cls(adversarial=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (for model cards)."""
        d = asdict(self)
        d["mlwt_windows"] = list(self.mlwt_windows)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossWeights:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown loss setting(s) {unknown}; allowed: {sorted(known)}")
        d = dict(data)
        if "mlwt_windows" in d:
            d["mlwt_windows"] = tuple(d["mlwt_windows"])
        return cls(**d)


def generator_loss(
    y_g: torch.Tensor,
    y: torch.Tensor,
    weights: LossWeights | None = None,
    c_real: Logits | None = None,
    c_fake: Logits | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total generator loss ``L_pixel-wise + λ_Adv L_Adv`` (Lobato et al. 2023, eqs 13–14).

    Parameters
    ----------
    y_g, y : torch.Tensor
        Generated and ground-truth batches ``(B, C, H, W)``.
    weights : LossWeights, optional
        Weights and settings; default :class:`LossWeights()`.
    c_real, c_fake : torch.Tensor or sequence of torch.Tensor, optional
        Discriminator logits of the real and generated pairs. The adversarial
        term is included only when both are given and its weight is > 0.

    Returns
    -------
    total : torch.Tensor
        Weighted sum, a scalar with gradient.
    terms : dict of str to torch.Tensor
        Unweighted value of every term that was computed (keys ``"l1"``,
        ``"l2"``, ``"mlwt"``, ``"fourier"``, ``"mean"``, ``"std"``,
        ``"adversarial"``), detached, for logging (``float(terms["l1"])``).
    """
    _check_pair(y_g, y)
    w = LossWeights() if weights is None else weights
    if not isinstance(w, LossWeights):
        raise ValueError(f"weights must be a LossWeights, got {type(w).__name__}")
    raw: dict[str, torch.Tensor] = {}
    if w.l1:
        raw["l1"] = contrast_weighted_l1(y_g, y, w.sigma_min)
    if w.l2:
        raw["l2"] = contrast_weighted_l2(y_g, y, w.sigma_min)
    if w.mlwt:
        raw["mlwt"] = mlwt_loss(y_g, y, w.mlwt_windows, w.sigma_min)
    if w.fourier:
        raw["fourier"] = fourier_loss(y_g, y, w.fourier_gamma)
    if w.mean:
        raw["mean"] = mean_loss(y_g, y)
    if w.std:
        raw["std"] = std_loss(y_g, y)
    if w.adversarial and c_real is not None and c_fake is not None:
        raw["adversarial"] = relativistic_adversarial_loss(c_real, c_fake)
    if not raw:
        raise ValueError(
            "all loss weights are zero (or only the adversarial one without "
            "discriminator logits): nothing to optimise"
        )
    total = sum(
        (getattr(w, name) * value for name, value in raw.items()),
        start=torch.zeros((), dtype=y_g.dtype, device=y_g.device),
    )
    return total, {name: value.detach() for name, value in raw.items()}
