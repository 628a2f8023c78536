"""Clean convergent-beam diffraction patterns of a random 2-D crystal (expected intensities).

The specimen is a zone-axis section of a crystal: a 2-D reciprocal lattice
``g = h·g1 + k·g2`` (Å⁻¹) with random structure-factor moduli. Every reflection
is a disk of the probe-forming aperture (semi-angle α) centred on the beam
position plus ``g``. Inside a disk each pixel belongs to one incident direction
``k`` (Å⁻¹, transverse), whose excitation error is

    s_g(k) = −λ/2 · (|g|² + 2 g·(τ + k))                            (1)

(τ: crystal tilt away from the zone axis, λ: electron wavelength). The
intensity of every beam follows the two-beam (Howie–Whelan) solution

    I_g = (π t / ξ_g)² · sinc²(t · s_eff),   s_eff = √(s_g² + ξ_g⁻²)  (2)

with sinc(u) = sin(πu)/(πu), thickness t and extinction distance ξ_g; the
transmitted disk gets ``1 − Σ_g I_g`` (rescaled where the sum would exceed the
incident beam), so it shows deficiency lines where a reflection is excited.
This is "dynamical-looking", not a dynamical calculation: the thickness
fringes, rocking-curve contrast inside the disks and the thickness and tilt
dependence of the disk intensities are there; multiple-beam coupling is not.
Diffuse scattering (thermal diffuse halo, an inelastic Lorentzian around the
transmitted beam, thermal diffuse smearing of the Bragg disks) and an
amorphous ring complete the pattern.

Lengths on the detector are in pixels, reciprocal lengths in Å⁻¹, angles in
mrad (θ = 1000 λ |q|).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CrystalState", "Specimen", "draw_specimen", "electron_wavelength", "render_pattern"]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = 1e3 * float(voltage_kv)
    return 12.2643 / np.sqrt(v * (1.0 + 0.97848e-6 * v))


@dataclass
class Specimen:
    """Everything about one specimen + microscope set-up that stays fixed across a scan.

    Attributes
    ----------
    wavelength : float
        Electron wavelength λ (Å).
    step : float
        Detector pixel size in reciprocal space (Å⁻¹ per pixel).
    radius : float
        Disk radius (pixels) = convergence semi-angle α / detector step.
    hk : numpy.ndarray
        (n, 2) integer Miller-like indices of the reflections considered (000 excluded).
    basis : numpy.ndarray
        (2, 2) reciprocal basis vectors g1, g2 as rows (Å⁻¹, x then y) before rotation.
    xi : numpy.ndarray
        (n,) extinction distances ξ_g (Å).
    diffuse_fraction, tds_fraction, amorphous_fraction : float
        Fractions of the detected electrons in the inelastic halo, the thermal
        diffuse background and the amorphous ring (dimensionless).
    amorphous_q, amorphous_width : float
        Radius and width of the amorphous ring (Å⁻¹).
    tds_q : float
        Width of the thermal diffuse halo (Å⁻¹).
    inelastic_q : float
        Width of the inelastic Lorentzian (Å⁻¹).
    edge_blur : float
        Softness of the aperture edge (pixels, Gaussian σ).
    coherence : float
        Weight γ ∈ [0, 1] of the coherent sum of overlapping disks (0: disk
        intensities add; 1: their amplitudes add and interfere). See
        :func:`render_pattern`.
    defocus : float
        Probe defocus Δf (Å) of the aberration phase χ(q) = πλΔf|q|² used by
        the coherent sum.
    phases : numpy.ndarray or None
        (n,) structure-factor phases φ_g (radians) of the reflections, with
        φ₋g = −φ_g (Friedel); None when ``coherence`` is 0.
    """

    wavelength: float
    step: float
    radius: float
    hk: np.ndarray
    basis: np.ndarray
    xi: np.ndarray
    diffuse_fraction: float
    tds_fraction: float
    amorphous_fraction: float
    amorphous_q: float
    amorphous_width: float
    tds_q: float
    inelastic_q: float
    edge_blur: float
    coherence: float = 0.0
    defocus: float = 0.0
    phases: np.ndarray | None = None

    @property
    def convergence_mrad(self) -> float:
        """Convergence semi-angle α in mrad."""
        return 1e3 * self.wavelength * self.step * self.radius

    @property
    def detector_step_mrad(self) -> float:
        """Detector pixel size in mrad."""
        return 1e3 * self.wavelength * self.step


@dataclass
class CrystalState:
    """What changes across the scan at one probe position.

    Attributes
    ----------
    centre : tuple of float
        Position of the transmitted beam on the detector (row, col) in pixels
        (beam and descan shift included).
    rotation : float
        In-plane rotation of the lattice (radians).
    tilt : tuple of float
        Crystal tilt τ away from the zone axis as a reciprocal vector (x, y) in Å⁻¹
        (the centre of the Laue circle is at −τ).
    thickness : float
        Specimen thickness t (Å).
    crystal_fraction : float
        1 inside the crystal, 0 over vacuum/amorphous support (dimensionless).
    amorphous_scale : float
        Multiplier of the amorphous ring (dimensionless).
    probe_position : tuple of float
        Probe position (y, x) in Å; sets the phase 2π g·r of each overlapping
        disk in the coherent sum.
    """

    centre: tuple[float, float]
    rotation: float = 0.0
    tilt: tuple[float, float] = (0.0, 0.0)
    thickness: float = 500.0
    crystal_fraction: float = 1.0
    amorphous_scale: float = 1.0
    probe_position: tuple[float, float] = (0.0, 0.0)


_LATTICES = ("square", "hexagonal", "rectangular", "centred", "oblique")


def draw_specimen(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    overlap_probability: float = 0.3,
    voltages_kv: tuple[float, ...] = (80.0, 200.0, 300.0),
    overlap_ratio_range: tuple[float, float] = (0.55, 1.4),
    coherent_probability: float = 0.0,
    defocus_range: tuple[float, float] = (-300.0, 300.0),
) -> Specimen:
    """Draw a random crystal and microscope set-up for patterns of ``shape`` pixels.

    The first reciprocal vector spans 1/16 to 1/4 of the smaller detector side;
    the disks are separated (radius < 0.45 |g1|) or, with probability
    ``overlap_probability``, overlapping (large convergence, radius
    ``overlap_ratio_range`` × |g1|, at most a quarter of the detector side).
    Overlapping disks interfere (:func:`render_pattern`) with probability
    ``coherent_probability``: coherence γ 0.5–1, defocus from ``defocus_range``
    (Å), random structure-factor phases. With ``coherent_probability = 0`` no
    extra random numbers are drawn.
    """
    n = float(min(shape))
    lam = electron_wavelength(float(rng.choice(voltages_kv)))
    lattice = _LATTICES[int(rng.choice(len(_LATTICES), p=[0.25, 0.25, 0.2, 0.1, 0.2]))]
    a1 = rng.uniform(2.5, 8.0)  # real-space spacing (Å) of the first reflection
    g1 = 1.0 / a1
    if lattice == "square":
        ratio, gamma = 1.0, np.pi / 2
    elif lattice == "hexagonal":
        ratio, gamma = 1.0, np.pi / 3
    elif lattice == "rectangular":
        ratio, gamma = rng.uniform(1.1, 2.0), np.pi / 2
    elif lattice == "centred":
        ratio, gamma = rng.uniform(1.1, 1.8), np.pi / 2
    else:
        ratio, gamma = rng.uniform(1.0, 1.8), rng.uniform(np.deg2rad(60), np.deg2rad(85))
    basis = np.array([[g1, 0.0], [ratio * g1 * np.cos(gamma), ratio * g1 * np.sin(gamma)]])

    g1_px = rng.uniform(max(4.0, n / 16.0), n / 4.0)
    step = g1 / g1_px
    overlapping = bool(rng.random() < overlap_probability)
    if overlapping:
        radius = rng.uniform(*overlap_ratio_range) * g1_px
    else:
        radius = rng.uniform(min(1.2, 0.3 * g1_px), 0.45 * g1_px)
    radius = float(min(radius, n / 4.0))

    reach = 0.75 * np.hypot(*shape) * step + radius * step  # Å⁻¹ covered by the detector
    hmax = int(np.ceil(reach / (g1 * min(1.0, ratio) * np.sin(gamma)))) + 1
    h, k = np.meshgrid(np.arange(-hmax, hmax + 1), np.arange(-hmax, hmax + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], 1)
    hk = hk[(hk != 0).any(1)]
    g = hk @ basis
    gl = np.hypot(g[:, 0], g[:, 1])
    keep = gl < reach
    hk, gl = hk[keep], gl[keep]

    # Structure-factor moduli: a smooth random function of |g| (symmetry-equivalent
    # reflections share it: zone-axis symmetry) times a small per-reflection jitter,
    # Friedel pairs equal, a Debye–Waller decay and optional centring absences.
    shells = np.round(gl / (0.02 * g1)).astype(int)
    shell_ids, inverse = np.unique(shells, return_inverse=True)
    shell_f = rng.uniform(0.15, 1.0, size=len(shell_ids)) ** 1.5
    jitter = np.exp(rng.normal(0.0, 0.15, size=len(hk)))
    # +1 for one reflection of each Friedel pair g, −g, −1 for the other
    friedel_sign = np.where((hk[:, 0] > 0) | ((hk[:, 0] == 0) & (hk[:, 1] > 0)), 1, -1)
    _, pair_ids = np.unique(friedel_sign[:, None] * hk, axis=0, return_inverse=True)
    pair_ids = np.asarray(pair_ids).ravel()
    jitter = jitter[pair_ids]  # Friedel pairs share the jitter
    debye_waller = np.exp(-rng.uniform(0.3, 1.5) * gl**2 / 4.0)  # exp(−B s²), s = |g|/2
    f = shell_f[inverse] * jitter * debye_waller
    if lattice == "centred" or rng.random() < 0.15:
        f = np.where((hk.sum(1) % 2) != 0, f * rng.uniform(0.0, 0.1), f)
    xi0 = rng.uniform(100.0, 400.0)
    xi = xi0 / np.clip(f, 1e-3, None)
    coherence, defocus, phases = 0.0, 0.0, None
    if coherent_probability > 0 and overlapping and rng.random() < coherent_probability:
        coherence = float(rng.uniform(0.5, 1.0))
        defocus = float(rng.uniform(*defocus_range))
        pair_phase = rng.uniform(-np.pi, np.pi, size=int(np.max(pair_ids)) + 1)
        phases = friedel_sign * pair_phase[pair_ids]  # φ₋g = −φ_g

    return Specimen(
        wavelength=lam,
        step=step,
        radius=radius,
        hk=hk,
        basis=basis,
        xi=xi,
        diffuse_fraction=rng.uniform(0.02, 0.25),
        tds_fraction=rng.uniform(0.01, 0.15),
        amorphous_fraction=rng.uniform(0.0, 0.2) if rng.random() < 0.6 else 0.0,
        amorphous_q=rng.uniform(0.3, 0.6),
        amorphous_width=rng.uniform(0.03, 0.08),
        tds_q=rng.uniform(0.3, 1.0),
        inelastic_q=rng.uniform(0.01, 0.05),
        edge_blur=rng.uniform(0.0, 0.6),
        coherence=coherence,
        defocus=defocus,
        phases=phases,
    )


def _two_beam(t: float, s: np.ndarray, xi: float) -> np.ndarray:
    """Eq. (2): two-beam intensity of a reflection (dimensionless, ≤ 1)."""
    s_eff = np.sqrt(s * s + 1.0 / (xi * xi))
    return (t / xi) ** 2 * np.sinc(t * s_eff) ** 2


def render_pattern(spec: Specimen, state: CrystalState, shape: tuple[int, int]) -> np.ndarray:
    """Expected intensity pattern (float64, sums to 1) before the detector.

    Parameters
    ----------
    spec : Specimen
        Fixed specimen and set-up.
    state : CrystalState
        Beam position, orientation and thickness at this probe position.
    shape : tuple of int
        Detector shape (rows, cols) in pixels.

    Returns
    -------
    numpy.ndarray
        Non-negative pattern normalised to a total of 1.

    Notes
    -----
    With ``spec.coherence`` γ > 0 the disks are also summed as amplitudes,
    as for a thin crystal under a coherent convergent probe at position r:
    ``Ψ(k) = Σ_g √I_g(k) A(k − g) exp i(φ_g + 2π g·r − χ(k − g))`` with
    ``χ(q) = πλΔf|q|²``, and the Bragg part is
    ``γ|Ψ|² + (1 − γ) Σ_g I_g A(k − g)``. Where disks overlap this gives the
    probe-position-dependent interference (fringes, dark or bright overlaps)
    of large-convergence CBED; where they do not, the two sums agree.
    """
    h, w = shape
    cy, cx = state.centre
    r = spec.radius
    c, s_ = np.cos(state.rotation), np.sin(state.rotation)
    rot = np.array([[c, s_], [-s_, c]])
    g = (spec.hk @ spec.basis) @ rot  # (n, 2) Å⁻¹, (x, y)
    g_px = g / spec.step
    inside = (
        (cx + g_px[:, 0] > -r - 1)
        & (cx + g_px[:, 0] < w + r)
        & (cy + g_px[:, 1] > -r - 1)
        & (cy + g_px[:, 1] < h + r)
    )
    lam = spec.wavelength
    tau = np.asarray(state.tilt, float)
    t = float(state.thickness)
    frac = float(np.clip(state.crystal_fraction, 0.0, 1.0))

    # Local grid of one disk (pixel offsets from its fractional centre).
    bragg = np.zeros(shape)
    coherent = spec.coherence > 0 and spec.phases is not None
    field = np.zeros(shape, complex) if coherent else None
    ry, rx = (float(v) for v in state.probe_position)

    def wave(yy: np.ndarray, xx: np.ndarray, phase: float) -> np.ndarray:
        q2 = (yy * yy + xx * xx) * spec.step**2  # |k − g|², Å⁻²
        return np.exp(1j * (phase - np.pi * lam * spec.defocus * q2))

    rr = int(np.ceil(r + 2))

    def box(y0: float, x0: float):
        top, left = int(np.floor(y0)) - rr, int(np.floor(x0)) - rr
        bottom, right = top + 2 * rr + 2, left + 2 * rr + 2
        t0, l0, b0, r0 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
        if b0 <= t0 or r0 <= l0:
            return None
        yy = np.arange(t0, b0)[:, None] - y0
        xx = np.arange(l0, r0)[None, :] - x0
        return (slice(t0, b0), slice(l0, r0)), yy, xx

    def aperture(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        d = np.sqrt(yy * yy + xx * xx)
        return np.clip(r - d + 0.5, 0.0, 1.0)

    # Diffracted disks (eqs 1–2), scaled by the crystal fraction, and the loss they
    # cause in the transmitted disk at the same incident directions.
    central = box(cy, cx)
    loss = None
    if central is not None:
        ky_c, kx_c = central[1] * spec.step, central[2] * spec.step
        loss = np.zeros(np.broadcast_shapes(ky_c.shape, kx_c.shape))
    if frac > 0:
        for i in np.flatnonzero(inside):
            gx, gy = g[i]
            g2 = gx * gx + gy * gy
            if loss is not None:
                s_c = -0.5 * lam * (g2 + 2 * (gx * (tau[0] + kx_c) + gy * (tau[1] + ky_c)))
                loss += _two_beam(t, s_c, spec.xi[i])
            b = box(cy + g_px[i, 1], cx + g_px[i, 0])
            if b is None:
                continue
            sl, yy, xx = b
            kx, ky = tau[0] + xx * spec.step, tau[1] + yy * spec.step
            sg = -0.5 * lam * (g2 + 2 * (gx * kx + gy * ky))
            disk = frac * aperture(yy, xx) * _two_beam(t, sg, spec.xi[i])
            bragg[sl] += disk
            if field is not None:
                phase = spec.phases[i] + 2 * np.pi * (gx * rx + gy * ry)
                field[sl] += np.sqrt(disk) * wave(yy, xx, phase)
    if central is not None:
        sl, yy, xx = central
        # more than 90 % of the beam never leaves the transmitted disk in this model
        scale = np.where(loss > 0.9, 0.9 / np.maximum(loss, 1e-12), 1.0)
        disk = aperture(yy, xx) * (1.0 - frac * loss * scale)
        bragg[sl] += disk
        if field is not None:
            field[sl] += np.sqrt(disk) * wave(yy, xx, 0.0)
    if field is not None:
        bragg = spec.coherence * np.abs(field) ** 2 + (1.0 - spec.coherence) * bragg
    if spec.edge_blur > 0.05:
        bragg = ndimage.gaussian_filter(bragg, spec.edge_blur, mode="constant")
    elastic = bragg.sum()

    # Diffuse parts on the full detector (q in Å⁻¹ from the transmitted beam).
    yy = (np.arange(h)[:, None] - cy) * spec.step
    xx = (np.arange(w)[None, :] - cx) * spec.step
    q2 = yy * yy + xx * xx
    q = np.sqrt(q2)
    # inelastic scattering spreads the transmitted disk: a Lorentzian tail from its edge
    q_edge = np.maximum(q - r * spec.step, 0.0)
    inelastic = 1.0 / (1.0 + (q_edge / spec.inelastic_q) ** 2) ** 1.5
    tds = q2 * np.exp(-q2 / (2 * spec.tds_q**2)) + 0.02 * spec.tds_q**2
    amorphous = np.exp(-0.5 * ((q - spec.amorphous_q) / spec.amorphous_width) ** 2) + 0.3 * np.exp(
        -0.5 * ((q - 1.8 * spec.amorphous_q) / (1.5 * spec.amorphous_width)) ** 2
    )
    smear = ndimage.gaussian_filter(bragg, 1.0 + 0.5 * r, mode="constant") if frac > 0 else 0.0

    def unit(a) -> np.ndarray:
        total = float(np.sum(a))
        return a / total if total > 0 else np.zeros(shape)

    thick = 1.0 - np.exp(-t / 1500.0)  # more diffuse scattering from thicker crystals
    f_in = spec.diffuse_fraction * (0.5 + thick)
    f_tds = spec.tds_fraction * (0.5 + thick) * max(frac, 0.2)
    f_am = spec.amorphous_fraction * state.amorphous_scale
    f_el = max(1.0 - f_in - f_tds - f_am, 0.2)
    pattern = (
        f_el * (bragg / elastic if elastic > 0 else 0.0)
        + f_in * unit(inelastic)
        + f_tds * (0.5 * unit(tds) + 0.5 * unit(smear) if frac > 0 else unit(tds))
        + f_am * unit(amorphous)
    )
    pattern = np.clip(pattern, 0.0, None)
    return pattern / pattern.sum()
