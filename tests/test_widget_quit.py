"""napari's own cancel (its task registry, ``worker.quit()``) stops the docks' computations.

napari lists every worker in its task registry with ``worker.quit`` as the cancel
callback (the activity dock, closing the window). Quitting a worker only stops
napari's loop over the worker's generator; these tests check that the
computation behind it (a thread running the engine) stops too, that no result
layer is added, and that the dock is idle and usable again. A quit 4D-STEM survey or
preview frees its dock; a quit training run ends as after the Stop button (its
checkpoint and model written).

Every dock is opened from the Plugins menu of a real viewer; the engine function
is wrapped by :class:`conftest.ComputeProbe`, which slows it a little and records
its progress and its cancel checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import emdenoise_threads, napari_cancels_its_tasks

pytestmark = pytest.mark.gui

TIMEOUT_MS = 90000


def _quit_after_first_progress(viewer, widget, probe, qtbot, *, via_napari: bool) -> None:
    """Wait until the computation reported progress, then quit its worker."""
    qtbot.waitUntil(lambda: len(probe.progress) >= 1, timeout=TIMEOUT_MS)
    assert widget._worker is not None and not probe.finished
    if via_napari:
        assert napari_cancels_its_tasks(viewer) >= 1  # the worker is listed by napari
    else:
        widget._worker.quit()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)


def _assert_stopped_early(widget, probe, n_layers: int, viewer) -> None:
    assert probe.cancelled, "the computation was never told to stop"
    assert not probe.finished, "the computation ran to its end"
    assert emdenoise_threads() == []  # the dock is idle only once the computation returned
    assert len(viewer.layers) == n_layers
    assert widget.status.value.startswith("cancelled") and widget.last_error == ""
    assert widget.progress.value == 0
    assert widget.run_button.enabled and not widget.cancel_button.enabled


# -- Restore ---------------------------------------------------------------------------------
@pytest.fixture
def restore_dock(make_napari_viewer, open_dock, tiny_user_model):
    viewer = make_napari_viewer()
    data = (np.random.default_rng(0).random((256, 256)) * 4000).astype(np.uint16)
    viewer.add_image(data, name="micrograph")
    widget = open_dock(viewer, "Restore")
    widget.model.value = tiny_user_model
    widget.layer.value = "micrograph"
    widget.tile_size.value = 64  # many batches: the run can be stopped between two
    return viewer, widget


@pytest.mark.parametrize("via_napari", [True, False], ids=["task-registry", "worker.quit"])
def test_quitting_restore_stops_the_restoration(
    restore_dock, qtbot, monkeypatch, compute_probe, via_napari
):
    from napari_emdenoise._widgets import restore as restore_module

    viewer, widget = restore_dock
    monkeypatch.setattr(
        restore_module, "restore_in_viewer", compute_probe.wrap(restore_module.restore_in_viewer)
    )
    n_layers = len(viewer.layers)
    widget.start()
    _quit_after_first_progress(viewer, widget, compute_probe, qtbot, via_napari=via_napari)
    _assert_stopped_early(widget, compute_probe, n_layers, viewer)
    assert widget.outputs == []
    # usable again: the next run is not cancelled by the quit of the last one
    monkeypatch.setattr(compute_probe, "delay", 0.0)
    widget.start()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)
    assert widget.last_error == "" and compute_probe.finished
    assert len(viewer.layers) == n_layers + 1 and "micrograph restored" in viewer.layers


# -- Drift -----------------------------------------------------------------------------------
def test_quitting_drift_stops_the_alignment(
    make_napari_viewer, open_dock, qtbot, monkeypatch, compute_probe
):
    import napari_emdenoise.drift as drift

    viewer = make_napari_viewer()
    frames = np.random.default_rng(1).poisson(20.0, (24, 48, 48)).astype(np.float32)
    viewer.add_image(frames, name="movie")
    widget = open_dock(viewer, "Drift correction")
    widget.layer.value = "movie"
    widget.denoise.value = False
    monkeypatch.setattr(drift, "align_stack", compute_probe.wrap(drift.align_stack))
    n_layers = len(viewer.layers)
    widget.start()
    _quit_after_first_progress(viewer, widget, compute_probe, qtbot, via_napari=True)
    _assert_stopped_early(widget, compute_probe, n_layers, viewer)
    assert widget.outputs == [] and widget.info is None


# -- 4D-STEM ---------------------------------------------------------------------------------
def test_quitting_4dstem_stops_the_denoising(
    make_napari_viewer, open_dock, qtbot, monkeypatch, compute_probe
):
    import torch

    from napari_emdenoise._widgets import stem4d
    from napari_emdenoise.models.registry import build_model

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    data = rng.poisson(2.0, (24, 24, 32, 32)).astype(np.float32)
    viewer.add_image(data.copy(), name="scan")
    widget = open_dock(viewer, "4D-STEM")
    torch.manual_seed(0)
    widget.model_override = build_model("pix2pix", "tiny").eval()
    qtbot.waitUntil(lambda: not widget.busy and widget.detectors is not None, timeout=30000)
    monkeypatch.setattr(stem4d, "_denoise", compute_probe.wrap(stem4d._denoise))
    n_layers = len(viewer.layers)
    widget.start()
    _quit_after_first_progress(viewer, widget, compute_probe, qtbot, via_napari=True)
    _assert_stopped_early(widget, compute_probe, n_layers, viewer)
    np.testing.assert_array_equal(viewer.layers["scan"].data, data)


# -- Adapt -----------------------------------------------------------------------------------
def test_quitting_the_adaptation_stops_it_and_saves_nothing(
    make_napari_viewer, open_dock, qtbot, monkeypatch, tiny_user_model
):
    import napari_emdenoise.training.adapt as adapt_module
    from napari_emdenoise.evaluation import lattice_probe
    from napari_emdenoise.models.registry import list_models

    answers: list[bool] = []
    real_adapt = adapt_module.adapt

    def adapt(*args, cancel=None, **kwargs):
        def check() -> bool:
            answers.append(bool(cancel()))
            return answers[-1]

        return real_adapt(*args, cancel=check, **kwargs)

    monkeypatch.setattr(adapt_module, "adapt", adapt)
    viewer = make_napari_viewer()
    data = lattice_probe(np.random.default_rng(0), size=64, spacing=9.0, width=1.5).noisy
    viewer.add_image(data, name="micrograph")
    widget = open_dock(viewer, "Restore")
    widget.model.value = tiny_user_model
    widget.layer.value = "micrograph"
    panel = widget.adapt_panel
    panel.minutes.value = 10.0
    models = set(list_models())
    n_layers = len(viewer.layers)
    panel.start()
    qtbot.waitUntil(lambda: "held-out" in (panel.plot.series if panel.plot else {}), timeout=60000)
    assert napari_cancels_its_tasks(viewer) >= 1
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert any(answers), "the adaptation was never told to stop"
    assert emdenoise_threads() == []
    assert panel.result is None and panel.outputs == [] and panel.last_error == ""
    assert set(list_models()) == models  # nothing saved
    added = [layer.name for layer in viewer.layers][n_layers:]
    assert all(name.endswith("adapt preview") for name in added)  # no restored, no residual
    assert panel.status.value.startswith("adaptation cancelled")
    assert panel.adapt_button.enabled and widget.run_button.enabled
    assert not panel.cancel_button.enabled


# -- 4D-STEM survey and preview --------------------------------------------------------------
class _Gate:
    """Wraps a function so that each call waits at a gate the test opens (after a quit)."""

    def __init__(self, func) -> None:
        import threading

        self.func = func
        self.entered = threading.Event()
        self.open = threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.open.wait(60)
        return self.func(*args, **kwargs)


def _quit_plain_worker(viewer, worker, *, via_napari: bool) -> None:
    if via_napari:
        assert napari_cancels_its_tasks(viewer) >= 1  # the worker is listed by napari
    else:
        worker.quit()


@pytest.mark.parametrize("via_napari", [True, False], ids=["task-registry", "worker.quit"])
def test_quitting_the_4dstem_survey_and_preview_leaves_the_dock_usable(
    make_napari_viewer, open_dock, qtbot, monkeypatch, via_napari
):
    """A quit survey or preview returns no outcome: the dock must not wait for one forever."""
    import torch

    from napari_emdenoise._widgets import stem4d
    from napari_emdenoise.models.registry import build_model

    survey = _Gate(stem4d._survey)
    monkeypatch.setattr(stem4d, "_survey", survey)
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).poisson(2.0, (8, 8, 32, 32)).astype(np.float32)
    viewer.add_image(data, name="scan")
    widget = open_dock(viewer, "4D-STEM")  # attaches "scan": its survey starts
    torch.manual_seed(0)
    widget.model_override = build_model("pix2pix", "tiny").eval()

    # the survey (virtual images) is quit while it runs
    assert survey.entered.wait(30)
    assert widget._survey_worker is not None
    _quit_plain_worker(viewer, widget._survey_worker, via_napari=via_napari)
    survey.open.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)
    assert widget.detectors is None and widget.virtual == {}
    assert "virtual images cancelled" in widget.status.value
    widget.start()  # says what to do, instead of waiting for the quit survey
    assert widget._worker is None and "find central disk" in widget.last_error
    # usable again: the next survey runs and shows its images
    widget.find_button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.busy and widget.detectors is not None, timeout=30000)
    assert set(widget.virtual) == {"BF", "ADF"}

    # a preview is quit while it runs; a click waiting for it is dropped with it
    preview = _Gate(stem4d._preview)
    monkeypatch.setattr(stem4d, "_preview", preview)
    n_layers = len(viewer.layers)
    widget.preview_at(2, 3)
    assert preview.entered.wait(30)
    widget.preview_at(4, 4)  # waits for the running preview
    assert widget._preview_pending == (4, 4)
    _quit_plain_worker(viewer, widget._preview_worker, via_napari=via_napari)
    preview.open.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)
    assert "preview at (2, 3) cancelled" in widget.status.value
    assert widget.preview == {} and len(viewer.layers) == n_layers
    # usable again: the next click previews
    widget.preview_at(5, 6)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30000)
    assert widget.preview["position"] == (5, 6)
    assert widget.status.value.startswith("pattern (5, 6)")
    assert "scan pattern denoised" in viewer.layers


# -- Train -----------------------------------------------------------------------------------
@pytest.fixture
def train_dock(train_widget):
    """The tiny Train dock set for a run that would last far longer than the test."""
    viewer, widget = train_widget
    widget.steps.value = 100_000
    widget.checkpoint_every.value = 100_000
    return viewer, widget


@pytest.mark.parametrize(
    ("via_napari", "paused"),
    [(True, False), (False, False), (False, True)],
    ids=["task-registry", "worker.quit", "worker.quit-paused"],
)
def test_quitting_training_stops_it_as_the_stop_button_does(train_dock, qtbot, via_napari, paused):
    """napari's cancel ends the run after its step, with the checkpoint and model written."""
    from napari_emdenoise._widgets._run_state import RunState
    from napari_emdenoise.models.registry import list_models
    from napari_emdenoise.training.checkpoints import load_checkpoint

    viewer, widget = train_dock
    widget.start()
    qtbot.waitUntil(lambda: widget.event_counts.get("StepEvent", 0) >= 2, timeout=TIMEOUT_MS)
    if paused:
        widget.toggle_pause()
        assert widget.state is RunState.PAUSED
    worker = widget._worker
    _quit_plain_worker(viewer, worker, via_napari=via_napari)
    assert widget.state is RunState.STOPPING
    assert widget.status.value.startswith("stopping")
    qtbot.waitUntil(lambda: not widget.running and widget._worker is None, timeout=TIMEOUT_MS)
    # as after Stop: the final events arrived, the checkpoint and the model are written
    assert widget.state is RunState.DONE and widget.last_error == ""
    assert widget.event_counts["DoneEvent"] == 1
    result = widget.result
    assert result.stopped and result.model_path is not None
    stopped_at = result.step
    assert 2 <= stopped_at < 100_000
    state, config = load_checkpoint(result.checkpoint)
    assert int(state["step"]) == stopped_at and config["name"] == "scope"
    card = list_models()["scope"]
    assert card.training["stopped"] and card.training["planned_steps"] == 100_000
    assert "checkpoint" in widget.status.value
    assert widget.start_button.enabled and widget.onnx_button.enabled
    assert not widget.stop_button.enabled and not widget.pause_button.enabled
    # quitting the finished worker (napari cancels all its tasks at close) changes nothing
    worker.quit()
    assert widget.state is RunState.DONE
    # Start continues the run, which the old worker's quit does not stop
    widget.steps.value = stopped_at + 3
    widget.start()
    worker.quit()
    assert widget.state is RunState.RUNNING
    qtbot.waitUntil(lambda: not widget.running and widget._worker is None, timeout=TIMEOUT_MS)
    assert widget.state is RunState.DONE and widget.last_error == ""
    assert widget.result.step == stopped_at + 3 and not widget.result.stopped
