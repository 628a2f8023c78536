"""Fit the noise model to a real micrograph (Poisson–Gaussian mean–variance fit).

A counting detector followed by Gaussian read-out noise gives, at a pixel of
mean intensity ``μ``, the variance

    var = a·(μ − offset) + b

with ``a`` the gain (intensity units per detected electron, so ``(μ − offset)/a``
electrons were counted) and ``b`` the read-noise variance (intensity units²);
``offset`` is the detector's dark level (the intensity of zero electrons). This
is exactly the noise of our own simulator (Lobato et al. 2023): for the S(T)EM detector
(eqs 45–46) ``x ← (P(αx) + N(0, σ_pmt))/α`` gives ``var = μ/α + (σ_pmt/α)²``,
i.e. ``a = 1/α`` and ``b = (σ_pmt/α)²``; for TEM shot + thermal noise (eqs 30,
34) ``x ← P(αx)/α + N(0, σ)`` gives ``a = 1/α`` and ``b = σ²``. The dose of
eqs 30/45 is the electron count at the image mean, ``dose = α·E{x} =
(E{x} − offset)/a``.

Estimator (:func:`fit_noise`)
    1. The local noise is isolated with a normalised finite difference across
       neighbouring lines: by default the 4th difference ``d = (x[i−2] −
       4x[i−1] + 6x[i] − 4x[i+1] + x[i+2])/√70`` (``order=2`` gives the 2nd
       difference ``(2x[i] − x[i−1] − x[i+1])/√6``). For white noise of
       variance σ² (constant over the stencil) ``var(d) = σ²``, and signal
       that is a polynomial of degree < ``order`` along that axis cancels: on
       synthetic HR images with sharp atomic columns the 4th difference lets
       through ≈ 4× less specimen structure than the 2nd. For S(T)EM the
       difference is taken across rows (along the slow-scan axis): rows are
       recorded at different times, so their noise is independent even when
       the fast-scan blur (eqs 47–50) correlates neighbours along a row. For
       TEM it is taken along the rows, so a per-row reset offset (eq 36)
       cancels.
    2. The image is cut into ``block × block`` tiles; per tile the mean of
       the image and the variance of ``d`` are computed over the pixels that
       the mask keeps (tiles less than half inside the mask are dropped).
       Because var is linear in μ the tile average is exact for any signal.
    3. Tiles are binned by mean (equal-width bins); per bin the *median* tile
       variance is used, which is robust to edges and structure (they only add
       variance), zingers and dead pixels.
    4. A weighted linear fit ``var = a·(mean − offset) + b`` over the bins
       (weights from the spread of the tile variances) with iterative removal
       of bins more than 4 standard errors off the line. ``b < 0`` is clipped
       to 0 (reported). When the means span too narrow a range to separate
       ``a`` from ``b`` (relative error of ``a`` above 10 %, e.g. one flat
       region), ``b`` is fixed (to ``read_noise²`` when given, else 0: pure
       shot noise, so the dose is then a lower bound) and ``well_conditioned``
       is False.
    5. The dark level ``offset`` and the read variance ``b`` only enter the
       line through its intercept ``b − a·offset``, so one image cannot
       separate them. ``offset="auto"`` takes the smallest dark level that
       keeps ``b ≥ 0``: 0 if the line's intercept at zero intensity is
       positive, else the intensity at which the line reaches zero variance
       (``b = 0`` then). With a fixed ``offset`` (default 0), an intercept
       that is significantly negative and implies a dark level above 5 % of
       the image mean means that the offset is wrong (e.g. a HAADF detector
       with a large DC level): the fit is reported as not well conditioned,
       with the implied dark level, instead of silently clipping ``b`` to 0
       (which makes the dose far too high).

Row statistics (:class:`RowStats`) look at means of ``block``-pixel windows
along each row: a window that deviates from the windows directly above and
below (which agree with each other, so it is not an edge) by more than 7
robust standard deviations is part of a row line (eq 51); the covariance of
such row residuals between windows of the same row that are at least two
windows apart measures full-row offsets beyond the pixel noise (TEM reset
noise, eq 36).

:meth:`NoiseFit.to_noise_params` turns a fit into :class:`NoiseParams` for the
synthetic pipeline, which works on clean images normalised to [0, 1]; see
there for the conversion. Pure numpy: no Qt, no napari, no torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._validation import as_float_image
from ._params import LayerParams, param_specs
from .pipeline import NoiseParams, check_modality, layers_for

__all__ = ["NoiseFit", "RowStats", "fit_noise"]

#: Smallest number of tiles the fit accepts.
MIN_BLOCKS = 4
#: Tiles with fewer valid pixels than this fraction of ``block²`` are dropped.
_MIN_BLOCK_FILL = 0.5
#: Bins with fewer tiles are ignored.
_MIN_BIN_COUNT = 3
#: A bin further than this many standard errors from the line is removed.
_OUTLIER_SE = 4.0
#: A negative intercept below this many standard errors says the dark level is not ``offset``.
_OFFSET_SIGNIFICANCE = 3.0
#: ... if the dark level it implies is above this fraction of the image mean.
_OFFSET_RELEVANCE = 0.05
#: The free fit is accepted when the relative standard error of ``a`` is below this.
_MAX_REL_SE_GAIN = 0.10
#: Row-line threshold, in robust standard deviations of the window residuals.
_ROW_LINE_THRESHOLD = 7.0
#: A row line extends over neighbouring windows above this many robust standard deviations.
_ROW_LINE_GROW = 3.0
#: Full-row offsets are reported as present above this many standard errors.
_ROW_OFFSET_SIGNIFICANCE = 4.0
#: Noise layers whose variance the fit already measures (switched off in to_noise_params).
_ABSORBED_TEM = ("fixed_pattern_noise", "dark_current", "flicker_noise")


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RowStats:
    """Scan-line statistics (rows are lines along the fast-scan axis).

    Attributes
    ----------
    n_rows : int
        Rows examined (with both neighbours inside the region).
    offset_std : float
        Standard deviation of full-row offsets beyond what the pixel noise
        explains, in image-intensity units (0 if none); an upper bound when
        the specimen itself has structure aligned with the rows.
    offset_std_stderr : float
        Its standard error (intensity units).
    offsets_significant : bool
        Whether ``offset_std`` is above 4 standard errors.
    n_lines : int
        Number of row-line segments found (runs of anomalous windows in one row).
    line_rows : tuple of int
        Index along the slow-scan axis of the row of each segment.
    factor_min, factor_max : float
        Range of the segments' intensity relative to the rows above and below
        (eq 51's factor); NaN when no segment was found.
    max_length : float
        Longest segment as a fraction of the row width (0 if none).
    window : int
        Window length along the row, in pixels.
    """

    n_rows: int
    offset_std: float
    offset_std_stderr: float
    offsets_significant: bool
    n_lines: int
    line_rows: tuple[int, ...]
    factor_min: float
    factor_max: float
    max_length: float
    window: int


@dataclass(frozen=True)
class NoiseFit:
    """Result of :func:`fit_noise`: the Poisson–Gaussian model ``var = a·(μ − offset) + b``.

    Attributes
    ----------
    modality : str
        Modality the fit was made for (``"stem"``, ``"tem"`` or ``"sem"``).
    gain : float
        ``a``, image-intensity units per detected electron.
    gain_stderr : float
        Standard error of ``a`` (from the weighted fit, scaled up by the
        reduced χ² when the bins scatter more than their errors say).
    read_variance : float
        ``b``, variance of the signal-independent (read-out) noise, in
        intensity units².
    read_variance_stderr : float
        Standard error of ``b`` (0 when ``b`` was fixed).
    offset : float
        Dark level (intensity of zero electrons) used in the fit.
    image_mean : float
        Mean intensity of the whole image (the anchor of :attr:`dose`).
    n_blocks : int
        Number of tiles that entered the fit.
    block : int
        Tile side, in pixels.
    bin_means, bin_vars : tuple of float
        Mean intensity and median noise variance of every bin used in the fit
        (the mean–variance curve, for plotting).
    bin_counts : tuple of int
        Number of tiles in each bin.
    well_conditioned : bool
        Whether ``a`` and ``b`` were separated (relative error of ``a`` ≤ 10 %).
        It is a statistical statement: specimen structure that passes the
        difference filter (sharp atomic columns at high dose) biases the fit
        without being detected; fit inside a mask of flat regions then.
    message : str
        Human-readable notes (clipping, fallbacks); empty if none.
    noise_correlation : float
        Median correlation of the noise residual between neighbouring pixels
        perpendicular to the difference axis, i.e. along the fast-scan axis
        for S(T)EM (0 for white noise; > 0 after a fast-scan blur, which also
        lowers the pixel variance by the kernel's ``Σk²``).
    rows : RowStats
        Scan-line statistics.
    offset_estimated : bool
        Whether :attr:`offset` was estimated (``offset="auto"``).
    implied_offset : float
        When the given offset is implausible (the mean–variance line reaches
        zero variance well above it), the dark level the line implies; NaN
        otherwise.
    """

    modality: str
    gain: float
    gain_stderr: float
    read_variance: float
    read_variance_stderr: float
    offset: float
    image_mean: float
    n_blocks: int
    block: int
    bin_means: tuple[float, ...]
    bin_vars: tuple[float, ...]
    bin_counts: tuple[int, ...]
    well_conditioned: bool
    message: str
    noise_correlation: float
    rows: RowStats = field(repr=False)
    offset_estimated: bool = False
    implied_offset: float = math.nan

    # -- derived quantities ---------------------------------------------------
    @property
    def signal(self) -> float:
        """Mean signal above the dark level, ``image_mean − offset`` (intensity units)."""
        return self.image_mean - self.offset

    @property
    def dose(self) -> float:
        """Detected electrons per pixel at the image mean, ``(image_mean − offset)/a`` (e⁻/px)."""
        return self.signal / self.gain

    @property
    def read_noise(self) -> float:
        """Read-noise standard deviation ``√b``, in image-intensity units."""
        return math.sqrt(self.read_variance)

    @property
    def read_noise_e(self) -> float:
        """Read-noise standard deviation in electrons, ``√b / a`` (e⁻)."""
        return self.read_noise / self.gain

    def summary(self) -> str:
        """One line: dose, read noise, conditioning and row lines."""
        parts = [
            f"dose {self.dose:.3g} e⁻/px",
            f"read noise {self.read_noise_e:.3g} e⁻ ({self.read_noise:.3g} intensity)",
            f"{self.n_blocks} blocks",
            "well conditioned" if self.well_conditioned else "NOT well conditioned (b fixed)",
        ]
        if self.rows.n_lines:
            parts.append(f"{self.rows.n_lines} row line(s)")
        if self.rows.offsets_significant:
            parts.append(f"row offsets σ {self.rows.offset_std:.3g}")
        if self.offset_estimated:
            parts.append(f"dark level {self.offset:.6g} (estimated)")
        elif math.isfinite(self.implied_offset):
            parts.append(
                f"⚠ dark level {self.offset:.6g} is implausible: the noise suggests "
                f"≈ {self.implied_offset:.6g} (set the dark level, or estimate it)"
            )
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (derived dose and read noise included)."""
        out = asdict(self)
        out.update(dose=self.dose, read_noise=self.read_noise, read_noise_e=self.read_noise_e)
        for k, v in list(out.items()):
            if isinstance(v, tuple):
                out[k] = list(v)
        out["rows"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["rows"].items()}
        return out

    # -- conversion -----------------------------------------------------------
    def to_noise_params(
        self,
        modality: str | None = None,
        base: NoiseParams | None = None,
        clean_mean: float = 0.5,
        *,
        target_rows: int | None = None,
    ) -> NoiseParams:
        """Noise-model parameters that reproduce this image's noise on a clean image.

        The synthetic pipeline distorts clean images in [0, 1]. A real pixel
        ``μ`` corresponds to the clean value ``c = k·(μ − offset)`` with
        ``k = clean_mean/(image_mean − offset)``, so in clean units the model
        is ``var = a_c·c + b_c`` with ``a_c = k·a`` and ``b_c = k²·b``. Our
        layers give ``var = c/α + ...`` with ``α = dose/clean_mean``, hence

        * ``dose = clean_mean/a_c = (image_mean − offset)/a`` — the fitted
          :attr:`dose`, independent of ``clean_mean``;
        * S(T)EM/SEM (eqs 45–46): ``σ_pmt = √b_c/a_c = √b/a`` =
          :attr:`read_noise_e` (counts of one electron);
        * TEM (eq 34): ``σ_thermal = √b_c = clean_mean·√b/(image_mean −
          offset) = clean_mean·read_noise_e/dose`` (intensity units): the read
          noise keeps its ratio to the mean signal.

        If ``base`` has the S(T)EM fast-scan blur (eqs 47–50) switched on, it
        will lower the synthetic noise variance by ``g = Σk²`` of its kernel;
        to reproduce the measured pixel variance the dose becomes ``g·dose``
        and ``σ_pmt`` becomes ``√g·σ_pmt``.
        Row lines (eq 51) are switched on with the detected count (scaled by
        ``target_rows / rows examined``), factor range and longest segment, and
        off if none were found. For TEM, significant full-row offsets set the
        reset noise (eq 36) ``σ = k·offset_std``, and fixed-pattern noise, dark
        current and flicker noise are switched off: the fit already contains
        their variance. Every value is clipped into its parameter's limits.

        Parameters
        ----------
        modality : {"stem", "tem", "sem"}, optional
            Target pipeline; default the fit's modality.
        base : NoiseParams, optional
            Parameters to start from (every layer the fit does not set keeps
            its value). Default: every layer of the pipeline switched off, so
            only the fitted noise is applied.
        clean_mean : float
            Mean of the clean images the parameters will be applied to (in
            [0, 1] units; > 0).
        target_rows : int, optional
            Height in pixels of those clean images, to scale the number of row
            lines; default the number of rows examined in the fit.

        Returns
        -------
        NoiseParams
            Validated parameters.
        """
        modality = check_modality(self.modality if modality is None else modality)
        if not (math.isfinite(clean_mean) and clean_mean > 0):
            raise ValueError(f"clean_mean must be a positive number, got {clean_mean!r}")
        if base is None:
            base = NoiseParams(
                modality,
                {layer.name: layer.params_type(enabled=False) for layer in layers_for(modality)},
            )
        elif base.modality != modality:
            raise ValueError(
                f"base parameters are for {base.modality!r}, but modality {modality!r} was asked"
            )
        k = clean_mean / self.signal
        layers = dict(base.layers)
        if modality == "tem":
            layers["shot_noise"] = _clipped(layers["shot_noise"], enabled=True, dose=self.dose)
            layers["thermal_noise"] = _switched(
                layers["thermal_noise"], self.read_variance > 0, sigma=k * self.read_noise
            )
            layers["reset_noise"] = _switched(
                layers["reset_noise"],
                self.rows.offsets_significant,
                sigma=k * self.rows.offset_std,
            )
            for name in _ABSORBED_TEM:
                layers[name] = layers[name].replace(enabled=False)
        else:
            g = _blur_variance_factor(layers.get("fast_scan_blur"))
            layers["detector_noise"] = _clipped(
                layers["detector_noise"],
                enabled=True,
                dose=g * self.dose,
                sigma_pmt=math.sqrt(g) * self.read_noise_e,
            )
            layers["row_lines"] = self._row_lines(layers["row_lines"], target_rows)
        return NoiseParams(modality, layers).validate()

    def _row_lines(self, current: LayerParams, target_rows: int | None) -> LayerParams:
        r = self.rows
        if r.n_lines == 0 or r.n_rows == 0:
            return current.replace(enabled=False)
        rows = r.n_rows if target_rows is None else int(target_rows)
        n = max(1, int(round(r.n_lines * rows / r.n_rows)))
        lo, hi = sorted((r.factor_min, r.factor_max))
        return _clipped(
            current,
            enabled=True,
            n_lines=n,
            max_length=max(r.max_length, 1e-3),
            factor_min=lo,
            factor_max=hi,
        )


def _clipped(params: LayerParams, **values: Any) -> LayerParams:
    """``params.replace(**values)`` with every number clipped into its hard limits."""
    specs = {s.name: s for s in param_specs(params)}
    out = {}
    for name, v in values.items():
        spec = specs.get(name)
        if spec is not None and not isinstance(v, bool):
            lo = -math.inf if spec.hard_min is None else spec.hard_min
            hi = math.inf if spec.hard_max is None else spec.hard_max
            if name == "dose":
                lo = max(lo, 1e-6)  # doses must be strictly positive
            v = min(max(v, lo), hi)
            v = int(round(v)) if spec.type is int else float(v)
        out[name] = v
    return params.replace(**out)


def _switched(params: LayerParams, on: bool, **values: Any) -> LayerParams:
    """Enabled with ``values`` (clipped) if ``on``; else disabled, its values kept.

    Keeping the values of a switched-off layer keeps them valid for the
    playground's sliders (a log slider cannot show 0).
    """
    return _clipped(params, enabled=True, **values) if on else params.replace(enabled=False)


def _blur_variance_factor(blur: LayerParams | None) -> float:
    """``Σk²`` of the fast-scan kernel (variance factor for white noise), 1 if off."""
    if blur is None or not blur.enabled:
        return 1.0
    from .stem import fast_scan_psf

    kernel = fast_scan_psf(blur)
    return float(np.sum(kernel * kernel))


# ---------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------
def fit_noise(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    modality: str = "stem",
    block: int = 16,
    offset: float | str = 0.0,
    slow_axis: int = 0,
    read_noise: float | None = None,
    saturation: float | None = None,
    order: int = 4,
) -> NoiseFit:
    """Estimate dose/gain, read noise and scan-line statistics of one image.

    Parameters
    ----------
    image : array_like, shape (H, W)
        The micrograph in its own intensity units (counts, or any linear
        scale); never modified.
    mask : array_like of bool, shape (H, W), optional
        True where pixels may be used (e.g. flat regions marked by the user);
        default the whole image. :attr:`NoiseFit.image_mean` is still the
        mean of the whole image (the dose refers to it).
    modality : {"stem", "tem", "sem"}
        Sets the axis of the noise residual (across rows for a scanned image,
        along rows for TEM) and the default conversion of
        :meth:`NoiseFit.to_noise_params`.
    block : int
        Tile side in pixels (≥ 4). Smaller tiles follow finer structure but
        each tile's variance is noisier.
    offset : float or "auto"
        Detector dark level: the intensity of zero electrons (image units).
        ``"auto"``: the smallest dark level consistent with a non-negative
        read noise (step 5 of the module notes); the read noise is then 0
        whenever the dark level comes out above 0.
    slow_axis : {0, 1}
        Array axis along which rows follow each other (the slow-scan axis);
        rows are lines along the other axis.
    read_noise : float, optional
        Known read-noise standard deviation (image units, e.g. from a dark
        frame). If given, ``b = read_noise²`` is fixed and only ``a`` is fitted.
    saturation : float, optional
        Pixels at or above this value (and their neighbours) are left out.
    order : int
        Order of the finite difference that isolates the noise (2–12). Higher
        orders suppress more smooth structure, but the tile variances scatter
        more (their neighbouring values are correlated).

    Returns
    -------
    NoiseFit

    Raises
    ------
    ValueError
        For NaN/inf, non-2-D, too small or constant images, a mask of the wrong
        shape or keeping too few pixels, a mean not above ``offset``, or bad
        options.
    """
    modality = check_modality(modality)
    block = _check_int(block, "block", 4)
    order = _check_int(order, "order", 2)
    if order > 12:
        raise ValueError(f"order must be between 2 and 12, got {order}")
    if slow_axis not in (0, 1):
        raise ValueError(f"slow_axis must be 0 or 1, got {slow_axis!r}")
    auto_offset = isinstance(offset, str)
    if auto_offset and offset != "auto":
        raise ValueError(f"offset must be a number or 'auto', got {offset!r}")
    if auto_offset and read_noise is not None:
        raise ValueError("offset='auto' needs the read noise to be fitted: drop read_noise")
    offset = 0.0 if auto_offset else float(offset)
    if not math.isfinite(offset):
        raise ValueError(f"offset must be finite, got {offset!r}")
    if read_noise is not None and not (math.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a finite number >= 0, got {read_noise!r}")
    as_float_image(image, ndim=2, name="image")  # the shared checks (NaN, ndim, dtype)
    x = np.array(image, dtype=np.float64)  # float64: large offsets keep their small noise
    valid = _check_mask(mask, x.shape)
    if slow_axis == 1:  # internally rows are always axis 0
        x, valid = x.T, valid.T
    if min(x.shape) < 2 * block + order:
        raise ValueError(
            f"image of shape {np.shape(image)} is too small for blocks of {block} pixels: "
            f"each side needs at least {2 * block + order} pixels (or use a smaller block)"
        )
    values = x[valid]
    if values.size == 0:
        raise ValueError("the mask selects no pixels")
    if float(values.max()) == float(values.min()):
        raise ValueError("the image (inside the mask) is constant: there is no noise to fit")
    image_mean = float(x.mean())
    if image_mean <= offset:
        raise ValueError(
            f"the image mean {image_mean:.6g} is not above the dark level offset={offset:.6g}: "
            "no electrons to count"
        )
    if saturation is not None:
        valid = valid & (x < saturation)
    # noise residual along the difference axis: 0 (across rows) for scans, 1 for TEM
    diff_axis = 1 if modality == "tem" else 0
    xs, vs = (x.T, valid.T) if diff_axis == 1 else (x, valid)
    means, variances, counts, corr = _block_stats(xs, vs, block, order)
    if means.size < MIN_BLOCKS:
        raise ValueError(
            f"only {means.size} block(s) of {block}×{block} pixels lie (mostly) inside the mask; "
            f"the fit needs at least {MIN_BLOCKS}: use a larger region or a smaller block"
        )
    if not np.any(variances > 0):
        raise ValueError("no noise found: the image is noise-free inside the mask")
    bins = _bin_blocks(means, variances, counts, _difference_filter(order)[1])
    fixed_b = None if read_noise is None else float(read_noise) ** 2
    implied = _implied_offset(bins, offset) if fixed_b is None else None
    if auto_offset:
        if implied is not None and implied[1] > 0:
            offset = implied[1]
            if not image_mean > offset:  # pragma: no cover - the line lies below the data
                raise ValueError(
                    f"the estimated dark level {offset:.6g} is not below the image mean "
                    f"{image_mean:.6g}: fit inside a region with signal, or give the offset"
                )
        implied = None
    result = _fit_line(bins, offset, fixed_b)
    implied_offset = math.nan
    if (
        implied is not None
        and implied[0]
        and implied[1] - offset > _OFFSET_RELEVANCE * abs(image_mean - offset)
    ):
        implied_offset = implied[1]
        result["well_conditioned"] = False
        note = (
            f"the noise variance reaches zero at intensity {implied_offset:.6g}, well above "
            f"the dark level {offset:.6g}: the detector's dark level is probably about "
            f"{implied_offset:.6g} (give it as offset, or offset='auto'); with offset "
            f"{offset:.6g} the dose is far too high"
        )
        result["message"] = "; ".join(m for m in (note, result["message"]) if m)
    rows = _row_stats(x, valid, block, result["a"], result["b"], offset)
    bm, bv, bn = bins[0][result["keep"]], bins[1][result["keep"]], bins[2][result["keep"]]
    return NoiseFit(
        modality=modality,
        gain=result["a"],
        gain_stderr=result["se_a"],
        read_variance=result["b"],
        read_variance_stderr=result["se_b"],
        offset=float(offset),
        image_mean=image_mean,
        n_blocks=int(means.size),
        block=block,
        bin_means=tuple(float(v) for v in bm),
        bin_vars=tuple(float(v) for v in bv),
        bin_counts=tuple(int(v) for v in bn),
        well_conditioned=result["well_conditioned"],
        message=result["message"],
        noise_correlation=corr,
        rows=rows,
        offset_estimated=auto_offset,
        implied_offset=implied_offset,
    )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask of shape {m.shape} does not match the image shape {shape}")
    if m.dtype.kind not in "biu":
        raise ValueError(f"mask must be boolean (or 0/1 integers), got dtype {m.dtype}")
    return m.astype(bool)


def _block_sums(a: np.ndarray, block: int) -> np.ndarray:
    """Sum over ``block × block`` tiles of a 2-D array already cropped to multiples of ``block``."""
    h, w = a.shape
    return a.reshape(h // block, block, w // block, block).sum(axis=(1, 3))


def _difference_filter(order: int) -> tuple[np.ndarray, float]:
    """Normalised ``order``-th difference ``(−1)^k C(order, k) / √C(2·order, order)``.

    Returns the coefficients and ``Σ_k ρ_k²`` over all lags of the filtered
    white noise's autocorrelation ``ρ_k`` (the factor by which the scatter of a
    sample variance grows because neighbouring outputs are correlated).
    """
    coefs = np.array([(-1) ** k * math.comb(order, k) for k in range(order + 1)], dtype=float)
    coefs /= math.sqrt(math.comb(2 * order, order))
    rho = np.correlate(coefs, coefs, mode="full")
    return coefs, float(np.sum(rho * rho))


def _block_stats(
    x: np.ndarray, valid: np.ndarray, block: int, order: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per tile: image mean, variance of the noise residual along axis 0, pixel count.

    The residual is the normalised ``order``-th difference along axis 0. Also
    returns the median (over tiles) correlation of the residual between
    neighbours along axis 1.
    """
    coefs, _ = _difference_filter(order)
    n_out = x.shape[0] - order
    d = coefs[0] * x[:n_out]
    ok = valid[:n_out].copy()
    for k in range(1, order + 1):
        d += coefs[k] * x[k : k + n_out]
        ok &= valid[k : k + n_out]
    centre = x[order // 2 : order // 2 + n_out]
    h = (d.shape[0] // block) * block
    w = (d.shape[1] // block) * block
    d, ok, centre = d[:h, :w], ok[:h, :w], centre[:h, :w]
    w_ok = ok.astype(np.float64)
    dz = d * w_ok
    n = _block_sums(w_ok, block)
    s_x = _block_sums(centre * w_ok, block)
    s_d = _block_sums(dz, block)
    s_dd = _block_sums(dz * d, block)
    # neighbour products along axis 1 (pairs inside one tile)
    pair = dz[:, :-1] * dz[:, 1:]
    pair = np.concatenate([pair, np.zeros((h, 1))], axis=1)
    pair[:, block - 1 :: block] = 0.0
    s_pair = _block_sums(pair, block)
    keep = n >= _MIN_BLOCK_FILL * block * block
    n, s_x, s_d, s_dd, s_pair = n[keep], s_x[keep], s_d[keep], s_dd[keep], s_pair[keep]
    means = s_x / np.maximum(n, 1)
    variances = (s_dd - s_d * s_d / np.maximum(n, 1)) / np.maximum(n - 1, 1)
    variances = np.maximum(variances, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = s_pair / s_dd
    rho = rho[np.isfinite(rho)]
    corr = float(np.median(rho)) if rho.size else 0.0
    return means, variances, n, corr


def _bin_blocks(
    means: np.ndarray, variances: np.ndarray, counts: np.ndarray, correlation: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins of tile means: (median mean, median variance, count, standard error).

    ``correlation`` is ``Σρ²`` of the residual filter (see :func:`_difference_filter`).
    """
    n_bins = int(np.clip(round(math.sqrt(means.size)), 1, 32))
    lo, hi = np.percentile(means, [1.0, 99.0])
    if not hi > lo:
        idx = np.zeros(means.size, dtype=int)
    else:
        idx = np.clip(((means - lo) / (hi - lo) * n_bins).astype(int), 0, n_bins - 1)
    out_m, out_v, out_n, out_se = [], [], [], []
    min_count = min(_MIN_BIN_COUNT, means.size)
    for k in range(n_bins):
        sel = idx == k
        c = int(sel.sum())
        if c < min_count:
            continue
        v = variances[sel]
        med = float(np.median(v))
        spread = 1.4826 * float(np.median(np.abs(v - med)))
        # floor: the scatter of a Gaussian sample variance of that many pixels
        floor = med * math.sqrt(2.0 * correlation / max(float(np.median(counts[sel])) - 1.0, 1.0))
        out_m.append(float(np.median(means[sel])))
        out_v.append(med)
        out_n.append(c)
        out_se.append(1.2533 * max(spread, floor) / math.sqrt(c))
    return np.array(out_m), np.array(out_v), np.array(out_n), np.array(out_se)


def _wls(x: np.ndarray, y: np.ndarray, se: np.ndarray, free_b: bool) -> tuple:
    """Weighted least squares ``y = a·x (+ b)``: (a, b, se_a, se_b, standardised residuals)."""
    w = 1.0 / np.maximum(se, 1e-300) ** 2
    # centred on the weighted mean: with a large dark level (x ≈ 3·10⁶ ± 10³) the
    # uncentred normal equations lose the intercept to rounding
    xc = float(np.sum(w * x) / np.sum(w)) if free_b else 0.0
    if free_b:
        design = np.stack([x - xc, np.ones_like(x)], axis=1)
    else:
        design = x[:, None]
    xtw = design.T * w
    cov = np.linalg.pinv(xtw @ design)
    beta = cov @ (xtw @ y)
    resid = (y - design @ beta) / se
    dof = len(y) - design.shape[1]
    if dof > 0:
        cov = cov * max(1.0, float(resid @ resid) / dof)
    a = float(beta[0])
    b = float(beta[1]) - a * xc if free_b else 0.0
    se_a = math.sqrt(max(cov[0, 0], 0.0))
    se_b = (
        math.sqrt(max(cov[1, 1] + xc * xc * cov[0, 0] - 2.0 * xc * cov[0, 1], 0.0))
        if free_b
        else 0.0
    )
    return a, b, se_a, se_b, resid


def _robust_wls(
    x: np.ndarray, y: np.ndarray, se: np.ndarray, free_b: bool
) -> tuple[float, float, float, float, np.ndarray]:
    """:func:`_wls` that drops the worst bin while it is more than 4 standard errors off."""
    keep = np.ones(len(y), dtype=bool)
    min_points = 3 if free_b else 2
    while True:
        a, b, se_a, se_b, resid = _wls(x[keep], y[keep], se[keep], free_b)
        worst = int(np.argmax(np.abs(resid))) if resid.size else 0
        if keep.sum() <= min_points or abs(resid[worst]) <= _OUTLIER_SE:
            return a, b, se_a, se_b, keep
        keep[np.flatnonzero(keep)[worst]] = False


def _implied_offset(bins: tuple, offset: float) -> tuple[bool, float] | None:
    """Where the free line ``var = a·(mean − offset) + b`` reaches zero variance.

    Returns ``(significant, dark level)``: the smallest dark level with ``b ≥ 0``
    (``offset`` itself when ``b ≥ 0``) and whether ``b`` is below ``offset``'s
    by more than :data:`_OFFSET_SIGNIFICANCE` standard errors; None when the
    line is not determined (fewer than 3 bins, ``a`` not positive or too uncertain).
    """
    m, v, _n, se = bins
    if len(v) < 3:
        return None
    a, b, se_a, se_b, _keep = _robust_wls(m - offset, v, se, free_b=True)
    if not (a > 0 and se_a <= _MAX_REL_SE_GAIN * a):
        return None
    if b >= 0:
        return False, offset
    return bool(b < -_OFFSET_SIGNIFICANCE * se_b), offset - b / a


def _fit_line(bins: tuple, offset: float, fixed_b: float | None) -> dict[str, Any]:
    """Fit ``var = a·(mean − offset) + b`` to the bins, with the fallbacks described above."""
    m, v, _n, se = bins
    x = m - offset
    notes: list[str] = []
    if fixed_b is None and len(v) >= 3:
        a, b, se_a, se_b, keep = _robust_wls(x, v, se, free_b=True)
        if a > 0 and se_a <= _MAX_REL_SE_GAIN * a:
            if b < 0:
                notes.append(
                    f"fitted read variance {b:.3g} ± {se_b:.3g} was negative: clipped to 0"
                )
                a, _, se_a, _, keep2 = _robust_wls(x[keep], v[keep], se[keep], free_b=False)
                keep[np.flatnonzero(keep)[~keep2]] = False
                b, se_b = 0.0, 0.0
            return _result(a, b, se_a, se_b, keep, True, notes)
        span = (x.max() - x.min()) / max(abs(float(np.median(x))), 1e-300)
        notes.append(
            f"block means span only ±{50 * span:.0f} % of the mean "
            f"(gain {a:.3g} ± {se_a:.3g}): shot and read noise cannot be separated"
        )
    elif fixed_b is None:
        notes.append(f"only {len(v)} intensity bin(s): shot and read noise cannot be separated")
    b = 0.0 if fixed_b is None else fixed_b
    if fixed_b is None:
        notes.append("assumed no read noise (b = 0), so the dose is a lower bound")
    else:
        notes.append(f"read variance fixed to {b:.6g}")
    if len(v) >= 2:
        a, _, se_a, _, keep = _robust_wls(x, v - b, se, free_b=False)
    else:
        keep = np.ones(len(v), dtype=bool)
        a = float((v[0] - b) / x[0]) if x[0] > 0 else 0.0
        se_a = float(se[0] / x[0]) if x[0] > 0 else math.inf
    if not a > 0:
        total = float(np.median(v))
        notes.append("noise variance does not grow with intensity: dose set very high")
        a = max(total, 1e-300) * 1e-6 / max(float(np.median(x)), 1e-300)
    good = fixed_b is not None and se_a <= _MAX_REL_SE_GAIN * a
    return _result(a, b, se_a, 0.0, keep, good, notes)


def _result(a, b, se_a, se_b, keep, good, notes) -> dict[str, Any]:
    return {
        "a": float(a),
        "b": float(b),
        "se_a": float(se_a),
        "se_b": float(se_b),
        "keep": keep,
        "well_conditioned": bool(good),
        "message": "; ".join(notes),
    }


# ---------------------------------------------------------------------------
# row statistics
# ---------------------------------------------------------------------------
def _row_stats(
    x: np.ndarray, valid: np.ndarray, window: int, a: float, b: float, offset: float
) -> RowStats:
    """Row lines and full-row offsets from ``window``-pixel means along each row."""
    h, w = x.shape
    nw = w // window
    xs, vs = x[:, : nw * window], valid[:, : nw * window]
    cnt = vs.reshape(h, nw, window).sum(axis=2)
    m = (xs * vs).reshape(h, nw, window).sum(axis=2) / np.maximum(cnt, 1)
    ok_w = cnt >= 0.8 * window
    up, mid, down = m[:-2], m[1:-1], m[2:]
    ok = ok_w[:-2] & ok_w[1:-1] & ok_w[2:]
    e = mid - 0.5 * (up + down)
    # predicted standard deviation of e from the pixel noise alone (white noise)
    pix_var = np.maximum(a * (mid - offset) + b, 1e-300)
    z = e / np.sqrt(1.5 * pix_var / window)
    zs = z[ok]
    n_rows = int(ok.any(axis=1).sum())
    empty = RowStats(n_rows, 0.0, 0.0, False, 0, (), math.nan, math.nan, 0.0, window)
    if zs.size < 8:
        return empty
    med = float(np.median(zs))
    scale = max(1.4826 * float(np.median(np.abs(zs - med))), 1e-12)
    # hysteresis: segments of weak outliers that hold at least one strong one
    not_edge = np.abs(down - up) < np.abs(e)
    strong = _single_row_outliers(z, e, ok, med, _ROW_LINE_THRESHOLD * scale) & not_edge
    weak = _single_row_outliers(z, e, ok, med, _ROW_LINE_GROW * scale) & not_edge
    segments = [(r, c0, c1) for r, c0, c1 in _segments(weak, max_gap=1) if strong[r, c0:c1].any()]
    outlier = np.zeros_like(weak)
    for r, c0, c1 in segments:
        outlier[r, c0:c1] = True
    factors = [
        float(np.mean(mid[r, c0:c1]) / np.mean(0.5 * (up[r, c0:c1] + down[r, c0:c1])))
        for r, c0, c1 in segments
    ]
    lengths = [(c1 - c0) * window / w for _, c0, c1 in segments]
    off_std, off_se = _row_offset_std(e, ok, outlier)
    return RowStats(
        n_rows=n_rows,
        offset_std=off_std,
        offset_std_stderr=off_se,
        offsets_significant=bool(off_std > 0 and off_std > _ROW_OFFSET_SIGNIFICANCE * off_se),
        n_lines=len(segments),
        line_rows=tuple(int(r) + 1 for r, _, _ in segments),
        factor_min=min(factors) if factors else math.nan,
        factor_max=max(factors) if factors else math.nan,
        max_length=max(lengths) if lengths else 0.0,
        window=window,
    )


def _single_row_outliers(
    z: np.ndarray, e: np.ndarray, ok: np.ndarray, centre: float, threshold: float
) -> np.ndarray:
    """Windows whose residual is an outlier that only its own row explains.

    A change of one row by ``δ`` gives the residuals ``(−δ/2, δ, −δ/2)`` in
    the rows above, at and below it; an edge or a feature several rows high
    does not. Windows in the first and last examined rows are never flagged.
    """
    out = ok & (np.abs(z - centre) > threshold)
    half = 0.5 * e[1:-1]
    single = (np.abs(e[:-2] + half) < np.abs(half)) & (np.abs(e[2:] + half) < np.abs(half))
    out[1:-1] &= single & ok[:-2] & ok[2:]
    out[0] = False
    out[-1] = False
    return out


def _segments(flags: np.ndarray, max_gap: int = 0) -> list[tuple[int, int, int]]:
    """Runs of True along axis 1 as (row, first, last + 1); runs ≤ ``max_gap`` apart merge."""
    padded = np.zeros((flags.shape[0], flags.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = flags
    edges = np.diff(padded, axis=1)
    starts = np.argwhere(edges == 1)
    stops = np.argwhere(edges == -1)
    runs: list[tuple[int, int, int]] = []
    for (r, c0), (_, c1) in zip(starts, stops):
        if runs and runs[-1][0] == r and c0 - runs[-1][2] <= max_gap:
            runs[-1] = (int(r), runs[-1][1], int(c1))
        else:
            runs.append((int(r), int(c0), int(c1)))
    return runs


def _row_offset_std(e: np.ndarray, ok: np.ndarray, outlier: np.ndarray) -> tuple[float, float]:
    """Std of full-row offsets from the covariance of row residuals ≥ 2 windows apart.

    A row offset ``o_i`` (iid, variance s²) adds ``o_i − (o_{i−1} + o_{i+1})/2``
    (variance 1.5 s²) to every window of row ``i``; the pixel noise of windows
    two or more windows apart is independent, so the mean product of such
    residuals estimates 1.5 s².
    """
    rows = ok.all(axis=1) & ~outlier.any(axis=1)
    er = e[rows]
    if er.shape[0] < 8 or er.shape[1] < 3:
        return 0.0, 0.0
    nw = er.shape[1]
    total = er.sum(axis=1)
    cross = total**2 - (er**2).sum(axis=1) - 2.0 * (er[:, :-1] * er[:, 1:]).sum(axis=1)
    pairs = nw * nw - nw - 2 * (nw - 1)
    c = cross / pairs
    mean = float(c.mean())
    se = float(c.std(ddof=1) / math.sqrt(c.size))
    s2, se_s2 = mean / 1.5, se / 1.5
    if s2 <= 0:
        return 0.0, math.sqrt(se_s2)
    s = math.sqrt(s2)
    return s, se_s2 / (2.0 * s)
