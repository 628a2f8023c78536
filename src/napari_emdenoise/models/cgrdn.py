"""Concatenated Grouped Residual Dense Network (CGRDN), the restoration generator.

Lobato, Friedrich & Van Aert, "Deep convolutional neural networks to restore
single-shot electron microscopy images" (2023, arXiv:2303.17025), section
"Generator architecture" (Fig. 9), with the layout of the authors' released
models:

* per-image normalisation ``x' = (x - mean) / scale`` (see
  :mod:`._normalization`), undone at the output;
* 3×3 conv → ``features`` channels; 4×4 stride-2 conv (downsampling);
* ``n_grdb`` grouped residual dense blocks (GRDB); their outputs are
  concatenated, fused by a 1×1 conv and added to the post-downsampling
  features (semi-global residual) — the paper's replacement of GRDN's cascade;
* upsampling back to full resolution; 3×3 conv → 1 channel; global residual
  with the (normalised) input.
* GRDB = ``n_rdb`` residual dense blocks (RDB), concatenated, 1×1 fusion,
  + GRDB input. RDB = ``n_conv`` 3×3 conv + ReLU layers with dense
  connections (each adds ``growth`` channels), 1×1 fusion, + RDB input.

Upsampling comes in two variants (:attr:`CGRDNConfig.upsampling`):

``"transposed"``
    The published 4×4 stride-2 transposed convolution. Its four output
    phases have their own kernels, and a network that has not equalised them
    prints a 2-pixel checkerboard (a spike at the Nyquist frequencies) on
    every image. Kept to load models trained with it.
``"bilinear"`` (default)
    A 3×3 conv at half resolution, bilinear ×2 interpolation, plus the
    full-resolution head features (a skip connection), then the tail. A smooth
    feature map stays smooth: the low-resolution path cannot add a
    checkerboard, and the full-resolution skip lets the tail act on detail
    finer than two pixels. (Resize-convolution instead of deconvolution:
    Odena, Dumoulin & Olah, "Deconvolution and checkerboard artifacts",
    Distill 2016.)

No normalisation layers, biases on, zero "same" padding, no CBAM (removed by
the authors). ``CGRDNConfig(upsampling="transposed")`` has exactly 7,035,521
parameters, the size of the released models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_image_batch
from ._normalization import NORM_REL_FLOOR, denormalize, normalize_per_image

__all__ = [
    "UPSAMPLING_MODES",
    "CGRDN",
    "CGRDN_CONFIGS",
    "CGRDNConfig",
    "GroupedResidualDenseBlock",
    "ResidualDenseBlock",
]


#: Upsampling variants of :class:`CGRDNConfig` (module docstring).
UPSAMPLING_MODES: tuple[str, ...] = ("bilinear", "transposed")


@dataclass(frozen=True)
class CGRDNConfig:
    """Size of a :class:`CGRDN`.

    Attributes
    ----------
    in_channels : int
        Image channels (1 for EM images); the output has the same number.
    features : int
        Channels of the feature maps between blocks (released models: 64).
    growth : int
        Channels added by each dense conv layer of an RDB (released models: 32).
    n_grdb : int
        Number of grouped residual dense blocks (released models: 4).
    n_rdb : int
        Residual dense blocks per GRDB (released models: 4).
    n_conv : int
        Dense 3×3 conv layers per RDB (released models: 8).
    upsampling : {"bilinear", "transposed"}
        How the half-resolution features return to full resolution (see the
        module docstring). A configuration dict without this key (models
        saved before it existed) means ``"transposed"``.
    full_res_convs : int
        3×3 conv layers (ReLU between them) of a residual refinement block at
        full resolution, between the upsampling and the tail; 0 (default, the
        published design) has none. Without it, with bilinear upsampling, the
        network acts on frequencies above the half-resolution band (periods
        below 4 pixels along an axis) only through one fixed linear path (head
        conv → tail conv) and the interpolated images of the half-resolution
        band, so it cannot treat a fine lattice differently from noise there.
        The block's last conv starts at zero, so a model extended with it
        starts as the model it was copied from.
    """

    in_channels: int = 1
    features: int = 64
    growth: int = 32
    n_grdb: int = 4
    n_rdb: int = 4
    n_conv: int = 8
    upsampling: str = "bilinear"
    full_res_convs: int = 0

    def __post_init__(self) -> None:
        if self.upsampling not in UPSAMPLING_MODES:
            raise ValueError(
                f"CGRDNConfig.upsampling must be one of {UPSAMPLING_MODES}, got {self.upsampling!r}"
            )
        for f in fields(self):
            if f.name == "upsampling":
                continue
            value = getattr(self, f.name)
            low = 0 if f.name == "full_res_convs" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "an int ≥ 0" if low == 0 else "a positive int"
                raise ValueError(f"CGRDNConfig.{f.name} must be {kind}, got {value!r}")
        if self.full_res_convs == 1:
            raise ValueError("CGRDNConfig.full_res_convs must be 0 or ≥ 2 (conv, ReLU, conv)")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CGRDNConfig:
        """Build a configuration from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CGRDN config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**{"upsampling": "transposed", **data})

    def n_parameters(self) -> int:
        """Number of trainable parameters of the network, computed in closed form."""
        c, f, g = self.in_channels, self.features, self.growth

        def conv(cin: int, cout: int, k: int) -> int:
            return cin * cout * k * k + cout

        rdb = sum(conv(f + i * g, g, 3) for i in range(self.n_conv))
        rdb += conv(f + self.n_conv * g, f, 1)
        grdb = self.n_rdb * rdb + conv(self.n_rdb * f, f, 1)
        return (
            conv(c, f, 3)  # head
            + conv(f, f, 4)  # stride-2 downsampling
            + self.n_grdb * grdb
            + conv(self.n_grdb * f, f, 1)  # global feature fusion
            + (conv(f, f, 4) if self.upsampling == "transposed" else conv(f, f, 3))
            + self.full_res_convs * conv(f, f, 3)  # full-resolution refinement
            + conv(f, c, 3)  # tail
        )


