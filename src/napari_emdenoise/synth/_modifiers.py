"""Specimen modifiers of Lobato et al. (2023): wedge, shapes and defects.

Wedges and shapes remove material in 3-D; for a projected site the kept
intensity is the fraction of its depth extent that is still inside the
material (:func:`~._sites.occupied_fraction`), so column intensities vary
smoothly with the local thickness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from ._profiles import AtomProfile
from ._random import unit_vector_2d
from ._sites import Sites, occupied_fraction

__all__ = [
    "Polytope",
    "Wedge",
    "apply_defects",
    "apply_shape",
    "apply_wedge",
    "draw_shape",
    "draw_wedge",
    "polytope_depth_interval",
]

_EPS = 1e-12


@dataclass(frozen=True)
class Wedge:
    """A wedge-shaped specimen: one or both surfaces inclined towards an edge.

    The surfaces meet along the edge line ``s = edge`` at depth
    ``edge_depth``, where ``s = (x, y) · (cos φ, sin φ)``. For ``s > edge``
    the material fills ``[edge_depth − tan θ_bottom (s − edge),
    edge_depth + tan θ_top (s − edge)] ∩ [0, t]``; for ``s < edge`` there is
    vacuum. A flat surface has angle 0 (the top wedge has the edge on the
    bottom face, ``edge_depth = 0``; the bottom wedge on the top face).

    Attributes
    ----------
    sides : str
        ``"top"``, ``"bottom"`` or ``"both"``.
    angle_top_deg, angle_bottom_deg : float
        Surface angles in degrees (Lobato et al. 2023: [5°, 45°]; 0 for a flat face).
    direction_rad : float
        In-plane direction φ of the thickness gradient.
    edge_A : float
        Position of the edge along that direction, in Å.
    edge_depth_A : float
        Depth of the edge, in Å.
    """

    sides: str
    angle_top_deg: float
    angle_bottom_deg: float
    direction_rad: float
    edge_A: float
    edge_depth_A: float

    def material_interval(
        self, x: np.ndarray, y: np.ndarray, thickness: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Depth interval ``[lo, hi]`` (Å) filled with material at ``(x, y)``."""
        s = np.stack([x, y], 1) @ unit_vector_2d(self.direction_rad) - self.edge_A
        hi = self.edge_depth_A + np.tan(np.radians(self.angle_top_deg)) * s
        lo = self.edge_depth_A - np.tan(np.radians(self.angle_bottom_deg)) * s
        vacuum = s < 0
        lo = np.where(vacuum, np.inf, np.maximum(lo, 0.0))
        hi = np.where(vacuum, -np.inf, np.minimum(hi, thickness))
        return lo, hi

    def to_info(self) -> dict:
        """JSON-serialisable parameters."""
        return {
            "sides": self.sides,
            "angle_top_deg": round(self.angle_top_deg, 4),
            "angle_bottom_deg": round(self.angle_bottom_deg, 4),
            "direction_deg": round(float(np.degrees(self.direction_rad)), 4),
            "edge_A": round(self.edge_A, 4),
            "edge_depth_A": round(self.edge_depth_A, 4),
        }


def draw_wedge(
    rng: np.random.Generator, box_lo: np.ndarray, box_hi: np.ndarray, thickness: float
) -> Wedge:
    """Draw a wedge on the top, bottom or both surfaces (probability 1/3 each).

    Angles are uniform in [5°, 45°]. The edge is placed so that it usually
    crosses the field of view: its position along the gradient direction is
    uniform from 30 % before to 60 % into the box's extent along it. A
    double wedge has its edge at a random depth.
    """
    sides = ("top", "bottom", "both")[int(rng.integers(3))]
    angles = rng.uniform(5.0, 45.0, 2)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    corners = np.array(
        [[box_lo[0], box_lo[1]], [box_hi[0], box_lo[1]], [box_lo[0], box_hi[1]], box_hi]
    )
    s = corners @ unit_vector_2d(direction)
    span = s.max() - s.min()
    edge = rng.uniform(s.min() - 0.3 * span, s.min() + 0.6 * span)
    depth_both = rng.uniform(0.0, thickness)
    return Wedge(
        sides=sides,
        angle_top_deg=float(angles[0]) if sides != "bottom" else 0.0,
        angle_bottom_deg=float(angles[1]) if sides != "top" else 0.0,
        direction_rad=float(direction),
        edge_A=float(edge),
        edge_depth_A={"top": 0.0, "bottom": float(thickness)}.get(sides, float(depth_both)),
    )


def apply_wedge(sites: Sites, wedge: Wedge, thickness: float) -> Sites:
    """Remove the material cut away by the wedge; sites keep their occupied fraction."""
    lo, hi = wedge.material_interval(sites.x, sites.y, thickness)
    return sites.scaled(occupied_fraction(sites.z_lo, sites.z_hi, lo, hi))


@dataclass(frozen=True)
class Polytope:
    """A convex region ``{p : normals · p <= offsets}`` used to shape a specimen.

    Attributes
    ----------
    kind : str
        ``"polygon_rod"``, ``"convex_polyhedron"`` or ``"half_space"``.
    normals : numpy.ndarray
        Outward face normals, shape ``(F, 3)``.
    offsets : numpy.ndarray
        Face offsets in Å, shape ``(F,)``.
    keep : bool
        Keep the atoms inside (True) or remove them (False).
    """

    kind: str
    normals: np.ndarray
    offsets: np.ndarray
    keep: bool

    def to_info(self) -> dict:
        """JSON-serialisable summary."""
        return {"kind": self.kind, "n_faces": int(len(self.offsets)), "keep_inside": self.keep}


