"""Pix2Pix U-Net generator for 4D-STEM diffraction patterns (Cao et al. 2024).

J. Cao, A. Demortière, N. Folastre, G. Oney, P. P. Das and S. Nicolopoulos,
"Denoising of 4D-STEM Dataset using Pix2Pix GAN Algorithm and Artifact
Reduction Strategy" (2024) train the conditional GAN of P. Isola, J.-Y. Zhu,
T. Zhou and A. A. Efros, "Image-to-image translation with conditional
adversarial networks" (CVPR 2017, arXiv:1611.07004) on noisy/clean pattern
pairs, with skip connections and a multiscale discriminator against GAN
artefacts; the loss is GAN + 100·L1.

The generator is the pix2pix U-Net: ``depth`` 4×4 stride-2 convolutions
(LeakyReLU 0.2; channels ngf, 2ngf, 4ngf, 8ngf, 8ngf, …), a mirrored decoder
(ReLU) with skip concatenations, dropout in the innermost 8ngf decoder blocks.
The depth follows the pattern size: ``depth = log2(pattern_size)`` takes a
``pattern_size``² pattern down to 1×1 as in pix2pix (8 for 256²), and every
input side must be a multiple of :attr:`Pix2PixGenerator.size_multiple`
``= 2**depth`` (the 4D-STEM engine pads and crops back). The decoder can
upsample with the reference's 4×4 transposed convolutions or, against their
checkerboard artefacts, with bilinear ×2 + 3×3 convolution (A. Odena,
V. Dumoulin and C. Olah, "Deconvolution and checkerboard artifacts",
Distill 2016).

Count-aware normalisation (this package's design; diffraction patterns span
10–10⁵ counts): ``forward`` takes counts and returns counts. With the
pattern's total ``N = Σ x`` and mean ``m = N / (H·W)`` the network sees
``log(1 + x/m)`` and the dose ``(log10 N − 3) / 2`` as a second channel; its
output logits ``z`` become ``N · softmax(z)`` over the pixels, so the output is
non-negative and keeps every pattern's total counts exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_image_batch

__all__ = [
    "PIX2PIX_CONFIGS",
    "Pix2PixConfig",
    "Pix2PixGenerator",
    "anscombe_l1",
    "depth_for_size",
    "local_count_mse",
    "loss_domain",
]

_UPSAMPLING = ("bilinear", "transposed")
_NORMS = ("instance", "none")


def depth_for_size(pattern_size: int) -> int:
    """U-Net depth that takes a ``pattern_size``² pattern down to 1×1 (``ceil(log2)``)."""
    if isinstance(pattern_size, bool) or not isinstance(pattern_size, int) or pattern_size < 4:
        raise ValueError(f"pattern_size must be an int ≥ 4 pixels, got {pattern_size!r}")
    return int(math.ceil(math.log2(pattern_size)))


@dataclass(frozen=True)
class Pix2PixConfig:
    """Size of a :class:`Pix2PixGenerator`.

    Attributes
    ----------
    ngf : int
        Channels of the first encoder layer (pix2pix: 64); deeper layers double
        up to ``8·ngf``.
    pattern_size : int
        Pattern side (pixels) the depth is made for: ``depth = ceil(log2(pattern_size))``,
        4–1024. Larger patterns work too (the bottleneck is then larger than 1×1).
    upsampling : {"bilinear", "transposed"}
        Decoder upsampling (see the module docstring).
    norm : {"instance", "none"}
        Normalisation of the hidden layers (pix2pix: batch norm with batch 1, i.e.
        instance statistics).
    dropout : float
        Dropout probability in the (up to three) innermost 8·ngf decoder blocks
        during training (pix2pix: 0.5), [0, 1).
    prior_sigma : float
        0 (pix2pix): the U-Net output is the logit map. > 0: the U-Net output is
        added to ``log(G_σ * (x/m) + ε)``, the log of the pattern smoothed by a
        Gaussian of this σ (pixels, ≤ 8), so that an untrained network already
        returns a smoothed pattern and training learns the correction (fewer
        steps on a CPU). The smoothing is a fixed part of the network.
    """

    ngf: int = 64
    pattern_size: int = 256
    upsampling: str = "transposed"
    norm: str = "instance"
    dropout: float = 0.5
    prior_sigma: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.ngf, bool) or not isinstance(self.ngf, int) or not 1 <= self.ngf <= 512:
            raise ValueError(f"ngf must be an int in [1, 512], got {self.ngf!r}")
        if (
            isinstance(self.pattern_size, bool)
            or not isinstance(self.pattern_size, int)
            or not 4 <= self.pattern_size <= 1024
        ):
            raise ValueError(f"pattern_size must be an int in [4, 1024], got {self.pattern_size!r}")
        if self.upsampling not in _UPSAMPLING:
            raise ValueError(f"upsampling must be one of {_UPSAMPLING}, got {self.upsampling!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.prior_sigma) <= 8.0:
            raise ValueError(f"prior_sigma must be in [0, 8] pixels, got {self.prior_sigma!r}")

    @property
    def depth(self) -> int:
        """Number of stride-2 encoder stages."""
        return depth_for_size(self.pattern_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in model cards)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pix2PixConfig:
        """Build from a dict, refusing unknown keys with a clear message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Pix2Pix setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


