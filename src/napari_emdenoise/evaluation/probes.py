"""Probes: lag-free lattices of Gaussian columns with Poisson noise.

* :func:`lattice_probe`: a perfect lattice. No scan distortion, no drift, no
  blur: a restoration must leave every column where it is. A network that
  learned an average fast-scan shift moves all of them by the same amount,
  which this probe shows at once.
* :func:`defect_probe`: the same lattice with vacancies (empty sites) and
  substitutions (brighter columns), what an atomic-resolution HAADF image is
  usually recorded for. A restoration that averages over unit cells, or blurs,
  fills the vacancies and dims the substitutions;
  :func:`defect_contrast` measures how much of each contrast survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DefectContrast",
    "DefectProbe",
    "LatticeProbe",
    "defect_contrast",
    "defect_probe",
    "lattice_probe",
]


@dataclass
class LatticeProbe:
    """One realisation of the lattice probe.

    Attributes
    ----------
    noisy : numpy.ndarray
        Float32 Poisson counts, shape (size, size).
    clean : numpy.ndarray
        Float64 expectation of ``noisy`` (counts per pixel).
    positions : numpy.ndarray
        (N, 2) true column positions ``(row, col)`` in pixels.
    dose : float
        Mean counts per pixel of ``clean``.
    spacing, width : float
        Lattice spacing and Gaussian column standard deviation, in pixels.
    """

    noisy: np.ndarray
    clean: np.ndarray
    positions: np.ndarray
    dose: float
    spacing: float
    width: float


def _profile(n: int, centres: np.ndarray, width: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64)[:, None]
    return np.exp(-((x - centres[None, :]) ** 2) / (2 * width**2))


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. np.random.default_rng(0))")


def _with_dose(
    image: np.ndarray, dose: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` scaled to a mean of ``dose`` counts per pixel, and a Poisson draw of it."""
    clean = image * (dose / image.mean())
    return clean, rng.poisson(clean).astype(np.float32)


def lattice_probe(
    rng: np.random.Generator,
    *,
    size: int = 256,
    spacing: float = 20.0,
    width: float = 2.5,
    dose: float = 50.0,
    background: float = 0.1,
    first: float | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
) -> LatticeProbe:
    """Gaussian columns on a square lattice, scaled to ``dose``, with Poisson noise.

    ``clean = (background + lattice / max(lattice))``, scaled to a mean of
    ``dose`` counts per pixel; ``noisy ~ Poisson(clean)``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the Poisson noise (pass a seeded generator).
    size : int
        Image side in pixels.
    spacing : float
        Lattice spacing in pixels.
    width : float
        Standard deviation of each Gaussian column, in pixels.
    dose : float
        Mean counts per pixel.
    background : float
        Background level relative to the column peak height.
    first : float, optional
        Position of the first column on each axis, in pixels (default
        ``spacing / 2``).
    shift : tuple of float
        Sub-pixel ``(row, col)`` shift of the whole lattice, in pixels.

    Returns
    -------
    LatticeProbe
    """
    _check_rng(rng)
    if size < 8 or spacing <= 0 or width <= 0 or dose <= 0:
        raise ValueError("size ≥ 8 and positive spacing, width and dose are required")
    start = spacing / 2 if first is None else float(first)
    sites = np.arange(start, size, spacing)
    rows_c = sites + float(shift[0])
    cols_c = sites + float(shift[1])
    lattice = _profile(size, rows_c, width).sum(1)[:, None] * _profile(size, cols_c, width).sum(1)
    clean, noisy = _with_dose(background + lattice / lattice.max(), dose, rng)
    rr, cc = np.meshgrid(rows_c, cols_c, indexing="ij")
    positions = np.stack([rr.ravel(), cc.ravel()], axis=1)
    return LatticeProbe(noisy, clean, positions, float(dose), float(spacing), float(width))


