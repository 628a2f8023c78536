"""Post-processing distortions (Lobato et al. 2023, "Post-processing distortions").

Distortions a user or acquisition software adds after recording: an
interpolating linear transform, Gaussian smoothing, burnt-in annotations
and cropped (filled) border regions. The paper applies the transform,
annotations and crops identically to the clean target and the distorted image
(the network must preserve them), and the blur to the distorted image only.
Layers flagged ``applies_to_target`` take ``(H, W)`` or a stack ``(N, H, W)``
and apply one and the same random draw to every slice.

All layers are off by default (a recorded image usually has none of them)
and, as every layer, return an unchanged copy when ``enabled`` is False;
``sample`` switches them on with modest probabilities, our choice since the
paper gives none: affine interpolation 0.15, Gaussian blur 0.3, annotations
0.1, crops 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from ._checks import MIN_SIZE as MIN_SIZE  # re-exported: smallest accepted image side
from ._checks import check_layer_call
from ._layer import Layer
from ._params import OccurringParams, param

__all__ = [
    "POST_LAYERS",
    "AffineInterpolationParams",
    "AnnotationsParams",
    "CropsParams",
    "GaussianBlurParams",
    "affine_interpolation",
    "affine_matrix",
    "annotations",
    "crops",
    "gaussian_blur",
]


def _slices(x: np.ndarray) -> np.ndarray:
    """View an ``(H, W)`` image or an ``(N, H, W)`` stack as a stack of slices."""
    return x[None] if x.ndim == 2 else x


# ---------------------------------------------------------------------------
# affine interpolation
# ---------------------------------------------------------------------------
@dataclass
class AffineInterpolationParams(OccurringParams):
    """A linear transform near identity, about the image centre.

    The forward map (image → result) in display coordinates (x right, y
    down) is ``T = R(rotation) · [[1, shear], [0, 1]] · diag(scale_x, scale_y)``
    followed by a translation ``(shift_x, shift_y)``. Positive rotation turns
    the content counter-clockwise on screen; scale > 1 magnifies. Ranges are
    our choice (the paper only says "a random linear transformation matrix").
    """

    enabled: bool = False
    rotation: float = param(
        0.0, -10.0, 10.0, hard_min=-180.0, hard_max=180.0, unit="°",
        doc="Rotation angle, counter-clockwise on screen",
    )  # fmt: skip
    shear: float = param(
        0.0, -0.1, 0.1, hard_min=-1.0, hard_max=1.0, doc="Horizontal shear factor"
    )  # fmt: skip
    scale_x: float = param(
        1.0, 0.85, 1.3, hard_min=0.05, hard_max=20.0, log=True, doc="Magnification along x"
    )  # fmt: skip
    scale_y: float = param(
        1.0, 0.85, 1.3, hard_min=0.05, hard_max=20.0, log=True, doc="Magnification along y"
    )  # fmt: skip
    shift_x: float = param(
        0.0, -0.5, 0.5, hard_min=-1e4, hard_max=1e4, unit="pixels",
        doc="Translation along x (sub-pixel shifts still interpolate)",
    )  # fmt: skip
    shift_y: float = param(
        0.0, -0.5, 0.5, hard_min=-1e4, hard_max=1e4, unit="pixels", doc="Translation along y"
    )  # fmt: skip

    #: Our choice; ``sample`` draws every value in its range, then ``enabled``.
    occurrence: ClassVar[float] = 0.15
    enabled_drawn_last: ClassVar[bool] = True


def affine_matrix(params: AffineInterpolationParams) -> np.ndarray:
    """Forward 2×2 transform in ``(row, col)`` coordinates.

    Parameters
    ----------
    params : AffineInterpolationParams

    Returns
    -------
    numpy.ndarray
        ``M`` such that a point at offset ``d = (dr, dc)`` from the centre
        moves to ``M @ d + (shift_y, shift_x)``.
    """
    a = math.radians(params.rotation)
    # display (x, y) with y down: counter-clockwise on screen
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, params.shear], [0.0, 1.0]])
    scale = np.diag([params.scale_x, params.scale_y])
    t_xy = rot @ shear @ scale
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    return swap @ t_xy @ swap


def affine_interpolation(
    image: np.ndarray, params: AffineInterpolationParams, rng: np.random.Generator
) -> np.ndarray:
    """Resample with a small linear transform by bicubic spline interpolation.

    Applied to the target and the distorted image alike (every slice of a
    stack gets the same transform), ``"reflect"`` boundaries. The transform is
    fully given by ``params``; ``rng`` is unused.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(N, H, W)`` float image(s).
    params : AffineInterpolationParams
    rng : numpy.random.Generator
        Unused.

    Returns
    -------
    numpy.ndarray
        New float32 array of the input's shape.
    """
    x = check_layer_call(image, params, AffineInterpolationParams, rng, stack=True)
    if not params.enabled:
        return x
    stack = _slices(x)
    fwd = affine_matrix(params)
    inv = np.linalg.inv(fwd)
    centre = (np.array(stack.shape[-2:], dtype=np.float64) - 1.0) / 2.0
    shift = np.array([params.shift_y, params.shift_x])
    # input = inv @ (output - centre - shift) + centre
    offset = centre - inv @ (centre + shift)
    out = np.empty_like(stack)
    for i, sl in enumerate(stack):
        ndimage.affine_transform(
            sl, inv, offset=offset, order=3, mode="reflect", output=out[i], prefilter=True
        )
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------
# Gaussian blur
# ---------------------------------------------------------------------------
@dataclass
class GaussianBlurParams(OccurringParams):
    """Isotropic Gaussian smoothing of the distorted image."""

    enabled: bool = False
    sigma: float = param(
        0.5, 0.0, 1.0, hard_min=0.0, hard_max=50.0, unit="pixels",
        doc="Standard deviation of the Gaussian kernel",
    )  # fmt: skip

    #: Our choice; ``sample`` draws σ uniform in [0, 1] pixel (paper), then ``enabled``.
    occurrence: ClassVar[float] = 0.3
    enabled_drawn_last: ClassVar[bool] = True


def gaussian_blur(
    image: np.ndarray, params: GaussianBlurParams, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian blur of the distorted image only (``"reflect"`` boundaries).

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image.
    params : GaussianBlurParams
        σ in pixels; σ = 0 returns a copy.
    rng : numpy.random.Generator
        Unused.

    Returns
    -------
    numpy.ndarray
        New float32 image.
    """
    img = check_layer_call(image, params, GaussianBlurParams, rng)
    if not params.enabled or params.sigma == 0:
        return img
    return ndimage.gaussian_filter(img, params.sigma, mode="reflect", truncate=4.0)


