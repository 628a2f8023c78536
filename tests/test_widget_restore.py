"""The Restore dock widget in a real napari viewer, opened from the Plugins menu."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_buttons


@pytest.fixture
def restore_widget(make_napari_viewer, open_dock, tiny_user_model):
    viewer = make_napari_viewer()
    data = (np.random.default_rng(0).random((37, 52)) * 4000).astype(np.uint16)
    viewer.add_image(
        data, name="micrograph", scale=(0.25, 0.25), translate=(3.0, 4.0), units=("nm", "nm")
    )
    widget = open_dock(viewer, "Restore")
    assert tiny_user_model in widget.model.choices  # user models are listed next to bundled ones
    widget.model.value = tiny_user_model
    return viewer, widget, data


def _wait(widget, qtbot):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60000)


def test_restore_adds_a_layer_with_the_input_geometry_and_leaves_input_alone(restore_widget, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = restore_widget
    original = data.copy()
    widget.residual.value = True
    widget.layer.value = "micrograph"
    widget.start()
    _wait(widget, qtbot)
    assert widget.last_error == ""
    out = viewer.layers["micrograph restored"]
    assert out.data.shape == data.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == (0.25, 0.25) and tuple(out.translate) == (3.0, 4.0)
    np.testing.assert_allclose(
        out.data, restore(data, model=widget.model.value), rtol=1e-5, atol=1e-3
    )
    residual = viewer.layers["micrograph residual"]
    np.testing.assert_allclose(residual.data, data.astype(np.float32) - out.data, atol=1e-3)
    np.testing.assert_array_equal(viewer.layers["micrograph"].data, original)
    assert widget.progress.value == widget.progress.max
    # the units travel with the result: napari does not warn about inconsistent units
    for layer in (out, residual):
        assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    assert out.metadata["emdenoise_model"] == widget.model.value


def test_safeguard_checkbox_reaches_the_engine(restore_widget, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, _ = restore_widget
    data = (np.random.default_rng(2).poisson(50.0, (96, 96))).astype(np.float32)
    viewer.add_image(data, name="flat")
    widget.layer.value = "flat"
    widget.safeguard.value = True
    widget.refine.value = False  # the network alone, so the blend has work to do
    widget.start()
    _wait(widget, qtbot)
    assert widget.last_error == ""
    out = viewer.layers["flat restored"].data
    expected = restore(data, model=widget.model.value, safeguard=True, refine=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    plain = restore(data, model=widget.model.value, refine=False)
    assert not np.allclose(expected, plain, atol=1e-3)
    # what the safeguard kept is shown and recorded with the result
    reports = []
    restore(
        data, model=widget.model.value, safeguard=True, refine=False,
        safeguard_report=lambda i, r: reports.append(list(r.band_weights)),
    )  # fmt: skip
    layer = viewer.layers["flat restored"]
    assert layer.metadata["emdenoise_safeguard_band_weights"] == reports
    assert "safeguard kept" in widget.status.value


def test_wiener_refinement_checkbox_reaches_the_engine(restore_widget, qtbot):
    """On by default; unticked, the layer is the network's output alone. Both are recorded."""
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = restore_widget
    widget.layer.value = "micrograph"
    assert widget.refine.value is True
    widget.start()
    _wait(widget, qtbot)
    refined = viewer.layers["micrograph restored"]
    expected = restore(data, model=widget.model.value)
    np.testing.assert_allclose(refined.data, expected, rtol=1e-5, atol=1e-3)
    assert refined.metadata["emdenoise_wiener_refinement"] is True
    assert refined.metadata["emdenoise_lattice_pass"] is True
    assert widget.status.value.endswith("+ Wiener refinement + lattice pass")
    viewer.layers.remove(refined)
    widget.refine.value = False
    widget.start()
    _wait(widget, qtbot)
    plain = viewer.layers["micrograph restored"]
    np.testing.assert_allclose(
        plain.data, restore(data, model=widget.model.value, refine=False), rtol=1e-5, atol=1e-3
    )
    assert plain.metadata["emdenoise_wiener_refinement"] is False
    assert plain.metadata["emdenoise_lattice_pass"] is False  # needs the refinement
    assert not widget.lattice.enabled
    assert "Wiener" not in widget.status.value and "lattice" not in widget.status.value
    assert not np.allclose(plain.data, refined.data, atol=1e-3)