@dataclass
class DefectProbe:
    """One realisation of the defect probe.

    Attributes
    ----------
    noisy : numpy.ndarray
        Float32 Poisson counts, shape (size, size).
    clean : numpy.ndarray
        Float64 expectation of ``noisy`` (counts per pixel).
    positions : numpy.ndarray
        (N, 2) lattice sites ``(row, col)`` in pixels, occupied or not.
    weights : numpy.ndarray
        (N,) column weight of each site: 0 for a vacancy, 1 for a normal
        column, ``substitution_weight`` for a substitution.
    dose : float
        Mean counts per pixel of ``clean``.
    spacing, width : float
        Lattice spacing and Gaussian column standard deviation, in pixels.
    """

    noisy: np.ndarray
    clean: np.ndarray
    positions: np.ndarray
    weights: np.ndarray
    dose: float
    spacing: float
    width: float


def defect_probe(
    rng: np.random.Generator,
    *,
    size: int = 256,
    spacing: float = 6.0,
    width: float = 1.0,
    dose: float = 5.0,
    background: float = 0.1,
    vacancies: float = 0.03,
    substitutions: float = 0.03,
    substitution_weight: float = 1.5,
) -> DefectProbe:
    """A square lattice of Gaussian columns with vacancies and substitutions.

    Sites start at ``spacing / 2``; a random share ``vacancies`` of them is
    empty and a further share ``substitutions`` holds a column of weight
    ``substitution_weight`` (a heavier atom in HAADF). ``clean = background +
    Σ weight · column`` (column peak 1), scaled to a mean of ``dose`` counts
    per pixel; ``noisy ~ Poisson(clean)``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the defect sites and the Poisson noise.
    size : int
        Image side in pixels (≥ 8).
    spacing, width : float
        Lattice spacing and Gaussian column standard deviation, pixels.
    dose : float
        Mean counts per pixel.
    background : float
        Background relative to a normal column's peak.
    vacancies, substitutions : float
        Shares of the sites that are vacancies and substitutions (each 0–0.5).
    substitution_weight : float
        Column weight of a substitution relative to a normal column (> 0).

    Returns
    -------
    DefectProbe
    """
    _check_rng(rng)
    if size < 8 or spacing <= 0 or width <= 0 or dose <= 0 or substitution_weight <= 0:
        raise ValueError("size ≥ 8 and positive spacing, width, dose and weight are required")
    if not (0 <= vacancies <= 0.5 and 0 <= substitutions <= 0.5):
        raise ValueError("vacancies and substitutions must each be shares in [0, 0.5]")
    sites = np.arange(spacing / 2, size, spacing)
    rr, cc = np.meshgrid(sites, sites, indexing="ij")
    positions = np.stack([rr.ravel(), cc.ravel()], axis=1)
    n = len(positions)
    order = rng.permutation(n)
    n_vac, n_sub = int(round(vacancies * n)), int(round(substitutions * n))
    weights = np.ones(n)
    weights[order[:n_vac]] = 0.0
    weights[order[n_vac : n_vac + n_sub]] = substitution_weight
    rows = _profile(size, positions[:, 0], width)  # (size, N)
    cols = _profile(size, positions[:, 1], width)
    clean, noisy = _with_dose(background + (rows * weights[None, :]) @ cols.T, dose, rng)
    return DefectProbe(noisy, clean, positions, weights, float(dose), float(spacing), float(width))


@dataclass
class DefectContrast:
    """How much of the defect contrast an image keeps (see :func:`defect_contrast`).

    Attributes
    ----------
    vacancy : float
        Share of the vacancy contrast kept: 1 when vacancies are as empty,
        relative to the normal columns, as in the reference image; 0 when
        they are as bright as a normal column.
    substitution : float
        Share of the substitution contrast kept: 1 when substitutions stand
        out from the normal columns as much as in the reference; 0 when they
        look like normal columns.
    intensity_rms : float
        RMS error of every site's integrated intensity against the
        reference's, relative to a normal column's.
    """

    vacancy: float
    substitution: float
    intensity_rms: float