# ---------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------
_ANNOTATION_KINDS = ("text", "arrow", "line", "rectangle", "ellipse", "scale_bar")


@dataclass
class AnnotationsParams(OccurringParams):
    """Burnt-in annotations: text-like glyphs, arrows, lines, boxes, circles
    and scale bars drawn with one intensity ``value``."""

    enabled: bool = False
    n_items: int = param(3, 1, 6, hard_min=0, hard_max=1000, doc="Number of annotations")
    value: float = param(
        1.0, 0.0, 1.0, hard_min=-1e4, hard_max=1e4,
        doc="Intensity of the strokes (clean image max = 1)",
    )  # fmt: skip
    thickness: int = param(
        2, 1, 4, hard_min=1, hard_max=100, unit="pixels", doc="Stroke width"
    )  # fmt: skip
    size: float = param(
        0.15, 0.05, 0.3, hard_min=0.01, hard_max=1.0, unit="fraction of image",
        doc="Typical annotation size relative to the shorter image side",
    )  # fmt: skip

    occurrence: ClassVar[float] = 0.1

    @classmethod
    def sample(cls, rng: np.random.Generator) -> AnnotationsParams:
        """Occurs with p = 0.1 (our choice); white (p 0.6), black (p 0.3) or grey strokes.

        Draw order: every field, the stroke value, then ``enabled``.
        """
        values = cls.draw_values(rng)
        u = rng.random()
        values["value"] = 1.0 if u < 0.6 else 0.0 if u < 0.9 else float(rng.uniform(0.2, 0.8))
        return cls(enabled=cls.draw_enabled(rng), **values).validate()


def _stroke(mask: np.ndarray, p0: np.ndarray, p1: np.ndarray, width: float) -> None:
    """Burn a straight stroke of ``width`` pixels from p0 to p1 (row, col) into mask."""
    from skimage.draw import line, polygon

    d = p1 - p0
    length = float(np.hypot(*d))
    if width <= 1.0 or length == 0.0:
        rr, cc = line(*np.round(p0).astype(int), *np.round(p1).astype(int))
    else:
        n = np.array([-d[1], d[0]]) / length * (width / 2.0)
        corners = np.array([p0 + n, p1 + n, p1 - n, p0 - n])
        rr, cc = polygon(corners[:, 0], corners[:, 1])
    keep = (rr >= 0) & (rr < mask.shape[0]) & (cc >= 0) & (cc < mask.shape[1])
    mask[rr[keep], cc[keep]] = True


