"""The Train dock widget in a real napari viewer, opened from the Plugins menu: live losses,
stop, resume, pause, close, and scripts without a ``__main__`` guard."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

TIMEOUT_MS = 120_000


@pytest.fixture
def train_widget(make_napari_viewer, open_dock, tmp_path, monkeypatch):
    monkeypatch.setenv("EMDENOISE_MODELS_DIR", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Train")
    widget.model_name.value = "scope"
    widget.model_config.value = "tiny"
    widget.patch_size.value = 48
    widget.batch_size.value = 2
    widget.clean_pool.value = 4
    widget.workers.value = 0
    widget.weights["adversarial"].value = 0.0
    widget.val_every.value = 5
    widget.out_dir.value = str(tmp_path / "runs")
    yield viewer, widget
    widget.shutdown(timeout=60)


def _wait_done(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.running and widget._worker is None, timeout=TIMEOUT_MS)


def _start_long_run(widget, qtbot, n_steps: int) -> None:
    """Start a run far longer than the test and wait until ``n_steps`` steps arrived."""
    widget.steps.value = 100_000
    widget.checkpoint_every.value = 100_000
    widget.start()
    qtbot.waitUntil(lambda: widget.event_counts.get("StepEvent", 0) >= n_steps, timeout=TIMEOUT_MS)


def test_short_run_streams_losses_previews_and_lists_the_model(train_widget, qtbot, tmp_path):
    from napari_emdenoise._widgets.restore import RestoreWidget
    from napari_emdenoise._widgets.training import PREVIEW_LAYER
    from napari_emdenoise.models.registry import load_model

    viewer, widget = train_widget
    restore = viewer.window.add_plugin_dock_widget("napari-emdenoise", "Restore")[1]
    assert isinstance(restore, RestoreWidget)
    assert "scope" not in restore.model.choices
    widget.steps.value = 12
    widget.start()
    _wait_done(widget, qtbot)
    assert widget.last_error == ""
    assert widget.event_counts["StepEvent"] == 12
    assert widget.event_counts["DoneEvent"] == 1
    # every step's loss terms reached the plot, validation PSNR too
    assert widget.plot.series["l1"].n == 12
    np.testing.assert_array_equal(widget.plot.series["total"].x, np.arange(1, 13))
    assert widget.plot.validation["restored"].n == widget.event_counts["ValidationEvent"] >= 2
    qtbot.waitUntil(lambda: widget.plot.n_redraws > 0, timeout=5000)
    # preview layers show the current network on the fixed validation pair
    # one preview layer, updated in place at every validation (never one per validation)
    assert [layer.name for layer in viewer.layers].count(PREVIEW_LAYER) == 1
    assert not any(layer.name.startswith(PREVIEW_LAYER + " ") for layer in viewer.layers)
    montage = viewer.layers[PREVIEW_LAYER].data
    assert montage.shape == (48, 3 * 48 + 2 * 2) and np.isfinite(montage).all()
    restored = montage[:, -48:]
    assert restored.std() > 0  # the network's output, not the blank placeholder
    assert widget.progress.value == 12
    # the model is saved, installed and listed in the Restore widget at once
    assert "scope" in restore.model.choices
    model, card = load_model("scope")
    assert card.training["steps"] == 12 and "val_psnr" in card.metrics
    assert widget.onnx_button.enabled
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxscript"):
        onnx_path = widget.export_onnx(tmp_path / "scope.onnx")
        assert onnx_path.is_file() and onnx_path.with_suffix(".json").is_file()


def test_stop_leaves_a_loadable_checkpoint_and_resume_continues(train_widget, qtbot):
    from napari_emdenoise.training.checkpoints import load_checkpoint

    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 3)
    widget.stop()
    _wait_done(widget, qtbot)
    assert widget.result is not None and widget.result.stopped
    stopped_at = widget.result.step
    assert 3 <= stopped_at < 100_000
    state, config = load_checkpoint(widget.result.checkpoint)
    assert int(state["step"]) == stopped_at
    assert config["name"] == "scope"
    # the stopped run is listed in Restore as a checkpoint, not as a finished model
    from napari_emdenoise.models.registry import list_models

    card = list_models()["scope"]
    assert card.training["stopped"] and card.training["planned_steps"] == 100_000
    assert "checkpoint" in widget.status.value

    # resume: the first new step is the one after the stored step
    widget.steps.value = stopped_at + 4
    widget.event_counts.clear()
    widget.start()
    _wait_done(widget, qtbot)
    assert widget.event_counts["StepEvent"] == 4
    assert widget.plot.series["l1"].x[0] == stopped_at + 1
    assert widget.result.step == stopped_at + 4 and not widget.result.stopped


def test_pause_holds_the_run_and_checkpoint_now_writes_one(train_widget, qtbot):
    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 2)
    widget.toggle_pause()
    assert widget.pause_button.text == "Resume"
    # the step under way finishes, then the worker holds between steps
    qtbot.waitUntil(lambda: widget._worker.is_paused, timeout=TIMEOUT_MS)
    qtbot.wait(200)
    held = widget.event_counts["StepEvent"]
    qtbot.wait(2000)
    assert widget.event_counts["StepEvent"] == held
    widget.save_checkpoint()
    widget.toggle_pause()
    qtbot.waitUntil(lambda: widget.event_counts.get("CheckpointEvent", 0) >= 1, timeout=TIMEOUT_MS)
    assert widget.trainer.checkpoint_path.is_file()
    qtbot.waitUntil(lambda: widget.event_counts["StepEvent"] > held, timeout=TIMEOUT_MS)
    widget.stop()
    _wait_done(widget, qtbot)


def test_closing_the_widget_stops_training_and_keeps_the_checkpoint(train_widget, qtbot):
    from napari_emdenoise.training.checkpoints import load_checkpoint

    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 2)
    checkpoint = widget.trainer.checkpoint_path
    t0 = time.perf_counter()
    viewer.window.remove_dock_widget(widget.native)  # what the dock's close button does
    assert not widget.running  # closing waits until the run has ended
    assert time.perf_counter() - t0 < 60
    state, _ = load_checkpoint(checkpoint)
    assert int(state["step"]) >= 2


def test_closing_the_viewer_stops_training_and_keeps_the_checkpoint(train_widget, qtbot):
    from napari_emdenoise.training.checkpoints import load_checkpoint

    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 2)
    checkpoint = widget.trainer.checkpoint_path
    viewer.close()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    state, _ = load_checkpoint(checkpoint)
    assert int(state["step"]) >= 2


def test_preview_on_a_user_image_and_adversarial_terms(train_widget, qtbot):
    from napari_emdenoise._widgets.training import PREVIEW_LAYER, USER_PREVIEW_LAYER

    viewer, widget = train_widget
    image = np.random.default_rng(1).poisson(20.0, (300, 90)).astype(np.uint16)
    viewer.add_image(image, name="my micrograph", scale=(0.5, 0.5), units=("nm", "nm"))
    widget.preview_layer.value = "my micrograph"
    widget.weights["adversarial"].value = 5e-4
    widget.disc_channels.value = 8
    widget.steps.value = 3
    widget.val_every.value = 3
    widget.start()
    _wait_done(widget, qtbot)
    assert widget.last_error == ""
    preview = viewer.layers[USER_PREVIEW_LAYER].data
    assert preview.shape == (256, 90)  # centred crop of at most 256 px per side
    # ... shown on top of the crop it restores, in the image's units
    layer = viewer.layers[USER_PREVIEW_LAYER]
    assert tuple(layer.translate) == (11.0, 0.0) and tuple(layer.scale) == (0.5, 0.5)
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    # the validation montage sits right of the image, at its pixel size
    montage = viewer.layers[PREVIEW_LAYER]
    assert tuple(montage.translate) == (0.0, (90 + 16) * 0.5) and tuple(montage.scale) == (0.5, 0.5)
    np.testing.assert_array_equal(viewer.layers["my micrograph"].data, image)  # untouched
    assert widget.plot.series["discriminator"].n == 3
    assert widget.plot.series["adversarial"].n == 3


def test_noise_from_the_playground_and_bad_settings(train_widget, qtbot):
    from napari_emdenoise._widgets.playground import PlaygroundWidget
    from napari_emdenoise._widgets.training import FILE_NOISE, PLAYGROUND_NOISE

    viewer, widget = train_widget
    widget.noise_source.value = PLAYGROUND_NOISE
    widget.start()
    assert "playground" in widget.last_error and not widget.running

    playground = viewer.window.add_plugin_dock_widget("napari-emdenoise", "Noise-model playground")[
        1
    ]
    assert isinstance(playground, PlaygroundWidget)
    playground.modality.value = "tem"
    cfg = widget.config()
    assert cfg.pairs.modality == "tem"
    assert cfg.pairs.noise.to_dict() == playground.params.to_dict()

    widget.noise_source.value = FILE_NOISE
    widget.noise_file.value = "/nonexistent/noise.json"
    with pytest.raises(ValueError, match="noise settings file"):
        widget.config()

    widget.noise_source.value = PLAYGROUND_NOISE
    widget.model_name.value = "../escape"
    n_layers = len(viewer.layers)
    widget.start()
    assert "model name" in widget.last_error and not widget.running
    assert len(viewer.layers) == n_layers


def test_preview_montage_places_panels_side_by_side():
    from napari_emdenoise._widgets.training import preview_montage

    a, b = np.full((4, 3), 2.0), np.full((4, 5), -1.0)
    m = preview_montage(a, b, gap=2)
    assert m.shape == (4, 10) and m.dtype == np.float32
    np.testing.assert_array_equal(m[:, :3], a)
    np.testing.assert_array_equal(m[:, 3:5], -1.0)  # separator at the minimum
    np.testing.assert_array_equal(m[:, 5:], b)


def test_default_size_trains_in_minutes_on_a_cpu(make_napari_viewer, open_dock):
    from napari_emdenoise._widgets.training import size_choices

    fresh = open_dock(make_napari_viewer(), "Train")
    assert fresh.model_config.value == "small"
    assert list(fresh.model_config.choices) == ["tiny", "small", "full"] == size_choices("cgrdn")
    fresh.arch.value = "dncnn"
    assert list(fresh.model_config.choices) == ["tiny", "small", "full"]


def test_a_script_without_main_guard_makes_the_data_in_process(train_widget, monkeypatch):
    import napari_emdenoise._widgets.training as training

    viewer, widget = train_widget
    widget.workers.value = 2
    monkeypatch.setattr(training, "unguarded_main_script", lambda: "/home/me/show_napari.py")
    cfg = widget.config()
    assert cfg.num_workers == 0
    assert "show_napari.py" in widget.in_process_reason
    assert "__main__" in widget.in_process_reason
    monkeypatch.setattr(training, "unguarded_main_script", lambda: None)
    assert widget.config().num_workers == 2 and widget.in_process_reason == ""


UNGUARDED_SCRIPT = """
import sys
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=False)
_, widget = viewer.window.add_plugin_dock_widget("napari-emdenoise", "Train")
widget.model_name.value = "noguard"
widget.model_config.value = "tiny"
widget.patch_size.value = 32
widget.batch_size.value = 2
widget.clean_pool.value = 2
widget.steps.value = 2
widget.val_every.value = 2
widget.workers.value = 1
widget.weights["adversarial"].value = 0.0
widget.out_dir.value = sys.argv[1]
widget.start()
app = QApplication.instance()
while widget.running or widget._worker is not None:
    app.processEvents()
print("steps", widget.event_counts.get("StepEvent", 0), widget.trainer.config.num_workers)
viewer.close()
"""


@pytest.mark.slow
def test_training_from_a_script_without_main_guard_does_not_hang(
    make_napari_viewer, tmp_path, monkeypatch
):
    """napari examples often lack ``if __name__ == "__main__":``; spawned data workers
    would re-run the script (a second viewer) and never deliver data."""
    import os
    import subprocess
    import sys

    script = tmp_path / "show_napari.py"
    script.write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMDENOISE_MODELS_DIR": str(tmp_path / "m")}
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "steps 2 0" in res.stdout, res.stdout + res.stderr[-3000:]
