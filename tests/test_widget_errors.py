"""One rule for errors in the docks' workers, in a real viewer (Plugins menu).

A user error (``ValueError``, ``MemoryError``; OSError too for training) is a
message in the dock's status line and nothing else; any other exception is a
bug: it reaches napari (re-raised in Qt's event loop, where napari's exception
hook shows its notification) and the dock is idle again, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60000


def _raising(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc

    return fail


@pytest.fixture
def restore_dock(make_napari_viewer, open_dock, tiny_user_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((40, 40)).astype(np.float32), name="m")
    widget = open_dock(viewer, "Restore")
    widget.model.value = tiny_user_model
    widget.layer.value = "m"
    return viewer, widget


def _restore_once(widget, qtbot) -> list:
    with qtbot.capture_exceptions() as raised:
        widget.start()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)
        qtbot.wait(50)  # the re-raise runs in a queued slot
    return [type(exc).__name__ for _type, exc, _tb in raised]


def test_restore_user_error_is_a_message_and_a_bug_reaches_napari(restore_dock, qtbot, monkeypatch):
    from napari_emdenoise._widgets import restore as restore_module

    viewer, widget = restore_dock
    n_layers = len(viewer.layers)
    monkeypatch.setattr(restore_module, "restore_in_viewer", _raising(ValueError("bad tile")))
    assert _restore_once(widget, qtbot) == []  # not re-raised: no napari notification
    assert widget.last_error == "bad tile" and widget.status.value == "⚠ bad tile"
    monkeypatch.setattr(restore_module, "restore_in_viewer", _raising(TypeError("a bug")))
    assert _restore_once(widget, qtbot) == ["TypeError"]  # napari shows it
    assert widget.last_error.startswith("unexpected error (TypeError: a bug)")
    assert len(viewer.layers) == n_layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.progress.value == 0


def test_training_user_error_is_a_message_and_a_bug_reaches_napari(
    make_napari_viewer, open_dock, qtbot, tmp_path, monkeypatch
):
    from napari_emdenoise._widgets._run_state import RunState
    from napari_emdenoise.training.trainer import Trainer

    monkeypatch.setenv("EMDENOISE_MODELS_DIR", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    widget = open_dock(viewer, "Train")
    widget.model_name.value = "scope"
    widget.model_config.value = "tiny"
    widget.out_dir.value = str(tmp_path / "run")

    def run_failing(exc):
        def run(self):
            raise exc
            yield  # a generator, as Trainer.run is

        return run

    for exc, raised, message in [
        (OSError("disk full"), [], "training failed: disk full"),
        (TypeError("a bug"), ["TypeError"], "training failed: unexpected error (TypeError: a bug)"),
    ]:
        monkeypatch.setattr(Trainer, "run", run_failing(exc))
        with qtbot.capture_exceptions() as caught:
            widget.start()
            qtbot.waitUntil(lambda: widget.state is RunState.DONE, timeout=TIMEOUT_MS)
            qtbot.wait(50)
        assert [type(e).__name__ for _t, e, _tb in caught] == raised
        assert widget.last_error.startswith(message)
        assert widget.start_button.enabled and not widget.running


def test_playground_user_error_is_a_message(playground, monkeypatch):
    from napari_emdenoise._widgets import playground as playground_module

    viewer, widget, qtbot = playground
    monkeypatch.setattr(playground_module, "_compute", _raising(ValueError("bad settings")))
    with qtbot.capture_exceptions() as raised:
        widget.request_update()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=TIMEOUT_MS)
        qtbot.wait(50)
    assert raised == []
    assert widget.last_error == "bad settings" and widget.status.value == "⚠ bad settings"
