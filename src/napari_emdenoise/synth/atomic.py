"""High-resolution (atomic) undistorted images, Lobato et al. (2023), "Data generation".

A random specimen (crystal, amorphous layer or individual points), optionally
shaped by a wedge, a shape and defects and lying on a support layer, is
projected and rendered as a linear superposition of eq-17 atomic profiles
(eq 16). Contrast post-processing (eqs 23–26) lives in :mod:`.contrast`.

Deviations from Lobato et al. (2023), chosen for speed or realism:

* space groups are not modelled; a random basis is drawn in one of six
  lattice systems, lattice lengths log-uniform in [3.1, 25] Å;
* zone-axis crystals are rendered as atomic columns (depth slices) rather
  than individual atoms; the mistilt is N(0, 1°) instead of N(0, 5°)
  because a purely geometric 5° tilt of a 10 nm crystal would wash out
  columns that channelling keeps visible in real images;
* thick random layers (amorphous, randomly oriented crystals) are
  simulated as a thinner slab whose weights reproduce the mean and the
  fluctuations of the full thickness (:func:`._sites.split_slab_weight`);
* specimen thickness is U[2, 30] nm, independent of the field of view;
* the support layer gets an extra weight in [0.05, 0.4] (it is "weaker",
  e.g. lighter elements) and no wedge, shape or defects;
* an individual point stands for 1–30 atoms (log-uniform), so that points
  stay visible on a support.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._amorphous import amorphous_slab, individual_points
from ._crystal import CrystalRecipe, draw_crystal, random_orientation_slab, zone_axis_columns
from ._modifiers import apply_defects, apply_shape, apply_wedge, draw_shape, draw_wedge
from ._profiles import Z_MAX, AtomProfile, sample_profiles
from ._random import as_generator, check_shape, log_uniform
from ._render import render_margin, render_sites
from ._sites import Sites

__all__ = ["PIXEL_SIZE_RANGE", "SPECIMEN_TYPES", "generate_atomic"]

#: Pixel size range in Å (Lobato et al. 2023).
PIXEL_SIZE_RANGE = (0.025, 0.90)
SPECIMEN_TYPES = ("crystalline", "amorphous", "points")
ORIENTATIONS = ("zone_axis", "random")
#: Specimen thickness range in Å (2–30 nm, as for the support layer).
THICKNESS_RANGE = (20.0, 300.0)
#: Support thickness range in Å (Lobato et al. 2023: [1, 30] nm).
SUPPORT_THICKNESS_RANGE = (10.0, 300.0)
#: Extra intensity factor of the support relative to the specimen ("weaker").
SUPPORT_WEIGHT_RANGE = (0.05, 0.4)
#: Weight range of individual points (each stands for a short column or cluster).
POINT_WEIGHT_RANGE = (1.0, 30.0)
#: Blur in Å of the mean part of thick random slabs (capped at half the margin).
SMOOTH_SIGMA_A = 4.0


def _occurs(forced: bool | None, probability: float, rng: np.random.Generator) -> bool:
    """Draw an event with ``probability`` unless ``forced`` fixes it.

    The random number is always drawn so that forcing one event does not
    shift the stream of the others.
    """
    happened = bool(rng.random() < probability)
    return happened if forced is None else bool(forced)


def _draw_z(rng: np.random.Generator) -> int:
    return int(rng.integers(1, Z_MAX + 1))


class _Layer:
    """A specimen or support recipe whose atoms are placed once the box is known."""

    def __init__(
        self,
        kind: str,
        rng: np.random.Generator,
        *,
        pixel_size: float,
        thickness: float,
        orientation: str | None,
        max_species: int,
    ) -> None:
        self.kind = kind
        self.thickness = thickness
        self.info: dict[str, Any] = {"type": kind, "thickness_A": round(thickness, 4)}
        self.recipe: CrystalRecipe | None = None
        if kind == "crystalline":
            self.recipe = draw_crystal(rng, max_species=max_species)
            orient_draw = "zone_axis" if rng.random() < 0.75 else "random"
            self.orientation = orientation or orient_draw
            self.species = self.recipe.species
            self.info.update(self.recipe.to_info())
        elif kind == "amorphous":
            self.z = _draw_z(rng)
            self.density = float(rng.uniform(2.0, 7.0))
            self.min_distance = float(rng.uniform(0.95, 1.6))
            self.species = [self.z]
            self.info.update(
                species_Z=[self.z],
                density_g_cm3=round(self.density, 4),
                min_distance_A=round(self.min_distance, 4),
            )
        else:
            self.z = _draw_z(rng)
            self.min_distance = float(rng.uniform(1.0, 20.0) * pixel_size)
            self.species = [self.z]
            self.info.update(species_Z=[self.z], min_distance_A=round(self.min_distance, 4))

    def build(
        self,
        rng: np.random.Generator,
        box_lo: np.ndarray,
        box_hi: np.ndarray,
        pixel_size: float,
        budget: int,
    ) -> Sites:
        """Place the atoms in the extended box ``[box_lo, box_hi]`` (Å)."""
        if self.kind == "crystalline":
            assert self.recipe is not None
            if self.orientation == "zone_axis":
                sites, info = zone_axis_columns(
                    self.recipe, rng, box_lo, box_hi, self.thickness, pixel_size, budget
                )
            else:
                sites, info = random_orientation_slab(
                    self.recipe, rng, box_lo, box_hi, self.thickness, budget
                )
            self.info.update(info)
            return sites
        if self.kind == "amorphous":
            sites, info = amorphous_slab(
                rng,
                self.z,
                self.density,
                self.min_distance,
                box_lo,
                box_hi,
                self.thickness,
                budget,
            )
            self.info.update(info)
            return sites
        area_px = float(np.prod(box_hi - box_lo)) / pixel_size**2
        count = int(round(log_uniform(rng, 5.0, max(10.0, area_px / 50.0))))
        count = min(count, budget)
        self.info["expected_points"] = count
        sites = individual_points(
            rng, self.z, count, self.min_distance, box_lo, box_hi, self.thickness
        )
        return sites.scaled(log_uniform(rng, *POINT_WEIGHT_RANGE, len(sites)))


def _check_choice(value: str | None, allowed: tuple[str, ...], name: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {allowed} or None, got {value!r}")


def generate_atomic(
    shape: tuple[int, int],
    rng: np.random.Generator | int | None = None,
    *,
    specimen: str | None = None,
    orientation: str | None = None,
    pixel_size: float | None = None,
    wedge: bool | None = None,
    shapes: bool | None = None,
    defects: bool | None = None,
    support: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Render a random atomic-resolution specimen (before contrast post-processing).

    Every choice is drawn as in Lobato et al. (2023) unless fixed by a keyword (``None``
    means "draw at random").

    Parameters
    ----------
    shape : tuple of int
        ``(n_rows, n_cols)`` in pixels, each at least 8.
    rng : numpy.random.Generator, int or None
        Random generator or seed.
    specimen : {"crystalline", "amorphous", "points"}, optional
        Specimen type (uniform otherwise).
    orientation : {"zone_axis", "random"}, optional
        Crystal orientation (zone axis with probability 0.75 otherwise).
    pixel_size : float, optional
        Pixel size in Å (log-uniform in [0.025, 0.90] otherwise).
    wedge, shapes, defects, support : bool, optional
        Force a modifier on or off (probabilities 0.75, 0.5, 0.8 and 0.95
        otherwise).

    Returns
    -------
    image : numpy.ndarray
        Non-negative float64 image of ``shape``.
    info : dict
        JSON-serialisable record of what was drawn.

    Raises
    ------
    ValueError
        On a bad shape, choice or pixel size.
    """
    ny, nx = check_shape(shape)
    _check_choice(specimen, SPECIMEN_TYPES, "specimen")
    _check_choice(orientation, ORIENTATIONS, "orientation")
    if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of Å, got {pixel_size!r}")
    rng = as_generator(rng)

    # Log-uniform: atomic-resolution micrographs are mostly recorded at
    # 0.05–0.2 Å/pixel; a uniform draw put 80 % of images above 0.2 Å/pixel.
    drawn_size = log_uniform(rng, *PIXEL_SIZE_RANGE)
    dr = float(pixel_size) if pixel_size is not None else float(drawn_size)
    alpha = float(rng.uniform(0.75, 1.25))
    drawn_kind = SPECIMEN_TYPES[int(rng.integers(len(SPECIMEN_TYPES)))]
    kind = specimen or drawn_kind
    layer = _Layer(
        kind,
        rng,
        pixel_size=dr,
        thickness=float(rng.uniform(*THICKNESS_RANGE)),
        orientation=orientation,
        max_species=16,
    )

    support_layer = None
    if _occurs(support, 0.95, rng):
        support_kind = ("amorphous", "crystalline")[int(rng.integers(2))]
        support_layer = _Layer(
            support_kind,
            rng,
            pixel_size=dr,
            thickness=float(log_uniform(rng, *SUPPORT_THICKNESS_RANGE)),
            orientation=None,
            max_species=4,
        )
        support_layer.info["weight_factor"] = round(float(rng.uniform(*SUPPORT_WEIGHT_RANGE)), 4)

    zs = sorted(set(layer.species) | set(support_layer.species if support_layer else []))
    profiles: dict[int, AtomProfile] = dict(zip(zs, sample_profiles(zs, alpha, rng), strict=True))
    margin = render_margin(profiles, dr)
    box_lo = np.array([-margin * dr, -margin * dr])
    box_hi = np.array([(nx - 1 + margin) * dr, (ny - 1 + margin) * dr])
    fov_hi = np.array([(nx - 1) * dr, (ny - 1) * dr])
    budget = int(0.4 * (nx + 2 * margin) * (ny + 2 * margin)) + 5000

    sites = layer.build(rng, box_lo, box_hi, dr, budget)
    modifiers: dict[str, Any] = {}
    if _occurs(wedge, 0.75, rng):
        wedge_drawn = draw_wedge(rng, box_lo, box_hi, layer.thickness)
        sites = apply_wedge(sites, wedge_drawn, layer.thickness)
        modifiers["wedge"] = wedge_drawn.to_info()
    if _occurs(shapes, 0.5, rng):
        poly = draw_shape(rng, np.zeros(2), fov_hi, layer.thickness, max(nx, ny) * dr)
        sites = apply_shape(sites, poly)
        modifiers["shape"] = poly.to_info()
    if _occurs(defects, 0.8, rng) and len(sites):
        sites, modifiers["defects"] = apply_defects(rng, sites, profiles)

    parts = [sites]
    if support_layer is not None:
        support_sites = support_layer.build(rng, box_lo, box_hi, dr, budget)
        parts.append(support_sites.scaled(support_layer.info["weight_factor"]))
    all_sites = Sites.concatenate(parts)

    smooth_sigma = min(SMOOTH_SIGMA_A, 0.5 * margin * dr)
    image = render_sites(
        all_sites.x,
        all_sites.y,
        all_sites.z_number,
        all_sites.weight,
        profiles,
        (ny, nx),
        dr,
        smooth_weights=all_sites.smooth,
        smooth_sigma=smooth_sigma,
    )
    info = {
        "pixel_size_A": round(dr, 6),
        "alpha": round(alpha, 6),
        "specimen": layer.info,
        "modifiers": modifiers,
        "support": support_layer.info if support_layer else None,
        "n_atoms": int(len(all_sites)),
        "profiles": [profiles[z].to_dict() for z in zs],
        "render_margin_px": margin,
    }
    return image, info
