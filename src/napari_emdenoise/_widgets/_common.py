"""What every dock widget needs: layer queries that survive napari's viewer proxy, a
worker host that stops its threads before the viewer goes away, and scrolling layout.

napari hands a plugin widget a ``PublicOnlyProxy`` of the viewer. Layers reached
through it (``viewer.layers[name]``, the return value of ``viewer.add_image``)
are proxies too, a new one on every access, while iterating ``viewer.layers``
yields the layers themselves. ``is`` comparisons and ``type(layer).__name__``
therefore fail; ``isinstance`` (the proxy forwards ``__class__``), names and
``layer.unique_id`` work on both, and are all this module uses.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QThreadPool
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ._run_state import RunState, RunStateHolder

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "USER_ERRORS",
    "CancellableRun",
    "GracefulStopWorker",
    "RUN_BUTTONS",
    "StatefulRun",
    "StoppingWorker",
    "caught",
    "unexpected_error_text",
    "WorkerHost",
    "disconnect_quietly",
    "find_layer",
    "grey_image_layers",
    "is_grey_image",
    "run_in_thread",
    "scrolling",
    "scrolling_with_view",
    "section",
    "topmost_name",
    "wrap_labels",
]


# -- layers -------------------------------------------------------------------
def is_grey_image(layer: Any, ndims: tuple[int, ...] = (2,)) -> bool:
    """Whether ``layer`` is a single-scale, grey-scale Image layer with ``ndim`` in ``ndims``."""
    from napari.layers import Image

    return (
        isinstance(layer, Image)
        and not getattr(layer, "multiscale", False)
        and not getattr(layer, "rgb", False)
        and layer.ndim in ndims
    )


def grey_image_layers(
    viewer: napari.viewer.Viewer, ndims: tuple[int, ...] = (2,), exclude: Any = ()
) -> list[str]:
    """Names of the grey-scale image layers of ``ndims`` dimensions, bottom to top.

    ``exclude`` is anything supporting ``name in exclude`` (e.g. :class:`OwnedLayers`).
    """
    return [
        layer.name
        for layer in viewer.layers
        if is_grey_image(layer, ndims) and layer.name not in exclude
    ]


def find_layer(viewer: napari.viewer.Viewer, unique_id: Any) -> Any:
    """The layer of the viewer whose ``unique_id`` is ``unique_id``, or None."""
    for layer in viewer.layers:
        if layer.unique_id == unique_id:
            return layer
    return None


def topmost_name(*groups: list[Any]) -> str | None:
    """Name of the last (topmost) layer of the first non-empty group, else None."""
    for group in groups:
        if group:
            return group[-1].name
    return None


# -- layout -------------------------------------------------------------------
class _VerticalScrollArea(QScrollArea):
    """Scrolls vertically only; as wide as its content needs, as short as ``min_height``."""

    def __init__(self, min_height: int) -> None:
        super().__init__()
        self._min_height = int(min_height)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidgetResizable(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    def _width(self, hint: QSize) -> int:
        bar = self.verticalScrollBar().sizeHint().width()
        return hint.width() + bar + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        content = self.widget()
        if content is None:
            return super().minimumSizeHint()
        return QSize(self._width(content.minimumSizeHint()), self._min_height)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        content = self.widget()
        if content is None:
            return super().sizeHint()
        # start as narrow as the content allows: the canvas gets the width
        width = self._width(content.minimumSizeHint())
        return QSize(width, max(self._min_height, content.sizeHint().height()))


def fast_scan_axis_box(tooltip: str) -> Any:
    """A *fast-scan axis* drop-down (x, the rows, by default; or y, the columns).

    Its value is what :func:`napari_emdenoise.engine.restore` and the drift
    functions take as ``fast_scan_axis``.
    """
    from magicgui import widgets as mw

    return mw.ComboBox(
        label="fast-scan axis",
        choices=[("x (rows)", "x"), ("y (columns)", "y")],
        value="x",
        tooltip=tooltip,
    )


def scrolling(widget: QWidget, min_height: int = 120) -> QScrollArea:
    """Put ``widget`` in a frameless vertical scroll area that may shrink to ``min_height``.

    A dock's minimum height is then small, so several docks stacked on one side
    of the window still fit a laptop screen; the content scrolls instead. There
    is no horizontal scrolling: the content follows the dock's width (long labels
    wrap, drop-downs elide a long layer name instead of widening the dock).
    """
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    scroll = _VerticalScrollArea(min_height)
    scroll.setWidget(widget)
    return scroll


def scrolling_with_view(form: Any, view: QWidget, min_height: int = 60) -> QScrollArea:
    """A magicgui ``form`` above ``view`` (which takes the spare height), in :func:`scrolling`."""
    panel = QWidget()
    box = QVBoxLayout(panel)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(form.native)
    box.addWidget(view, 1)
    return scrolling(panel, min_height)


def wrap_labels(*labels: Any) -> None:
    """Let magicgui labels wrap, so a long message never widens the dock."""
    for label in labels:
        native = label.native
        native.setWordWrap(True)
        native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        native.setMinimumWidth(50)


# -- workers ------------------------------------------------------------------
#: Errors a user can cause (bad input, too large an input): a worker returns them as
#: ``("error", message)`` and the dock shows the message in its status line, nothing
#: else. Any other exception is a bug: it is raised from the worker, so napari shows
#: it (its notification, with the traceback), and the dock goes back to idle with
#: :func:`unexpected_error_text`. The one rule for every dock.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, MemoryError)


def unexpected_error_text(exc: BaseException) -> str:
    """What a dock shows when its worker raised ``exc``, an error that is not a user's."""
    return f"unexpected error ({type(exc).__name__}: {exc}); napari shows the details"