def _annotation_mask(
    shape: tuple[int, int], params: AnnotationsParams, rng: np.random.Generator
) -> np.ndarray:
    from skimage.draw import ellipse, ellipse_perimeter

    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    side = min(h, w)
    width = float(params.thickness)
    for _ in range(int(params.n_items)):
        kind = _ANNOTATION_KINDS[int(rng.integers(len(_ANNOTATION_KINDS)))]
        size = max(3.0, params.size * side * rng.uniform(0.5, 1.5))
        anchor = np.array([rng.uniform(0, h), rng.uniform(0, w)])
        if kind == "text":
            # a row of seven-segment-like glyphs: 2-4 strokes between nodes of a 3x2 grid
            glyph_h = max(5.0, size / 3.0)
            glyph_w = 0.6 * glyph_h
            nodes = np.array([[r, c] for r in (0.0, 0.5, 1.0) for c in (0.0, 1.0)])
            for k in range(int(rng.integers(2, 7))):
                origin = anchor + np.array([0.0, k * 1.4 * glyph_w])
                for _ in range(int(rng.integers(2, 5))):
                    i, j = rng.choice(len(nodes), 2, replace=False)
                    scale = np.array([glyph_h, glyph_w])
                    _stroke(mask, origin + nodes[i] * scale, origin + nodes[j] * scale, width)
        elif kind in ("arrow", "line"):
            angle = rng.uniform(0, 2 * np.pi)
            tip = anchor + size * np.array([np.sin(angle), np.cos(angle)])
            _stroke(mask, anchor, tip, width)
            if kind == "arrow":
                head = 0.3 * size
                for turn in (np.pi - 0.5, np.pi + 0.5):
                    a = angle + turn
                    _stroke(mask, tip, tip + head * np.array([np.sin(a), np.cos(a)]), width)
        elif kind == "rectangle":
            hh, ww = size * rng.uniform(0.5, 1.0), size * rng.uniform(0.5, 1.5)
            c = [anchor, anchor + [0, ww], anchor + [hh, ww], anchor + [hh, 0]]
            for k in range(4):
                _stroke(mask, np.asarray(c[k]), np.asarray(c[(k + 1) % 4]), width)
        elif kind == "ellipse":
            ry, rx = size * rng.uniform(0.25, 0.5), size * rng.uniform(0.25, 0.5)
            if width <= 1.0:
                rr, cc = ellipse_perimeter(
                    int(anchor[0]), int(anchor[1]), int(ry), int(rx), shape=shape
                )
                mask[rr, cc] = True
            else:
                outer = np.zeros(shape, dtype=bool)
                outer[
                    ellipse(anchor[0], anchor[1], ry + width / 2, rx + width / 2, shape=shape)
                ] = True
                inner = ellipse(
                    anchor[0],
                    anchor[1],
                    max(ry - width / 2, 0.5),
                    max(rx - width / 2, 0.5),
                    shape=shape,
                )
                outer[inner] = False
                mask |= outer
        else:  # scale bar: a filled bar, usually near the bottom edge
            r0 = rng.uniform(0.85, 0.95) * h
            c0 = rng.uniform(0.02, 0.5) * w
            bar_h = max(2.0, 1.5 * width)
            r = slice(int(r0), min(h, int(r0 + bar_h) + 1))
            mask[r, int(c0) : min(w, int(c0 + size) + 1)] = True
    return mask


def annotations(
    image: np.ndarray, params: AnnotationsParams, rng: np.random.Generator
) -> np.ndarray:
    """Burn random annotations into the image(s) at identical positions.

    Draws ``n_items`` random annotations (text-like glyph rows, arrows, lines,
    rectangle and ellipse outlines, scale bars) with ``skimage.draw`` and sets
    their pixels to ``value`` in every slice, so target and distorted image
    carry the same marks.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(N, H, W)`` float image(s).
    params : AnnotationsParams
    rng : numpy.random.Generator
        Source of randomness (one draw for all slices).

    Returns
    -------
    numpy.ndarray
        New float32 array; only the annotation pixels differ from the input.
    """
    x = check_layer_call(image, params, AnnotationsParams, rng, stack=True)
    if not params.enabled:
        return x
    mask = _annotation_mask(x.shape[-2:], params, rng)
    _slices(x)[:, mask] = np.float32(params.value)
    return x


