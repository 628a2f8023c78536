"""Executors of the 4D-STEM engine: run block tasks inline, on threads or on dask.

An executor takes the list of block tasks and a :class:`BlockPlan` (which
knows how to run a task in this process, ``plan.local(task, …)``, or build it
as a dask task, ``plan.delayed(task)``), and yields ``(task, result)`` as
blocks finish, in any order. The driver in :mod:`.stack4d` merges the results
(or records blocks written to the output store) as they arrive; that is the
only place that writes the completion record. Every executor keeps only a
bounded number of blocks in flight, so memory stays bounded by the block
size times that number, whatever the size of the dataset.

Following LiberTEM's executors (inline, concurrent, dask), the same tasks run
unchanged on every back end, and the tests check them against one reference.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "DaskExecutor",
    "Executor",
    "InlineExecutor",
    "ThreadsExecutor",
    "make_executor",
]

CancelCallback = Callable[[], bool]


@dataclass(frozen=True)
class BlockTask:
    """One block of the scan.

    Attributes
    ----------
    index : int
        Block number (row-major over the block grid); the completion record
        lists these.
    rows, cols : slice
        Scan rows and columns of the block in the *output* (the region).
    in_rows, in_cols : slice
        The same rows and columns in the *input* (offset by the region start).
    """

    index: int
    rows: slice
    cols: slice
    in_rows: slice
    in_cols: slice

    @property
    def n_patterns(self) -> int:
        """Number of diffraction patterns in the block."""
        return (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start)

    @property
    def where(self) -> str:
        """Human-readable scan position (input coordinates) for error messages."""
        return (
            f"rows {self.in_rows.start}–{self.in_rows.stop - 1}, "
            f"columns {self.in_cols.start}–{self.in_cols.stop - 1}"
        )


class BlockPlan(Protocol):
    """What executors need from the driver."""

    def local(
        self, task: BlockTask, cancel: CancelCallback | None, on_batch: Callable[[int], None]
    ) -> np.ndarray | None:
        """Run ``task`` in this process and return its result (None if stored)."""

    def delayed(self, task: BlockTask, job: Any) -> Any:
        """``task`` as a ``dask.delayed`` object (``job`` may be a scattered future)."""

    @property
    def job(self) -> Any:
        """The picklable :class:`~._stack4d_block.BlockJob`."""


class Executor(Protocol):
    """Runs block tasks and yields ``(task, result)`` as they finish."""

    def run(
        self,
        tasks: Sequence[BlockTask],
        plan: BlockPlan,
        cancel: CancelCallback | None,
        on_patterns: Callable[[int], None],
    ) -> Iterator[tuple[BlockTask, np.ndarray | None]]:
        """Yield every task with its result; raise ``Cancelled`` when ``cancel()`` is True."""


def _cancelled() -> Exception:
    from .predictor import Cancelled

    return Cancelled("4D-STEM restoration cancelled")


class InlineExecutor:
    """Run the blocks one after the other in the calling thread (the reference)."""

    name = "inline"

    def run(self, tasks, plan, cancel, on_patterns):  # noqa: D102 - see Executor
        for task in tasks:
            if cancel is not None and cancel():
                raise _cancelled()
            yield task, plan.local(task, cancel, on_patterns)


class ThreadsExecutor:
    """Run blocks on a pool of threads of this process (torch releases the GIL).

    Parameters
    ----------
    workers : int, optional
        Threads; default ``min(4, os.cpu_count())``. At most ``workers``
        blocks are in memory at a time.
    """

    name = "threads"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, int(workers or min(4, os.cpu_count() or 1)))

    def run(self, tasks, plan, cancel, on_patterns):  # noqa: D102 - see Executor
        stop = threading.Event()

        def should_stop() -> bool:
            if stop.is_set():
                return True
            if cancel is not None and cancel():
                stop.set()
                return True
            return False

        lock = threading.Lock()

        def counted(n: int) -> None:
            with lock:
                on_patterns(n)

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="emdenoise-4d")
        pending: dict[Future, BlockTask] = {}
        queue = iter(tasks)
        try:
            for task in queue:
                pending[pool.submit(plan.local, task, should_stop, counted)] = task
                if len(pending) >= self.workers:
                    break
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = pending.pop(future)
                    result = future.result()  # re-raises the block's error or Cancelled
                    if should_stop():
                        raise _cancelled()
                    yield task, result
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(plan.local, nxt, should_stop, counted)] = nxt
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Run blocks as dask tasks: on a ``dask.distributed`` client, or dask's threads.

    Parameters
    ----------
    client : distributed.Client, optional
        Cluster to run on. None: the current client when one is running
        (``distributed.get_client``), else dask's local threaded scheduler
        (blocks computed in waves of ``workers``).
    workers : int, optional
        Blocks in flight (default: twice the cluster's threads, or
        ``min(4, os.cpu_count())`` without a cluster).

    Notes
    -----
    Lazy (dask) input is read on the workers; other input is read here and
    sent with the task. With an output store, workers write their blocks to
    it (it must be on storage they share, e.g. a local folder for a
    ``LocalCluster``); only this process writes the completion record, after
    a block's task has finished. A model given as a module is sent to every
    worker once; a named model is loaded once per worker process.
    """

    name = "dask"

    def __init__(self, client: Any = None, workers: int | None = None) -> None:
        if client is None:
            client = _current_client()
        self.client = client
        self.workers = workers

    def _window(self) -> int:
        if self.workers:
            return max(1, int(self.workers))
        if self.client is not None:
            try:
                threads = sum(self.client.nthreads().values())
            except Exception:  # noqa: BLE001 - a client without workers yet
                threads = 1
            return max(2, 2 * threads)
        return min(4, os.cpu_count() or 1)

    def run(self, tasks, plan, cancel, on_patterns):  # noqa: D102 - see Executor
        if self.client is None:
            yield from self._run_threaded(tasks, plan, cancel)
        else:
            yield from self._run_distributed(tasks, plan, cancel)

    def _run_threaded(self, tasks, plan, cancel):
        import dask

        window = self._window()
        for start in range(0, len(tasks), window):
            if cancel is not None and cancel():
                raise _cancelled()
            wave = tasks[start : start + window]
            results = dask.compute(
                *[plan.delayed(t, plan.job) for t in wave], scheduler="threads", num_workers=window
            )
            yield from zip(wave, results, strict=True)

    def _run_distributed(self, tasks, plan, cancel):
        import torch
        from distributed import as_completed

        client = self.client
        job: Any = plan.job
        if isinstance(job.model, torch.nn.Module):
            job = client.scatter(job, broadcast=True, hash=False)
        window = self._window()
        queue = iter(tasks)
        pending: dict[Any, BlockTask] = {}
        completed = as_completed()

        def submit(task: BlockTask) -> None:
            future = client.compute(plan.delayed(task, job))
            pending[future] = task
            completed.add(future)

        try:
            for task in queue:
                submit(task)
                if len(pending) >= window:
                    break
            for future in completed:
                task = pending.pop(future)
                result = future.result()  # re-raises the block's error
                if cancel is not None and cancel():
                    raise _cancelled()
                yield task, result
                nxt = next(queue, None)
                if nxt is not None:
                    submit(nxt)
        finally:
            if pending:
                client.cancel(list(pending))


def _current_client() -> Any:
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client is running
        return None


def make_executor(executor: object, workers: int | None = None) -> Executor:
    """The executor named by ``executor`` (see :func:`~.stack4d.restore_4dstem`).

    Raises
    ------
    ValueError
        For an unknown name or object.
    """
    if isinstance(executor, str):
        name = executor.strip().lower()
        if name == "inline":
            return InlineExecutor()
        if name == "threads":
            return ThreadsExecutor(workers)
        if name == "dask":
            return DaskExecutor(None, workers)
        raise ValueError(
            "executor must be 'inline', 'threads', 'dask' or a distributed.Client, "
            f"got {executor!r}"
        )
    if hasattr(executor, "run") and not hasattr(executor, "submit"):
        return executor  # type: ignore[return-value] - a user's Executor
    try:
        from distributed import Client
    except ImportError:
        Client = None  # noqa: N806
    if Client is not None and isinstance(executor, Client):
        return DaskExecutor(executor, workers)
    raise ValueError(
        "executor must be 'inline', 'threads', 'dask' or a distributed.Client, got "
        f"{type(executor).__name__}"
    )
