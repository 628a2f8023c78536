"""The Drift correction dock widget, opened from the Plugins menu in a real viewer."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import check_cancel_then_close, run_buttons

from napari_emdenoise.drift import synthetic

DISPLAY_NAME = "Drift correction"


@pytest.fixture
def drift_dock(make_napari_viewer, open_dock):
    viewer = make_napari_viewer()
    frames, shifts, _ = synthetic.drifting_movie(
        8,
        (64, 64),
        np.random.default_rng(2),
        content="particles",
        modality="tem",
        dose=100.0,
        step=1.5,
    )
    viewer.add_image(
        frames,
        name="movie",
        scale=(2.0, 0.5, 0.5),
        translate=(0.0, 10.0, -4.0),
        units=("s", "nm", "nm"),
    )
    widget = open_dock(viewer, DISPLAY_NAME)
    return viewer, widget, frames, shifts


def run(widget, qtbot):
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120000)


def test_widget_aligns_the_stack_and_exports_the_table(drift_dock, qtbot, tmp_path):
    viewer, widget, frames, truth = drift_dock
    assert widget.layer.value == "movie"
    widget.method.value = "ncc"
    widget.reference.value = "previous"
    widget.denoise.value = False
    assert not widget.denoiser.enabled
    n_layers = len(viewer.layers)
    run(widget, qtbot)
    assert widget.last_error == ""
    assert len(viewer.layers) == n_layers + 2  # new layers only
    np.testing.assert_array_equal(viewer.layers["movie"].data, frames)  # input untouched
    aligned = viewer.layers["movie aligned"]
    assert aligned.data.shape == frames.shape
    assert tuple(aligned.scale) == (2.0, 0.5, 0.5)
    assert tuple(aligned.translate) == (0.0, 10.0, -4.0)
    track = viewer.layers["movie drift"]
    assert track.data.shape == (8, 4) and tuple(track.scale) == (2.0, 0.5, 0.5)
    shifts = np.array([[r["dy_px"], r["dx_px"]] for r in widget.table])
    assert np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1))) < 0.4
    # the track shows where a fixed specimen point sits: centre minus the shift
    np.testing.assert_allclose(track.data[:, 2:], 31.5 - shifts, atol=1e-9)
    # the plot has both curves and their uncertainty bands
    for name in ("dy", "dx", "dy band", "dx band"):
        assert name in widget.plot.items
    x, y = widget.plot.items["dx"].getData()
    np.testing.assert_allclose(y, shifts[:, 1])
    assert widget.plot.save_button.isEnabled()
    path = widget.save_csv(tmp_path / "drift.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {"frame", "dy_px", "dx_px", "sigma_y_px", "sigma_x_px", "dy_nm", "dx_nm"} <= set(rows[0])
    assert float(rows[3]["dx_nm"]) == pytest.approx(0.5 * float(rows[3]["dx_px"]))
    assert widget.progress.value == widget.progress.max
    # outputs are not offered as inputs
    assert "movie aligned" not in widget.layer.choices


def test_widget_default_cnn_with_denoising(drift_dock, qtbot):
    viewer, widget, frames, truth = drift_dock
    assert widget.method.value == "cnn" and widget.denoise.value
    widget.denoiser.value = "lrtem"
    run(widget, qtbot)
    assert widget.last_error == ""
    shifts = widget.info.shifts
    assert np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1))) < 0.4
    assert (widget.info.sigma[1:] > 0).all()


def test_widget_cancel_adds_no_layer(drift_dock, qtbot):
    viewer, widget, frames, _ = drift_dock
    viewer.add_image(np.concatenate([frames] * 12), name="long movie")  # long enough to cancel
    widget.layer.value = "long movie"
    widget.denoise.value = False
    n_layers = len(viewer.layers)
    widget.start()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120000)
    assert len(viewer.layers) == n_layers
    assert widget.status.value.startswith("cancelled")


def test_widget_bad_input_shows_the_error(drift_dock, qtbot):
    viewer, widget, frames, _ = drift_dock
    bad = frames.copy()
    bad[2, 5, 5] = np.nan
    viewer.add_image(bad, name="broken")
    widget.layer.value = "broken"
    widget.denoise.value = False
    n_layers = len(viewer.layers)
    run(widget, qtbot)
    assert "NaN" in widget.last_error
    assert len(viewer.layers) == n_layers


def test_drifting_movie_sample_opens_and_aligns_to_its_true_drift(make_napari_viewer):
    from napari_emdenoise._sample_data import MOVIE_NAME, MOVIE_PIXEL_NM
    from napari_emdenoise.drift import align_stack

    viewer = make_napari_viewer()
    viewer.open_sample("napari-emdenoise", "drifting_movie")
    layer = viewer.layers[MOVIE_NAME]
    assert layer.data.shape == (30, 256, 256)
    assert tuple(layer.scale) == pytest.approx((1.0, MOVIE_PIXEL_NM, MOVIE_PIXEL_NM))
    truth = np.asarray(layer.metadata["drift_true_shifts_px"])
    assert truth.shape == (30, 2) and np.ptp(truth, axis=0).min() > 3.0  # it does drift
    _aligned, shifts = align_stack(layer.data[:10], method="ncc", denoise=False)
    assert np.sqrt(np.mean(np.sum((shifts - truth[:10]) ** 2, axis=1))) < 0.5


def test_run_state_drives_the_buttons_through_run_error_cancel_and_close(drift_dock, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget, frames, _ = drift_dock
    widget.method.value = "ncc"
    widget.denoise.value = False

    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)
    widget.cancel()  # nothing to cancel: no state change
    assert widget.state is RunState.IDLE
    viewer.layers.remove("movie")
    widget.start()  # refused before any run (no frame stack): still idle, Align enabled
    assert "no (frames, y, x)" in widget.last_error
    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)

    viewer.add_image(frames, name="movie")
    widget.start()
    assert widget.state is RunState.RUNNING and run_buttons(widget) == (False, True)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120000)
    assert widget.last_error == ""
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)

    bad = frames.copy()
    bad[2, 5, 5] = np.nan
    viewer.add_image(bad, name="broken")
    widget.layer.value = "broken"
    run(widget, qtbot)  # an error in the run ends it like any other
    assert "NaN" in widget.last_error
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)

    viewer.add_image(np.concatenate([frames] * 12), name="long movie")  # long enough to cancel
    widget.layer.value = "long movie"
    check_cancel_then_close(viewer, widget, qtbot, timeout_ms=120000)


def test_widget_fast_scan_axis_reaches_the_engine(drift_dock, qtbot):
    from napari_emdenoise.drift import align_stack

    viewer, widget, frames, _ = drift_dock
    widget.method.value = "ncc"
    widget.denoiser.value = "lrstem"
    widget.fast_scan_axis.value = "y"
    run(widget, qtbot)
    assert widget.last_error == ""
    _, expected = align_stack(frames, method="ncc", denoise="lrstem", fast_scan_axis="y")
    np.testing.assert_allclose(widget.info.shifts, expected, atol=1e-6)
    _, plain = align_stack(frames, method="ncc", denoise="lrstem")
    assert not np.allclose(plain, expected, atol=1e-6)  # the choice changes the denoising
    widget.denoise.value = False
    assert not widget.fast_scan_axis.enabled  # only the denoiser cares


def test_widget_frames_per_group_and_largest_shift_reach_the_engine(drift_dock, qtbot):
    from napari_emdenoise.drift import align_stack

    viewer, widget, frames, _ = drift_dock
    widget.method.value = "ncc"
    widget.denoise.value = False
    widget.group.value = 3
    widget.max_shift.value = 6.0
    run(widget, qtbot)
    assert widget.last_error == ""
    _, expected = align_stack(frames, method="ncc", denoise=False, group=3, max_shift=6.0)
    np.testing.assert_allclose(widget.info.shifts, expected, atol=1e-6)
    meta = viewer.layers["movie aligned"].metadata
    assert meta["drift_frames_per_group"] == 3 and meta["drift_max_shift_px"] == 6.0
    assert "groups of 3 frames" in widget.status.value
    viewer.layers.remove("movie aligned")
    widget.group.value = 8  # as many as the movie has frames: a clear error, no layer
    run(widget, qtbot)
    assert "use at most 7" in widget.last_error and "movie aligned" not in viewer.layers
