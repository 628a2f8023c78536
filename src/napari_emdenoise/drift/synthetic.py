"""Frame pairs and movies with known sub-pixel drift, for training, tests and benchmarks.

The clean content comes from :mod:`napari_emdenoise.synth` (Vasudevan & Jesse, 2019,
used hexagonal lattices of varying spacing and rotation; we add the project's
whole clean-image generator: crystals in zone axis, amorphous films, particles
and mixed low-magnification scenes). A shifted copy is cut from a larger clean
canvas, the sub-pixel part applied by a Fourier shift of the canvas's
even-symmetric extension (no wrap-around edge), and the two frames then go
through the project's distortion model independently, with the same detector
parameters and dose. Geometric post-processing (random affine, fixed annotations,
crops) is switched off, and the S(T)EM scan jitter is capped at a per-line
displacement of :data:`MAX_JITTER_PX` pixels.

Sign convention (everywhere in :mod:`napari_emdenoise.drift`): ``shift`` is what
``skimage.registration.phase_cross_correlation(reference, moving)[0]`` returns,
the ``(dy, dx)`` in pixels that registers ``moving`` onto ``reference``:
``scipy.ndimage.shift(moving, shift) ≈ reference``. A specimen that drifts by
``+d`` between the frames gives ``shift = -d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CONTENT_TYPES",
    "MAX_JITTER_PX",
    "MODALITIES",
    "DriftPair",
    "clean_canvas",
    "drifting_movie",
    "lattice_period_px",
    "random_pair",
    "repeat_distance_px",
    "shifted_pair",
    "subpixel_translate",
]

#: Content types of the clean frames.
CONTENT_TYPES: tuple[str, ...] = ("lattice", "amorphous", "particles", "mixed")
#: Distortion models used for drift pairs.
MODALITIES: tuple[str, ...] = ("stem", "tem")
#: Post-processing layers of the distortion model that move or mask the content
#: differently in each frame (or overlay fixed marks); off for drift pairs.
_GEOMETRIC_LAYERS = ("affine_interpolation", "annotations", "crops")
#: Largest standard deviation of the per-line scan-jitter displacement, pixels. The
#: distortion model draws jitter in Å (σ up to 0.8 Å) and converts it with the pixel
#: size; at 0.025 Å/pixel that scrambles lines by tens of pixels, and the frame no
#: longer has one shift to measure.
MAX_JITTER_PX = 0.5
#: Clean canvas margin beyond the largest shift, in pixels.
_MARGIN = 8


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def lattice_period_px(info: dict[str, Any]) -> float | None:
    """Length in pixels of the shortest projected lattice vector of a zone-axis crystal.

    Parameters
    ----------
    info : dict
        Record returned by :func:`napari_emdenoise.synth.atomic.generate_atomic`.

    Returns
    -------
    float or None
        None for content without a 2-D lattice.
    """
    spec = info.get("specimen", {})
    vectors = spec.get("projected_lattice_vectors_A")
    size = info.get("pixel_size_A")
    if not vectors or not size or spec.get("orientation") != "zone_axis":
        return None
    a, b = (np.asarray(v, dtype=float) for v in vectors)
    lengths = [
        np.hypot(*(i * a + j * b)) for i in range(-3, 4) for j in range(-3, 4) if (i, j) != (0, 0)
    ]
    return float(min(lengths) / size)


def repeat_distance_px(image: np.ndarray, threshold: float = 0.6) -> float | None:
    """Shortest translation under which ``image`` nearly repeats itself, in pixels.

    The distance from zero to the nearest local maximum of the image's
    normalised autocorrelation that reaches ``threshold``. For a crystal it is
    the shortest period of the projected structure (basis included, which the
    lattice vectors alone can overestimate); a shift longer than half of it
    cannot be told from a shorter one.

    Parameters
    ----------
    image : numpy.ndarray
        Clean 2-D frame.
    threshold : float
        Correlation that counts as a repeat.

    Returns
    -------
    float or None
        None when nothing repeats within 3/8 of the frame.
    """
    from scipy import ndimage

    from .correlation import bandpass, ncc_map

    frame = bandpass(image, 0.0)
    ncc = ncc_map(frame, frame)
    values = ncc.values
    ky, kx = ncc.radius
    maxima = (values == ndimage.maximum_filter(values, size=3, mode="nearest")) & (
        values >= threshold
    )
    maxima[ky, kx] = False
    yy, xx = np.nonzero(maxima)
    if yy.size == 0:
        return None
    return float(np.min(np.hypot(yy - ky, xx - kx)))


def clean_canvas(
    content: str,
    shape: tuple[int, int],
    rng: np.random.Generator,
    pixel_size: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One clean image of a content type, in [0, 1] with maximum 1.

    Parameters
    ----------
    content : {"lattice", "amorphous", "particles", "mixed"}
        ``lattice``: a crystal in zone axis (atomic columns, possibly with a
        wedge, a shape, defects and a support); ``amorphous``: an amorphous
        film at atomic resolution; ``particles``: soft and sharp particles at
        low magnification; ``mixed``: the generator's random low-magnification
        scene (particles, grains, bands, boxes, cracks) or a random atomic one.
    shape : tuple of int
        ``(height, width)`` in pixels.
    rng : numpy.random.Generator
        Random source (advanced in place).
    pixel_size : float, optional
        Pixel size of atomic-resolution content in Å (log-uniform in
        [0.025, 0.9] Å otherwise, the generator's range).

    Returns
    -------
    image : numpy.ndarray
        float32 image.
    info : dict
        ``kind`` ("hr" or "lr"), ``content``, ``pixel_size_A`` (hr only) and
        ``period_px`` (shortest lattice period in pixels, lattices only).
    """
    from ..synth.atomic import generate_atomic
    from ..synth.contrast import apply_random_contrast
    from ..synth.lowres import generate_lowres

    if content not in CONTENT_TYPES:
        raise ValueError(f"content must be one of {CONTENT_TYPES}, got {content!r}")
    rng = _rng(rng)
    for _ in range(20):
        if content == "lattice":
            raw, info = generate_atomic(
                shape, rng, specimen="crystalline", orientation="zone_axis", pixel_size=pixel_size
            )
            kind = "hr"
        elif content == "amorphous":
            raw, info = generate_atomic(shape, rng, specimen="amorphous", pixel_size=pixel_size)
            kind = "hr"
        elif content == "particles":
            objects = ["soft_particles", "sharp_particles"]
            raw, info = generate_lowres(shape, rng, objects=objects)
            kind = "lr"
        elif rng.random() < 0.5:
            raw, info = generate_lowres(shape, rng)
            kind = "lr"
        else:
            raw, info = generate_atomic(shape, rng, pixel_size=pixel_size)
            kind = "hr"
        if np.isfinite(raw).all() and raw.max() > 0 and raw.std() > 1e-6 * raw.max():
            break
    image, _contrast = apply_random_contrast(raw, rng)
    record: dict[str, Any] = {"kind": kind, "content": content}
    if kind == "hr":
        record["pixel_size_A"] = float(info["pixel_size_A"])
        record["specimen"] = info["specimen"]["type"]
    period = lattice_period_px(info) if kind == "hr" else None
    record["period_px"] = period
    return image.astype(np.float32), record


