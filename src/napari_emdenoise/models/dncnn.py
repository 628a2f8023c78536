"""Deep residual CNN denoiser and its bias-free variant.

Vincent, Mohan, Fernandez-Granda & Crozier, "Denoising Large In Situ TEM Image
Datasets: A Convolutional Neural Network-based Approach" (Microscopy and
Microanalysis, 2020) train "a network with 20 convolutional layers, each with 64
channels" with an L2 loss, citing Mohan et al. (2019), "Robust and
interpretable blind image denoising via bias-free convolutional neural
networks". The layout is the classic DnCNN: conv + ReLU, ``depth - 2`` ×
(conv + batch norm + ReLU), conv; the network predicts the noise and the
output is ``input - noise`` (residual learning).

The bias-free variant (``bias=False``) removes every additive constant: the
convolutions have no bias and the batch normalisation only divides by a
standard deviation and multiplies by a learned gain (no mean subtraction, no
shift). The whole map is then positively homogeneous, ``f(a·x) = a·f(x)`` for
``a > 0`` (exactly in eval mode), which is what lets it generalise to noise
levels outside the training range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_image_batch
from ._normalization import NORM_REL_FLOOR, denormalize, normalize_per_image

__all__ = ["DNCNN_BF_CONFIGS", "DNCNN_CONFIGS", "BiasFreeBatchNorm2d", "DnCNN"]

#: Named sizes of the biased DnCNN. ``"full"`` is the 20 × 64 network of Vincent et al. (2020)
#: (667,073 parameters), ``"small"`` 10 × 32 (74,849), ``"tiny"`` 4 × 8 (1,337).
DNCNN_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {"depth": 20, "features": 64, "bias": True, "batch_norm": True, "normalize": True},
    "small": {"depth": 10, "features": 32, "bias": True, "batch_norm": True, "normalize": True},
    "tiny": {"depth": 4, "features": 8, "bias": True, "batch_norm": True, "normalize": True},
}

#: Named sizes of the bias-free DnCNN; per-image normalisation is off so that
#: the model stays scale-equivariant.
DNCNN_BF_CONFIGS: dict[str, dict[str, Any]] = {
    name: {**cfg, "bias": False, "normalize": False} for name, cfg in DNCNN_CONFIGS.items()
}


class BiasFreeBatchNorm2d(nn.Module):
    """Batch normalisation without additive terms (Mohan et al. 2019).

    ``y = gamma · x / sqrt(var + eps)`` per channel, where ``var`` is the
    batch variance over ``(B, H, W)`` in training mode and its running
    average in eval mode. No mean is subtracted and no shift is added, so the
    layer is positively homogeneous (exactly so in eval mode).

    Parameters
    ----------
    channels : int
        Number of channels.
    eps : float
        Added to the variance for numerical safety.
    momentum : float
        Weight of the current batch in the running variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.training:
            var = x.var(dim=(0, 2, 3), keepdim=True, correction=0)
            with torch.no_grad():
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            var = self.running_var
        return x * (self.weight / torch.sqrt(var + self.eps))


class DnCNN(nn.Module):
    """Residual CNN denoiser (Vincent et al. 2020), optionally bias-free.

    Parameters
    ----------
    depth : int
        Number of convolution layers (Vincent et al. 2020: 20), at least 2.
    features : int
        Channels of the hidden layers (Vincent et al. 2020: 64).
    bias : bool
        If False, build the bias-free variant: no conv biases and
        :class:`BiasFreeBatchNorm2d` instead of :class:`torch.nn.BatchNorm2d`.
    batch_norm : bool
        Whether the hidden layers have batch normalisation.
    in_channels : int
        Image channels.
    normalize : bool
        Per-image normalisation ``(x - mean) / max(std, 1e-6·|mean|)`` inside
        :meth:`forward`, undone at the output (as in :class:`CGRDN`). The
        inference engine sets it to False when it normalises the whole image
        itself. Use False for the bias-free variant: the floor of 0.1 and the
        mean subtraction would otherwise break ``f(a·x) = a·f(x)`` for
        low-contrast images.

    Notes
    -----
    The output is ``x - noise(x)``; shapes are preserved for any ``H, W >= 1``
    (all convolutions are 3×3 with zero padding 1, stride 1).
    """

    def __init__(
        self,
        depth: int = 20,
        features: int = 64,
        bias: bool = True,
        *,
        batch_norm: bool = True,
        in_channels: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("depth", depth, 2),
            ("features", features, 1),
            ("in_channels", in_channels, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DnCNN {name} must be an int >= {low}, got {value!r}")
        self.depth = depth
        self.features = features
        self.bias = bool(bias)
        self.batch_norm = bool(batch_norm)
        self.in_channels = in_channels
        self.normalize = bool(normalize)
        self.std_floor = NORM_REL_FLOOR

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, features, 3, padding=1, bias=self.bias),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            # A conv followed by a (biased) batch norm needs no bias of its own.
            layers.append(
                nn.Conv2d(features, features, 3, padding=1, bias=self.bias and not batch_norm)
            )
            if batch_norm:
                layers.append(
                    nn.BatchNorm2d(features) if self.bias else BiasFreeBatchNorm2d(features)
                )
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1, bias=self.bias))
        self.body = nn.Sequential(*layers)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, as stored in a model card."""
        return {
            "depth": self.depth,
            "features": self.features,
            "bias": self.bias,
            "batch_norm": self.batch_norm,
            "in_channels": self.in_channels,
            "normalize": self.normalize,
        }

    def extra_repr(self) -> str:  # noqa: D102
        return ", ".join(f"{k}={v}" for k, v in self.config.items())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise a batch of images.

        Parameters
        ----------
        x : torch.Tensor
            Noisy images ``(B, in_channels, H, W)``, floating point.

        Returns
        -------
        torch.Tensor
            ``x - noise(x)``, same shape and intensity scale as ``x``.
        """
        check_image_batch(x, self.in_channels)
        if self.normalize:
            xn, mean, scale = normalize_per_image(x, self.std_floor)
            return denormalize(xn - self.body(xn), mean, scale)
        return x - self.body(x)
