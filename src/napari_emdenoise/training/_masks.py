"""Blind-spot masks for self-supervised fine-tuning (Noise2Void / Noise2Self / structN2V).

A blind-spot loss hides some pixels from the network and asks it to predict
them from their surroundings; only noise that is independent from pixel to
pixel averages out that way (Krull, Buchholz & Jug, "Noise2Void — learning
denoising from single noisy images", 2019, arXiv:1811.10980; Batson & Royer,
"Noise2Self: blind denoising by self-supervision", 2019, arXiv:1901.11365).
Scanned images often have noise that is correlated along the fast-scan axis
(detector lag, fast-scan blur): a neighbour in the same scan line then
carries part of the hidden pixel's noise, and a network trained with a
single-pixel blind spot learns to reproduce that noise as streaks. The
structured mask hides a short line of pixels along the correlated axis as
well (Broaddus, Krull, Weigert, Schmidt & Myers, "Removing structured noise
with self-supervised blind-spot networks", ISBI 2020, "structN2V").

This module measures the correlation
(:func:`napari_emdenoise.noise.correlation.noise_autocorrelation`), chooses
the mask (:func:`choose_mask`) and masks patches (:func:`mask_patch`). Pure
numpy: no torch, no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise.correlation import noise_autocorrelation

__all__ = ["MaskSpec", "choose_mask", "mask_patch", "noise_autocorrelation"]

#: A lag whose noise correlation is at least this is hidden by the structured mask.
CORRELATION_THRESHOLD = 0.1
#: Longest half-length of the structured mask, in pixels.
MAX_SPAN = 8
#: ``MaskSpec.span`` of a line that hides the whole row (or column) of a patch: used when
#: the noise is still correlated at ``MAX_SPAN`` (scan-line offsets, streaks).
WHOLE_LINE = 1 << 16
#: Side of the neighbourhood the blind-spot value is drawn from (N2V: 5×5).
NEIGHBOURHOOD = 5
#: Largest fraction of a patch the masks may corrupt (centres plus their lines).
_MAX_CORRUPTED = 0.25


@dataclass(frozen=True)
class MaskSpec:
    """Which blind spot the self-supervised loss uses.

    Attributes
    ----------
    axis : int or None
        None: a single-pixel blind spot (Noise2Void). 1: the mask also hides
        ``span`` pixels on each side along the rows (the fast-scan axis of a
        scanned image, array axis 1); 0: along the columns (structN2V).
    span : int
        Half-length of the structured line, in pixels (0 for a single pixel).
    correlation : tuple of float
        The measured noise correlation at lags 1, 2, … along ``axis`` (or
        along the rows when ``axis`` is None); empty when not measured.
    reason : str
        Why this mask was chosen (for the model card and the widget).
    """

    axis: int | None = None
    span: int = 0
    correlation: tuple[float, ...] = ()
    reason: str = ""

    @property
    def kind(self) -> str:
        """``"pixel"`` or ``"line"`` (structured)."""
        return "pixel" if self.axis is None or self.span == 0 else "line"

    def describe(self) -> str:
        """Short text, e.g. ``"line mask ±3 px along the rows"``."""
        if self.kind == "pixel":
            return "single-pixel blind spot (Noise2Void)"
        where = "rows (fast-scan axis)" if self.axis == 1 else "columns"
        if self.span >= WHOLE_LINE:
            return f"line mask over the whole patch along the {where} (structN2V)"
        return f"line mask ±{self.span} px along the {where} (structN2V)"

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in the model card)."""
        return {
            "kind": self.kind,
            "axis": self.axis,
            "span": self.span,
            "correlation": [round(float(c), 4) for c in self.correlation],
            "reason": self.reason,
        }