def test_lattice_pass_checkbox_reaches_the_engine(restore_widget, qtbot, monkeypatch):
    """Ticked (default) the lattice pass runs, unticked the Wiener refinement alone; the
    layer's metadata say which. The pass is replaced by a marker, so the test does not
    depend on what the model erases."""
    from napari_emdenoise.engine import predictor

    viewer, widget, data = restore_widget
    widget.layer.value = "micrograph"
    wiener_only = predictor.restore(data, model=widget.model.value, lattice=False)
    # restore's steps run at unit scale: one unit there is the input's standard deviation
    monkeypatch.setattr(predictor, "restore_lattice", lambda image, restored: restored + 10.0)
    assert widget.lattice.value is True and widget.lattice.enabled
    widget.start()
    _wait(widget, qtbot)
    layer = viewer.layers["micrograph restored"]
    marked = wiener_only + 10.0 * np.asarray(data).std(dtype=np.float64)
    np.testing.assert_allclose(layer.data, marked, rtol=1e-5, atol=1e-2)
    assert layer.metadata["emdenoise_lattice_pass"] is True
    viewer.layers.remove(layer)
    widget.lattice.value = False
    widget.start()
    _wait(widget, qtbot)
    layer = viewer.layers["micrograph restored"]
    np.testing.assert_allclose(layer.data, wiener_only, rtol=1e-5, atol=1e-3)
    assert layer.metadata["emdenoise_wiener_refinement"] is True
    assert layer.metadata["emdenoise_lattice_pass"] is False
    assert widget.status.value.endswith("+ Wiener refinement")


def test_keep_defects_checkbox_reaches_the_engine(restore_widget, qtbot, monkeypatch):
    """Off by default; ticked, the keep-defects pass runs last (replaced here by a marker,
    so the test does not depend on what the image holds) and the layer records it."""
    from napari_emdenoise.engine import predictor

    viewer, widget, data = restore_widget
    widget.layer.value = "micrograph"
    default = predictor.restore(data, model=widget.model.value)
    # restore's steps run at unit scale: one unit there is the input's standard deviation
    monkeypatch.setattr(predictor, "restore_deviations", lambda image, restored: restored - 5.0)
    assert widget.keep_defects.value is False
    widget.start()
    _wait(widget, qtbot)
    layer = viewer.layers["micrograph restored"]
    np.testing.assert_allclose(layer.data, default, rtol=1e-5, atol=1e-3)
    assert layer.metadata["emdenoise_keep_defects"] is False
    viewer.layers.remove(layer)
    widget.keep_defects.value = True
    widget.start()
    _wait(widget, qtbot)
    layer = viewer.layers["micrograph restored"]
    marked = default - 5.0 * np.asarray(data).std(dtype=np.float64)
    np.testing.assert_allclose(layer.data, marked, rtol=1e-5, atol=1e-2)
    assert layer.metadata["emdenoise_keep_defects"] is True
    assert widget.status.value.endswith("+ lattice pass + keep defects")


