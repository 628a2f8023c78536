"""The 4D-STEM dock widget, opened from the Plugins menu in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_cancel_then_close, run_buttons

from napari_emdenoise.engine import virtual_detectors as vd
from napari_emdenoise.engine.stack4d import LOCAL_COUNTS_PASSES

DISPLAY_NAME = "4D-STEM"
SCALE = (5.0, 5.0, 0.8, 0.8)
TRANSLATE = (10.0, -20.0, 0.0, 0.0)
UNITS = ("Å", "Å", "mrad", "mrad")


def _stack(scan=(12, 12), det=(32, 32), seed=0) -> np.ndarray:
    """Poisson patterns of a disk (radius 5 px) whose intensity varies across the scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(det, dtype=float)
    disk = np.hypot(yy - 15.0, xx - 16.0) < 5.0
    ring = (np.hypot(yy - 15.0, xx - 16.0) >= 9.0) & (np.hypot(yy - 15.0, xx - 16.0) < 11.0)
    sy, sx = scan
    t = np.linspace(0.2, 1.0, sy * sx).reshape(sy, sx)
    lam = 8.0 * t[..., None, None] * disk + 3.0 * (1.2 - t)[..., None, None] * ring + 0.2
    return rng.poisson(lam).astype(np.float32)


@pytest.fixture
def tiny_model():
    import torch

    from napari_emdenoise.models.registry import build_model

    torch.manual_seed(0)
    return build_model("pix2pix", "tiny").eval()


@pytest.fixture
def dock(make_napari_viewer, open_dock, qtbot, tiny_model):
    viewer = make_napari_viewer()
    data = _stack()
    viewer.add_image(
        data.copy(), name="scan", scale=SCALE, translate=TRANSLATE, units=UNITS, metadata={"k": 1}
    )
    widget = open_dock(viewer, DISPLAY_NAME)
    widget.model_override = tiny_model  # no bundled diffraction model needed
    qtbot.waitUntil(lambda: not widget.busy and widget.detectors is not None, timeout=30000)
    return viewer, widget, data