def choose_mask(
    images: list[np.ndarray],
    mask: str = "auto",
    *,
    threshold: float = CORRELATION_THRESHOLD,
    max_span: int = MAX_SPAN,
) -> MaskSpec:
    """The blind spot for ``images``: measured (``"auto"``) or as asked.

    Parameters
    ----------
    images : list of numpy.ndarray
        The 2-D images the network will be fine-tuned on (the correlation is
        averaged over at most the first four).
    mask : {"auto", "pixel", "rows", "columns"}
        ``"auto"``: a line along the axis whose lag-1 noise correlation is
        larger, if that is at least ``threshold``, covering the lags 1, 2, …
        up to the last one whose correlation is still at least ``threshold``
        (at most ``max_span``); else a single pixel. ``"pixel"``: Noise2Void's single pixel.
        ``"rows"`` / ``"columns"``: a line along that axis with the measured
        length (at least 1 pixel each side).
    threshold : float
        Correlation (dimensionless) above which a lag is hidden.
    max_span : int
        Longest half-length of the line, in pixels.

    Returns
    -------
    MaskSpec
    """
    if mask not in ("auto", "pixel", "rows", "columns"):
        raise ValueError(f"mask must be 'auto', 'pixel', 'rows' or 'columns', got {mask!r}")
    sample = images[:4]
    rho = {
        ax: np.mean([noise_autocorrelation(im, ax, max_span) for im in sample], axis=0)
        for ax in (1, 0)
    }

    def span_of(r: np.ndarray) -> int:
        below = np.flatnonzero(r < threshold)  # the first lag below the threshold ends the run
        return int(below[0]) if below.size else len(r)

    if mask == "pixel":
        return MaskSpec(None, 0, tuple(rho[1]), "single pixel asked for")
    if mask in ("rows", "columns"):
        ax = 1 if mask == "rows" else 0
        span = max(1, span_of(rho[ax]))
        span = WHOLE_LINE if span >= max_span else span
        return MaskSpec(ax, span, tuple(rho[ax]), f"line along the {mask} asked for")
    ax = 1 if rho[1][0] >= rho[0][0] else 0
    span = span_of(rho[ax])
    if span >= max_span:  # correlated beyond the longest line: hide the whole line
        span = WHOLE_LINE
    name = "rows" if ax == 1 else "columns"
    if span == 0:
        return MaskSpec(
            None,
            0,
            tuple(rho[1]),
            f"noise correlation between neighbours {rho[ax][0]:.2f} < {threshold:g}: "
            "pixel-independent noise",
        )
    return MaskSpec(
        ax,
        span,
        tuple(rho[ax]),
        f"noise correlated along the {name} (lag-1 correlation {rho[ax][0]:.2f}, "
        f"≥ {threshold:g} up to lag {min(span, max_span)}"
        + (" and beyond)" if span >= WHOLE_LINE else ")"),
    )


def centre_count(spec: MaskSpec, shape: tuple[int, int], fraction: float) -> int:
    """Blind spots per patch: ``fraction`` of the pixels, fewer for long lines (≤ 25 % masked)."""
    n_pixels = shape[0] * shape[1]
    along = shape[1] if spec.axis == 1 else shape[0]
    per_centre = 1 + min(2 * spec.span, along - 1)
    wanted = fraction * n_pixels
    return max(1, int(round(min(wanted, _MAX_CORRUPTED * n_pixels / per_centre))))


def mask_patch(
    patch: np.ndarray,
    centres: np.ndarray,
    spec: MaskSpec,
    rng: np.random.Generator,
) -> np.ndarray:
    """A copy of ``patch`` with the blind spots at ``centres`` filled in.

    Single pixel (Noise2Void): each centre gets the value of a random other
    pixel of its 5×5 neighbourhood.

    Line (structN2V): the centre and ``span`` pixels on each side along
    ``spec.axis`` get the values of the same stretch of a neighbouring line,
    one or two lines away (chosen at random per centre). Its noise is
    independent of the hidden line's (different scan lines), so the network
    cannot read the hidden pixel's correlated noise from anything it sees,
    while the input still looks like a micrograph. (Broaddus et al. fill the
    line with uniform random values; copying a neighbouring line is the line
    analogue of Noise2Void's neighbour replacement and keeps a pretrained
    network on familiar input, so fine-tuning does not first have to learn to
    ignore random values.)

    Parameters
    ----------
    patch : numpy.ndarray
        2-D float patch (not modified).
    centres : numpy.ndarray
        ``(K, 2)`` integer (row, column) positions of the blind spots.
    spec : MaskSpec
        The mask.
    rng : numpy.random.Generator
        Source of the random choices.

    Returns
    -------
    numpy.ndarray
        The masked patch (float32).
    """
    out = np.array(patch, dtype=np.float32, copy=True)
    h, w = out.shape
    k = len(centres)
    if k == 0:
        return out
    r, c = centres[:, 0], centres[:, 1]
    half = NEIGHBOURHOOD // 2
    if spec.kind == "line":
        across = h if spec.axis == 1 else w  # lines follow each other along this size
        step = rng.choice([-1, 1], k) * rng.integers(1, half + 1, k)
        base = r if spec.axis == 1 else c
        other = base + step
        other = np.where((other < 0) | (other >= across), base - step, other)
        other = np.clip(other, 0, across - 1)
        reach = min(spec.span, (w if spec.axis == 1 else h) - 1)
        for off in range(-reach, reach + 1):
            if spec.axis == 1:
                lc = c + off
                ok = (lc >= 0) & (lc < w)
                out[r[ok], lc[ok]] = patch[other[ok], lc[ok]]
            else:
                lr = r + off
                ok = (lr >= 0) & (lr < h)
                out[lr[ok], c[ok]] = patch[lr[ok], other[ok]]
        return out
    dr = rng.integers(-half, half + 1, k)
    dc = rng.integers(-half, half + 1, k)
    same = (dr == 0) & (dc == 0)
    dr = np.where(same, rng.choice([-1, 1], k), dr)
    rr = np.clip(r + dr, 0, h - 1)
    cc = np.clip(c + dc, 0, w - 1)
    back = (rr == r) & (cc == c)  # clipped back onto the centre at an edge: reflect
    rr = np.where(back, np.clip(r - dr, 0, h - 1), rr)
    cc = np.where(back, np.clip(c - dc, 0, w - 1), cc)
    out[r, c] = patch[rr, cc]
    return out
