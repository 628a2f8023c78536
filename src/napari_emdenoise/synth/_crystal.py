"""Random crystals and their projections (Lobato et al. 2023, "Specimen generation").

A crystal is a random 3-D lattice (one of six lattice systems, lattice
parameters in [3.1, 25] Å, angles in [45°, 120°]) with a random basis whose
atoms keep a minimum distance in [0.95, 7] Å (periodic images included) and
carry up to 16 atomic species. Space groups are not modelled: the basis is
drawn directly in the unit cell.

It is projected either along one of the eight main zone axes (atomic
columns, with a small mistilt that smears each column along the tilt
direction) or at a uniformly random 3-D orientation (a slab of atoms is
projected, giving a less regular pattern).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._profiles import Z_MAX
from ._random import log_uniform, random_rotation_matrix
from ._sites import Sites, slab_sites

__all__ = [
    "CrystalRecipe",
    "ZONE_AXES",
    "draw_crystal",
    "random_orientation_slab",
    "zone_axis_columns",
]

LATTICE_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "hexagonal", "cubic")
#: The eight main zone axes [uvw] and two lattice vectors completing each to a
#: unimodular basis (so the projected lattice is spanned by their projections).
ZONE_AXES = {
    (0, 0, 1): ((1, 0, 0), (0, 1, 0)),
    (1, 0, 0): ((0, 1, 0), (0, 0, 1)),
    (0, 1, 0): ((0, 0, 1), (1, 0, 0)),
    (1, 1, 0): ((1, 0, 0), (0, 0, 1)),
    (1, 0, 1): ((1, 0, 0), (0, 1, 0)),
    (0, 1, 1): ((1, 0, 0), (0, 1, 0)),
    (1, 1, 1): ((1, 0, 0), (0, 1, 0)),
    (1, -1, 0): ((1, 0, 0), (0, 0, 1)),
}
_PERIODIC_SHIFTS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float
)


@dataclass(frozen=True)
class CrystalRecipe:
    """A random crystal: lattice, basis and species.

    Attributes
    ----------
    system : str
        Lattice system.
    cell : tuple of float
        ``(a, b, c)`` in Å and ``(α, β, γ)`` in degrees.
    lattice : numpy.ndarray
        Rows are the Cartesian lattice vectors a, b, c in Å.
    basis : numpy.ndarray
        Fractional coordinates of the basis atoms, shape ``(B, 3)``.
    basis_z : numpy.ndarray
        Atomic number of each basis atom.
    min_distance : float
        Hard-core distance used for the basis, in Å.
    """

    system: str
    cell: tuple[float, float, float, float, float, float]
    lattice: np.ndarray
    basis: np.ndarray
    basis_z: np.ndarray
    min_distance: float

    @property
    def species(self) -> list[int]:
        """Distinct atomic numbers of the crystal."""
        return sorted({int(z) for z in self.basis_z})

    @property
    def cell_volume(self) -> float:
        """Unit-cell volume in Å³."""
        return float(abs(np.linalg.det(self.lattice)))

    def to_info(self) -> dict:
        """JSON-serialisable summary."""
        a, b, c, al, be, ga = self.cell
        return {
            "lattice_system": self.system,
            "lattice_parameters_A": [round(a, 4), round(b, 4), round(c, 4)],
            "lattice_angles_deg": [round(al, 3), round(be, 3), round(ga, 3)],
            "n_basis": int(len(self.basis)),
            "species_Z": self.species,
            "min_distance_A": float(self.min_distance),
        }


def _lattice_matrix(a, b, c, alpha, beta, gamma) -> np.ndarray | None:
    """Cartesian lattice vectors from cell parameters; None for a too-flat cell."""
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    sg = np.sin(np.radians(gamma))
    cy = (ca - cb * cg) / sg
    cz2 = 1.0 - cb * cb - cy * cy
    if cz2 < 0.05:
        return None
    return np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [c * cb, c * cy, c * np.sqrt(cz2)]])


def _draw_cell(rng: np.random.Generator) -> tuple[str, tuple, np.ndarray]:
    """Draw a lattice system, cell parameters and lattice matrix."""
    while True:
        system = str(rng.choice(LATTICE_SYSTEMS))
        a, b, c = log_uniform(rng, 3.1, 25.0, 3)
        alpha, beta, gamma = rng.uniform(45.0, 120.0, 3)
        if system != "triclinic":
            alpha = gamma = 90.0
        if system == "monoclinic":
            beta = rng.uniform(90.0, 120.0)
        elif system != "triclinic":
            beta = 90.0
        if system in ("tetragonal", "hexagonal", "cubic"):
            b = a
        if system == "hexagonal":
            gamma = 120.0
        if system == "cubic":
            c = a
        lattice = _lattice_matrix(a, b, c, alpha, beta, gamma)
        if lattice is not None:
            cell = tuple(float(v) for v in (a, b, c, alpha, beta, gamma))
            return system, cell, lattice


def _periodic_distance(frac: np.ndarray, others: np.ndarray, lattice: np.ndarray) -> float:
    """Smallest distance in Å from ``frac`` to ``others`` and their periodic images."""
    diff = frac - others
    diff -= np.round(diff)
    cart = (diff[:, None, :] + _PERIODIC_SHIFTS[None]) @ lattice
    return float(np.sqrt((cart**2).sum(-1)).min())


def draw_crystal(rng: np.random.Generator, max_species: int = 16) -> CrystalRecipe:
    """Draw a random crystal (lattice, basis, species).

    Lattice lengths are log-uniform in [3.1, 25] Å (favouring the common
    small cells while covering the paper's range), angles uniform in
    [45°, 120°] for triclinic cells. The basis targets an atomic density in
    [0.02, 0.1] atoms/Å³ (at most 32 atoms) and is placed by dart throwing
    with a hard-core distance d ~ U[0.95, min(7, shortest lattice vector)] Å.
    Up to ``max_species`` distinct Z ∈ [1, 103] are assigned, each used at
    least once.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator.
    max_species : int
        Largest number of atomic species.

    Returns
    -------
    CrystalRecipe
    """
    system, cell, lattice = _draw_cell(rng)
    translations = _PERIODIC_SHIFTS[_PERIODIC_SHIFTS.any(axis=1)] @ lattice
    shortest = float(np.linalg.norm(translations, axis=1).min())
    min_distance = rng.uniform(0.95, max(0.95, min(7.0, shortest)))
    volume = abs(np.linalg.det(lattice))
    target = int(np.clip(round(rng.uniform(0.02, 0.1) * volume), 1, 32))
    basis = [rng.uniform(0.0, 1.0, 3)]
    for _ in range(20 * target):
        if len(basis) >= target:
            break
        candidate = rng.uniform(0.0, 1.0, 3)
        if _periodic_distance(candidate, np.array(basis), lattice) >= min_distance:
            basis.append(candidate)
    basis_arr = np.array(basis)
    n_species = int(rng.integers(1, min(max_species, len(basis_arr)) + 1))
    zs = rng.choice(np.arange(1, Z_MAX + 1), size=n_species, replace=False)
    assign = np.concatenate(
        [rng.permutation(n_species), rng.integers(0, n_species, len(basis_arr) - n_species)]
    )
    return CrystalRecipe(
        system=system,
        cell=cell,
        lattice=lattice,
        basis=basis_arr,
        basis_z=zs[rng.permutation(assign)].astype(np.int64),
        min_distance=float(min_distance),
    )


def _rotation_2d(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]])  # acts on row vectors: v @ R rotates by +angle


def projected_lattice(recipe: CrystalRecipe, axis: tuple[int, int, int]) -> dict:
    """Project a crystal along a zone axis.

    Returns the 2-D lattice vectors (rows, Å) in a frame perpendicular to the
    axis, the projected basis positions (Å), the depth of each basis atom
    along the axis (Å) and the column period |[uvw]| (Å).
    """
    p, q = ZONE_AXES[axis]
    w = np.asarray(axis, float) @ recipe.lattice
    period = float(np.linalg.norm(w))
    w_hat = w / period
    p_cart = np.asarray(p, float) @ recipe.lattice
    q_cart = np.asarray(q, float) @ recipe.lattice
    e1 = p_cart - (p_cart @ w_hat) * w_hat
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(w_hat, e1)
    frame = np.stack([e1, e2], axis=1)  # (3, 2)
    basis_cart = recipe.basis @ recipe.lattice
    return {
        "vectors": np.stack([p_cart @ frame, q_cart @ frame]),
        "basis": basis_cart @ frame,
        "depth": np.mod(basis_cart @ w_hat, period),
        "period": period,
    }


def zone_axis_columns(
    recipe: CrystalRecipe,
    rng: np.random.Generator,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    thickness: float,
    pixel_size: float,
    budget: int,
    *,
    mistilt_sigma_deg: float = 1.0,
) -> tuple[Sites, dict]:
    """Atomic columns of a crystal seen along a random main zone axis.

    Each basis atom gives one column per projected unit cell holding
    ``thickness / period`` atoms. A mistilt θ ~ |N(0, σ)| tilts the columns:
    an atom at depth z moves by (z - t/2) tan θ along a random direction, so
    each column is split into up to 16 depth slices spread along that line.
    A random in-plane rotation and origin shift prevent alignment with the
    image axes.

    Parameters
    ----------
    recipe : CrystalRecipe
        The crystal.
    rng : numpy.random.Generator
        Random generator.
    box_lo, box_hi : numpy.ndarray
        ``(x, y)`` corners of the extended field of view, in Å.
    thickness : float
        Specimen thickness t along the beam, in Å.
    pixel_size : float
        Pixel size in Å (sets the slice count needed to resolve the smear).
    budget : int
        Soft cap on the number of sites.
    mistilt_sigma_deg : float
        Standard deviation σ of the mistilt, in degrees (Lobato et al. 2023 use 5°;
        the default 1° keeps columns visible, see :mod:`..atomic`).

    Returns
    -------
    sites : Sites
        Column slices.
    info : dict
        Zone axis, rotated 2-D lattice vectors (Å), mistilt, rotation.
    """
    axis = list(ZONE_AXES)[int(rng.integers(len(ZONE_AXES)))]
    proj = projected_lattice(recipe, axis)
    rotation = rng.uniform(0.0, 2.0 * np.pi)
    rot = _rotation_2d(rotation)
    vectors = proj["vectors"] @ rot
    basis = proj["basis"] @ rot + rng.uniform(0, 1, 2) @ vectors
    tilt = abs(rng.normal(0.0, mistilt_sigma_deg))
    tilt_dir = rng.uniform(0.0, 2.0 * np.pi)
    smear = thickness * np.tan(np.radians(tilt))

    # lattice indices covering the box (grown by the smear)
    lo, hi = np.asarray(box_lo) - smear, np.asarray(box_hi) + smear
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
    frac = corners @ np.linalg.inv(vectors)
    i0, j0 = np.floor(frac.min(0)).astype(int) - 1
    i1, j1 = np.ceil(frac.max(0)).astype(int) + 1
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    origins = np.stack([ii.ravel(), jj.ravel()], 1) @ vectors
    xy = (origins[:, None, :] + basis[None]).reshape(-1, 2)
    z_col = np.tile(recipe.basis_z, len(origins))
    inside = np.all((xy >= lo) & (xy <= hi), axis=1)
    xy, z_col = xy[inside], z_col[inside]

    n_slices = int(np.clip(np.ceil(smear / (0.5 * pixel_size)) + 1, 1, 16))
    n_slices = max(1, min(n_slices, budget // max(len(xy), 1)))
    edges = np.linspace(0.0, thickness, n_slices + 1)
    mid = 0.5 * (edges[:-1] + edges[1:])
    shift = (mid - 0.5 * thickness) * np.tan(np.radians(tilt))
    direction = np.array([np.cos(tilt_dir), np.sin(tilt_dir)])
    offsets = shift[:, None] * direction[None]  # (S, 2)
    pos = (xy[:, None, :] + offsets[None]).reshape(-1, 2)
    atoms_per_slice = (thickness / n_slices) / proj["period"]
    sites = Sites(
        x=pos[:, 0],
        y=pos[:, 1],
        z_lo=np.tile(edges[:-1], len(xy)),
        z_hi=np.tile(edges[1:], len(xy)),
        z_number=np.repeat(z_col, n_slices),
        weight=np.full(len(pos), atoms_per_slice),
        smooth=np.zeros(len(pos)),
    )
    info = {
        "orientation": "zone_axis",
        "zone_axis": list(axis),
        "projected_lattice_vectors_A": vectors.round(6).tolist(),
        "column_period_A": round(proj["period"], 6),
        "in_plane_rotation_deg": round(float(np.degrees(rotation)), 4),
        "mistilt_deg": round(float(tilt), 4),
        "n_columns": int(len(xy)),
        "slices_per_column": n_slices,
    }
    return sites, info


def random_orientation_slab(
    recipe: CrystalRecipe,
    rng: np.random.Generator,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    thickness: float,
    budget: int,
) -> tuple[Sites, dict]:
    """Atoms of a crystal slab at a uniformly random 3-D orientation.

    To bound the cost, a slab of thickness t_eff = min(t, t_budget) is filled
    with atoms and each atom stands for t / t_eff atoms (its depth is scaled
    by the same factor so wedges and shapes act over the full thickness);
    see :func:`~._sites.split_slab_weight` for how that weight is rendered.

    Parameters
    ----------
    recipe : CrystalRecipe
        The crystal.
    rng : numpy.random.Generator
        Random generator.
    box_lo, box_hi : numpy.ndarray
        ``(x, y)`` corners of the extended field of view, in Å.
    thickness : float
        Specimen thickness t, in Å.
    budget : int
        Soft cap on the number of atoms.

    Returns
    -------
    sites : Sites
        Projected atoms.
    info : dict
        Orientation summary.
    """
    box_lo, box_hi = np.asarray(box_lo, float), np.asarray(box_hi, float)
    area = float(np.prod(box_hi - box_lo))
    n_basis = len(recipe.basis)
    t_eff = float(min(thickness, budget * recipe.cell_volume / (n_basis * area)))
    for _ in range(8):
        rotation = random_rotation_matrix(rng)
        lattice = recipe.lattice @ rotation.T  # rows: rotated lattice vectors
        # enumerate along the lattice vector most parallel to the beam
        k_axis = int(np.argmax(np.abs(lattice[:, 2]) / np.linalg.norm(lattice, axis=1)))
        order = [a for a in range(3) if a != k_axis] + [k_axis]
        m = lattice[order]
        corners = np.array(
            [
                [x, y, z]
                for x in (box_lo[0], box_hi[0])
                for y in (box_lo[1], box_hi[1])
                for z in (0.0, t_eff)
            ]
        )
        frac = corners @ np.linalg.inv(m)
        i0, j0 = np.floor(frac[:, :2].min(0)).astype(int) - 1
        i1, j1 = np.ceil(frac[:, :2].max(0)).astype(int) + 1
        if (i1 - i0 + 1) * (j1 - j0 + 1) <= 20 * budget:
            break
    basis_cart = recipe.basis @ lattice
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    z0 = ii * m[0, 2] + jj * m[1, 2]
    cz = m[2, 2]
    bz_lo, bz_hi = basis_cart[:, 2].min(), basis_cart[:, 2].max()
    k_a = (-z0 - bz_hi) / cz
    k_b = (t_eff - z0 - bz_lo) / cz
    k_min = np.ceil(np.minimum(k_a, k_b)).astype(np.int64)
    k_max = np.floor(np.maximum(k_a, k_b)).astype(np.int64)
    counts = np.clip(k_max - k_min + 1, 0, None)
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    kk = np.repeat(k_min, counts) + (np.arange(total) - starts)
    idx = np.stack([np.repeat(ii, counts), np.repeat(jj, counts), kk], 1).astype(float)
    pos = ((idx @ m)[:, None, :] + basis_cart[None]).reshape(-1, 3)
    z_num = np.tile(recipe.basis_z, total)
    inside = (
        (pos[:, 0] >= box_lo[0])
        & (pos[:, 0] <= box_hi[0])
        & (pos[:, 1] >= box_lo[1])
        & (pos[:, 1] <= box_hi[1])
        & (pos[:, 2] >= 0.0)
        & (pos[:, 2] <= t_eff)
    )
    pos, z_num = pos[inside], z_num[inside]
    sites = slab_sites(pos, z_num, thickness, t_eff)
    info = {
        "orientation": "random",
        "rotation_matrix": rotation.round(6).tolist(),
        "slab_thickness_A": round(t_eff, 4),
    }
    return sites, info
