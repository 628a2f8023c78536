"""The noise-model playground in a real napari viewer, opened from the Plugins menu."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.noise.pipeline import NoiseParams, distort, layers_for
from napari_emdenoise.simulate import simulation_rngs


def _wait_next(widget, qtbot, n):
    qtbot.waitUntil(lambda: widget.n_updates > n and widget._worker is None, timeout=60000)


def test_ten_updates_leave_the_layer_count_unchanged(playground):
    viewer, widget, qtbot = playground
    widget.show_diffs.value = True  # the Δ layers too
    _wait_next(widget, qtbot, widget.n_updates - 1)
    qtbot.waitUntil(lambda: widget._worker is None and not widget._pending, timeout=60000)
    names = sorted(layer.name for layer in viewer.layers)
    assert len(widget.layers) == len(names) > 4
    for _ in range(10):
        n = widget.n_updates
        widget.request_update(force=True)
        _wait_next(widget, qtbot, n)
    assert sorted(layer.name for layer in viewer.layers) == names
    assert not any(name.endswith("]") for name in names)  # napari's "[2]" duplicate suffix
    # the playground's own layers are never offered as inputs
    assert widget.source.choices == ("synthetic",) and widget.fit_layer.choices == (None,)


def test_every_parameter_has_an_editor(playground):
    viewer, widget, _ = playground
    for layer in layers_for("stem"):
        form = widget.forms[layer.name]
        assert set(form.editors) == set(layer.params_type().to_dict()) - {"enabled"}


def test_shows_clean_distorted_and_one_layer_per_stage(playground):
    viewer, widget, qtbot = playground
    names = [layer.name for layer in viewer.layers]
    assert "playground clean" in names and "playground distorted" in names
    enabled = [l.name for l in layers_for("stem") if widget.params[l.name].enabled]
    stage_layers = [n for n in names if n.startswith("playground ") and n[11:13].isdigit()]
    assert len(stage_layers) == len(enabled)
    # the distorted layer is exactly what the headless pipeline computes
    clean = viewer.layers["playground clean"].data
    expected = distort(clean, "stem", widget.params, rng=simulation_rngs(0)[2])
    np.testing.assert_array_equal(viewer.layers["playground distorted"].data, expected)


def test_moving_a_slider_updates_the_result_live(playground):
    viewer, widget, qtbot = playground
    before = viewer.layers["playground distorted"].data.copy()
    n = widget.n_updates
    form = widget.forms["detector_noise"]
    editor = form.editors["dose"]
    editor.value = editor.min  # lowest dose: much noisier
    _wait_next(widget, qtbot, n)
    after = viewer.layers["playground distorted"].data
    clean = viewer.layers["playground clean"].data
    assert np.std(after - clean) > np.std(before - clean)


def test_switching_a_layer_off_removes_its_stage_and_diff_layers(playground):
    viewer, widget, qtbot = playground
    n = widget.n_updates
    widget.show_diffs.value = True
    _wait_next(widget, qtbot, n)
    assert any("Δ" in layer.name and "detector_noise" in layer.name for layer in viewer.layers)
    n = widget.n_updates
    widget.forms["detector_noise"].enabled_box.value = False
    _wait_next(widget, qtbot, n)
    assert not any("detector_noise" in layer.name for layer in viewer.layers)


def test_image_layer_as_clean_input_keeps_scale_and_is_not_modified(playground):
    viewer, widget, qtbot = playground
    data = (np.random.default_rng(0).random((40, 50)) * 1000).astype(np.uint16)
    original = data.copy()
    viewer.add_image(data, name="my micrograph", scale=(0.5, 0.5))
    n = widget.n_updates
    widget.source.value = "my micrograph"
    _wait_next(widget, qtbot, n)
    out = viewer.layers["playground distorted"]
    assert out.data.shape == (40, 50)
    assert tuple(out.scale) == (0.5, 0.5)
    np.testing.assert_array_equal(viewer.layers["my micrograph"].data, original)


def test_modality_switch_and_settings_round_trip(playground, tmp_path):
    viewer, widget, qtbot = playground
    n = widget.n_updates
    widget.modality.value = "tem"
    _wait_next(widget, qtbot, n)
    assert set(widget.forms) == {l.name for l in layers_for("tem")}
    widget.randomise()
    path = widget.save_settings(tmp_path / "settings.json")
    saved = NoiseParams.load(path)
    assert saved.to_dict() == widget.params.to_dict()
    widget.set_params(NoiseParams.default("tem"))
    assert widget.params.to_dict() == NoiseParams.default("tem").to_dict()
    widget.load_settings(path)
    assert widget.params.to_dict() == saved.to_dict()


def test_bad_settings_file_shows_an_error_not_a_crash(playground, tmp_path):
    viewer, widget, qtbot = playground
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError):
        widget.load_settings(bad)


def test_a_user_layer_with_a_playground_name_is_never_touched_nor_duplicated(playground):
    viewer, widget, qtbot = playground
    # the user removes the playground's layer and adds their own under its name
    viewer.layers.remove("playground distorted")
    mine = np.arange(12.0).reshape(3, 4)
    viewer.add_image(mine, name="playground distorted")
    for _ in range(2):  # every update replaces the data of the one suffixed layer
        n = widget.n_updates
        widget.request_update(force=True)
        _wait_next(widget, qtbot, n)
    names = [layer.name for layer in viewer.layers]
    assert names.count("playground distorted") == 1
    assert names.count("playground distorted (playground)") == 1
    assert not any(name.startswith("playground distorted (playground) ") for name in names)
    np.testing.assert_array_equal(viewer.layers["playground distorted"].data, mine)
    assert "playground distorted" in widget.source.choices  # still usable as a clean input