def test_the_dock_says_when_the_lattice_pass_rebuilt_the_image(restore_widget, qtbot):
    """Sharp columns every 4 px: the bundled HAADF network erases the lattice and the
    lattice pass rebuilds it; the status line says so and points to 'keep defects',
    and the layer records each frame's share."""
    from napari_emdenoise.evaluation import defect_probe

    viewer, widget, _ = restore_widget
    p = defect_probe(np.random.default_rng(3), size=128, spacing=4.0, width=0.7, dose=20.0)
    viewer.add_image(p.noisy, name="sharp lattice")
    widget.layer.value = "sharp lattice"
    widget.model.value = "hrstem"
    widget.start()
    _wait(widget, qtbot)
    layer = viewer.layers["sharp lattice restored"]
    assert layer.metadata["emdenoise_lattice_share"][0] > 0.5
    assert "Tick 'keep defects'" in widget.status.value
    viewer.layers.remove(layer)
    widget.keep_defects.value = True  # asked for: no advice
    widget.start()
    _wait(widget, qtbot)
    assert "Tick 'keep defects'" not in widget.status.value
    assert widget.status.value.endswith("+ keep defects")


def test_self_ensemble_choice_reaches_the_engine(restore_widget, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, data = restore_widget
    widget.layer.value = "micrograph"
    widget.ensemble.value = 8
    widget.start()
    _wait(widget, qtbot)
    assert widget.last_error == ""
    layer = viewer.layers["micrograph restored"]
    expected = restore(data, model=widget.model.value, ensemble=8)
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-3)
    assert not np.allclose(expected, restore(data, model=widget.model.value), atol=1e-3)
    assert layer.metadata["emdenoise_ensemble"] == 8
    assert "mean of 8 flips/rotations" in widget.status.value


def test_a_model_change_during_the_run_is_not_recorded(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    used = widget.model.value
    other = next(name for name in widget.model.choices if name != used)
    widget.layer.value = "micrograph"
    widget.start()
    widget.model.value = other  # the user looks at another model's card meanwhile
    _wait(widget, qtbot)
    out = viewer.layers["micrograph restored"]
    assert out.metadata["emdenoise_model"] == used
    assert widget.status.value == (
        f"micrograph restored with {used} + Wiener refinement + lattice pass"
    )


def test_default_input_is_the_selected_or_visible_layer(make_napari_viewer, open_dock):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.float32), name="clean reference", visible=False)
    viewer.add_image(np.ones((16, 16), np.float32), name="distorted")
    viewer.add_image(np.ones((16, 16, 3), np.uint8), name="photo", rgb=True)
    widget = open_dock(viewer, "Restore")
    assert widget.layer.value == "distorted"  # not the hidden reference, not the RGB photo
    viewer.layers.selection.active = viewer.layers["clean reference"]
    assert widget.layer.value == "clean reference"  # selecting a layer makes it the input