#: Named sizes. "full": the pix2pix reference (ngf 64, 256² → 1×1, transposed
#: convolutions, dropout 0.5); "small": the CPU-trained bundled model (64²
#: patterns, bilinear upsampling); "tiny": tests (< 50k parameters).
PIX2PIX_CONFIGS: dict[str, Pix2PixConfig] = {
    "full": Pix2PixConfig(),
    "small": Pix2PixConfig(
        ngf=16, pattern_size=64, upsampling="bilinear", dropout=0.0, prior_sigma=1.0
    ),
    "tiny": Pix2PixConfig(ngf=4, pattern_size=32, upsampling="bilinear", dropout=0.0),
}


def loss_domain(counts: torch.Tensor) -> torch.Tensor:
    """Pattern in the domain of the L1 loss: ``sqrt(x / mean(x))`` per pattern.

    The square root is the variance-stabilising transform of Poisson counts
    (Anscombe-like), and dividing by the pattern's own mean makes the loss
    independent of the dose and of small differences in total counts.
    """
    x = counts.clamp_min(0)
    mean = x.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return torch.sqrt(x / mean + 1e-8)


def anscombe_l1(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L1 distance after the Anscombe transform, relative to each clean pattern's range.

    ``mean(|A(ŷ) − A(y)|) / (max A(y) − min A(y))`` with ``A(x) = 2·sqrt(x + 3/8)``
    (counts): the Anscombe transform makes Poisson noise of every count level
    comparable, and dividing by the clean pattern's range (the data range of its
    PSNR) weighs every dose alike. This is the "L1" of the bundled model's
    GAN + 100·L1 loss.
    """
    a_e = 2.0 * torch.sqrt(estimate.clamp_min(0) + 0.375)
    a_c = 2.0 * torch.sqrt(clean.clamp_min(0) + 0.375)
    span = a_c.amax(dim=(-2, -1), keepdim=True) - a_c.amin(dim=(-2, -1), keepdim=True)
    return ((a_e - a_c).abs() / span.clamp_min(1e-3)).mean()


def local_count_mse(
    estimate: torch.Tensor, clean: torch.Tensor, windows: tuple[int, ...] = (2, 4, 8)
) -> torch.Tensor:
    """Squared error of local count sums, patterns scaled to a mean of 1 count per pixel.

    ``mean_k mean((P_k(ŷ/m̂) − P_k(y/m))²)`` with ``P_k`` the k×k block mean and
    ``m``, ``m̂`` each pattern's mean count. An L1 loss pulls an uncertain weak
    Bragg disk towards the (dark) median; a squared error is minimised by the
    conditional mean, so this term keeps integrated disk intensities and
    region-mean patterns unbiased while the L1 keeps them sharp.
    """

    def scaled(t: torch.Tensor) -> torch.Tensor:
        t = t.clamp_min(0)
        return t / t.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)

    e, c = scaled(estimate), scaled(clean)
    terms = [
        ((F.avg_pool2d(e, k) - F.avg_pool2d(c, k)) ** 2).mean()
        for k in windows
        if min(e.shape[-2:]) >= k
    ]
    return torch.stack(terms).mean()


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True) if kind == "instance" else nn.Identity()


class _Up(nn.Module):
    """Decoder stage: ReLU → ×2 upsampling conv → norm → (dropout)."""

    def __init__(self, cin: int, cout: int, mode: str, norm: str, dropout: float, last: bool):
        super().__init__()
        if mode == "transposed":
            self.conv: nn.Module = nn.ConvTranspose2d(
                cin, cout, 4, 2, 1, bias=last or norm == "none"
            )
        else:
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=last or norm == "none")
        self.mode = mode
        self.norm = nn.Identity() if last else _norm(norm, cout)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = F.relu(x)
        if self.mode != "transposed":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.drop(self.norm(self.conv(x)))


class _GaussianLogPrior(nn.Module):
    """``log(G_σ * (x / m) + ε)``: log of the mean-normalised pattern smoothed by a Gaussian.

    A separable Gaussian (σ in pixels, truncated at 3σ, edge-replicated
    borders); ``ε = 0.01`` (1 % of the mean count) bounds the logits of empty
    pixels. No trainable parameters (the kernel is recomputed, not stored).
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.radius = max(int(math.ceil(3 * sigma)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        xc = x.float().clamp_min(0)
        u = xc / xc.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        t = torch.arange(-self.radius, self.radius + 1, dtype=u.dtype, device=u.device)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        k = k / k.sum()
        r = self.radius
        u = F.pad(u, (r, r, r, r), mode="replicate")
        u = F.conv2d(u, k.view(1, 1, 1, -1))
        u = F.conv2d(u, k.view(1, 1, -1, 1))
        return torch.log(u + 0.01)


class Pix2PixGenerator(nn.Module):
    """Pix2Pix U-Net that maps a noisy pattern (counts) to a denoised one (counts).

    Parameters
    ----------
    config : Pix2PixConfig, optional
        Network size (default: the pix2pix reference, :data:`PIX2PIX_CONFIGS` "full").

    Attributes
    ----------
    size_multiple : int
        Input height and width must be multiples of this (``2**depth``).
    config : Pix2PixConfig
    """

    #: Channels the network itself sees: ``log(1 + x/m)`` and the dose.
    feature_channels = 2
    #: Every output pattern has its input's total counts (the 4D-STEM engine
    #: rescales cropped patterns to their input totals after padding).
    keeps_total_counts = True

    def __init__(self, config: Pix2PixConfig | None = None) -> None:
        super().__init__()
        cfg = config or Pix2PixConfig()
        self.config = cfg
        depth = cfg.depth
        self.size_multiple = 2**depth
        widths = [cfg.ngf * min(2**i, 8) for i in range(depth)]
        self.down = nn.ModuleList()
        cin = self.feature_channels
        for i, w in enumerate(widths):
            norm = "none" if i in (0, depth - 1) else cfg.norm
            self.down.append(
                nn.ModuleDict(
                    {
                        "conv": nn.Conv2d(cin, w, 4, 2, 1, bias=norm == "none"),
                        "norm": _norm(norm, w),
                    }
                )
            )
            cin = w
        # Decoder: the innermost stage gets only the bottleneck, the others the
        # concatenation of the previous stage and the matching encoder output.
        self.up = nn.ModuleList()
        n_drop = 0
        for i in reversed(range(depth)):
            cout = widths[i - 1] if i > 0 else 1
            cin_up = widths[i] if i == depth - 1 else 2 * widths[i]
            inner_wide = i > 0 and widths[i - 1] == 8 * cfg.ngf and i < depth - 1
            dropout = cfg.dropout if inner_wide and n_drop < 3 else 0.0
            n_drop += dropout > 0
            self.up.append(_Up(cin_up, cout, cfg.upsampling, cfg.norm, dropout, last=i == 0))
        self.prior: nn.Module | None = None
        if cfg.prior_sigma > 0:
            self.prior = _GaussianLogPrior(float(cfg.prior_sigma))
            # start as the smoothed pattern: the last layer's correction is zero
            nn.init.zeros_(self.up[-1].conv.weight)
            nn.init.zeros_(self.up[-1].conv.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network's view of a count batch ``(B, 1, H, W)``: ``log(1 + x/m)`` and the dose."""
        xc = x.clamp_min(0)
        total = xc.sum(dim=(-2, -1), keepdim=True)
        mean = (total / (x.shape[-2] * x.shape[-1])).clamp_min(1e-12)
        dose = (torch.log10(total.clamp_min(1.0)) - 3.0) / 2.0
        return torch.cat([torch.log1p(xc / mean), dose.expand_as(xc)], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``z`` of a count batch (before the softmax over pixels)."""
        z = self._unet(self.features(x))
        if self.prior is not None:
            z = z + self.prior(x)
        return z

    def _unet(self, h: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            if i > 0:
                h = F.leaky_relu(h, 0.2)
            h = stage["norm"](stage["conv"](h))
            skips.append(h)
        for j, stage in enumerate(self.up):
            if j > 0:
                h = torch.cat([h, skips[len(skips) - 1 - j]], dim=1)
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise a batch of patterns.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, 1, H, W)`` counts; H and W multiples of :attr:`size_multiple`.
            Negative values (read noise) count as 0 for the shape, not for the total.

        Returns
        -------
        torch.Tensor
            ``(N, 1, H, W)`` non-negative counts; each pattern sums to
            ``max(Σ x, 0)`` (total counts kept).
        """
        check_image_batch(x, 1, min_size=1, name="diffraction pattern batch")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"pattern size {h}×{w} is not a multiple of {self.size_multiple}; pad the "
                "patterns (restore_4dstem does this) or use a model made for smaller patterns"
            )
        z = self.logits(x).float()
        total = x.float().sum(dim=(-2, -1), keepdim=True).clamp_min(0)
        p = torch.softmax(z.flatten(-2), dim=-1).view_as(z)
        return (p * total).to(x.dtype)
