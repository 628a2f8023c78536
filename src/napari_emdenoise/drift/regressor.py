"""The CNN that refines a correlation peak to sub-pixel precision and predicts its uncertainty.

Vasudevan & Jesse, "Deep Learning as a Tool for Image Denoising and Drift
Correction" (Microscopy and Microanalysis, 2019) regress the ``(dy, dx)`` shift
of a frame pair with convolutional layers followed by three fully connected
layers, applied to the normalised cross-correlation of the two denoised
frames. We keep that design but give the network a local problem: the
classical integer peak of the overlap-normalised correlation
(:class:`.correlation.NCCMap`) fixes the coarse shift, so shifts of a third
of the frame need no larger network, and the CNN sees a 15 × 15 crop of the
map centred on that peak. It returns the offset of the true peak from the
crop centre, as a learned correction to the 3-point parabola through the
centre, and a log standard deviation per axis (trained with a Gaussian
likelihood), which is the per-pair uncertainty.

Inputs (:func:`crop_features`): crops of two maps, the correlation of the
denoised frames and that of the raw frames (the same map twice without
denoising), each as the correlation itself (its height says how noisy the
frames are) and rescaled so that the map's median is 0 and the centre 1 (its
shape says where the peak is). The parabola the network corrects is taken on
the mean of the two maps, the map whose peak the pipeline picks.

At inference the four flips of the crop are evaluated and averaged after
undoing the flip on the output (:func:`predict_offsets`), which cancels any
residual directional bias of the trained weights.

Weights are stored as safetensors with a JSON card beside them, in
``napari_emdenoise/drift/weights/`` for the bundled model.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .correlation import NCCMap

__all__ = [
    "BUNDLED_REGRESSOR",
    "CROP_RADIUS",
    "ShiftRegressor",
    "crop_features",
    "load_regressor",
    "predict_offsets",
    "save_regressor",
]

#: Half size of the correlation crop the network sees (a 15 × 15 crop).
CROP_RADIUS = 7
#: The bundled weights (safetensors) and their card (same stem, ``.json``).
BUNDLED_REGRESSOR = Path(__file__).resolve().parent / "weights" / "shift_regressor.safetensors"
_CARD_FORMAT = 1
#: Range of the predicted log σ (pixels): σ in [0.007, 20] px.
_LOG_SIGMA_RANGE = (-5.0, 3.0)


def _crop_pair(ncc: NCCMap, peak: tuple[int, int], radius: int) -> list[np.ndarray]:
    crop = ncc.crop(peak, radius).astype(np.float64)
    ky, kx = ncc.radius
    sy, sx = ncc.search
    base = float(np.median(ncc.values[ky - sy : ky + sy + 1, kx - sx : kx + sx + 1]))
    top = float(crop[radius, radius])
    scaled = np.clip((crop - base) / max(top - base, 1e-6), -5.0, 5.0)
    return [crop, scaled]


def crop_features(
    denoised: NCCMap, raw: NCCMap, peak: tuple[int, int], radius: int = CROP_RADIUS
) -> np.ndarray:
    """The network input for the correlation maps of a pair and their integer peak.

    Parameters
    ----------
    denoised : NCCMap
        Correlation of the denoised frames (the raw map again when the
        frames were not denoised).
    raw : NCCMap
        Correlation of the (low-passed) raw frames.
    peak : tuple of int
        Integer peak (shift in pixels), the crop centre.
    radius : int
        Crop half size in pixels.

    Returns
    -------
    numpy.ndarray
        ``(4, 2·radius + 1, 2·radius + 1)`` float32: for each map, the crop
        and the crop rescaled to median 0 (median of the whole search window)
        and 1 at the centre.
    """
    return np.stack(_crop_pair(denoised, peak, radius) + _crop_pair(raw, peak, radius)).astype(
        np.float32
    )


def _torch():
    import torch

    return torch


def _parabola(crop, r: int):
    """3-point parabola offsets of the crop centre, ``(B, 2)``, clipped to ±1 px (torch)."""
    torch = _torch()
    mid = crop[:, r, r]
    pairs = ((crop[:, r - 1, r], crop[:, r + 1, r]), (crop[:, r, r - 1], crop[:, r, r + 1]))
    out = []
    for lo, hi in pairs:
        curvature = lo - 2.0 * mid + hi
        safe = torch.where(curvature < -1e-9, curvature, torch.full_like(curvature, -1.0))
        delta = torch.where(curvature < -1e-9, 0.5 * (lo - hi) / safe, torch.zeros_like(mid))
        out.append(delta.clamp(-1.0, 1.0))
    return torch.stack(out, dim=1)


def _module_class():
    torch = _torch()
    nn = torch.nn

    class ShiftRegressorModule(nn.Module):
        """Conv layers, then three fully connected layers → (dy, dx, log σy, log σx)."""

        def __init__(
            self,
            in_channels: int = 4,
            channels: tuple[int, int] = (16, 32),
            hidden: tuple[int, int] = (64, 32),
            radius: int = CROP_RADIUS,
        ) -> None:
            super().__init__()
            c1, c2 = (int(c) for c in channels)
            h1, h2 = (int(h) for h in hidden)
            size = 2 * int(radius) + 1
            self.config = {
                "in_channels": int(in_channels),
                "channels": [c1, c2],
                "hidden": [h1, h2],
                "radius": int(radius),
            }
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, c1, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c1, c1, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c1, c2, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c2, c2, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            reduced = (size + 1) // 2
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(c2 * reduced * reduced, h1),
                nn.ReLU(inplace=True),
                nn.Linear(h1, h2),
                nn.ReLU(inplace=True),
                nn.Linear(h2, 4),
            )

        def forward(self, x):
            out = self.head(self.features(x))
            mean = _parabola(0.5 * (x[:, 0] + x[:, 2]), self.config["radius"]) + out[:, :2]
            log_sigma = out[:, 2:].clamp(*_LOG_SIGMA_RANGE)
            return torch.cat([mean, log_sigma], dim=1)

    return ShiftRegressorModule


_CLASS: Any = None


def ShiftRegressor(**config: Any) -> torch.nn.Module:  # noqa: N802 - a class factory
    """Build the shift regressor (torch is imported on first use).

    Parameters
    ----------
    **config
        ``in_channels`` (4), ``channels`` ((16, 32)), ``hidden`` ((64, 32)),
        ``radius`` (:data:`CROP_RADIUS`).

    Returns
    -------
    torch.nn.Module
        Maps ``(B, 4, 15, 15)`` crops to ``(B, 4)``: offsets ``(dy, dx)`` in
        pixels from the crop centre, then ``log σ`` per axis.
    """
    global _CLASS
    if _CLASS is None:
        _CLASS = _module_class()
    return _CLASS(**config)


def predict_offsets(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and 1-σ uncertainties for a batch of crops, averaged over the four flips.

    Parameters
    ----------
    model : torch.nn.Module
        A :func:`ShiftRegressor`.
    x : numpy.ndarray
        ``(B, C, S, S)`` inputs from :func:`crop_features`.

    Returns
    -------
    mean, sigma : numpy.ndarray
        ``(B, 2)`` offsets ``(dy, dx)`` from the crop centre and their 1-σ
        uncertainties, pixels. σ combines the predicted variance and the
        spread of the four flipped predictions.
    """
    torch = _torch()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    means, variances = [], []
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        for fy in (False, True):
            for fx in (False, True):
                v = t
                if fy:
                    v = v.flip(2)
                if fx:
                    v = v.flip(3)
                out = model(v).double().cpu().numpy()
                sign = np.array([-1.0 if fy else 1.0, -1.0 if fx else 1.0])
                means.append(out[:, :2] * sign)
                variances.append(np.exp(2.0 * out[:, 2:]))
    model.train(was_training)
    m = np.stack(means)
    mean = m.mean(axis=0)
    sigma = np.sqrt(np.mean(variances, axis=0) + m.var(axis=0))
    return mean, sigma