# ---------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------
@dataclass
class CropsParams(OccurringParams):
    """Cropped border regions filled with a constant, the median or the mid-range.

    Regions are bands along an edge or triangles cut off a corner (as left by
    rotating or aligning an image), never reaching into the central rectangle
    that covers ``protected_fraction`` of the image area.
    """

    enabled: bool = False
    n_regions: int = param(1, 1, 3, hard_min=0, hard_max=100, doc="Number of filled regions")
    fill: str = param(
        "constant",
        choices=("constant", "median", "mid_range"),
        doc="Fill with `value`, the slice's median, or the middle of its value range",
    )  # fmt: skip
    value: float = param(
        0.0, 0.0, 1.0, hard_min=-1e4, hard_max=1e4,
        doc="Fill intensity when fill = 'constant' (clean image max = 1)",
    )  # fmt: skip
    protected_fraction: float = param(
        0.5, hard_min=0.0, hard_max=1.0, unit="fraction of area",
        doc="Area of the central rectangle that is never cropped (paper: 50 %)",
    )  # fmt: skip

    #: Our choice; ``sample`` draws 1–3 regions, the fill mode and value, then ``enabled``.
    occurrence: ClassVar[float] = 0.1
    enabled_drawn_last: ClassVar[bool] = True


def _crop_mask(shape: tuple[int, int], params: CropsParams, rng: np.random.Generator) -> np.ndarray:
    from skimage.draw import polygon

    h, w = shape
    f = math.sqrt(params.protected_fraction)
    top = int(math.floor((h - f * h) / 2.0))  # free rows above (and below) the centre
    left = int(math.floor((w - f * w) / 2.0))
    mask = np.zeros(shape, dtype=bool)
    for _ in range(int(params.n_regions)):
        if rng.random() < 0.5:  # band along one edge
            side = int(rng.integers(4))
            depth_max = top if side < 2 else left
            if depth_max < 1:
                continue
            d = int(rng.integers(1, depth_max + 1))
            if side == 0:
                mask[:d] = True
            elif side == 1:
                mask[h - d :] = True
            elif side == 2:
                mask[:, :d] = True
            else:
                mask[:, w - d :] = True
        else:  # triangle cut off a corner; legs <= twice the margins keep the centre free
            if top < 1 or left < 1:
                continue
            a = rng.uniform(1.0, 2.0 * left)  # leg along x (pixels)
            b = rng.uniform(1.0, 2.0 * top)  # leg along y
            corner = int(rng.integers(4))
            rr = np.array([0.0, 0.0, b]) - 0.5
            cc = np.array([0.0, a, 0.0]) - 0.5
            if corner & 1:
                rr = h - 1 - rr
            if corner & 2:
                cc = w - 1 - cc
            pr, pc = polygon(rr, cc, shape=shape)
            mask[pr, pc] = True
    return mask


def crops(image: np.ndarray, params: CropsParams, rng: np.random.Generator) -> np.ndarray:
    """Fill random border regions, identically placed in every slice.

    With ``fill="median"`` or ``"mid_range"`` each slice is filled with its
    own median or ``(min + max) / 2``, as a cropping tool would do to each
    image; ``"constant"`` uses ``value`` everywhere.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(N, H, W)`` float image(s).
    params : CropsParams
    rng : numpy.random.Generator
        Source of randomness (one draw for all slices).

    Returns
    -------
    numpy.ndarray
        New float32 array; only the cropped pixels differ from the input.
    """
    x = check_layer_call(image, params, CropsParams, rng, stack=True)
    if not params.enabled:
        return x
    mask = _crop_mask(x.shape[-2:], params, rng)
    for sl in _slices(x):
        if params.fill == "median":
            fill = np.median(sl)
        elif params.fill == "mid_range":
            fill = 0.5 * (sl.min() + sl.max())
        else:
            fill = params.value
        sl[mask] = np.float32(fill)
    return x


# ---------------------------------------------------------------------------
POST_LAYERS: tuple[Layer, ...] = (
    Layer(
        "affine_interpolation",
        affine_interpolation,
        AffineInterpolationParams,
        "",
        "Affine interpolation",
        applies_to_target=True,
    ),
    Layer("gaussian_blur", gaussian_blur, GaussianBlurParams, "", "Gaussian blur"),
    Layer("annotations", annotations, AnnotationsParams, "", "Annotations", applies_to_target=True),
    Layer("crops", crops, CropsParams, "", "Crops", applies_to_target=True),
)
"""Post-processing layers in pipeline order (Lobato et al. 2023, "Post-processing distortions")."""
