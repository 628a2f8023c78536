"""Projected atomic-column profiles f_Z(r) of Lobato et al. (2023) (eqs 17–22).

Each atomic species of a specimen gets one radial profile

    f_Z(r) = h1 exp(-r² / 2 r_m²) + h2 exp(-r / r_m) + h3 / (1 + (r / r_m)^(2n))

(eq 17). ``r_m`` encodes the atomic size through the two-dimensional mean
square radius of the projected potential (eqs 18–21); the amplitudes are
drawn so that the integrated intensity grows with the atomic number (eq 22).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "AtomProfile",
    "Z_MAX",
    "atomic_profile",
    "butterworth_area_factor",
    "profile_integral",
    "projected_rms_radius",
    "radius_parameter",
    "sample_profiles",
]

#: Largest atomic number drawn (Lobato et al. 2023: Z ∈ [1, 103]).
Z_MAX = 103
_ALL_Z = np.arange(1, Z_MAX + 1)

#: r̂ of hydrogen in Å: sqrt(<r⁴> / (5 <r²>)) of the 1s density = sqrt(1.5) a0.
_RMS_RADIUS_HYDROGEN = 0.648
#: Exponent of the period-averaged growth of r̂_Z with Z.
_RMS_RADIUS_EXPONENT = 0.08


def projected_rms_radius(z: np.ndarray | int) -> np.ndarray:
    """Smooth approximation of r̂_Z, the 2-D rms radius of the projected potential.

    Eq 21 of Lobato et al. (2023) defines r̂_Z² = ∫ r² V_Z^p(r) r dr / ∫ V_Z^p(r) r dr.
    Expanding the Mott–Bethe relation V(q) ∝ (Z - f_x(q)) / q² at small q
    gives r̂_Z² = M4 / (5 M2), where M_k = Σ <r^k> over the electrons of the
    atom. The exact hydrogen 1s density gives r̂_1 = sqrt(1.5) a0 = 0.648 Å.
    Along a period r̂_Z oscillates (large for alkali metals, small for noble
    gases) and its period average grows slowly as outer shells move out; we
    use the smooth monotone fit

        r̂_Z = 0.648 Å · Z^0.08,

    i.e. 0.65 Å for H, 0.75 Å for C, 0.85 Å for Au, 0.94 Å for Z = 103.
    Monotonicity keeps eq 22 satisfiable with h ∈ [0.5, 1]. No element
    tables are needed.

    Parameters
    ----------
    z : int or numpy.ndarray
        Atomic number(s), 1 ≤ Z ≤ 103.

    Returns
    -------
    numpy.ndarray
        r̂_Z in Å.
    """
    z = np.asarray(z, dtype=float)
    return _RMS_RADIUS_HYDROGEN * z**_RMS_RADIUS_EXPONENT


def radius_parameter(z: np.ndarray | int, alpha: float) -> np.ndarray:
    """Profile radius r_m of eq 18, ``r_m = a · r̂_Z^α + b``.

    ``a`` and ``b`` (eqs 19–20) are computed over all elements Z = 1…103 so
    that r_m has the same mean and standard deviation over Z as r̂_Z; α
    (drawn from U[0.75, 1.25] by the caller) only bends the curve.

    Parameters
    ----------
    z : int or numpy.ndarray
        Atomic number(s).
    alpha : float
        Exponent α of eq 18 (> 0).

    Returns
    -------
    numpy.ndarray
        r_m in Å (strictly increasing with Z).
    """
    r_all = projected_rms_radius(_ALL_Z)
    r_all_alpha = r_all**alpha
    a = r_all.std() / r_all_alpha.std()  # eq 19
    b = r_all.mean() - a * r_all_alpha.mean()  # eq 20
    return a * projected_rms_radius(z) ** alpha + b


def butterworth_area_factor(n: float | np.ndarray) -> np.ndarray:
    """Return ∫₀^∞ x / (1 + x^{2n}) dx = π / (2n sin(π/n)) for n > 1."""
    n = np.asarray(n, dtype=float)
    return np.pi / (2.0 * n * np.sin(np.pi / n))


def atomic_profile(
    r: np.ndarray | float,
    h1: float,
    h2: float,
    h3: float,
    n: float,
    r_m: float,
) -> np.ndarray:
    """Evaluate the projected atomic profile f_Z(r) of eq 17.

    Parameters
    ----------
    r : float or numpy.ndarray
        Distance from the atom centre, in Å (or any unit shared with ``r_m``).
    h1, h2, h3 : float
        Weights of the Gaussian, exponential and Butterworth terms.
    n : float
        Butterworth order (Lobato et al. 2023: n ∈ [4, 16]).
    r_m : float
        Profile radius, same unit as ``r``.

    Returns
    -------
    numpy.ndarray
        f_Z(r), same shape as ``r``.
    """
    x = np.abs(np.asarray(r, dtype=float)) / r_m
    with np.errstate(over="ignore"):
        butterworth = 1.0 / (1.0 + x ** (2.0 * n))
    return h1 * np.exp(-0.5 * x * x) + h2 * np.exp(-x) + h3 * butterworth


def profile_integral(h1: float, h2: float, h3: float, n: float, r_m: float) -> float:
    """Integrated intensity ∫∫ f_Z d²r of the eq-17 profile (the quantity of eq 22).

    ``2π r_m² (h1 + h2 + h3 · π / (2n sin(π/n)))``, in units of h · r_m²
    (e.g. Å² for unit heights).
    """
    return float(2.0 * np.pi * r_m**2 * (h1 + h2 + h3 * butterworth_area_factor(n)))


@dataclass(frozen=True)
class AtomProfile:
    """Parameters of the eq-17 profile of one atomic species.

    Attributes
    ----------
    z : int
        Atomic number.
    h1, h2, h3 : float
        Term weights, each in [0.5, 1].
    n : float
        Butterworth order, in [4, 16].
    r_m : float
        Profile radius r_m in Å (eq 18).
    """

    z: int
    h1: float
    h2: float
    h3: float
    n: float
    r_m: float

    def __call__(self, r: np.ndarray | float) -> np.ndarray:
        """Evaluate f_Z at distance ``r`` in Å (eq 17)."""
        return atomic_profile(r, self.h1, self.h2, self.h3, self.n, self.r_m)

    @property
    def peak(self) -> float:
        """f_Z(0) = h1 + h2 + h3."""
        return self.h1 + self.h2 + self.h3

    @property
    def integral(self) -> float:
        """Integrated intensity ∫∫ f_Z d²r in Å² (eq 22)."""
        return profile_integral(self.h1, self.h2, self.h3, self.n, self.r_m)

    def cutoff_radius(self, rel: float = 1e-3) -> float:
        """Radius in Å beyond which f_Z < ``rel`` · f_Z(0).

        Each term is bounded separately by ``rel · f_Z(0) / 3``, so the bound
        is safe for all three.
        """
        eps = rel * self.peak / 3.0
        r_gauss = np.sqrt(2.0 * np.log(max(self.h1 / eps, 1.0)))
        r_exp = np.log(max(self.h2 / eps, 1.0))
        r_butter = max(self.h3 / eps - 1.0, 0.0) ** (1.0 / (2.0 * self.n))
        return float(self.r_m * max(r_gauss, r_exp, r_butter))

    def to_dict(self) -> dict:
        """JSON-serialisable parameters, with the integral."""
        d = {k: (int(v) if k == "z" else float(v)) for k, v in asdict(self).items()}
        d["integral_A2"] = self.integral
        return d


def sample_profiles(zs: Sequence[int], alpha: float, rng: np.random.Generator) -> list[AtomProfile]:
    """Draw eq-17 profiles for the species of one specimen, honouring eq 22.

    h1, h2, h3 ~ U[0.5, 1] and n ~ U[4, 16] are drawn once per species; the
    drawn parameter sets are then assigned in increasing order of their shape
    integral ``h1 + h2 + h3 π / (2n sin(π/n))`` to the species in increasing
    order of Z. As r_m (eq 18) also increases with Z, the integrated
    intensity ``2π r_m² (…)`` strictly increases with Z (eq 22).

    Parameters
    ----------
    zs : sequence of int
        Distinct atomic numbers in [1, 103].
    alpha : float
        Exponent α of eq 18, shared by all species of the image.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    list of AtomProfile
        One profile per entry of ``zs``, in the same order.
    """
    zs = [int(z) for z in zs]
    if len(set(zs)) != len(zs) or any(not 1 <= z <= Z_MAX for z in zs):
        raise ValueError(f"atomic numbers must be distinct and in [1, {Z_MAX}], got {zs}")
    k = len(zs)
    h = rng.uniform(0.5, 1.0, size=(k, 3))
    n = rng.uniform(4.0, 16.0, size=k)
    shape_integral = h[:, 0] + h[:, 1] + h[:, 2] * butterworth_area_factor(n)
    by_shape = np.argsort(shape_integral, kind="stable")
    by_z = np.argsort(zs, kind="stable")
    r_m = radius_parameter(np.array(zs), alpha)
    profiles: list[AtomProfile | None] = [None] * k
    for species, drawn in zip(by_z, by_shape, strict=True):
        profiles[species] = AtomProfile(
            z=zs[species],
            h1=float(h[drawn, 0]),
            h2=float(h[drawn, 1]),
            h3=float(h[drawn, 2]),
            n=float(n[drawn]),
            r_m=float(r_m[species]),
        )
    return profiles  # type: ignore[return-value]
