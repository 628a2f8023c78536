"""The Restore dock widget in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def restore_widget(make_napari_viewer, tiny_user_model):
    from napari_emdenoise._widgets.restore import RestoreWidget

    viewer = make_napari_viewer()
    data = (np.random.default_rng(0).random((37, 52)) * 4000).astype(np.uint16)
    viewer.add_image(data, name="micrograph", scale=(0.25, 0.25), translate=(3.0, 4.0))
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert tiny_user_model in widget.model.choices  # user models are listed next to bundled ones
    widget.model.value = tiny_user_model
    return viewer, widget, data


def test_restore_adds_a_layer_with_the_input_geometry_and_leaves_input_alone(restore_widget, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = restore_widget
    original = data.copy()
    widget.residual.value = True
    widget.layer.value = "micrograph"
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert widget.last_error == ""
    out = viewer.layers["micrograph restored"]
    assert out.data.shape == data.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == (0.25, 0.25) and tuple(out.translate) == (3.0, 4.0)
    np.testing.assert_allclose(
        out.data, restore(data, model=widget.model.value), rtol=1e-5, atol=1e-3
    )
    residual = viewer.layers["micrograph residual"].data
    np.testing.assert_allclose(residual, data.astype(np.float32) - out.data, atol=1e-3)
    np.testing.assert_array_equal(viewer.layers["micrograph"].data, original)
    assert widget.progress.value == widget.progress.max


def test_bad_input_shows_an_error_and_adds_nothing(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    bad = np.ones((20, 20), np.float32)
    bad[3, 4] = np.nan
    viewer.add_image(bad, name="broken")
    widget.layer.value = "broken"
    n_layers = len(viewer.layers)
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert "NaN" in widget.last_error
    assert len(viewer.layers) == n_layers


def test_cancel_adds_no_layer(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    widget.layer.value = "micrograph"
    n_layers = len(viewer.layers)
    widget.cancel()  # set before start: the worker must still honour a fresh cancel
    widget.start()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)
    assert len(viewer.layers) == n_layers