def _site_sums(image: np.ndarray, positions: np.ndarray, radius: float) -> np.ndarray:
    """Sum of ``image`` over a disk of ``radius`` pixels around each site (nearest pixels)."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = dy**2 + dx**2 <= radius**2
    dy, dx = dy[disk], dx[disk]
    iy = np.rint(positions[:, 0]).astype(int)[:, None] + dy[None, :]
    ix = np.rint(positions[:, 1]).astype(int)[:, None] + dx[None, :]
    h, w = image.shape
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    values = np.where(inside, image[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)], 0.0)
    return values.sum(axis=1)


def site_contrast(
    image: np.ndarray,
    reference: np.ndarray,
    normal: np.ndarray,
    defect: np.ndarray,
    radius: float,
) -> float:
    """Share of a defect's contrast against normal columns that ``image`` keeps.

    With ``I`` the intensity summed over a disk of ``radius`` pixels at a site
    and ``c = mean(I_defect) / mean(I_normal) − 1`` the defect's relative
    contrast, returns ``c(image) / c(reference)``: 1 when the defects stand out
    as in the reference (the clean image), 0 when they look like normal
    columns, negative when inverted.

    Parameters
    ----------
    image, reference : numpy.ndarray
        A restoration (or the noisy image) and the clean image, same 2-D shape.
    normal, defect : numpy.ndarray
        (N, 2) and (M, 2) ``(row, col)`` pixel positions of normal and defect sites.
    radius : float
        Integration radius, pixels.

    Returns
    -------
    float
    """
    image = np.asarray(image, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if image.shape != reference.shape:
        raise ValueError(
            f"image shape {image.shape} differs from the reference's {reference.shape}"
        )
    if len(normal) == 0 or len(defect) == 0:
        raise ValueError("site_contrast needs at least one normal and one defect site")

    def relative(a: np.ndarray) -> float:
        return _site_sums(a, defect, radius).mean() / _site_sums(a, normal, radius).mean() - 1.0

    truth = relative(reference)
    if truth == 0:
        raise ValueError("the defect sites have no contrast in the reference image")
    return float(relative(image) / truth)


def defect_contrast(
    image: np.ndarray, probe: DefectProbe, radius: float | None = None
) -> DefectContrast:
    """Vacancy and substitution contrast of ``image`` against the probe's clean image.

    Each site's intensity is the sum over a disk of ``radius`` pixels
    (default 1.5 ``width``) around it. With ``I`` the site intensities divided
    by the mean of the normal sites, the vacancy contrast kept is
    ``(1 − I_vac) / (1 − I_vac,clean)`` and the substitution contrast kept
    ``(I_sub − 1) / (I_sub,clean − 1)``, means over the defect sites.

    Parameters
    ----------
    image : numpy.ndarray
        A restoration of ``probe.noisy`` (or the noisy image), same shape.
    probe : DefectProbe
        The probe it was made from.
    radius : float, optional
        Integration radius, pixels.

    Returns
    -------
    DefectContrast
    """
    image = np.asarray(image, dtype=np.float64)
    if image.shape != probe.clean.shape:
        raise ValueError(f"image shape {image.shape} differs from the probe's {probe.clean.shape}")
    radius = 1.5 * probe.width if radius is None else float(radius)
    normal = probe.weights == 1.0
    vac = probe.weights == 0.0
    sub = probe.weights > 1.0
    if not (normal.any() and vac.any() and sub.any()):
        raise ValueError("the probe needs normal, vacant and substituted sites")

    def relative(a: np.ndarray) -> np.ndarray:
        sums = _site_sums(a, probe.positions, radius)
        return sums / sums[normal].mean()

    got, truth = relative(image), relative(probe.clean)
    sites = probe.positions
    return DefectContrast(
        vacancy=site_contrast(image, probe.clean, sites[normal], sites[vac], radius),
        substitution=site_contrast(image, probe.clean, sites[normal], sites[sub], radius),
        intensity_rms=float(np.sqrt(np.mean((got - truth) ** 2))),
    )
