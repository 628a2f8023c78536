"""Patch discriminators for the conditional GANs (Lobato et al. 2023, Fig. 10; Cao et al. 2024).

:class:`PatchDiscriminator` is the 70×70 PatchGAN of pix2pix (Isola et al.)
as modified by Lobato et al. (2023), section "Discriminator architecture": it sees the
concatenation of the distorted input ``x`` and a clean or generated image,
uses instance normalisation instead of batch normalisation, LeakyReLU(0.2),
and returns the raw logits ``C(·)`` of every patch (no sigmoid), as needed by
the relativistic losses in :mod:`napari_emdenoise.losses`.

Layout for ``n_layers=3`` (receptive field 70×70 pixels), ``c = base_channels``:

====================  ======  =====  ====================
layer                 stride  norm   channels
====================  ======  =====  ====================
conv 4×4 + LReLU      2       no     in → c
conv 4×4 + LReLU      2       yes    c → 2c
conv 4×4 + LReLU      2       yes    2c → 4c
conv 4×4 + LReLU      1       yes    4c → 8c
conv 4×4              1       no     8c → 1 (logits)
====================  ======  =====  ====================

Padding. The paper says the zero-padding layers of the pix2pix
discriminator were removed and that the output is 32×32. The pix2pix
TensorFlow discriminator has explicit ``ZeroPadding2D`` layers before its two
stride-1 convolutions and TensorFlow ``"same"`` padding in its stride-2
convolutions; removing the explicit layers while every convolution uses
``"same"`` padding is the only reading that gives 32×32 on a 256×256 tile,
so ``padding="same"`` (TensorFlow semantics: output ``ceil(n / stride)``,
the odd extra pixel of padding at the bottom/right) is the default.
``padding="valid"`` uses no padding at all and gives 24×24 on 256×256;
an ``int`` pads every convolution symmetrically (``1`` reproduces the PyTorch
pix2pix reference, 30×30 on 256×256).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_image_batch

__all__ = ["MultiScalePatchDiscriminator", "PatchDiscriminator"]

Padding = Literal["same", "valid"] | int
Norm = Literal["instance", "batch", "none"]


class _PaddedConv2d(nn.Conv2d):
    """4×4 convolution with TensorFlow-style ``"same"``, ``"valid"`` or symmetric padding.

    The state-dict keys are those of :class:`torch.nn.Conv2d`.
    """

    def __init__(self, cin: int, cout: int, stride: int, padding: Padding, bias: bool) -> None:
        sym = padding if isinstance(padding, int) else 0
        super().__init__(cin, cout, kernel_size=4, stride=stride, padding=sym, bias=bias)
        self.same = padding == "same"

    def output_length(self, n: int) -> int:
        """Output length along an axis of input length ``n`` (pixels)."""
        if self.same:
            return math.ceil(n / self.stride[0])
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        return (n + 2 * p - k) // s + 1 if n + 2 * p >= k else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.same:
            pads: list[int] = []
            for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last axis first
                s, k = self.stride[0], self.kernel_size[0]
                total = max((math.ceil(n / s) - 1) * s + k - n, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator returning a map of raw logits ``C(·)``.

    Parameters
    ----------
    in_channels : int
        Channels of the concatenated inputs (2 for ``concat(x, y)`` of
        single-channel images).
    base_channels : int
        Channels of the first layer (pix2pix: 64); use 16–32 for CPU training.
    n_layers : int
        Number of stride-2 convolutions (3 gives the 70×70 receptive field).
    norm : {"instance", "batch", "none"}
        Normalisation of the hidden layers (Lobato et al. 2023: instance).
    padding : {"same", "valid"} or int
        Convolution padding; see the module docstring.

    Attributes
    ----------
    receptive_field : int
        Side of the input patch that one output logit sees, in pixels.
    min_input_size : int
        Smallest input height/width accepted, in pixels.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 64,
        n_layers: int = 3,
        *,
        norm: Norm = "instance",
        padding: Padding = "same",
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("base_channels", base_channels),
            ("n_layers", n_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if norm not in ("instance", "batch", "none"):
            raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {norm!r}")
        if not (
            padding in ("same", "valid")
            or (isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0)
        ):
            raise ValueError(f"padding must be 'same', 'valid' or an int >= 0, got {padding!r}")
        self.in_channels = in_channels
        use_bias = norm != "batch" and norm != "instance"

        widths = [base_channels * min(2**i, 8) for i in range(n_layers + 1)]
        layers: list[nn.Module] = [
            _PaddedConv2d(in_channels, widths[0], 2, padding, bias=True),
            nn.LeakyReLU(0.2),
        ]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [
                _PaddedConv2d(widths[i - 1], widths[i], stride, padding, bias=use_bias),
                _norm_layer(norm, widths[i]),
                nn.LeakyReLU(0.2),
            ]
        layers.append(_PaddedConv2d(widths[-1], 1, 1, padding, bias=True))
        self.body = nn.Sequential(*layers)

        convs = [m for m in self.body if isinstance(m, _PaddedConv2d)]
        rf = 1
        for conv in reversed(convs):
            rf = (rf - 1) * conv.stride[0] + conv.kernel_size[0]
        self.receptive_field = rf
        self._normed = norm != "none"
        self.min_input_size = next(n for n in range(1, 4096) if self._size_ok(n))

    def _sizes(self, n: int) -> list[int]:
        sizes = []
        for m in self.body:
            if isinstance(m, _PaddedConv2d):
                n = m.output_length(n)
                sizes.append(n)
        return sizes

    def _size_ok(self, n: int) -> bool:
        sizes = self._sizes(n)
        # Normalised layers (all but the first and last conv) need more than
        # one pixel for instance statistics.
        hidden = sizes[1:-1] if self._normed else []
        return sizes[-1] >= 1 and all(s >= 2 for s in hidden)

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape of the logit map for an input of ``height × width`` pixels."""
        return self._sizes(height)[-1], self._sizes(width)[-1]

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """Return the patch logits of the channel concatenation of ``images``.

        Parameters
        ----------
        *images : torch.Tensor
            Tensors of shape ``(B, C_i, H, W)`` (typically the distorted input
            ``x`` and the clean or restored image), concatenated along the
            channels; the total must equal ``in_channels``.

        Returns
        -------
        torch.Tensor
            Raw logits ``C(·)``, shape ``(B, 1, h, w)`` with
            ``(h, w) = output_shape(H, W)``.
        """
        if not images:
            raise ValueError("PatchDiscriminator needs at least one input tensor")
        shapes = {(t.shape[0], *t.shape[2:]) if t.ndim == 4 else None for t in images}
        if len(shapes) != 1 or None in shapes:
            raise ValueError(
                "inputs must all be (B, C, H, W) tensors with the same B, H and W, got "
                f"{[tuple(t.shape) for t in images]}"
            )
        xy = images[0] if len(images) == 1 else torch.cat(images, dim=1)
        check_image_batch(
            xy, self.in_channels, min_size=self.min_input_size, name="discriminator input"
        )
        return self.body(xy)


