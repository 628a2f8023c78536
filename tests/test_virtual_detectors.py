"""Virtual detectors of 4D-STEM data: masks, eq. (1) on numpy/zarr/dask, the central disk."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_emdenoise.engine import virtual_detectors as vd

DET = (32, 32)


def _disk_stack(centers: np.ndarray, radius: float, counts: float = 100.0) -> np.ndarray:
    """(sy, sx, 32, 32) patterns: a uniform disk of ``counts`` per pixel at each centre."""
    sy, sx = centers.shape[:2]
    yy, xx = np.indices(DET, dtype=float)
    out = np.zeros((sy, sx, *DET), np.float32)
    for i in range(sy):
        for j in range(sx):
            cy, cx = centers[i, j]
            out[i, j] = counts * (np.hypot(yy - cy, xx - cx) < radius)
    return out


def test_masks_partition_the_detector():
    bf = vd.bright_field(DET, (15.5, 16.0), 5.0)
    adf = vd.annular_dark_field(DET, (15.5, 16.0), 5.0)
    assert bf.dtype == np.float32 and set(np.unique(bf)) == {0.0, 1.0}
    np.testing.assert_array_equal(bf + adf, np.ones(DET))  # BF radius = ADF inner: no overlap
    assert bf.sum() == pytest.approx(math.pi * 25, rel=0.1)
    ring = vd.annulus_mask(DET, (16, 16), 4.0, 8.0)
    yy, xx = np.indices(DET)
    rho = np.hypot(yy - 16, xx - 16)
    np.testing.assert_array_equal(ring.astype(bool), (rho >= 4) & (rho < 8))
    np.testing.assert_array_equal(
        vd.disk_mask(DET, (16, 16), 4.0), vd.annulus_mask(DET, (16, 16), 0, 4)
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: vd.annulus_mask(DET, (16, 16), 8.0, 4.0), "outer radius"),
        (lambda: vd.disk_mask(DET, (16, float("nan")), 4.0), "centre"),
        (lambda: vd.disk_mask(DET, (16, 16), -1.0), "≥ 0"),
        (lambda: vd.VirtualDetector((1, 1), 3.0, 3.0), "exceed"),
        (lambda: vd.apply_mask(np.zeros((4, 4, 8, 8)), np.ones((9, 9))), "does not fit"),
        (lambda: vd.apply_mask(np.zeros((4, 8, 8)), np.ones((8, 8))), "3 dimension"),
        (lambda: vd.find_central_disk(np.ones((16, 16))), "flat"),
    ],
)
def test_bad_geometry_and_input_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bright_field_of_a_shifted_disk():
    """A disk that wanders out of the BF detector: the BF image counts the overlap."""
    radius = 4.0
    centers = np.zeros((2, 3, 2))
    centers[..., 0] = 16.0
    centers[..., 1] = 16.0 + np.arange(6).reshape(2, 3) * 3.0  # shifted by 0, 3, …, 15 px in x
    data = _disk_stack(centers, radius)
    detector = vd.VirtualDetector((16.0, 16.0), 0.0, 6.0)
    image = vd.apply_mask(data, detector.mask(DET))
    assert image.shape == (2, 3) and image.dtype == np.float32
    # expected: counts × number of disk pixels inside the detector (computed independently)
    yy, xx = np.indices(DET)
    in_det = np.hypot(yy - 16, xx - 16) < 6.0
    for i in range(2):
        for j in range(3):
            cy, cx = centers[i, j]
            in_disk = np.hypot(yy - cy, xx - cx) < radius
            assert image[i, j] == pytest.approx(100.0 * np.count_nonzero(in_det & in_disk))
    assert image[0, 0] == pytest.approx(data[0, 0].sum())  # centred: the whole disk
    assert image[1, 2] == 0.0  # 15 px away: nothing left in the detector
    assert np.all(np.diff(image.ravel()) <= 0)  # the further, the darker


def test_adf_of_a_ring():
    """A ring of known radius lights the annulus containing it, not the one inside or outside."""
    yy, xx = np.indices(DET, dtype=float)
    rho = np.hypot(yy - 15.0, xx - 17.0)
    ring = ((rho >= 9.0) & (rho < 11.0)).astype(np.float32) * 7.0
    data = np.broadcast_to(ring, (3, 2, *DET)).copy()
    data[1, 1] *= 2.0  # twice the scattering at one position
    on = vd.apply_mask(data, vd.annular_dark_field(DET, (15.0, 17.0), 8.0, 12.0))
    inside = vd.apply_mask(data, vd.annular_dark_field(DET, (15.0, 17.0), 2.0, 8.0))
    outside = vd.apply_mask(data, vd.annular_dark_field(DET, (15.0, 17.0), 12.0))
    assert on[0, 0] == pytest.approx(ring.sum())
    assert on[1, 1] == pytest.approx(2.0 * ring.sum())
    assert not inside.any() and not outside.any()


def test_mask_stack_and_integer_counts():
    rng = np.random.default_rng(0)
    data = rng.poisson(3.0, size=(5, 4, *DET)).astype(np.uint16)
    masks = np.stack(
        [vd.bright_field(DET, (16, 16), 6), vd.annular_dark_field(DET, (16, 16), 6), np.ones(DET)]
    )
    images = vd.apply_mask(data, masks)
    assert images.shape == (3, 5, 4)
    np.testing.assert_allclose(images[2], data.sum(axis=(2, 3)))  # no uint16 overflow
    np.testing.assert_allclose(images[0] + images[1], images[2])
    named = vd.virtual_images(
        data, {"BF": vd.VirtualDetector((16, 16), 0, 6), "ADF": vd.VirtualDetector((16, 16), 6)}
    )
    np.testing.assert_allclose(named["BF"], images[0])
    np.testing.assert_allclose(named["ADF"], images[1])


def test_dask_is_lazy_and_equals_numpy(monkeypatch):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(1)
    data = rng.poisson(5.0, size=(6, 7, *DET)).astype(np.float32)
    lazy = da.from_array(data, chunks=(2, 3, 16, 32))  # detector axes chunked too
    masks = np.stack([vd.bright_field(DET, (15, 16), 7), vd.annular_dark_field(DET, (15, 16), 9)])
    result = vd.apply_mask(lazy, masks)
    assert isinstance(result, da.Array)  # nothing computed yet
    np.testing.assert_allclose(result.compute(), vd.apply_mask(data, masks), rtol=1e-5)
    np.testing.assert_allclose(vd.mean_pattern(lazy), data.mean(axis=(0, 1)), rtol=1e-6)


def test_block_wise_read_of_a_sliceable_array(monkeypatch):
    """A zarr-like array is read a few scan rows at a time, with progress and cancel."""

    class Sliceable:  # only what zarr/h5py offer: shape, dtype, slicing
        def __init__(self, array):
            self._a, self.shape, self.dtype = array, array.shape, array.dtype
            self.reads: list[int] = []

        def __getitem__(self, key):
            part = self._a[key]
            self.reads.append(part.shape[0] if part.ndim == 4 else 1)
            return part

    rng = np.random.default_rng(2)
    data = rng.poisson(2.0, size=(9, 3, *DET)).astype(np.float32)
    store = Sliceable(data)
    monkeypatch.setattr(vd, "BLOCK_BYTES", 2 * 3 * DET[0] * DET[1] * 8)  # two rows per read
    seen = []
    mask = vd.bright_field(DET, (16, 16), 8)
    image = vd.apply_mask(store, mask, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_allclose(image, vd.apply_mask(data, mask), rtol=1e-6)
    assert max(store.reads) == 2 and seen[-1] == (9, 9)

    from napari_emdenoise.engine import Cancelled

    with pytest.raises(Cancelled):
        vd.apply_mask(store, mask, cancel=lambda: True)


@pytest.mark.parametrize(("cy", "cx", "r"), [(31.5, 31.5, 8.0), (28.3, 35.7, 11.0)])
def test_find_central_disk_on_a_noisy_mean_pattern(cy, cx, r):
    rng = np.random.default_rng(3)
    yy, xx = np.indices((64, 64), dtype=float)
    disk = 50.0 * (np.hypot(yy - cy, xx - cx) < r)
    bragg = 20.0 * (np.hypot(yy - cy - 22, xx - cx + 3) < 3)  # a weaker Bragg disk
    pattern = rng.poisson(disk + bragg + 1.0).astype(float)
    fit = vd.find_central_disk(pattern)
    assert fit.center == pytest.approx((cy, cx), abs=0.3)
    assert fit.radius == pytest.approx(r, abs=0.6)
    bf, adf = fit.bright_field(), fit.annular_dark_field(1.2)
    assert bf.outer == pytest.approx(fit.radius) and adf.inner == pytest.approx(1.2 * fit.radius)


def test_mean_pattern_caps_the_positions_it_reads():
    data = np.zeros((40, 40, 8, 8), np.float32)
    data[::2, ::2] = 1.0  # the strided subset sees only these
    assert vd.mean_pattern(data, max_positions=400).mean() == pytest.approx(1.0)
    assert vd.mean_pattern(data, max_positions=10**6).mean() == pytest.approx(0.25)


def test_poisson_residual_is_unit_scatter_for_pure_noise():
    rng = np.random.default_rng(4)
    lam = np.full((200, 200), 30.0)
    raw = rng.poisson(lam).astype(np.float32)
    res = vd.poisson_residual(raw, lam)
    assert abs(float(res.mean())) < 0.02 and float(res.std()) == pytest.approx(1.0, abs=0.03)
    # an invented feature stands out by many σ
    fake = lam.copy()
    fake[90:110, 90:110] += 40.0
    assert vd.poisson_residual(raw, fake)[95:105, 95:105].mean() > 4.0
    # empty pixels: the floor of 1 count keeps it finite
    assert np.isfinite(vd.poisson_residual(np.zeros(3), np.zeros(3))).all()
    with pytest.raises(ValueError, match="shape"):
        vd.poisson_residual(np.zeros(3), np.zeros(4))