def test_rgb_input_is_refused_with_a_message(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    viewer.add_image(np.zeros((32, 40, 3), np.uint8), name="screenshot", rgb=True)
    widget.layer.value = "screenshot"
    n_layers = len(viewer.layers)
    widget.start()
    assert "RGB" in widget.last_error and widget.status.value.startswith("⚠")
    assert widget._worker is None and len(viewer.layers) == n_layers


def test_bad_input_shows_an_error_and_adds_nothing(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    bad = np.ones((20, 20), np.float32)
    bad[3, 4] = np.nan
    viewer.add_image(bad, name="broken")
    widget.layer.value = "broken"
    n_layers = len(viewer.layers)
    widget.start()
    _wait(widget, qtbot)
    assert "NaN" in widget.last_error
    assert len(viewer.layers) == n_layers


def test_a_long_message_wraps_instead_of_widening_the_dock(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    before = widget.native.minimumSizeHint().width()
    widget._error("image contains NaN or infinite values; " * 20)
    qtbot.wait(50)
    assert widget.status.native.wordWrap()
    assert widget.native.minimumSizeHint().width() <= max(before, 400)


def test_cancel_adds_no_layer_and_resets_the_progress_bar(restore_widget, qtbot):
    viewer, widget, _ = restore_widget
    widget.layer.value = "micrograph"
    widget.progress.max, widget.progress.value = 10, 7  # stale value of an earlier run
    n_layers = len(viewer.layers)
    widget.cancel()  # set before start: the worker must still honour a fresh cancel
    widget.start()
    widget.cancel()
    _wait(widget, qtbot)
    assert len(viewer.layers) == n_layers
    assert widget.progress.value == 0 and widget.status.value.startswith("cancelled")


def test_a_stopped_training_run_is_listed_as_a_checkpoint(make_napari_viewer, open_dock, tmp_path):
    import json

    from napari_emdenoise.models.registry import install_model, list_models, load_model, save_model

    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Restore")
    source = next(iter(list_models().values()))
    # a user model whose card says the run was stopped (as the Train dock writes it)
    model, card = load_model(source.name)
    card.name = "halfway"
    card.training = {**(card.training or {}), "steps": 4, "stopped": True, "planned_steps": 2000}
    path = save_model(model, card, tmp_path)
    install_model(path)
    assert "halfway" in widget.model.choices
    labels = [widget.model.native.itemText(i) for i in range(widget.model.native.count())]
    assert "halfway (checkpoint)" in labels
    widget.model.value = "halfway"
    assert "stopped at step 4 of 2000" in widget.card.value
    assert json.loads(path.with_suffix(".json").read_text())["training"]["stopped"] is True


def test_card_text_counts_every_training_stage_of_a_bundled_model():
    from napari_emdenoise._widgets.restore import _card_text
    from napari_emdenoise.models import list_models

    cards = list_models()
    # 0.2 model + 3 fine-tunings
    assert "19500 steps in 4 stages" in _card_text(cards["hrstem"])
    assert sum(cards["hrstem"].training["stage_steps"]) == 19500
    assert cards["hrstem"].training["stage_steps"][-1] == cards["hrstem"].training["steps"]


def test_run_state_drives_the_buttons_through_run_error_cancel_and_close(restore_widget, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget, _ = restore_widget

    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)
    widget.cancel()  # nothing to cancel: no state change
    assert widget.state is RunState.IDLE
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="screenshot", rgb=True)
    widget.layer.value = "screenshot"
    widget.start()  # refused before any run: still idle, Restore enabled
    assert widget.state is RunState.IDLE and run_buttons(widget) == (True, False)

    widget.layer.value = "micrograph"
    widget.start()
    assert widget.state is RunState.RUNNING and run_buttons(widget) == (False, True)
    _wait(widget, qtbot)
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)

    widget.start()
    widget.cancel()
    assert widget.state is RunState.STOPPING and run_buttons(widget) == (False, True)
    _wait(widget, qtbot)
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)
    assert widget.status.value.startswith("cancelled")

    viewer.window.remove_dock_widget(widget.native.parent())
    assert widget.state is RunState.CLOSED
    widget._show_running(False)  # a late end of run does not revive a closed dock
    assert widget.state is RunState.CLOSED


def test_fast_scan_axis_choice_reaches_the_engine_and_a_mismatch_is_shown(restore_widget, qtbot):
    from napari_emdenoise.engine.predictor import restore

    viewer, widget, _ = restore_widget
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 30.0, (80, 64))  # spread along the columns: scanned along y
    data = (1000.0 + noise + 0.6 * np.roll(noise, 1, axis=0)).astype(np.float32)
    viewer.add_image(data, name="scan")
    widget.layer.value = "scan"
    widget.start()
    _wait(widget, qtbot)
    assert widget.last_error == ""
    assert "Set 'fast-scan axis' to y" in widget.status.value
    widget.fast_scan_axis.value = "y"
    widget.start()
    _wait(widget, qtbot)
    assert widget.last_error == "" and "fast-scan axis" not in widget.status.value
    layer = widget.outputs[0]  # the second run's layer
    expected = restore(data, model=widget.model.value, fast_scan_axis="y")
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-3)
    assert layer.metadata["emdenoise_fast_scan_axis"] == "y"
