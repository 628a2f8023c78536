"""File ▸ Open Sample ▸ EM Denoise: specimens a microscopist recognises, which the
bundled models improve."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise._sample_data import SAMPLES, sample_pair

KEYS = {
    "hrstem_grain_boundary": "HR-STEM grain boundary",
    "lrstem_particles": "LR-STEM nanoparticles",
}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_samples_open_calibrated_with_the_reference_hidden(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-emdenoise", key)
    title = KEYS[key]
    distorted = viewer.layers[f"{title} distorted"]
    clean = viewer.layers[f"{title} clean reference"]
    assert distorted.data.shape == clean.data.shape == (512, 512)
    assert distorted.visible and not clean.visible
    pixel_nm = SAMPLES[key][2]
    for layer in (distorted, clean):
        assert tuple(layer.scale) == pytest.approx((pixel_nm, pixel_nm))
        assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    assert distorted.metadata["specimen"]["specimen"]


def test_the_crystal_is_at_atomic_resolution_with_a_grain_boundary():
    from napari_emdenoise.synth.samples import perovskite_grain_boundary

    image, info = perovskite_grain_boundary()
    assert 0.05 <= info["pixel_size_A"] <= 0.2  # as recorded on aberration-corrected STEM
    assert info["misorientation_deg"] == pytest.approx(36.87, abs=0.01)
    assert len(info["half_occupied_A_sites_px"]) == 6
    # left and right of the boundary the lattice is rotated: their spectra differ
    b = int(info["boundary_x_px"])
    left, right = image[:, b - 200 : b - 40], image[:, b + 40 : b + 200]
    spec = [np.abs(np.fft.fft2(x - x.mean())) for x in (left, right)]
    corr = np.corrcoef(spec[0].ravel(), spec[1].ravel())[0, 1]
    assert corr < 0.5
    assert image.dtype == np.float32 and image.max() == 1.0 and image.min() >= 0.0


@pytest.mark.parametrize(
    ("key", "model"), [("hrstem_grain_boundary", "hrstem"), ("lrstem_particles", "lrstem")]
)
def test_the_bundled_model_improves_the_sample(key, model):
    from napari_emdenoise.engine import restore
    from napari_emdenoise.metrics import ssim

    target, distorted, _, _ = sample_pair(key)
    restored = restore(distorted, model=model)
    assert ssim(restored, target) > ssim(distorted, target) + 0.02
