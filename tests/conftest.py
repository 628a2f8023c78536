"""Shared test configuration.

Widget tests need a real napari viewer, hence an X display with OpenGL (Qt's
``offscreen`` platform has no OpenGL context, so napari cannot create a
canvas there). Without ``$DISPLAY`` the tests start their own ``Xvfb`` (from
the ``xvfb`` package) for the session, so ``python3 -m pytest`` needs no
``xvfb-run``; without Xvfb the widget tests are skipped with a message.

Every dock widget is opened the way a user opens it, through the Plugins menu
(``viewer.window.add_plugin_dock_widget``): napari then hands the widget a
``PublicOnlyProxy`` of the viewer, which is what the widgets must work with.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys

import pytest

PLUGIN = "napari-emdenoise"
#: Screen of the Xvfb the tests start (the same as ``xvfb-run -s "-screen 0 1280x1024x24"``).
XVFB_SCREEN = "1280x1024x24"
_xvfb: subprocess.Popen | None = None


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _start_xvfb() -> subprocess.Popen | None:
    """Start ``Xvfb`` on a free display and point ``$DISPLAY`` at it; None if unavailable."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None or not sys.platform.startswith("linux"):
        return None
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [xvfb, "-displayfd", str(write_fd), "-screen", "0", XVFB_SCREEN, "-nolisten", "tcp"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready, _, _ = select.select([pipe], [], [], 30.0)
        number = pipe.readline().strip() if ready else ""
    if not number.isdigit():
        proc.kill()
        proc.wait()
        return None
    os.environ["DISPLAY"] = f":{number}"
    return proc


def pytest_configure(config):
    """Start Xvfb if needed; keep the user's own trained models out of the tests (an
    empty user-model folder); make property-based tests reproducible (fixed seed)."""
    import tempfile

    from hypothesis import settings

    global _xvfb
    if not _has_display():
        _xvfb = _start_xvfb()

    settings.register_profile("reproducible", derandomize=True, print_blob=True)
    settings.load_profile("reproducible")

    os.environ["EMDENOISE_MODELS_DIR"] = tempfile.mkdtemp(prefix="emdenoise-test-models-")


def pytest_unconfigure(config):
    global _xvfb
    if _xvfb is not None:
        _xvfb.terminate()
        try:
            _xvfb.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            _xvfb.kill()
        _xvfb = None


def pytest_collection_modifyitems(config, items):
    """Without a display (and no Xvfb to start one), skip the tests that need a viewer."""
    if _has_display():
        return
    skip = pytest.mark.skip(
        reason="needs a display for a real napari viewer: install Xvfb "
        "(sudo apt-get install xvfb libgl1-mesa-dri libglx-mesa0) or run `bash .ci/run`"
    )
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def _open_dock(viewer, display_name: str):
    """Open one of our dock widgets as a user does (Plugins ▸ EM Denoise ▸ …)."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name)
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # the path users take
    return widget


@pytest.fixture
def open_dock():
    """``open_dock(viewer, display_name)``: open a dock widget from the Plugins menu."""
    return _open_dock


@pytest.fixture
def tiny_user_model(tmp_path, monkeypatch):
    """A tiny random CGRDN saved as a user model (listed next to the bundled ones); its name."""
    import torch

    from napari_emdenoise.models.registry import ModelCard, build_model, save_model

    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny")
    card = ModelCard(
        name="tinytest",
        arch="cgrdn",
        config=model.config.to_dict(),
        modality="stem",
        kind="hr",
        training={"steps": 0},
        metrics={},
        created="2026-11-22T00:00:00+00:00",
        notes="test",
    )
    folder = tmp_path / "user_models"
    save_model(model, card, folder)
    monkeypatch.setenv("EMDENOISE_MODELS_DIR", str(folder))
    return "tinytest"


@pytest.fixture
def playground(make_napari_viewer, qtbot):
    """The noise-model playground opened from the Plugins menu, on a small synthetic image,
    its first update shown."""
    viewer = make_napari_viewer()
    widget = _open_dock(viewer, "Noise-model playground")
    widget.size.value = 64  # small and fast

    def shown_at_64() -> bool:
        idle = widget._worker is None and not widget._pending
        layer = widget.layers.get("playground distorted")
        return idle and layer is not None and layer.data.shape == (64, 64)

    qtbot.waitUntil(shown_at_64, timeout=60000)
    return viewer, widget, qtbot


class ComputeProbe:
    """Wraps an engine function to record its progress and its cancel checks, and slow it.

    ``probe.wrap(func)`` calls ``func(*args, progress=..., cancel=..., **kwargs)``
    with callbacks that record every ``(done, total)`` and every answer of the
    caller's ``cancel`` (then pass them on), and sleep ``delay`` seconds per
    progress report, so a test can stop a run before it ends.
    """

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.progress: list[tuple[int, int]] = []
        self.cancel_answers: list[bool] = []

    @property
    def cancelled(self) -> bool:
        """Whether the computation was told to stop (a cancel check answered True)."""
        return any(self.cancel_answers)

    @property
    def finished(self) -> bool:
        """Whether the computation reported that it reached its end."""
        return any(done >= total for done, total in self.progress)

    def wrap(self, func):
        import time

        def wrapped(*args, progress=None, cancel=None, **kwargs):
            def report(done, total):
                self.progress.append((int(done), int(total)))
                time.sleep(self.delay)
                if progress is not None:
                    progress(done, total)

            def check():
                answer = bool(cancel()) if cancel is not None else False
                self.cancel_answers.append(answer)
                return answer

            return func(*args, progress=report, cancel=check, **kwargs)

        return wrapped


@pytest.fixture
def compute_probe():
    """A :class:`ComputeProbe` (``compute_probe.wrap(engine_function)``)."""
    return ComputeProbe()


def napari_cancels_its_tasks(viewer) -> int:
    """Cancel the running tasks the way napari does; the number of tasks cancelled.

    napari lists every worker made with ``napari.qt.threading.create_worker`` in its
    task registry, with ``worker.quit`` as the cancel callback, and cancels them
    from its activity dock or when the window closes (``cancel_all``). The
    registry is private napari API: where it is missing, nothing is cancelled
    (0), and the test calling this fails on its own assertion.
    """
    manager = getattr(viewer.window, "_task_status_manager", None)
    tasks = list(getattr(manager, "_tasks", {}).values())
    busy = [task for task in tasks if str(task.state()[2]) in ("busy", "pending")]
    for task in busy:
        task.cancel()
    return len(busy)


def emdenoise_threads() -> list[str]:
    """Names of the computation threads of the docks still alive."""
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("emdenoise-")]


@pytest.fixture
def train_widget(make_napari_viewer, open_dock, tmp_path, monkeypatch):
    """The Train dock, opened from the Plugins menu, set for a tiny and fast run."""
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


def run_buttons(widget) -> tuple[bool, bool]:
    """Whether a dock's run and Cancel buttons are enabled."""
    return widget.run_button.enabled, widget.cancel_button.enabled


def check_cancel_then_close(viewer, widget, qtbot, timeout_ms: int) -> None:
    """Through a dock's :class:`RunState`: a cancelled run, then the dock closed mid-run.

    Start a run long enough to cancel, cancel it (STOPPING, then DONE with a
    "cancelled" status), start again and remove the dock: it is CLOSED, its
    computation has stopped, and a late end-of-run signal leaves it CLOSED.
    """
    from napari_emdenoise._widgets._run_state import RunState

    widget.start()
    widget.cancel()
    assert widget.state is RunState.STOPPING and run_buttons(widget) == (False, True)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout_ms)
    assert widget.state is RunState.DONE and run_buttons(widget) == (True, False)
    assert widget.status.value.startswith("cancelled")

    widget.start()  # closing the dock during a run stops it; nothing revives the dock
    assert widget.state is RunState.RUNNING
    viewer.window.remove_dock_widget(widget.native.parent())
    assert widget.state is RunState.CLOSED
    assert not widget.host.busy  # the computation was stopped before the dock went
    qtbot.wait(50)  # the worker's late signals arrive
    widget._show_running(False)  # a late end of run does not revive a closed dock
    assert widget.state is RunState.CLOSED


def blurring_net():
    """A network that erases fine lattices (a 4 × 4 box filter: zero response at period 4)."""
    import torch

    net = torch.nn.Conv2d(1, 1, 4, padding="same", bias=False, padding_mode="reflect")
    with torch.no_grad():
        net.weight.fill_(1.0 / 16.0)
    return net