def save_regressor(model: Any, path: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) and a JSON card with the same stem.

    Parameters
    ----------
    model : torch.nn.Module
        A :func:`ShiftRegressor`.
    path : path-like
        ``.safetensors`` destination.
    card : dict, optional
        Extra card fields (``training``, ``metrics``, ``notes``...).

    Returns
    -------
    pathlib.Path
        The weights file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.chmod(0o644)  # readable by every user of an installed package
    tmp.replace(path)
    full = {
        "format": _CARD_FORMAT,
        "name": path.stem,
        "arch": "shift_regressor",
        "config": dict(model.config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(card or {}),
    }
    path.with_suffix(".json").write_text(
        json.dumps(full, indent=2, default=_json) + "\n", encoding="utf-8"
    )
    return path


def _json(obj: object) -> object:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)


_CACHE: dict[tuple[str, float, str], tuple[Any, dict[str, Any]]] = {}
_LOCK = threading.Lock()


def load_regressor(
    path: str | Path | None = None, device: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Load a shift regressor and its card (cached per file and modification time).

    Parameters
    ----------
    path : path-like, optional
        ``.safetensors`` file with its ``.json`` card beside it; default the
        bundled model.
    device : str, optional
        Torch device (default CPU).

    Returns
    -------
    model : torch.nn.Module
        In eval mode. Shared between callers: do not train it in place.
    card : dict

    Raises
    ------
    ValueError
        If the files are missing or do not hold a shift regressor.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else BUNDLED_REGRESSOR
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise ValueError(
            f"no shift regressor at {path} (weights and a .json card with the same name are "
            "needed); use method='ncc' or 'phase', or train one with "
            "`python -m napari_emdenoise.drift.training`"
        )
    key = (str(path.resolve()), path.stat().st_mtime, str(device or "cpu"))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{card_path} is not valid JSON: {exc}") from exc
        if card.get("arch") != "shift_regressor" or int(card.get("format", 0)) > _CARD_FORMAT:
            raise ValueError(f"{card_path} does not describe a shift regressor of this version")
        config = card.get("config", {})
        if int(config.get("radius", CROP_RADIUS)) != CROP_RADIUS:
            raise ValueError(
                f"{path} was trained on crops of radius {config.get('radius')}, "
                f"this version uses {CROP_RADIUS}"
            )
        model = ShiftRegressor(**config)
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
        except Exception as exc:  # noqa: BLE001 - any mismatch is a bad file
            raise ValueError(f"{path} does not match its card: {exc}") from exc
        model.to(device or "cpu").eval()
        _CACHE[key] = (model, card)
        return model, card