def _perpendicular_frame(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def draw_shape(
    rng: np.random.Generator,
    fov_lo: np.ndarray,
    fov_hi: np.ndarray,
    thickness: float,
    box_size: float,
) -> Polytope:
    """Draw one of the three shapes of Lobato et al. (2023) (probability 1/3 each).

    * polygon rod: infinite prism along a random 3-D direction with a regular
      cross-section of 3–15 vertices and circumradius in [0.01, 0.5]·box_size;
    * convex polyhedron: convex hull of 4–20 random points at radius
      [0.7, 1]·R, R ∈ [0.01, 0.5]·box_size;
    * half space: all material on one side of a random plane parallel to z.

    Atoms inside are kept or removed with probability 0.5 each.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    fov_lo, fov_hi : numpy.ndarray
        ``(x, y)`` corners of the field of view in Å (shape centres lie here).
    thickness : float
        Specimen thickness in Å (centres lie at depths in [0, t]).
    box_size : float
        Largest side of the simulation box, max(l̂_xyz), in Å.

    Returns
    -------
    Polytope
    """
    kind = ("polygon_rod", "convex_polyhedron", "half_space")[int(rng.integers(3))]
    centre = np.append(rng.uniform(fov_lo, fov_hi), rng.uniform(0.0, thickness))
    if kind == "polygon_rod":
        n_vertices = int(rng.integers(3, 16))
        radius = rng.uniform(0.01, 0.5) * box_size
        e1, e2 = _perpendicular_frame(_random_direction(rng))
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_vertices) / n_vertices
        normals = np.cos(angles)[:, None] * e1 + np.sin(angles)[:, None] * e2
        offsets = normals @ centre + radius * np.cos(np.pi / n_vertices)
    elif kind == "convex_polyhedron":
        n_vertices = int(rng.integers(4, 21))
        radius = rng.uniform(0.01, 0.5) * box_size
        dirs = rng.standard_normal((n_vertices, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        points = centre + dirs * radius * rng.uniform(0.7, 1.0, (n_vertices, 1))
        eq = ConvexHull(points).equations  # n · p + c <= 0 inside
        normals, offsets = eq[:, :3], -eq[:, 3]
    else:
        normal = np.append(unit_vector_2d(rng.uniform(0, 2 * np.pi)), 0.0)
        normals, offsets = normal[None], np.array([normal @ centre])
    return Polytope(kind, normals, offsets, keep=bool(rng.random() < 0.5))


def polytope_depth_interval(
    poly: Polytope, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Depth interval ``[lo, hi]`` (Å) of the polytope along the beam through (x, y).

    Empty intervals come back with ``lo > hi``.
    """
    nx, ny, nz = poly.normals.T
    rhs = poly.offsets[None, :] - x[:, None] * nx[None, :] - y[:, None] * ny[None, :]
    upper = nz > _EPS
    lower = nz < -_EPS
    flat = ~(upper | lower)
    hi = np.full(x.shape, np.inf)
    lo = np.full(x.shape, -np.inf)
    if upper.any():
        hi = np.min(rhs[:, upper] / nz[upper], axis=1)
    if lower.any():
        lo = np.max(rhs[:, lower] / nz[lower], axis=1)
    if flat.any():
        outside = np.any(rhs[:, flat] < 0, axis=1)
        lo = np.where(outside, np.inf, lo)
        hi = np.where(outside, -np.inf, hi)
    return lo, hi


def apply_shape(sites: Sites, poly: Polytope) -> Sites:
    """Keep or remove the material of ``sites`` inside ``poly``."""
    lo, hi = polytope_depth_interval(poly, sites.x, sites.y)
    frac = occupied_fraction(sites.z_lo, sites.z_hi, lo, hi)
    return sites.scaled(frac if poly.keep else 1.0 - frac)


def apply_defects(
    rng: np.random.Generator, sites: Sites, profiles: Mapping[int, AtomProfile]
) -> tuple[Sites, dict]:
    """Displace or remove up to 25 % of the sites.

    n_sel ~ U{0, …, round(0.25 N)} sites are chosen; with probability 0.5
    they are displaced by N(0, r_m) in x and y (r_m of their species, the
    "atomic radius" of Lobato et al. (2023)), otherwise they are removed.
    """
    n = len(sites)
    n_sel = int(rng.integers(0, int(round(0.25 * n)) + 1))
    chosen = rng.choice(n, size=n_sel, replace=False) if n_sel else np.zeros(0, int)
    displace = bool(rng.random() < 0.5)
    out = sites.subset(np.arange(n))
    if displace and n_sel:
        radius = np.zeros(int(out.z_number.max()) + 1)
        for z, profile in profiles.items():
            if z < radius.size:
                radius[z] = profile.r_m
        sigma = radius[out.z_number[chosen]]
        out.x = out.x.copy()
        out.y = out.y.copy()
        out.x[chosen] += rng.normal(0.0, 1.0, n_sel) * sigma
        out.y[chosen] += rng.normal(0.0, 1.0, n_sel) * sigma
    elif n_sel:
        factor = np.ones(n)
        factor[chosen] = 0.0
        out = out.scaled(factor)
    return out, {"n_selected": n_sel, "mode": "displace" if displace else "remove"}
