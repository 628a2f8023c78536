"""The state of a dock's background run, as the dock shows it (no Qt here).

A dock keeps one :class:`RunState` and derives its buttons from it; worker
threads keep using their own ``threading.Event`` flags, which the state never
replaces. :meth:`RunState.can_become` lists the transitions a dock makes, so
that a late signal (a worker's ``finished`` after the dock was closed, say)
cannot move a closed dock back to an earlier state.
"""

from __future__ import annotations

import enum

__all__ = ["RunState", "RunStateHolder"]


class RunState(enum.Enum):
    """Where a dock's run stands.

    IDLE
        No run yet: settings can be edited and a run started.
    RUNNING
        A run is in progress.
    PAUSED
        The run holds between steps until resumed (or stopped).
    STOPPING
        Stop was asked; the run ends after the current step and writes its results.
    DONE
        The last run ended (finished, stopped or failed); another can be started.
    CLOSED
        The dock was removed or the viewer closed: a run still going is being stopped,
        and the dock shows nothing any more. No state follows.
    """

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    DONE = "done"
    CLOSED = "closed"

    @property
    def active(self) -> bool:
        """True while a run is under way (running, paused or stopping)."""
        return self in (RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)

    def can_become(self, new: RunState) -> bool:
        """Whether a dock in this state may move to ``new``."""
        return new in _NEXT[self]


_NEXT: dict[RunState, frozenset[RunState]] = {
    RunState.IDLE: frozenset({RunState.RUNNING, RunState.CLOSED}),
    RunState.RUNNING: frozenset(
        {RunState.PAUSED, RunState.STOPPING, RunState.DONE, RunState.CLOSED}
    ),
    RunState.PAUSED: frozenset(
        {RunState.RUNNING, RunState.STOPPING, RunState.DONE, RunState.CLOSED}
    ),
    RunState.STOPPING: frozenset({RunState.DONE, RunState.CLOSED}),
    RunState.DONE: frozenset({RunState.RUNNING, RunState.CLOSED}),
    RunState.CLOSED: frozenset(),
}


class RunStateHolder:
    """A dock's :class:`RunState` and the one way to change it.

    The dock starts in ``state`` (set it to IDLE in its ``__init__``) and
    implements ``_apply_state(state)``, which shows a state (its buttons).
    """

    #: Where the dock's run stands, as the dock shows it (see :meth:`_enter`).
    state: RunState = RunState.IDLE

    def _enter(self, state: RunState) -> bool:
        """Move to ``state`` and show it; False (and nothing changes) if it cannot follow."""
        if not self.state.can_become(state):
            return False
        self.state = state
        self._apply_state(state)
        return True

    def _apply_state(self, state: RunState) -> None:  # pragma: no cover - docks override
        raise NotImplementedError
