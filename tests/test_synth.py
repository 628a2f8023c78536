"""Tests of the clean (undistorted) image generator, seed 001 eqs 16–26."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, ndimage
from skimage.feature import peak_local_max

from napari_emdenoise.synth import generate_clean
from napari_emdenoise.synth._modifiers import (
    Polytope,
    Wedge,
    apply_wedge,
    polytope_depth_interval,
)
from napari_emdenoise.synth._profiles import (
    AtomProfile,
    atomic_profile,
    profile_integral,
    projected_rms_radius,
    radius_parameter,
    sample_profiles,
)
from napari_emdenoise.synth._render import _kernel_window, render_sites
from napari_emdenoise.synth._sites import Sites, occupied_fraction, split_slab_weight
from napari_emdenoise.synth.atomic import generate_atomic
from napari_emdenoise.synth.contrast import (
    enforce_std_mean_ratio,
    gaussian_background,
    invert_contrast,
    normalize_max,
    plane_background,
    power_transform,
    std_mean_ratio,
)
from napari_emdenoise.synth.lowres import LOWRES_OBJECTS, generate_lowres

KINDS = ("hr", "lr")


# --------------------------------------------------------------- public contract


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 64), (97, 130), (8, 8), (33, 8)])
def test_output_contract(kind, shape):
    img = generate_clean(kind, shape, rng=3)
    assert img.dtype == np.float32
    assert img.shape == shape
    assert img.min() >= 0.0
    assert img.max() == 1.0  # eq 26, exactly


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_image_and_different_seeds_differ(kind):
    a = generate_clean(kind, (48, 64), rng=11)
    b = generate_clean(kind, (48, 64), rng=11)
    c = generate_clean(kind, (48, 64), rng=np.random.default_rng(11))
    d = generate_clean(kind, (48, 64), rng=12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, d)


def test_generator_stream_advances():
    rng = np.random.default_rng(5)
    first = generate_clean("hr", (40, 40), rng)
    second = generate_clean("hr", (40, 40), rng)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("kind", KINDS)
def test_info_is_json_and_records_choices(kind):
    img, info = generate_clean(kind, (64, 80), rng=2, return_info=True)
    assert img.shape == (64, 80)
    json.dumps(info)
    assert info["kind"] == kind
    assert isinstance(info["contrast"]["inverted"], bool)
    beta = info["contrast"]["beta"]
    assert beta is None or 0.5 <= beta <= 1.5
    # no added background only in the "dark field" branch (own contrast kept)
    dark = info["contrast"]["dark_field"]
    assert info["contrast"]["background"]["type"] in ((None,) if dark else ("plane", "gaussian"))
    assert not (dark and info["contrast"]["inverted"])
    if kind == "hr":
        assert 0.025 <= info["pixel_size_A"] <= 0.90
        assert info["specimen"]["type"] in ("crystalline", "amorphous", "points")
        assert info["n_atoms"] >= 0
    else:
        assert set(info["objects"]) <= set(LOWRES_OBJECTS) and info["objects"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "mr"},
        {"kind": "HR"},
        {"shape": (7, 64)},
        {"shape": (64,)},
        {"shape": (64, 64, 3)},
        {"shape": (64.0, 64)},
        {"shape": "64x64"},
        {"shape": (True, 64)},
        {"rng": "seed"},
        {"rng": -1},
        {"rng": 1.5},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = {"kind": "hr", "shape": (32, 32), "rng": 0} | kwargs
    with pytest.raises(ValueError):
        generate_clean(args["kind"], args["shape"], args["rng"])


def test_engine_modules_do_not_import_torch_or_qt():
    code = (
        "import sys, napari_emdenoise.synth as s; s.generate_clean('hr', (16, 16), 0);"
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    ny=st.integers(8, 40),
    nx=st.integers(8, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_range_and_std_mean(kind, ny, nx, seed):
    img = generate_clean(kind, (ny, nx), seed)
    assert img.shape == (ny, nx) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() == 1.0
    # eq 25 is scale invariant, so the constraint survives eq 26 (range widened
    # from the paper's [0.01, 0.35] to keep HAADF-like dark backgrounds)
    assert 0.01 - 1e-5 <= std_mean_ratio(img) <= 1.5 + 1e-5


# --------------------------------------------------------------- contrast (eqs 23–26)


def test_invert_power_normalize():
    y = np.array([[0.0, 1.0], [2.0, 4.0]])
    before = y.copy()
    np.testing.assert_allclose(invert_contrast(y), [[4.0, 3.0], [2.0, 0.0]])  # eq 23
    np.testing.assert_allclose(power_transform(y, 0.5), np.sqrt(y))  # eq 24
    np.testing.assert_allclose(power_transform(-y, 2.0), y**2)  # |y|^β
    np.testing.assert_allclose(normalize_max(y), y / 4.0)  # eq 26
    np.testing.assert_array_equal(y, before)  # inputs untouched
    with pytest.raises(ValueError):
        power_transform(y, 0.0)
    with pytest.raises(ValueError):
        normalize_max(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        invert_contrast(np.array([[np.nan, 1.0]]))


def test_backgrounds():
    plane = plane_background((20, 30), 2.0, np.radians(30), 0.25)
    assert plane.min() == pytest.approx(0.5) and plane.max() == pytest.approx(2.0)
    # a plane: all second differences vanish
    assert np.abs(np.diff(plane, 2, axis=0)).max() < 1e-12
    assert np.abs(np.diff(plane, 2, axis=1)).max() < 1e-12
    gauss = gaussian_background((41, 51), (10.0, 30.0), 5.0, 3.0)
    assert np.unravel_index(gauss.argmax(), gauss.shape) == (10, 30)
    assert gauss.max() == pytest.approx(3.0)
    assert gauss[10, 35] == pytest.approx(3.0 * np.exp(-0.5))


def test_std_mean_constraint_cases():
    rng = np.random.default_rng(0)
    sparse = np.zeros((64, 64))
    sparse[::8, ::8] = 1.0  # r = sqrt(63) ≫ 0.35
    flat = 10.0 + 0.01 * rng.random((64, 64))  # r ≈ 3e-4 ≪ 0.01
    ok = 1.0 + 0.2 * rng.random((64, 64))
    for y in (sparse, flat):
        out, info = enforce_std_mean_ratio(y)
        assert info["reached"]
        assert 0.01 - 1e-9 <= std_mean_ratio(out) <= 0.35 + 1e-9
        assert out.min() >= 0.0
        # eq 25: a linear map c·y + d
        np.testing.assert_allclose(out, info["c"] * y + info["d"])
    assert std_mean_ratio(enforce_std_mean_ratio(sparse)[0]) == pytest.approx(0.35)
    assert std_mean_ratio(enforce_std_mean_ratio(flat)[0]) == pytest.approx(0.01)
    out, info = enforce_std_mean_ratio(ok)
    np.testing.assert_array_equal(out, ok)
    assert info["d"] == 0.0
    with pytest.raises(ValueError):
        enforce_std_mean_ratio(np.ones((8, 8)))
    with pytest.raises(ValueError):
        enforce_std_mean_ratio(-ok)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    offset=st.floats(0.0, 1e3),
    power=st.floats(0.2, 8.0),
)
def test_property_std_mean_constraint(seed, offset, power):
    rng = np.random.default_rng(seed)
    y = offset + rng.random((16, 24)) ** power
    if y.std() == 0:
        return
    before = y.copy()
    out, info = enforce_std_mean_ratio(y, rng=rng)
    np.testing.assert_array_equal(y, before)
    assert out.min() >= -1e-12
    r = std_mean_ratio(out)
    if info["reached"]:
        assert 0.01 - 1e-9 <= r <= 0.35 + 1e-9
    else:  # only when even shifting the minimum to 0 cannot reach 0.01
        assert r == pytest.approx(y.std() / (y.mean() - y.min()))
        assert r < 0.01


# --------------------------------------------------------------- profiles (eqs 17–22)


def test_profile_matches_eq17():
    r = np.linspace(0.0, 5.0, 101)
    h1, h2, h3, n, rm = 0.7, 0.55, 0.9, 6.5, 0.8
    direct = (
        h1 * np.exp(-(r**2) / (2 * rm**2)) + h2 * np.exp(-r / rm) + h3 / (1 + (r / rm) ** (2 * n))
    )
    np.testing.assert_allclose(atomic_profile(r, h1, h2, h3, n, rm), direct, rtol=1e-12)
    assert AtomProfile(6, h1, h2, h3, n, rm)(r) == pytest.approx(direct)


@pytest.mark.parametrize("n", [4.0, 7.3, 16.0])
def test_profile_integral_closed_form(n):
    h1, h2, h3, rm = 0.6, 0.8, 0.95, 0.7
    numeric, _ = integrate.quad(
        lambda r: 2 * np.pi * r * atomic_profile(r, h1, h2, h3, n, rm), 0, 60, limit=200
    )
    assert profile_integral(h1, h2, h3, n, rm) == pytest.approx(numeric, rel=1e-7)


def test_cutoff_radius_bounds_the_tail():
    p = AtomProfile(30, 0.5, 1.0, 0.5, 4.0, 0.9)
    rc = p.cutoff_radius(1e-3)
    r = np.linspace(rc, 5 * rc, 200)
    assert np.all(p(r) < 1e-3 * p.peak)
    assert p(0.8 * rc) > 1e-4 * p.peak  # and is not absurdly large


@pytest.mark.parametrize("alpha", [0.75, 1.0, 1.25])
def test_radius_parameter_eqs_18_to_20(alpha):
    z = np.arange(1, 104)
    rhat, rm = projected_rms_radius(z), radius_parameter(z, alpha)
    assert rm.mean() == pytest.approx(rhat.mean())  # eq 20
    assert rm.std() == pytest.approx(rhat.std())  # eq 19
    assert np.all(np.diff(rm) > 0) and rm.min() > 0
    assert projected_rms_radius(1) == pytest.approx(np.sqrt(1.5) * 0.529177, rel=2e-3)


@settings(max_examples=40, deadline=None)
@given(
    zs=st.lists(st.integers(1, 103), min_size=2, max_size=16, unique=True),
    alpha=st.floats(0.75, 1.25),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_integral_increases_with_z(zs, alpha, seed):
    profiles = sample_profiles(zs, alpha, np.random.default_rng(seed))
    assert [p.z for p in profiles] == zs
    for p in profiles:
        assert all(0.5 <= h <= 1.0 for h in (p.h1, p.h2, p.h3)) and 4.0 <= p.n <= 16.0
    ordered = sorted(profiles, key=lambda p: p.z)
    integrals = [p.integral for p in ordered]
    assert all(a < b for a, b in zip(integrals, integrals[1:], strict=False))  # eq 22


def test_sample_profiles_rejects_bad_z():
    with pytest.raises(ValueError):
        sample_profiles([6, 6], 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        sample_profiles([0, 6], 1.0, np.random.default_rng(0))


# --------------------------------------------------------------- rendering (eq 16)


def _profiles():
    return {
        14: AtomProfile(14, 0.8, 0.6, 0.7, 8.0, 0.8),
        79: AtomProfile(79, 0.9, 0.9, 0.9, 5.0, 0.9),
    }


def test_single_atom_on_pixel_centre_renders_profile_exactly():
    profiles, dr = _profiles(), 0.2
    img = render_sites(
        np.array([20 * dr]),
        np.array([15 * dr]),
        np.array([79]),
        np.array([2.5]),
        profiles,
        (40, 50),
        dr,
    )
    rows, cols = np.indices(img.shape)
    r = np.hypot(rows - 15, cols - 20) * dr
    expected = 2.5 * profiles[79](r)
    expected[r > profiles[79].cutoff_radius()] = 0.0
    np.testing.assert_allclose(img, expected, atol=1e-5 * expected.max())


def test_rendered_peaks_sit_at_atom_positions():
    rng = np.random.default_rng(4)
    profiles, dr = _profiles(), 0.25
    shape = (96, 128)
    # well-separated atoms on a jittered grid, random sub-pixel positions
    gy, gx = np.meshgrid(np.arange(12, 96, 18), np.arange(12, 128, 18), indexing="ij")
    py = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    px = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    zs = rng.choice([14, 79], px.size)
    img = render_sites(px * dr, py * dr, zs, rng.uniform(0.5, 1.5, px.size), profiles, shape, dr)
    peaks = peak_local_max(img, min_distance=4, threshold_rel=0.2, exclude_border=False)
    assert len(peaks) == px.size
    d = np.hypot(peaks[:, None, 0] - py[None], peaks[:, None, 1] - px[None]).min(axis=1)
    assert d.max() <= 1.0


def test_render_preserves_intensity_and_handles_edges():
    profiles, dr = _profiles(), 0.3
    # off-grid atom in the middle: bilinear deposit keeps the integrated intensity
    img = render_sites(
        np.array([32.37 * dr]),
        np.array([30.81 * dr]),
        np.array([14]),
        np.array([1.0]),
        profiles,
        (64, 64),
        dr,
    )
    kernel_mass = _kernel_window(profiles[14], dr).sum()
    assert img.sum() == pytest.approx(kernel_mass, rel=1e-5)
    # the sampled, cut-off kernel holds the eq-22 integral up to < 1 %
    assert img.sum() * dr**2 == pytest.approx(profiles[14].integral, rel=1e-2)
    # atoms outside the reach of the field of view contribute nothing
    far = render_sites(
        np.array([-50.0]),
        np.array([-50.0]),
        np.array([14]),
        np.array([1.0]),
        profiles,
        (64, 64),
        dr,
    )
    assert not far.any()


def test_smooth_weight_keeps_mean_and_removes_fluctuations():
    rng = np.random.default_rng(1)
    profiles, dr, shape = _profiles(), 0.4, (64, 64)
    n = 3000
    x, y = rng.uniform(-10, 36, n), rng.uniform(-10, 36, n)
    z = np.full(n, 14)
    sharp = render_sites(x, y, z, np.ones(n), profiles, shape, dr)
    smooth = render_sites(
        x, y, z, np.zeros(n), profiles, shape, dr, smooth_weights=np.ones(n), smooth_sigma=3.0
    )
    assert smooth.mean() == pytest.approx(sharp.mean(), rel=0.05)
    assert smooth.std() < 0.5 * sharp.std()
    assert split_slab_weight(4.0) == (2.0, 2.0)


# --------------------------------------------------------------- specimen geometry


def test_occupied_fraction():
    z_lo = np.array([0.0, 0.0, 5.0, 5.0])
    z_hi = np.array([10.0, 10.0, 5.0, 5.0])
    lo = np.array([2.0, 20.0, 0.0, 6.0])
    hi = np.array([6.0, 30.0, 10.0, 9.0])
    np.testing.assert_allclose(occupied_fraction(z_lo, z_hi, lo, hi), [0.4, 0.0, 1.0, 0.0])


def test_wedge_thickness_ramp():
    x = np.linspace(-20.0, 80.0, 201)
    sites = Sites(
        x,
        np.zeros_like(x),
        np.zeros_like(x),
        np.full_like(x, 50.0),
        np.full(x.size, 6),
        np.ones_like(x),
        np.zeros_like(x),
    )
    wedge = Wedge("top", 30.0, 0.0, 0.0, 0.0, 0.0)  # edge at x = 0, thickening towards +x
    out = apply_wedge(sites, wedge, 50.0)
    assert out.x.min() > 0.0  # vacuum before the edge
    expected = np.minimum(np.tan(np.radians(30.0)) * out.x, 50.0) / 50.0
    np.testing.assert_allclose(out.weight, expected, atol=1e-12)


def test_polytope_depth_interval_of_a_cube():
    normals = np.vstack([np.eye(3), -np.eye(3)])
    cube = Polytope("convex_polyhedron", normals, np.array([1, 1, 3, 1, 1, -1.0]), True)
    lo, hi = polytope_depth_interval(cube, np.array([0.0, 0.5, 2.0]), np.array([0.0, -0.5, 0.0]))
    np.testing.assert_allclose(lo[:2], [1.0, 1.0])
    np.testing.assert_allclose(hi[:2], [3.0, 3.0])
    assert lo[2] > hi[2]  # outside the footprint: empty


def _near_reciprocal_lattice(freq, vectors, bins_per_inv_A, radius_bins=2.0):
    """Mask of FFT frequencies (cycles/Å) within ``radius_bins`` of a reciprocal-lattice point."""
    n = int(round(np.sqrt(len(freq))))
    hk = freq @ vectors.T  # fractional Miller indices
    dist = (hk - np.round(hk)) @ np.linalg.inv(vectors).T  # back to cycles/Å
    return (np.linalg.norm(dist, axis=1) * bins_per_inv_A <= radius_bins).reshape(n, n)


def test_crystal_fft_spots_lie_on_the_reciprocal_lattice():
    n, dr, checked = 128, 0.4, 0
    for seed in range(40):
        img, info = generate_atomic(
            (n, n),
            seed,
            specimen="crystalline",
            orientation="zone_axis",
            pixel_size=dr,
            wedge=False,
            shapes=False,
            defects=False,
            support=False,
        )
        vectors = np.array(info["specimen"]["projected_lattice_vectors_A"])  # rows, (x, y) in Å
        recip = np.linalg.inv(vectors).T  # rows g1, g2 in cycles/Å
        spacing_bins = np.linalg.norm(recip, axis=1).min() * dr * n
        if spacing_bins < 6 or abs(np.linalg.det(vectors)) / dr**2 > n * n / 16:
            continue  # reciprocal lattice too fine to separate spots from chance
        window = np.outer(np.hanning(n), np.hanning(n))
        power = np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * window))) ** 2
        f = np.fft.fftshift(np.fft.fftfreq(n)) / dr  # cycles/Å
        fy, fx = np.meshgrid(f, f, indexing="ij")
        freq = np.stack([fx.ravel(), fy.ravel()], 1)

        dc = np.hypot(fx, fy) * dr * n <= 2.0
        on = _near_reciprocal_lattice(freq, vectors, dr * n) & ~dc
        rot = np.array([[np.cos(0.3), np.sin(0.3)], [-np.sin(0.3), np.cos(0.3)]])
        control = _near_reciprocal_lattice(freq, vectors @ rot * 1.07, dr * n) & ~dc
        total = power[~dc].sum()
        frac, frac_control = power[on].sum() / total, power[control].sum() / total
        assert frac > 0.8, (seed, frac)
        assert frac > 2.0 * frac_control, (seed, frac, frac_control)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


@pytest.mark.parametrize("specimen", ["crystalline", "amorphous", "points"])
def test_forced_specimen_types_render(specimen):
    img, info = generate_atomic((48, 64), 7, specimen=specimen, support=False)
    assert info["specimen"]["type"] == specimen
    assert img.shape == (48, 64) and img.min() >= 0 and np.isfinite(img).all()
    assert info["support"] is None
    json.dumps(info)


def test_random_orientation_and_modifiers_are_recorded():
    img, info = generate_atomic(
        (64, 64),
        3,
        specimen="crystalline",
        orientation="random",
        wedge=True,
        shapes=True,
        defects=True,
        support=True,
    )
    assert info["specimen"]["orientation"] == "random"
    assert set(info["modifiers"]) == {"wedge", "shape", "defects"}
    assert info["support"]["type"] in ("amorphous", "crystalline")
    with pytest.raises(ValueError):
        generate_atomic((64, 64), 0, specimen="glass")
    with pytest.raises(ValueError):
        generate_atomic((64, 64), 0, pixel_size=-0.1)


# --------------------------------------------------------------- low resolution


def _laplacian_flat_fraction(img):
    lap = ndimage.laplace(img)[1:-1, 1:-1]
    return float(np.mean(np.abs(lap) < 1e-9))


@pytest.mark.parametrize("name", LOWRES_OBJECTS)
def test_lowres_object_types(name):
    img, info = generate_lowres((128, 128), 21, objects=[name])
    assert set(info["objects"]) == {name}
    assert img.min() >= 0 and img.std() > 0
    layer = info["objects"][name]
    if name == "grains":
        assert 1 <= layer["count"] <= 175
        assert _laplacian_flat_fraction(img) > 0.5  # piecewise planar cells
    elif name == "sharp_particles":
        assert 1 <= layer["count"] <= 40
        assert img.min() == 0.0  # background between the particles
        jumps = np.abs(np.diff(img, axis=1))
        assert jumps.max() > 0.2 * img.max()  # sharp borders
    elif name == "soft_particles":
        assert 1 <= layer["count"] <= 85
        peaks = peak_local_max(img, min_distance=2, threshold_rel=0.05)
        assert len(peaks) >= min(5, layer["count"])
    elif name == "cracks":
        assert np.mean(img == img.max()) > 0.5  # mostly intact film
        assert img.min() == 0.0  # and cracks through it
    elif name == "boxes":
        assert 1 <= layer["count"] <= 10
        assert _laplacian_flat_fraction(img) > 0.5


def test_lowres_default_subset_and_bad_objects():
    for seed in range(5):
        _, info = generate_lowres((32, 32), seed)
        assert info["objects"] and set(info["objects"]) <= set(LOWRES_OBJECTS)
    with pytest.raises(ValueError):
        generate_lowres((32, 32), 0, objects=["blobs"])
    with pytest.raises(ValueError):
        generate_lowres((32, 32), 0, objects=[])


def test_hr_pixel_sizes_are_log_uniform():
    """Most atomic-resolution micrographs are taken at 0.05–0.2 Å/pixel: sample log-uniformly."""
    sizes = np.array(
        [
            generate_clean("hr", (24, 24), rng=s, return_info=True)[1]["pixel_size_A"]
            for s in range(80)
        ]
    )
    assert sizes.min() >= 0.025 and sizes.max() <= 0.90
    # log-uniform on [0.025, 0.9]: median 0.15 Å (uniform: 0.46 Å); P(< 0.2 Å) = 0.58.
    assert 0.09 < np.median(sizes) < 0.25
    assert 0.4 < np.mean(sizes < 0.2) < 0.75


def test_dark_field_branch_keeps_a_dark_background():
    """HAADF-like images (bright columns on a dark background) stay that way in training."""
    from napari_emdenoise.synth.contrast import apply_random_contrast

    yy, xx = np.mgrid[:64, :64]
    columns = np.exp(-(((yy % 16) - 8) ** 2 + ((xx % 16) - 8) ** 2) / 8.0)
    for seed in range(5):
        out, info = apply_random_contrast(
            columns, np.random.default_rng(seed), dark_field_probability=1.0
        )
        assert info["dark_field"] and not info["inverted"]
        assert 1.0 <= std_mean_ratio(out) <= 1.5 + 1e-6  # paper's range would force ≤ 0.35
        assert out[0, 0] < 0.5 * out.max()  # background stays darker than the columns
        out, info = apply_random_contrast(
            columns, np.random.default_rng(seed), dark_field_probability=0.0
        )
        assert not info["dark_field"] and info["background"]["type"] in ("plane", "gaussian")


def test_huge_clean_image_is_refused_before_any_work():
    with pytest.raises(MemoryError, match="smaller image"):
        generate_clean("hr", (10**6, 10**6), rng=0)
    with pytest.raises(ValueError, match="smaller image"):  # TooLargeError is both
        generate_clean("lr", (10**6, 10**6), rng=0)
