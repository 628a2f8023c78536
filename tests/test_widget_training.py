"""The Train dock widget in a real napari viewer, opened from the Plugins menu: live losses,
stop, resume, pause, close, and scripts without a ``__main__`` guard."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

TIMEOUT_MS = 120_000


def _wait_done(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.running and widget._worker is None, timeout=TIMEOUT_MS)


def _wait_until_held(widget, qtbot, quiet_s: float = 1.5) -> int:
    """Wait until no step has arrived for ``quiet_s`` seconds; the number of steps then."""
    last = [-1, time.perf_counter()]

    def quiet() -> bool:
        n = widget.event_counts.get("StepEvent", 0)
        if n != last[0]:
            last[:] = [n, time.perf_counter()]
        return time.perf_counter() - last[1] > quiet_s

    qtbot.waitUntil(quiet, timeout=TIMEOUT_MS)
    return widget.event_counts.get("StepEvent", 0)


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
    held = _wait_until_held(widget, qtbot)
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


# -- run state: one RunState drives the buttons ---------------------------------------
def _buttons(widget) -> tuple[bool, bool, bool, bool, str, bool]:
    """(Start, Pause, Stop, Checkpoint) enabled, the Pause button's text, ONNX enabled."""
    return (
        widget.start_button.enabled,
        widget.pause_button.enabled,
        widget.stop_button.enabled,
        widget.checkpoint_button.enabled,
        widget.pause_button.text,
        widget.onnx_button.enabled,
    )


def test_run_state_transitions():
    from napari_emdenoise._widgets._run_state import RunState as S

    assert [s for s in S if s.active] == [S.RUNNING, S.PAUSED, S.STOPPING]
    assert S.IDLE.can_become(S.RUNNING) and not S.IDLE.can_become(S.DONE)
    assert S.RUNNING.can_become(S.PAUSED) and S.PAUSED.can_become(S.RUNNING)
    assert S.PAUSED.can_become(S.STOPPING) and S.RUNNING.can_become(S.STOPPING)
    assert not S.STOPPING.can_become(S.RUNNING) and not S.STOPPING.can_become(S.PAUSED)
    assert S.STOPPING.can_become(S.DONE) and S.DONE.can_become(S.RUNNING)
    assert all(s.can_become(S.CLOSED) for s in S if s is not S.CLOSED)
    assert not any(S.CLOSED.can_become(s) for s in S)  # a closed dock stays closed


def test_buttons_follow_start_pause_resume_stop_and_done(train_widget, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget = train_widget
    assert widget.state is RunState.IDLE
    assert _buttons(widget) == (True, False, False, False, "Pause", False)

    _start_long_run(widget, qtbot, 2)
    assert widget.state is RunState.RUNNING
    assert _buttons(widget) == (False, True, True, True, "Pause", False)
    trainer = widget.trainer
    widget.start()  # a second Start while running does nothing
    assert widget.trainer is trainer and widget.state is RunState.RUNNING

    widget.toggle_pause()
    assert widget.state is RunState.PAUSED and widget.status.value == "paused"
    assert _buttons(widget) == (False, True, True, True, "Resume", False)
    held = _wait_until_held(widget, qtbot)
    qtbot.wait(1000)
    assert widget.event_counts["StepEvent"] == held  # the run holds while paused
    assert widget.running

    widget.toggle_pause()
    assert widget.state is RunState.RUNNING and widget.status.value == "resumed"
    assert _buttons(widget) == (False, True, True, True, "Pause", False)
    qtbot.waitUntil(lambda: widget.event_counts["StepEvent"] > held, timeout=TIMEOUT_MS)

    widget.toggle_pause()  # stop a paused run: it goes on to its end
    widget.stop()
    assert widget.state is RunState.STOPPING
    assert widget.status.value.startswith("stopping")
    assert _buttons(widget) == (False, False, False, False, "Pause", False)
    widget.toggle_pause()  # nothing to pause while stopping
    assert widget.state is RunState.STOPPING

    _wait_done(widget, qtbot)
    assert widget.state is RunState.DONE and widget.last_error == ""
    assert widget.result.stopped and widget.result.model_path is not None
    assert _buttons(widget) == (True, False, False, False, "Pause", True)

    # Start continues the run; the last model cannot be exported while a new one trains
    widget.steps.value = widget.result.step + 2
    widget.start()
    assert widget.state is RunState.RUNNING
    assert _buttons(widget) == (False, True, True, True, "Pause", False)
    _wait_done(widget, qtbot)
    assert widget.state is RunState.DONE and not widget.result.stopped
    assert _buttons(widget) == (True, False, False, False, "Pause", True)


def test_resume_right_after_pause_is_not_lost(train_widget, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 1)
    widget.toggle_pause()
    widget.toggle_pause()  # before the step under way has ended
    assert widget.state is RunState.RUNNING
    n = widget.event_counts["StepEvent"]
    qtbot.waitUntil(lambda: widget.event_counts["StepEvent"] >= n + 3, timeout=TIMEOUT_MS)
    widget.stop()
    _wait_done(widget, qtbot)
    assert widget.state is RunState.DONE


def test_closing_a_paused_run_ends_it_and_the_dock_stays_closed(train_widget, qtbot):
    from napari_emdenoise._widgets._run_state import RunState

    viewer, widget = train_widget
    _start_long_run(widget, qtbot, 2)
    widget.toggle_pause()
    _wait_until_held(widget, qtbot)
    buttons = _buttons(widget)
    t0 = time.perf_counter()
    viewer.window.remove_dock_widget(widget.native)
    assert not widget.running  # the paused run was let go and wrote its checkpoint
    assert time.perf_counter() - t0 < 60
    assert widget.state is RunState.CLOSED
    assert widget.trainer.checkpoint_path.is_file()
    qtbot.wait(200)  # the worker's late "finished" changes neither the state nor the buttons
    assert widget.state is RunState.CLOSED and _buttons(widget) == buttons
    trainer = widget.trainer
    widget.start()  # a closed dock starts nothing
    assert widget.state is RunState.CLOSED and widget.trainer is trainer


def test_the_dock_starts_from_the_form_defaults(make_napari_viewer, open_dock):
    import dataclasses

    from napari_emdenoise._widgets._spawn import unguarded_main_script
    from napari_emdenoise.losses import LossWeights
    from napari_emdenoise.training.config_builder import TrainForm, build_train_config

    widget = open_dock(make_napari_viewer(), "Train")
    form = widget.form()
    assert form == dataclasses.replace(TrainForm(), loss_weights=form.loss_weights)
    assert form.loss_weights == {k: getattr(LossWeights(), k) for k in form.loss_weights}
    assert len(form.loss_weights) == 8
    assert widget.config() == build_train_config(form, unguarded_script=unguarded_main_script())
