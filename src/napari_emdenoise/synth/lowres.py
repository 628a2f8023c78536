"""Low-resolution undistorted images, Lobato et al. (2023), "Data generation".

A random non-empty subset of object types (soft particles, sharp particles,
Voronoi grains, bands, boxes, cracks) is rendered, each type as one
non-negative layer, and the layers are linearly superimposed with random
weights. Object positions come from the "individual points" process (a
hard-core point pattern with a minimum distance in [1, 20] pixels). Lengths
are in pixels. Contrast post-processing (eqs 23–26) lives in :mod:`.contrast`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse as draw_ellipse
from skimage.draw import line as draw_line
from skimage.draw import polygon as draw_polygon

from ._profiles import AtomProfile, atomic_profile
from ._random import as_generator, check_shape, log_uniform, matern_hard_core

__all__ = ["LOWRES_OBJECTS", "generate_lowres"]

Shape = tuple[int, int]


def _positions(rng: np.random.Generator, shape: Shape, count: int) -> np.ndarray:
    """Between 1 and ``count`` ``(row, col)`` points at least d px apart.

    d ~ U[1, 20] px (Lobato et al. 2023), reduced on small images so that the points
    fit; fewer than ``count`` come back when the hard core is too dense.
    """
    d = rng.uniform(1.0, 20.0) * min(1.0, min(shape) / 80.0)
    area = float(shape[0] * shape[1])
    exclusion = np.pi * d * d
    wanted = min(1.5 * count / area, 0.7 / exclusion)
    intensity = -np.log1p(-wanted * exclusion) / exclusion
    high = np.array(shape, float) - 1.0
    pts = matern_hard_core(rng, np.zeros(2), high, intensity, d)
    if len(pts) == 0:
        pts = rng.uniform(np.zeros(2), high, size=(1, 2))
    return pts[:count]


def _random_plane(
    rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, centre: np.ndarray, size: float
) -> np.ndarray:
    """A random positive plane A (1 + s · u·(p − c) / size), s ≤ 0.5, over the given pixels."""
    amplitude = rng.uniform(0.5, 1.0)
    slope = rng.uniform(0.0, 0.5)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    u = ((cols - centre[1]) * np.cos(phi) + (rows - centre[0]) * np.sin(phi)) / max(size, 1.0)
    return np.clip(amplitude * (1.0 + slope * u), 0.0, None)


def _soft_particles(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """15–85 rotated anisotropic eq-17 profiles with r_my = α r_mx, α ∈ [0.8, 1.2]."""
    count = int(rng.integers(15, 86))
    centres = _positions(rng, shape, count)
    r_mean = log_uniform(rng, 1.5, max(2.0, 0.06 * min(shape)))
    h1, h2, h3 = rng.uniform(0.5, 1.0, 3)
    n = rng.uniform(4.0, 16.0)
    rho_cut = AtomProfile(0, h1, h2, h3, n, 1.0).cutoff_radius()
    rho_table = np.linspace(0.0, rho_cut, 2048)
    f_table = atomic_profile(rho_table, h1, h2, h3, n, 1.0)
    f_table[-1] = 0.0
    layer = np.zeros(shape)
    for cy, cx in centres:
        rx = r_mean * np.exp(rng.normal(0.0, 0.25))
        ry = rx * rng.uniform(0.8, 1.2)
        theta = rng.uniform(0.0, np.pi)
        amp = rng.uniform(0.5, 1.0)
        half = int(np.ceil(rho_cut * max(rx, ry)))
        r0, r1 = max(int(cy) - half, 0), min(int(cy) + half + 2, shape[0])
        c0, c1 = max(int(cx) - half, 0), min(int(cx) + half + 2, shape[1])
        dy = np.arange(r0, r1)[:, None] - cy
        dx = np.arange(c0, c1)[None, :] - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        layer[r0:r1, c0:c1] += amp * np.interp(rho, rho_table, f_table, right=0.0)
    return layer, {"count": int(len(centres)), "mean_radius_px": float(r_mean)}


def _sharp_particles(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """15–40 polygons (3–5 vertices) or ellipses masking a random positive plane."""
    count = int(rng.integers(15, 41))
    centres = _positions(rng, shape, count)
    r_mean = log_uniform(rng, 2.0, max(3.0, 0.08 * min(shape)))
    layer = np.zeros(shape)
    n_polygons = 0
    for cy, cx in centres:
        radius = r_mean * np.exp(rng.normal(0.0, 0.3))
        if rng.random() < 0.5:
            n_vertices = int(rng.integers(3, 6))
            step = 2.0 * np.pi / n_vertices
            angles = rng.uniform(0, 2 * np.pi) + step * (
                np.arange(n_vertices) + rng.uniform(-0.25, 0.25, n_vertices)
            )
            radii = radius * rng.uniform(0.7, 1.0, n_vertices)
            rr, cc = draw_polygon(
                cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape=shape
            )
            n_polygons += 1
        else:
            rr, cc = draw_ellipse(
                cy,
                cx,
                radius,
                radius * rng.uniform(0.4, 1.0),
                shape=shape,
                rotation=rng.uniform(-np.pi, np.pi),
            )
        plane = _random_plane(rng, rr, cc, np.array([cy, cx]), radius)
        layer[rr, cc] += plane
    return layer, {
        "count": int(len(centres)),
        "n_polygons": n_polygons,
        "mean_radius_px": float(r_mean),
    }


def _grains(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """Voronoi grains from 15–175 seeds, each cell a random positive plane.

    With probability 0.5 the grain borders (1–3 px wide) are drawn with an
    intensity in [0.5, 1.5] × the mean grain intensity.
    """
    count = int(rng.integers(15, 176))
    seeds = np.unique(np.round(_positions(rng, shape, count)).astype(int), axis=0)
    not_seed = np.ones(shape, dtype=bool)
    not_seed[seeds[:, 0], seeds[:, 1]] = False
    _, (ir, ic) = ndimage.distance_transform_edt(not_seed, return_indices=True)
    seed_label = np.zeros(shape, dtype=np.int64)
    seed_label[seeds[:, 0], seeds[:, 1]] = np.arange(len(seeds))
    labels = seed_label[ir, ic]

    k = len(seeds)
    size = np.sqrt(shape[0] * shape[1] / k)
    amplitude = rng.uniform(0.2, 1.0, k)
    slope = rng.uniform(0.0, 0.5, k)
    phi = rng.uniform(0.0, 2.0 * np.pi, k)
    rows, cols = np.indices(shape, dtype=float)
    u = (
        (cols - seeds[labels, 1]) * np.cos(phi[labels])
        + (rows - seeds[labels, 0]) * np.sin(phi[labels])
    ) / size
    layer = np.clip(amplitude[labels] * (1.0 + slope[labels] * u), 0.0, None)

    borders = bool(rng.random() < 0.5)
    info: dict[str, Any] = {"count": k, "borders": borders}
    if borders:
        edge = np.zeros(shape, dtype=bool)
        edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        width = int(rng.integers(1, 4))
        if width > 1:
            edge = ndimage.binary_dilation(edge, iterations=width - 1)
        factor = rng.uniform(0.5, 1.5)
        layer[edge] = factor * layer[~edge].mean() if (~edge).any() else factor
        info.update(border_width_px=width, border_factor=float(factor))
    return layer, info


def _bands(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """1–6 straight or gently curved bands with smooth (tanh) edges."""
    count = int(rng.integers(1, 7))
    rows, cols = np.indices(shape, dtype=float)
    side = min(shape)
    layer = np.zeros(shape)
    for _ in range(count):
        phi = rng.uniform(0.0, np.pi)
        along = cols * np.cos(phi) + rows * np.sin(phi)
        across = -cols * np.sin(phi) + rows * np.cos(phi)
        offset = rng.uniform(along.min(), along.max())
        curvature = rng.uniform(-1.0, 1.0) / side
        centre = rng.uniform(across.min(), across.max())
        d = along - offset + curvature * (across - centre) ** 2
        width = rng.uniform(0.02, 0.2) * side
        softness = rng.uniform(0.05, 0.5) * width
        layer += rng.uniform(0.3, 1.0) * 0.5 * (1.0 + np.tanh((0.5 * width - np.abs(d)) / softness))
    return layer, {"count": count}


def _boxes(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """1–10 rotated rectangles masking a random positive plane."""
    count = int(rng.integers(1, 11))
    side = min(shape)
    layer = np.zeros(shape)
    for _ in range(count):
        cy, cx = rng.uniform(0, shape[0] - 1), rng.uniform(0, shape[1] - 1)
        half = 0.5 * rng.uniform(0.05, 0.4, 2) * side
        theta = rng.uniform(0.0, np.pi)
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        c, s = np.cos(theta), np.sin(theta)
        xs = cx + corners[:, 0] * c - corners[:, 1] * s
        ys = cy + corners[:, 0] * s + corners[:, 1] * c
        rr, cc = draw_polygon(ys, xs, shape=shape)
        layer[rr, cc] += _random_plane(rng, rr, cc, np.array([cy, cx]), float(half.max()))
    return layer, {"count": count}


def _cracks(rng: np.random.Generator, shape: Shape) -> tuple[np.ndarray, dict]:
    """A uniform film broken by 1–5 random-walk cracks (0–2 px dilation)."""
    count = int(rng.integers(1, 6))
    side = min(shape)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        y, x = rng.uniform(0, shape[0] - 1), rng.uniform(0, shape[1] - 1)
        heading = rng.uniform(0.0, 2.0 * np.pi)
        step = rng.uniform(0.01, 0.03) * side + 1.0
        for _ in range(int(rng.integers(10, 81))):
            heading += rng.normal(0.0, 0.25)
            ny, nx = y + step * np.sin(heading), x + step * np.cos(heading)
            rr, cc = draw_line(int(round(y)), int(round(x)), int(round(ny)), int(round(nx)))
            ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
            mask[rr[ok], cc[ok]] = True
            y, x = ny, nx
    width = int(rng.integers(0, 3))
    if width:
        mask = ndimage.binary_dilation(mask, iterations=width)
    return np.where(mask, 0.0, 1.0), {"count": count, "dilation_px": width}


_RENDERERS: dict[str, Callable[[np.random.Generator, Shape], tuple[np.ndarray, dict]]] = {
    "soft_particles": _soft_particles,
    "sharp_particles": _sharp_particles,
    "grains": _grains,
    "bands": _bands,
    "boxes": _boxes,
    "cracks": _cracks,
}
#: Object types of the low-resolution generator.
LOWRES_OBJECTS = tuple(_RENDERERS)


def generate_lowres(
    shape: tuple[int, int],
    rng: np.random.Generator | int | None = None,
    *,
    objects: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict]:
    """Render a random low-resolution image (before contrast post-processing).

    Parameters
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels, each at least 8.
    rng : numpy.random.Generator, int or None
        Random generator or seed.
    objects : sequence of str, optional
        Object types to draw, from :data:`LOWRES_OBJECTS`. By default each
        type is included with probability 0.5 (at least one).

    Returns
    -------
    image : numpy.ndarray
        Non-negative float64 image of ``shape``.
    info : dict
        JSON-serialisable record: per object type its weight and counts.

    Raises
    ------
    ValueError
        On a bad shape or unknown / empty object list.
    """
    shape = check_shape(shape)
    if objects is not None:
        if isinstance(objects, str):
            objects = [objects]
        unknown = [o for o in objects if o not in _RENDERERS]
        if unknown or not objects:
            raise ValueError(
                f"objects must be a non-empty subset of {LOWRES_OBJECTS}, got {objects!r}"
            )
    rng = as_generator(rng)
    picked = rng.random(len(LOWRES_OBJECTS)) < 0.5
    fallback = int(rng.integers(len(LOWRES_OBJECTS)))
    if objects is None:
        if not picked.any():
            picked[fallback] = True
        objects = [name for name, p in zip(LOWRES_OBJECTS, picked, strict=True) if p]
    image = np.zeros(shape)
    info: dict[str, Any] = {"objects": {}}
    for name in LOWRES_OBJECTS:
        if name not in objects:
            continue
        layer, layer_info = _RENDERERS[name](rng, shape)
        weight = float(rng.uniform(0.3, 1.0))
        peak = layer.max()
        if peak > 0:
            image += weight * layer / peak
        info["objects"][name] = {"weight": weight, **layer_info}
    return image, info