def subpixel_translate(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Band-limited translation ``out(x) = image(x - shift)`` without wrap-around.

    The Fourier shift is applied to the even-symmetric extension of the image
    (the image and its mirror copies, a periodic signal without edge jumps), so
    no content wraps around and there is no Gibbs ringing from the borders.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    shift : tuple of float
        ``(dy, dx)`` in pixels.

    Returns
    -------
    numpy.ndarray
        float64 image of the same shape.
    """
    from scipy import fft, ndimage

    h, w = image.shape
    ext = np.block([[image, image[:, ::-1]], [image[::-1, :], image[::-1, ::-1]]])
    spectrum = ndimage.fourier_shift(fft.fft2(ext.astype(np.float64)), shift)
    return fft.ifft2(spectrum).real[:h, :w]


@dataclass
class DriftPair:
    """Two noisy frames with a known registration shift.

    Attributes
    ----------
    reference, moving : numpy.ndarray
        Distorted float32 frames.
    clean_reference, clean_moving : numpy.ndarray
        The clean frames they came from.
    shift : tuple of float
        True ``(dy, dx)`` in pixels registering ``moving`` onto ``reference``.
    content, modality, kind : str
        Content type, distortion model (``"stem"``/``"tem"``) and ``"hr"``/``"lr"``.
    dose : float
        Mean counts per pixel of each frame.
    period_px : float or None
        Shortest repeat distance of the content in pixels (crystals; see
        :func:`repeat_distance_px`), None for aperiodic content.
    info : dict
        Extra record (pixel size, specimen type).
    """

    reference: np.ndarray
    moving: np.ndarray
    clean_reference: np.ndarray
    clean_moving: np.ndarray
    shift: tuple[float, float]
    content: str
    modality: str
    kind: str
    dose: float
    period_px: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def denoiser(self) -> str:
        """Name of the bundled restoration model matching this pair (e.g. ``"hrstem"``)."""
        return f"{self.kind}{self.modality}"


def _noise_params(modality: str, dose: float, rng: np.random.Generator, pixel_size: float | None):
    """Random detector parameters at ``dose`` without geometric post-processing, with the
    scan jitter capped at :data:`MAX_JITTER_PX` (see the module notes)."""
    from ..noise import sample_params

    params = sample_params(modality, rng, pixel_size=pixel_size).with_dose(float(dose))
    for name in _GEOMETRIC_LAYERS:
        if name in params.layers:
            params = params.replace_layer(name, params[name].replace(enabled=False))
    if "scan_jitter" in params.layers:
        jitter = params["scan_jitter"]
        changes = {}
        for axis in ("x", "y"):
            sigma, phi = getattr(jitter, f"sigma_{axis}"), getattr(jitter, f"phi_{axis}")
            line_px = sigma / jitter.pixel_size / math.sqrt(1.0 - phi * phi)
            if line_px > MAX_JITTER_PX:
                changes[f"sigma_{axis}"] = sigma * MAX_JITTER_PX / line_px
        if changes:
            params = params.replace_layer("scan_jitter", jitter.replace(**changes).validate())
    return params


def _distort_frames(
    frames: list[np.ndarray],
    modality: str,
    dose: float | None,
    rng: np.random.Generator,
    pixel_size: float | None,
) -> list[np.ndarray]:
    """Distort frames independently with one set of detector parameters (None: clean)."""
    from ..noise import distort

    if dose is None:
        return [f.astype(np.float32) for f in frames]
    params = _noise_params(modality, dose, rng, pixel_size)
    return [distort(f, modality, params, rng).astype(np.float32) for f in frames]


def shifted_pair(
    canvas: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    *,
    modality: str = "stem",
    dose: float | None = 20.0,
    rng: np.random.Generator | None = None,
    info: dict[str, Any] | None = None,
) -> DriftPair:
    """Cut a reference and a shifted frame from a clean canvas and distort both.

    Parameters
    ----------
    canvas : numpy.ndarray
        Clean 2-D image, at least ``shape + 2·(|shift| + 8)`` pixels.
    shape : tuple of int
        Frame ``(height, width)`` in pixels.
    shift : tuple of float
        Registration shift ``(dy, dx)`` in pixels (see the module notes).
    modality : {"stem", "tem"}
        Distortion model.
    dose : float or None
        Mean counts per pixel (None: no noise, the clean frames).
    rng : numpy.random.Generator, optional
        Random source for the noise.
    info : dict, optional
        The canvas's record from :func:`clean_canvas`.

    Returns
    -------
    DriftPair
    """
    rng = _rng(rng)
    info = dict(info or {})
    h, w = (int(s) for s in shape)
    sy, sx = (float(s) for s in shift)
    margin_y = (canvas.shape[0] - h) // 2
    margin_x = (canvas.shape[1] - w) // 2
    if margin_y < abs(sy) + 2 or margin_x < abs(sx) + 2:
        raise ValueError(f"canvas {canvas.shape} too small for a {shape} frame shifted by {shift}")
    ny, nx = math.floor(sy), math.floor(sx)
    fy, fx = sy - ny, sx - nx
    ref = canvas[margin_y : margin_y + h, margin_x : margin_x + w].astype(np.float64)
    # moving(x) = canvas(x + margin + shift): translate the canvas by -frac, cut at margin + int
    moved = subpixel_translate(canvas, (-fy, -fx)) if (fy or fx) else canvas.astype(np.float64)
    mov = moved[margin_y + ny : margin_y + ny + h, margin_x + nx : margin_x + nx + w]
    mov = np.clip(mov, 0.0, None)  # Fourier interpolation may undershoot at sharp edges
    modality_ok = modality in MODALITIES
    if not modality_ok:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    noisy = _distort_frames([ref, mov], modality, dose, rng, info.get("pixel_size_A"))
    return DriftPair(
        reference=noisy[0],
        moving=noisy[1],
        clean_reference=ref.astype(np.float32),
        clean_moving=mov.astype(np.float32),
        shift=(sy, sx),
        content=str(info.get("content", "custom")),
        modality=modality,
        kind=str(info.get("kind", "hr")),
        dose=float("inf") if dose is None else float(dose),
        period_px=info.get("period_px"),
        info=info,
    )


def _draw_shift(
    rng: np.random.Generator, max_shift: float, period: float | None
) -> tuple[float, float]:
    """A shift uniform in a disc of radius ``max_shift`` (below half a lattice period)."""
    limit = max_shift if period is None else min(max_shift, 0.45 * period)
    radius = limit * math.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return radius * math.sin(angle), radius * math.cos(angle)


def random_pair(
    shape: tuple[int, int] = (128, 128),
    rng: np.random.Generator | None = None,
    *,
    content: str | None = None,
    modality: str | None = None,
    dose: float | None = None,
    max_shift: float | None = None,
    dose_range: tuple[float, float] = (0.3, 2000.0),
    clean: bool = False,
) -> DriftPair:
    """A random frame pair with a known sub-pixel shift.

    Parameters
    ----------
    shape : tuple of int
        Frame ``(height, width)`` in pixels.
    rng : numpy.random.Generator, optional
        Random source.
    content : str, optional
        One of :data:`CONTENT_TYPES` (uniform otherwise).
    modality : {"stem", "tem"}, optional
        Distortion model (uniform otherwise).
    dose : float, optional
        Mean counts per pixel (log-uniform in ``dose_range`` otherwise).
    max_shift : float, optional
        Largest shift length in pixels (default a third of the smaller side).
        Periodic content is kept below 0.45 of its shortest repeat distance
        (:func:`repeat_distance_px`), so that the true shift is the nearest
        correlation peak.
    dose_range : tuple of float
        Range of the log-uniform dose draw, counts per pixel.
    clean : bool
        No noise: ``reference``/``moving`` are the clean frames.

    Returns
    -------
    DriftPair
    """
    rng = _rng(rng)
    content = content or CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
    modality = modality or MODALITIES[int(rng.integers(len(MODALITIES)))]
    if dose is None:
        lo, hi = np.log(dose_range[0]), np.log(dose_range[1])
        dose = float(np.exp(rng.uniform(lo, hi)))
    h, w = (int(s) for s in shape)
    limit = min(h, w) / 3.0 if max_shift is None else float(max_shift)
    pad = int(math.ceil(limit)) + _MARGIN
    canvas, info = clean_canvas(content, (h + 2 * pad, w + 2 * pad), rng)
    if info["kind"] == "hr":
        repeat = repeat_distance_px(canvas[pad : pad + h, pad : pad + w])
        periods = [p for p in (info.get("period_px"), repeat) if p is not None]
        info["period_px"] = min(periods) if periods else None
    shift = _draw_shift(rng, limit, info.get("period_px"))
    return shifted_pair(
        canvas, (h, w), shift, modality=modality, dose=None if clean else dose, rng=rng, info=info
    )


def drifting_movie(
    n_frames: int = 20,
    shape: tuple[int, int] = (128, 128),
    rng: np.random.Generator | None = None,
    *,
    content: str = "mixed",
    modality: str = "tem",
    dose: float | None = 20.0,
    step: float = 1.5,
    max_drift: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A synthetic in-situ movie whose field of view drifts as a random walk.

    Parameters
    ----------
    n_frames : int
        Number of frames (≥ 2).
    shape : tuple of int
        Frame ``(height, width)`` in pixels.
    rng : numpy.random.Generator, optional
        Random source.
    content : str
        One of :data:`CONTENT_TYPES`.
    modality : {"stem", "tem"}
        Distortion model.
    dose : float or None
        Mean counts per pixel of every frame (None: clean frames).
    step : float
        Standard deviation of the drift step per frame and axis, in pixels.
    max_drift : float, optional
        The walk is clipped to this distance from the first frame, in pixels
        (default a quarter of the smaller side).

    Returns
    -------
    frames : numpy.ndarray
        ``(n_frames, height, width)`` float32 movie.
    shifts : numpy.ndarray
        ``(n_frames, 2)`` true registration shifts of every frame onto the
        first one, pixels (``shifts[0] = (0, 0)``).
    info : dict
        The canvas record and the settings.
    """
    rng = _rng(rng)
    if int(n_frames) < 2:
        raise ValueError(f"a movie needs at least 2 frames, got {n_frames}")
    h, w = (int(s) for s in shape)
    limit = min(h, w) / 4.0 if max_drift is None else float(max_drift)
    steps = rng.normal(0.0, step, size=(int(n_frames), 2))
    steps[0] = 0.0
    shifts = np.clip(np.cumsum(steps, axis=0), -limit, limit)
    pad = int(math.ceil(limit)) + _MARGIN
    canvas, info = clean_canvas(content, (h + 2 * pad, w + 2 * pad), rng)
    clean = [
        shifted_pair(canvas, (h, w), tuple(s), dose=None, info=info).clean_moving for s in shifts
    ]
    frames = _distort_frames(clean, modality, dose, rng, info.get("pixel_size_A"))
    settings = {"content": content, "modality": modality, "dose": dose, "step_px": step}
    return np.stack(frames), shifts, {**info, **settings}
