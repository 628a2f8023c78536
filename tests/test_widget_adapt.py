"""The Restore dock's "Adapt to this image" button in a real viewer (Plugins menu)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def adapt_dock(make_napari_viewer, open_dock, tiny_user_model):
    from napari_emdenoise.evaluation import lattice_probe

    viewer = make_napari_viewer()
    data = lattice_probe(np.random.default_rng(0), size=64, spacing=9.0, width=1.5).noisy
    viewer.add_image(data, name="micrograph", scale=(0.5, 0.5), translate=(2.0, 3.0))
    widget = open_dock(viewer, "Restore")
    widget.model.value = tiny_user_model
    widget.layer.value = "micrograph"
    return viewer, widget, data


def _wait(panel, qtbot, timeout=90000):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)


def test_adapt_button_selects_the_adapted_model_and_adds_the_comparison(adapt_dock, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = adapt_dock
    original = data.copy()
    panel = widget.adapt_panel
    panel.minutes.value = 5.0
    panel.max_steps = 25  # a few seconds, whatever the machine's load
    panel.anchor.value = 0.0
    panel.adapt_button.changed.emit(True)  # a click
    assert panel.busy and not widget.run_button.enabled
    _wait(panel, qtbot)
    assert panel.last_error == ""
    result = panel.result
    name = widget.model.value
    assert name != "tinytest" and name.startswith("tinytest-micrograph-")
    assert name in widget.cards  # saved as a user model and listed
    # the loss plot got the training and held-out curves, the preview was shown on the way
    assert "held-out" in panel.plot.series and "self-supervised" in panel.plot.series
    assert panel.previews_shown >= 1  # shown live (the parent's output first)
    assert "micrograph adapt preview" not in [layer.name for layer in viewer.layers]
    restored = viewer.layers["micrograph restored"]
    np.testing.assert_allclose(
        restored.data, restore(data, model=result.model, backend="torch"), rtol=1e-5, atol=1e-3
    )
    assert restored.metadata["emdenoise_model"] == name
    assert tuple(restored.scale) == (0.5, 0.5) and tuple(restored.translate) == (2.0, 3.0)
    parent = viewer.layers["micrograph restored [tinytest]"]
    np.testing.assert_allclose(
        parent.data, restore(data, model="tinytest", backend="torch"), rtol=1e-5, atol=1e-3
    )
    for suffix, layer in (("", restored), (" [tinytest]", parent)):
        residual = viewer.layers[f"micrograph residual{suffix}"].data
        np.testing.assert_allclose(residual, data.astype(np.float32) - layer.data, atol=1e-3)
    np.testing.assert_array_equal(viewer.layers["micrograph"].data, original)
    # the status says which of the two is estimated closer to the truth, from the noise alone
    assert result.noise_fit is not None
    status = panel.status.value
    assert "estimated RMS error: tinytest " in status and "adapted " in status
    assert "(chosen)" in status and "likely the closer to the truth" in status
    # side by side: napari's grid view
    assert panel.side_by_side.enabled
    panel.side_by_side.value = True
    assert panel.grid().enabled
    panel.side_by_side.value = False
    # a second adaptation updates the restored layer instead of adding another one
    n_layers = len(viewer.layers)
    widget.model.value = "tinytest"
    widget.layer.value = "micrograph"
    panel.start()
    _wait(panel, qtbot)
    assert panel.last_error == "" and len(viewer.layers) == n_layers


def test_cancel_keeps_the_best_state_and_bad_input_is_reported(adapt_dock, qtbot):
    viewer, widget, _ = adapt_dock
    panel = widget.adapt_panel
    panel.minutes.value = 10.0
    panel.start()
    qtbot.waitUntil(lambda: "held-out" in (panel.plot.series if panel.plot else {}), timeout=60000)
    panel.cancel_button.changed.emit(True)
    _wait(panel, qtbot)
    assert panel.last_error == ""
    assert panel.result.stopped == "cancelled" and panel.result.seconds < 60
    assert "cancelled" in panel.status.value
    # a tiny image is refused with a message, no traceback, no layer
    viewer.add_image(np.ones((8, 8), np.float32), name="tiny")
    widget.layer.value = "tiny"
    n_layers = len(viewer.layers)
    panel.start()
    _wait(panel, qtbot)
    assert "too small" in panel.last_error and panel.status.value.startswith("⚠")
    assert len(viewer.layers) == n_layers
    assert widget.run_button.enabled and panel.adapt_button.enabled


def test_closing_the_viewer_during_adaptation_stops_it_and_adds_no_layer(adapt_dock, qtbot):
    viewer, widget, _ = adapt_dock
    panel = widget.adapt_panel
    panel.minutes.value = 10.0
    panel.start()
    qtbot.waitUntil(lambda: "held-out" in (panel.plot.series if panel.plot else {}), timeout=60000)
    viewer.close()
    assert widget.host.closing and not widget.host.busy  # the worker has returned
    qtbot.wait(200)  # results queued after the close are ignored
    assert panel.outputs == [] and panel.result is None


def test_adapting_with_fast_scan_axis_y_works_on_the_transposed_frames(adapt_dock, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = adapt_dock
    tall = np.ascontiguousarray(data[:, :40])  # not square: a missed transposition shows
    viewer.add_image(tall, name="tall")
    widget.layer.value = "tall"
    widget.fast_scan_axis.value = "y"
    panel = widget.adapt_panel
    panel.max_steps = 10
    panel.anchor.value = 0.0
    panel.adapt_button.changed.emit(True)
    _wait(panel, qtbot)
    assert panel.last_error == ""
    restored = viewer.layers["tall restored"]
    assert restored.data.shape == tall.shape
    expected = restore(tall, model=panel.result.model, backend="torch", fast_scan_axis="y")
    np.testing.assert_allclose(restored.data, expected, rtol=1e-5, atol=1e-3)
    parent = viewer.layers["tall restored [tinytest]"]
    expected = restore(tall, model="tinytest", backend="torch", fast_scan_axis="y")
    np.testing.assert_allclose(parent.data, expected, rtol=1e-5, atol=1e-3)
    assert restored.metadata["emdenoise_fast_scan_axis"] == "y"