#: Named sizes, all with bilinear upsampling. ``"full"`` is the published
#: model's size (7,006,849 parameters; 7,035,521 with transposed upsampling);
#: ``"small"`` (174,209 parameters) trains on a 2-core CPU in about an hour;
#: ``"tiny"`` is for unit tests and smoke runs.
CGRDN_CONFIGS: dict[str, CGRDNConfig] = {
    "full": CGRDNConfig(),
    "small": CGRDNConfig(features=32, growth=16, n_grdb=2, n_rdb=2, n_conv=4),
    "tiny": CGRDNConfig(features=8, growth=8, n_grdb=2, n_rdb=2, n_conv=2),
}


class ResidualDenseBlock(nn.Module):
    """Residual dense block (RDB, Lobato et al. 2023, Fig. 9c).

    ``n_conv`` 3×3 conv + ReLU layers, each fed the concatenation of the
    block input and all previous layer outputs; a 1×1 conv fuses the
    ``features + n_conv·growth`` channels back to ``features`` and the block
    input is added (local residual).
    """

    def __init__(self, features: int, growth: int, n_conv: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(features + i * growth, growth, kernel_size=3, padding=1)
            for i in range(n_conv)
        )
        self.fusion = nn.Conv2d(features + n_conv * growth, features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        maps = [x]
        for conv in self.convs:
            maps.append(F.relu(conv(torch.cat(maps, dim=1))))
        return x + self.fusion(torch.cat(maps, dim=1))


class GroupedResidualDenseBlock(nn.Module):
    """Grouped residual dense block (GRDB, Lobato et al. 2023, Fig. 9b).

    ``n_rdb`` cascaded RDBs whose outputs are concatenated, fused by a 1×1
    conv to ``features`` channels and added to the block input.
    """

    def __init__(self, features: int, growth: int, n_rdb: int, n_conv: int) -> None:
        super().__init__()
        self.rdbs = nn.ModuleList(
            ResidualDenseBlock(features, growth, n_conv) for _ in range(n_rdb)
        )
        self.fusion = nn.Conv2d(n_rdb * features, features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        outputs = []
        h = x
        for rdb in self.rdbs:
            h = rdb(h)
            outputs.append(h)
        return x + self.fusion(torch.cat(outputs, dim=1))


class CGRDN(nn.Module):
    """Concatenated Grouped Residual Dense Network (Lobato et al. 2023, Fig. 9a).

    Parameters
    ----------
    config : CGRDNConfig, optional
        Network size; the default is the published size (7.0 M parameters).
    normalize : bool
        If True (default) every image is normalised inside :meth:`forward` as
        ``(x - mean) / max(std, std_floor·|mean|)`` over its height and width and the
        output is mapped back to the input's intensity scale. The inference
        engine sets it to False when it normalises a whole image itself before
        tiling. It is a plain attribute and can be changed after construction.

    Attributes
    ----------
    config : CGRDNConfig
    normalize : bool
    std_floor : float
        Relative lower bound of the normalisation scale (dimensionless,
        10⁻⁶; see :mod:`._normalization`).

    Notes
    -----
    Input: ``(B, in_channels, H, W)`` float, any ``H, W >= 1``. Odd sizes are
    padded by one row/column (reflect; replicate for a 1-pixel axis) so that
    the stride-2 down/up-sampling round-trips, and the output is cropped back:
    the output shape always equals the input shape.
    """

    def __init__(self, config: CGRDNConfig | None = None, *, normalize: bool = True) -> None:
        super().__init__()
        cfg = CGRDNConfig() if config is None else config
        if not isinstance(cfg, CGRDNConfig):
            raise ValueError(f"config must be a CGRDNConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.normalize = bool(normalize)
        self.std_floor = NORM_REL_FLOOR
        c, f = cfg.in_channels, cfg.features
        self.head = nn.Conv2d(c, f, kernel_size=3, padding=1)
        self.down = nn.Conv2d(f, f, kernel_size=4, stride=2, padding=1)
        self.grdbs = nn.ModuleList(
            GroupedResidualDenseBlock(f, cfg.growth, cfg.n_rdb, cfg.n_conv)
            for _ in range(cfg.n_grdb)
        )
        self.fusion = nn.Conv2d(cfg.n_grdb * f, f, kernel_size=1)
        if cfg.upsampling == "transposed":
            self.up = nn.ConvTranspose2d(f, f, kernel_size=4, stride=2, padding=1)
        else:
            self.up = nn.Conv2d(f, f, kernel_size=3, padding=1)
        self.refine = _full_res_block(f, cfg.full_res_convs)
        self.tail = nn.Conv2d(f, c, kernel_size=3, padding=1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"config={self.config}, normalize={self.normalize}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore a batch of images.

        Parameters
        ----------
        x : torch.Tensor
            Distorted images, shape ``(B, in_channels, H, W)``, floating point.

        Returns
        -------
        torch.Tensor
            Restored images, same shape and intensity scale as ``x``.
        """
        check_image_batch(x, self.config.in_channels)
        height, width = x.shape[-2:]
        if self.normalize:
            x, mean, scale = normalize_per_image(x, self.std_floor)
        x = _pad_to_even(x)
        full_res = self.head(x)
        shallow = self.down(full_res)
        h = shallow
        group_outputs = []
        for grdb in self.grdbs:
            h = grdb(h)
            group_outputs.append(h)
        h = self.fusion(torch.cat(group_outputs, dim=1)) + shallow  # semi-global residual
        if self.config.upsampling == "transposed":
            up = self.up(h)
        else:
            up = F.interpolate(self.up(h), scale_factor=2.0, mode="bilinear", align_corners=False)
            up = up + full_res  # full-resolution skip
        if self.refine is not None:
            up = up + self.refine(up)
        out = self.tail(up) + x  # global residual
        out = out[..., :height, :width]
        if self.normalize:
            out = denormalize(out, mean, scale)
        return out


def _full_res_block(features: int, n_convs: int) -> nn.Sequential | None:
    """``n_convs`` 3×3 convs with ReLUs between them; the last starts at zero (identity block)."""
    if n_convs == 0:
        return None
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv2d(features, features, kernel_size=3, padding=1))
        if i < n_convs - 1:
            layers.append(nn.ReLU())
    last = layers[-1]
    assert isinstance(last, nn.Conv2d)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


def _pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Pad the bottom row / right column so that ``H`` and ``W`` are even."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