def wait_idle(widget, qtbot, timeout=60000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_sample_opens_calibrated_and_the_dock_finds_the_central_disk(
    make_napari_viewer, open_dock, qtbot
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-emdenoise", "stem4d_stack")
    layer = viewer.layers["4D-STEM scan"]
    clean = viewer.layers["4D-STEM scan clean reference"]
    assert layer.data.shape == clean.data.shape == (24, 24, 64, 64)
    assert layer.visible and not clean.visible
    assert [str(u) for u in layer.units] == ["angstrom", "angstrom", "milliradian", "milliradian"]
    cal = layer.metadata["stem4d_calibration"]
    assert tuple(layer.scale) == pytest.approx(
        (cal["scan_step"],) * 2 + (cal["detector_step"],) * 2
    )
    assert layer.data.sum(axis=(2, 3)).mean() == pytest.approx(1000.0, rel=0.05)

    widget = open_dock(viewer, DISPLAY_NAME)
    assert widget.layer.value == "4D-STEM scan"
    qtbot.waitUntil(lambda: not widget.busy and widget.detectors is not None, timeout=30000)
    assert widget.problem == ""
    # the BF detector sits on the brightest disk of the clean mean pattern
    mean = clean.data.mean(axis=(0, 1))
    peak = np.unravel_index(np.argmax(mean), mean.shape)
    bf = widget.detectors["BF"]
    assert np.hypot(bf.center[0] - peak[0], bf.center[1] - peak[1]) <= bf.outer + 1.0
    shapes = viewer.layers["4D-STEM scan detectors"]
    assert tuple(shapes.scale) == pytest.approx(tuple(layer.scale[2:]))
    assert list(shapes.features["role"]) == ["BF", "ADF inner", "ADF outer"]
    assert widget.virtual["BF"].shape == (24, 24)


def test_moving_a_detector_updates_the_virtual_image(dock, qtbot):
    viewer, widget, data = dock
    np.testing.assert_allclose(
        widget.virtual["BF"], vd.apply_mask(data, widget.detectors["BF"].mask((32, 32))), rtol=1e-5
    )
    shapes = viewer.layers["scan detectors"]
    before = widget.detectors["BF"]
    assert before.center == pytest.approx((15.0, 16.0), abs=0.3)
    # the user drags the BF ellipse 3 px to the right and shrinks it to radius 2
    corners = np.array([[13.0, 17.0], [13.0, 21.0], [17.0, 21.0], [17.0, 17.0]])
    edited = list(shapes.data)
    edited[0] = corners
    shapes.data = edited
    qtbot.waitUntil(lambda: widget.detectors["BF"].outer == pytest.approx(2.0), timeout=5000)
    wait_idle(widget, qtbot)
    qtbot.waitUntil(lambda: not widget._detector_timer.isActive(), timeout=5000)
    wait_idle(widget, qtbot)
    moved = widget.detectors["BF"]
    assert moved.center == pytest.approx((15.0, 19.0))
    expected = vd.apply_mask(data, moved.mask((32, 32)))
    np.testing.assert_allclose(widget.virtual["BF"], expected, rtol=1e-5)
    np.testing.assert_allclose(widget.view.live.image, expected, rtol=1e-5)  # the dock shows it


def test_clicking_a_scan_position_previews_raw_and_denoised(dock, qtbot):
    viewer, widget, data = dock
    n_layers = len(viewer.layers)
    widget.preview_at(3, 7)
    wait_idle(widget, qtbot)
    assert widget.last_error == ""
    raw = viewer.layers["scan pattern raw"]
    den = viewer.layers["scan pattern denoised"]
    assert len(viewer.layers) == n_layers + 2
    np.testing.assert_array_equal(raw.data, data[3, 7])
    assert den.data.shape == (32, 32)
    assert float(den.data.sum()) == pytest.approx(float(data[3, 7].sum()), rel=1e-3)  # counts kept
    assert tuple(raw.scale) == SCALE[2:] and tuple(den.scale) == SCALE[2:]
    assert den.translate[-1] > raw.translate[-1] + 32 * SCALE[-1]  # side by side
    # another click updates the same two layers
    widget.preview_at(0, 0)
    wait_idle(widget, qtbot)
    assert len(viewer.layers) == n_layers + 2
    np.testing.assert_array_equal(viewer.layers["scan pattern raw"].data, data[0, 0])
    np.testing.assert_array_equal(viewer.layers["scan"].data, data)  # input untouched


def test_region_run_adds_the_denoised_stack_virtual_images_and_residuals(dock, qtbot, monkeypatch):
    from napari_emdenoise._widgets import stem4d

    viewer, widget, data = dock
    monkeypatch.setattr(stem4d, "IN_MEMORY_BYTES", 0)  # as for a large scan: into a zarr store
    widget.whole_scan.value = False
    widget.region.value = "2:6,3:9"
    assert widget.selected_region() == (slice(2, 6), slice(3, 9))
    n_layers = len(viewer.layers)
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert widget.last_error == ""
    assert len(viewer.layers) == n_layers + 7  # stack + 3 per detector
    np.testing.assert_array_equal(viewer.layers["scan"].data, data)  # input untouched
    den = viewer.layers["scan denoised"]
    assert den.data.shape == (4, 6, 32, 32)
    assert type(den.data).__module__.startswith("zarr")  # not held in memory
    assert tuple(den.scale) == SCALE
    # the region sits where it was taken from
    assert tuple(den.translate) == pytest.approx((10.0 + 2 * 5.0, -20.0 + 3 * 5.0, 0.0, 0.0))
    assert den.metadata["k"] == 1 and den.metadata["emdenoise_region"] == [[2, 6], [3, 9]]
    mask = widget.detectors["BF"].mask((32, 32))
    for name in ("scan virtual BF", "scan denoised virtual BF", "scan virtual BF residual"):
        layer = viewer.layers[name]
        assert layer.data.shape == (4, 6)
        assert tuple(layer.scale) == SCALE[:2]
        assert tuple(layer.translate) == pytest.approx((20.0, -5.0))
        assert [str(u) for u in layer.units] == ["angstrom", "angstrom"]
    raw_bf = viewer.layers["scan virtual BF"].data
    den_bf = viewer.layers["scan denoised virtual BF"].data
    np.testing.assert_allclose(raw_bf, vd.apply_mask(data[2:6, 3:9], mask), rtol=1e-5)
    np.testing.assert_allclose(den_bf, vd.apply_mask(np.asarray(den.data), mask), rtol=1e-5)
    np.testing.assert_allclose(
        viewer.layers["scan virtual BF residual"].data,
        (den_bf - raw_bf) / np.sqrt(np.maximum(den_bf, 1.0)),
        rtol=1e-4,
        atol=1e-5,
    )
    for name in ("scan virtual ADF", "scan denoised virtual ADF", "scan virtual ADF residual"):
        assert viewer.layers[name].data.shape == (4, 6)
    # the dock shows raw | denoised | residual; outputs are not offered as inputs
    np.testing.assert_allclose(widget.view.results["raw"].image, raw_bf, rtol=1e-6)
    assert "scan denoised" not in widget.layer.choices
    assert widget.progress.value == widget.progress.max


def test_cancel_stops_the_run_and_leaves_the_input(dock, qtbot):
    viewer, widget, _ = dock
    big = _stack(scan=(40, 40), seed=1)
    viewer.add_image(big.copy(), name="big scan", scale=SCALE)
    widget.layer.value = "big scan"
    qtbot.waitUntil(lambda: not widget.busy and widget.source["name"] == "big scan", timeout=30000)
    n_layers = len(viewer.layers)
    widget.start()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert widget.status.value.startswith("cancelled")
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(viewer.layers["big scan"].data, big)
    assert widget.run_button.enabled


def test_bad_input_gives_a_clear_message(dock, qtbot):
    viewer, widget, data = dock
    n_layers = len(viewer.layers)
    viewer.add_image(data[0], name="frames")  # 3-D: not a 4D-STEM data set
    widget.layer.value = "frames"
    assert "3 dimensions" in widget.status.value and "det_y" in widget.status.value
    widget.start()
    assert "3 dimensions" in widget.last_error
    widget.preview_at(0, 0)  # nothing to preview: no error, no layer

    bad = data.copy()
    bad[1, 2, 5, 5] = np.nan
    viewer.add_image(bad, name="broken", scale=SCALE)
    widget.layer.value = "broken"
    wait_idle(widget, qtbot)
    assert "NaN" in widget.status.value and "(1, 2)" in widget.status.value
    widget.start()
    assert "NaN" in widget.last_error
    assert len(viewer.layers) == n_layers + 2  # only the two layers added here

    for name in ("frames", "broken", "scan"):
        viewer.layers.remove(name)
    assert "no image layer" in widget.status.value


def test_detector_ellipses_stay_above_the_previewed_patterns(dock, qtbot):
    viewer, widget, _ = dock
    widget.preview_at(1, 2)
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=30000)
    names = [layer.name for layer in viewer.layers]
    assert names[-1].endswith("detectors"), names  # drawn last: on top of the patterns


def test_local_counts_setting_reaches_the_engine(dock, qtbot):
    from napari_emdenoise import restore_4dstem

    viewer, widget, data = dock
    got = {}
    for sigma in (0.0, 1.0):
        widget.local_counts.value = sigma
        widget.preview = None
        widget.preview_at(2, 3)
        qtbot.waitUntil(lambda: bool(widget.preview), timeout=30000)
        got[sigma] = widget.preview["denoised"]
    region = (slice(2, 3), slice(3, 4))
    for sigma, engine_sigma in ((0.0, None), (1.0, 1.0)):
        want = restore_4dstem(
            data, model=widget.model_override, region=region, local_counts_sigma=engine_sigma
        )[0, 0]
        np.testing.assert_allclose(got[sigma], want, rtol=1e-5, atol=1e-4)
    assert not np.allclose(got[0.0], got[1.0])


def test_local_count_passes_reach_the_engine(dock, qtbot):
    from napari_emdenoise import restore_4dstem

    viewer, widget, data = dock
    assert widget.local_passes.value == LOCAL_COUNTS_PASSES
    widget.local_counts.value = 0.0  # no correction: its passes mean nothing
    assert not widget.local_passes.enabled
    widget.local_counts.value = 1.0
    assert widget.local_passes.enabled
    widget.local_passes.value = 1
    widget.preview = None
    widget.preview_at(2, 3)
    qtbot.waitUntil(lambda: bool(widget.preview), timeout=30000)
    want = restore_4dstem(
        data,
        model=widget.model_override,
        region=(slice(2, 3), slice(3, 4)),
        local_counts_sigma=1.0,
        local_counts_passes=1,
    )[0, 0]
    np.testing.assert_allclose(widget.preview["denoised"], want, rtol=1e-5, atol=1e-4)
    widget.whole_scan.value = False
    widget.region.value = "1:3,2:5"
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert widget.last_error == ""
    layer = viewer.layers["scan denoised"]
    assert layer.metadata["emdenoise_local_counts_passes"] == 1
    full = restore_4dstem(
        data, model=widget.model_override, region="1:3,2:5", local_counts_sigma=1.0,
        local_counts_passes=1,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(layer.data), full, rtol=1e-5, atol=1e-4)


def test_neighbour_pooling_setting_reaches_the_engine(dock, qtbot):
    from napari_emdenoise import restore_4dstem

    viewer, widget, data = dock
    widget.whole_scan.value = False
    widget.region.value = "1:5,2:7"
    got = {}
    for pooled in (False, True):
        widget.neighbours.value = pooled
        widget.start()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
        assert widget.last_error == ""
        layer = viewer.layers["scan denoised"]
        assert layer.metadata["emdenoise_neighbour_residuals"] is pooled
        assert layer.metadata["emdenoise_local_counts_sigma_px"] == widget.local_counts.value
        assert layer.metadata["emdenoise_local_counts_passes"] == LOCAL_COUNTS_PASSES
        said = layer.metadata["emdenoise_pooling"]
        assert said in widget.status.value
        assert ("window" in said or "none added" in said) if pooled else "on its own" in said
        got[pooled] = np.asarray(layer.data)
        viewer.layers.remove(layer)
        for name in [
            n.name for n in viewer.layers if n.name.startswith("scan ") and "virtual" in n.name
        ]:
            viewer.layers.remove(name)
    for pooled in (False, True):
        want = restore_4dstem(
            data, model=widget.model_override, region="1:5,2:7", neighbour_residuals=pooled
        )
        np.testing.assert_allclose(got[pooled], want, rtol=1e-5, atol=1e-4)
    assert np.abs(got[True] - got[False]).max() > 1e-3  # the stage did something here


def test_run_state_drives_the_buttons_through_run_cancel_and_close(dock, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget, data = dock

    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)
    widget.cancel()  # nothing to cancel: no state change
    assert widget.state is RunState.IDLE
    viewer.add_image(data[0], name="frames")  # 3-D: not a 4D-STEM data set
    widget.layer.value = "frames"
    widget.start()  # refused before any run: still idle, Denoise enabled
    assert "3 dimensions" in widget.last_error
    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)

    widget.layer.value = "scan"
    wait_idle(widget, qtbot)  # the survey is not a run: the state stays idle
    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)
    widget.whole_scan.value = False
    widget.region.value = "2:4,3:5"
    widget.start()
    assert widget.state is RunState.RUNNING and run_buttons(widget) == (False, True)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert widget.last_error == ""
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)
    widget.preview_at(0, 0)  # nor is a preview
    wait_idle(widget, qtbot)
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)

    big = _stack(scan=(40, 40), seed=1)
    viewer.add_image(big, name="big scan", scale=SCALE)
    widget.layer.value = "big scan"
    qtbot.waitUntil(lambda: not widget.busy and widget.source["name"] == "big scan", timeout=30000)
    widget.whole_scan.value = True
    check_cancel_then_close(viewer, widget, qtbot, timeout_ms=60000)