def caught(
    func: Callable[..., Any],
    *args: Any,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
    **kwargs: Any,
) -> tuple[str, Any]:
    """``("ok", func(*args, **kwargs))``, or ``("error", message)`` for the ``user_errors``."""
    try:
        return ("ok", func(*args, **kwargs))
    except user_errors as exc:
        return ("error", str(exc))


def run_in_thread(
    work: Callable[[Callable[[Any], None]], Any],
    *,
    name: str,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> Generator[Any, None, tuple[str, Any]]:
    """Run ``work(put)`` in a thread, yielding every item it passes to ``put``.

    A generator for ``napari.qt.threading``: yields what ``work`` reports and
    returns ``("ok", result)``. :class:`~napari_emdenoise.engine.predictor.Cancelled`
    comes back as ``("cancelled", message)`` and the errors a user can cause
    (``user_errors``) as ``("error", message)``, so the widget can show them;
    anything else is re-raised (a bug, reported by napari).

    Closing the generator early (:class:`StoppingWorker` does when it is quit)
    waits for ``work`` to return: ``work`` must watch a cancel flag that was set
    before, or the wait lasts until it is done.
    """
    from ..engine.predictor import Cancelled

    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work(events.put)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    try:
        while (item := events.get()) is not None:
            yield item
    finally:
        # also when the generator is closed early (a quit worker, see StoppingWorker):
        # the caller's thread returns only once the computation has
        thread.join()
    error = outcome.get("error")
    if isinstance(error, Cancelled):
        return ("cancelled", str(error))
    if isinstance(error, user_errors):
        return ("error", str(error))
    if error is not None:
        raise error
    return ("ok", outcome["value"])


class StoppingWorker(GeneratorWorker):
    """A napari generator worker whose ``quit`` also stops the computation it relays.

    napari's own cancel (the activity dock's button, its task registry,
    ``worker.quit()``) only makes a worker stop iterating its generator: a
    computation running in another thread (:func:`run_in_thread`) would go on.
    Here ``quit`` also calls :attr:`on_quit` (which sets the dock's cancel flag),
    and a generator left early is closed on the worker thread, so the worker
    thread returns only once the computation has stopped (the dock may start
    another run, or the viewer close, without a computation still going).

    Whatever ends the run, ``aborted`` is emitted when it was quit, and then
    ``finished``; ``returned`` is not emitted after a quit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called (on the calling thread) by :meth:`quit`: ask the computation to stop.
        self.on_quit: Callable[[], None] | None = None

    def quit(self) -> None:
        """Stop the worker and the computation (through :attr:`on_quit`, until it has ended)."""
        super().quit()
        on_quit = self.on_quit
        if on_quit is not None:
            on_quit()

    def work(self) -> Any:
        """napari's generator loop; after a quit, close the generator (waits for the work)."""
        try:
            result = super().work()
            if self.abort_requested:
                if inspect.getgeneratorstate(self._gen) == inspect.GEN_CLOSED:
                    self.aborted.emit()  # the generator ended before the loop saw the quit
                else:
                    self._gen.close()  # the loop emitted ``aborted`` and left the generator
            return result
        finally:
            # quitting a finished worker (napari cancels every task it lists when
            # the window closes) must not cancel the dock's next run
            self.on_quit = None


class GracefulStopWorker(GeneratorWorker):
    """A napari generator worker whose ``quit`` asks the run to end the way it ends on its own.

    For a run that has results to write when it is stopped (training: its final
    checkpoint and model). napari's own cancel (the activity dock's button, its
    task registry, ``worker.quit()``) would leave the generator where it is, so
    the run would neither finish nor write anything. Here ``quit`` calls
    :attr:`on_quit` instead (the dock's Stop), and the worker goes on relaying
    the generator until it has ended: every event, ``returned`` and ``finished``
    follow as after any run. Once the run has ended (or without :attr:`on_quit`)
    ``quit`` is napari's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called (on the calling thread) by :meth:`quit`: ask the run to stop after its step.
        self.on_quit: Callable[[], None] | None = None

    def quit(self) -> None:
        """Ask the run to stop through :attr:`on_quit` (napari's quit when there is none)."""
        on_quit = self.on_quit
        if on_quit is None:
            super().quit()
        else:
            on_quit()

    def work(self) -> Any:
        """napari's generator loop; once it has ended, ``quit`` no longer reaches the dock."""
        try:
            return super().work()
        finally:
            # quitting a finished worker (napari cancels every task it lists when the
            # window closes) must not stop the dock's next run
            self.on_quit = None


def disconnect_quietly(*connections: tuple[Any, Callable]) -> None:
    """``event.disconnect(callback)`` for each pair, ignoring those already gone."""
    for event, callback in connections:
        try:
            event.disconnect(callback)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - already gone
            pass


class WorkerHost(QObject):
    """Runs one widget's napari workers on a private thread pool and stops them in time.

    Closing the viewer (or removing the dock) calls ``on_close`` and then waits
    until every worker thread has returned. Without that wait, a computation
    still running when Python shuts down emits into deleted Qt signal objects
    (``RuntimeError: wrapped C/C++ object of type WorkerBaseSignals has been
    deleted``) and the process aborts. The private pool makes the wait exact
    (:meth:`QThreadPool.waitForDone` returns after ``run()`` has returned) and
    never waits for other plugins' workers.

    Only public Qt events are watched: the widget losing its parent (napari's
    ``remove_dock_widget``) and the main window's Close event (``viewer.close()``,
    the window's close button), whichever comes first.

    Parameters
    ----------
    widget : QWidget
        The dock widget's native widget.
    on_close : callable
        Called once, on the main thread, before waiting: it should ask the
        workers to stop (set cancel flags, ``worker.quit()``, resume a paused one).
    timeout : float
        Seconds to wait for the workers after ``on_close``.
    """

    def __init__(
        self, widget: QWidget, on_close: Callable[[], None], timeout: float = 60.0
    ) -> None:
        super().__init__()  # no Qt parent: it lives as long as the Python widget object
        self._widget = widget
        self._on_close = on_close
        self.timeout = float(timeout)
        self._pool = QThreadPool()
        self._workers: list[Any] = []  # references kept until their thread has returned
        self._watched: set[int] = set()
        #: True once the viewer is closing or the dock was removed.
        self.closing = False
        widget.installEventFilter(self)
        widget.destroyed.connect(self._on_destroyed)

    def _on_destroyed(self, *_: object) -> None:
        try:
            self.close()
        except RuntimeError:  # pragma: no cover - Qt objects already gone at shutdown
            pass

    # -- workers --
    def start(self, worker: Any) -> None:
        """Run a worker made with ``create_worker(..., _start_thread=False)``."""
        if self._pool.activeThreadCount() == 0:
            self._workers.clear()
        self._workers.append(worker)
        self.watch()
        self._pool.start(worker)

    @property
    def busy(self) -> bool:
        """True while a worker thread of this host is running."""
        return self._pool.activeThreadCount() > 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every worker thread returned; True if they all did in time."""
        ms = int(1000 * (self.timeout if timeout is None else timeout))
        done = self._pool.waitForDone(ms)
        if done:
            self._workers.clear()
        return done

    def close(self, timeout: float | None = None) -> bool:
        """Call ``on_close`` (once) and wait for the workers; True if they all returned."""
        if not self.closing:
            self.closing = True
            self._on_close()
        return self.wait(timeout)

    # -- watching the viewer's window --
    def watch(self) -> None:
        """Watch the widget's ancestors and its window (call again once docked)."""
        try:
            node = self._widget.parentWidget()
        except RuntimeError:  # the widget is already deleted
            return
        while node is not None:
            if id(node) not in self._watched:
                node.installEventFilter(self)
                self._watched.add(id(node))
            node = node.parentWidget()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        # (attributes may be gone while Python tears the object down: do nothing then)
        if getattr(self, "closing", True):
            return False
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if obj is self._widget and self._widget.parent() is None:
                self.close()  # napari's remove_dock_widget un-parents the widget
            else:
                self.watch()
        elif kind == QEvent.Type.Close and isinstance(obj, QMainWindow) and obj is not None:
            try:
                mine = obj is self._widget.window()
            except RuntimeError:
                mine = False
            if mine:
                self.close()
        return False


def section(title: str, content: QWidget, expanded: bool = True) -> QWidget:
    """A collapsible section (superqt's ``QCollapsible``) holding ``content``."""
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(content)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


class CancellableRun:
    """Run/Cancel bookkeeping shared by the docks that start one worker at a time.

    The widget provides ``status`` and ``progress`` (magicgui widgets),
    ``run_button``/``cancel_button`` (all four made by :meth:`_make_run_controls`
    where they look the usual way), a ``threading.Event`` ``_cancel``, the
    running ``_worker`` (or None) and ``last_error``; :meth:`_launch` also needs
    the widget's :class:`WorkerHost` ``host``.
    """

    #: Status shown when a run was cancelled.
    cancelled_text = "cancelled: no layer added"

    def _make_run_controls(self, run_text: str, status: str = "") -> None:
        """Create the Run and Cancel buttons, the progress bar and the status line.

        ``run_button`` (labelled ``run_text``) calls ``start()``, ``cancel_button``
        calls :meth:`cancel`; the ``status`` label starts with the text ``status``.
        """
        from magicgui import widgets as mw

        self.run_button = mw.PushButton(text=run_text)
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        self.progress = mw.ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = mw.Label(value=status)
        self.run_button.changed.connect(lambda *_: self.start())
        self.cancel_button.changed.connect(lambda *_: self.cancel())

    def _begin(self, message: str) -> None:
        """A run starts: clear the last error and progress, show ``message``, enable Cancel."""
        self._cancel.clear()
        self.last_error = ""
        self.progress.value = 0
        self.status.value = message
        self._show_running(True)

    def _show_running(self, running: bool) -> None:
        """Show whether a run is under way: Run disabled and Cancel enabled while it is."""
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    def _stop_computation(self) -> None:
        """Ask the computation to stop at its next check (what quitting the worker does)."""
        self._cancel.set()

    def _start_worker(
        self,
        func: Callable[..., Generator],
        *args: Any,
        on_yielded: Callable[[Any], None],
        on_returned: Callable[[Any], None],
        **kwargs: Any,
    ) -> StoppingWorker:
        """Run the generator ``func(*args, **kwargs)`` in a :class:`StoppingWorker` on ``host``.

        The one place where the docks start a run: quitting the worker (napari's
        activity dock, ``worker.quit()``) calls :meth:`_stop_computation`, so the
        computation stops; a run that ends without an outcome (it was quit) is
        shown as cancelled and the dock is idle again. Errors go to
        :meth:`_on_errored`.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(
            func, *args, _worker_class=StoppingWorker, _start_thread=False, **kwargs
        )
        worker.on_quit = self._stop_computation
        worker.yielded.connect(on_yielded)
        worker.returned.connect(on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        self.host.start(worker)
        return worker

    def _launch(
        self,
        on_result: Callable[[Any], None],
        func: Callable[..., Generator],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``func(*args, **kwargs)`` (a :func:`run_in_thread` generator) in a worker.

        Its ``(done, total)`` items drive the progress bar; ``on_result(value)``
        is called on success; a cancelled or failed run is reported in the
        status line (see :meth:`_on_outcome`).
        """
        self._start_worker(
            func,
            *args,
            on_yielded=self._on_progress,
            on_returned=lambda outcome: self._on_outcome(outcome, on_result),
            **kwargs,
        )

    def _on_finished(self, worker: Any) -> None:
        """The worker thread is done; if it was quit (no outcome shown), show it cancelled."""
        if self.host.closing or self._worker is not worker:
            return
        self._cancelled()

    def _on_progress(self, item: tuple[int, int]) -> None:
        if self.host.closing:
            return
        done, total = item
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)

    def _on_outcome(self, outcome: tuple[str, Any], on_result: Callable[[Any], None]) -> None:
        if self.host.closing:
            return
        status, value = outcome
        if status == "cancelled":
            self._cancelled()
        elif status == "error":
            self._error(value)
        else:
            on_result(value)

    def _cancelled(self) -> None:
        self.status.value = self.cancelled_text
        self.progress.value = 0
        self._finish()

    def _on_errored(self, exc: BaseException) -> None:
        """A bug in the run (napari re-raises and shows it): back to idle, say so."""
        if self.host.closing:
            return
        self._error(unexpected_error_text(exc))

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = f"⚠ {message}"
        self.progress.value = 0
        self._finish()

    def _finish(self) -> None:
        self._worker = None
        self._show_running(False)

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (no layer is added)."""
        self._cancel.set()


#: Buttons per run state: (Run, Cancel) enabled. Cancel stays enabled while stopping.
RUN_BUTTONS: dict[RunState, tuple[bool, bool]] = {
    RunState.IDLE: (True, False),
    RunState.RUNNING: (False, True),
    RunState.STOPPING: (False, True),
    RunState.DONE: (True, False),
}


class StatefulRun(CancellableRun, RunStateHolder):
    """A :class:`CancellableRun` whose dock keeps a :class:`RunState` and derives its buttons.

    IDLE → RUNNING (:meth:`_begin`) → STOPPING (:meth:`cancel`) → DONE (:meth:`_finish`),
    or CLOSED, which the dock enters first thing in its ``on_close`` (the dock removed or
    the viewer closing); :meth:`_apply_state` sets the Run and Cancel buttons from
    :data:`RUN_BUTTONS`. An error before any run leaves the dock IDLE; a late end of run
    never moves a closed dock. The dock sets ``self.state = RunState.IDLE`` in its
    ``__init__``.
    """

    def _apply_state(self, state: RunState) -> None:
        """Set the buttons for ``state`` (nothing once closed: the Qt objects may be gone)."""
        if state is RunState.CLOSED:
            return
        run, cancel = RUN_BUTTONS[state]
        self.run_button.enabled = run
        self.cancel_button.enabled = cancel

    def _show_running(self, running: bool) -> None:
        """A run starts (RUNNING) or ends (DONE; an error before any run: IDLE)."""
        if not self._enter(RunState.RUNNING if running else RunState.DONE):
            self._apply_state(self.state)

    def cancel(self) -> None:
        """Ask the running job to stop at its next check (no layer is added)."""
        super().cancel()
        self._enter(RunState.STOPPING)