class MultiScalePatchDiscriminator(nn.Module):
    """Patch discriminators applied to an image pyramid (pix2pixHD style).

    Scale ``k`` sees the input average-pooled ``k`` times (3×3 window, stride
    2, padding 1, padded pixels excluded from the average), so the coarse
    discriminators judge large structures and the fine one texture.

    Parameters
    ----------
    n_scales : int
        Number of scales (2 in the 4D-STEM Pix2Pix work of Cao et al. 2024).
    **kwargs
        Passed to every :class:`PatchDiscriminator` (``in_channels``,
        ``base_channels``, ``n_layers``, ``norm``, ``padding``).
    """

    def __init__(self, n_scales: int = 2, **kwargs: object) -> None:
        super().__init__()
        if isinstance(n_scales, bool) or not isinstance(n_scales, int) or n_scales < 1:
            raise ValueError(f"n_scales must be a positive int, got {n_scales!r}")
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(**kwargs)
            for _ in range(n_scales)  # type: ignore[arg-type]
        )

    def forward(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """Return one logit map per scale, finest first.

        Parameters
        ----------
        *images : torch.Tensor
            As for :meth:`PatchDiscriminator.forward`.

        Returns
        -------
        list of torch.Tensor
            Logit maps ``(B, 1, h_k, w_k)``; sum or average the per-scale
            losses.
        """
        if not images:
            raise ValueError("MultiScalePatchDiscriminator needs at least one input tensor")
        xy = images[0] if len(images) == 1 else torch.cat(images, dim=1)
        outputs = []
        for k, disc in enumerate(self.discriminators):
            if k:
                xy = F.avg_pool2d(xy, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(disc(xy))
        return outputs
