"""The last stage of :func:`~.stack4d.restore_4dstem`: pool residuals over the scan.

Runs in the driver after every block is restored, on the in-memory result or
on the zarr store (see :mod:`.neighbour_residuals` for the method). With a
store the stage is resumable: the chosen correction, the rows corrected
(``rows_done``) and the rows that may have been written (``rows_claimed``,
claimed :data:`BANDS_PER_CLAIM` bands at a time so that the record is not
rewritten after every band) are kept in the store's run record. A resumed
run restores the claimed rows (and the halo rows above them) with the
network again, then continues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import neighbour_residuals as nr
from ._stack4d_store import OutputStore

__all__ = ["RECORD_FIELD", "band_rows_for", "run_stage"]

#: Key of the stage's state in the store's run record.
RECORD_FIELD = "neighbour_stage"
#: float64 working copies of a scan row that the stage holds per band row.
_COPIES = 8
#: Bands corrected between two updates of the store's record.
BANDS_PER_CLAIM = 16


def band_rows_for(scan_x: int, pattern: tuple[int, int], budget_bytes: int) -> int:
    """Scan rows per band so that a band's working arrays stay near the block budget."""
    per_row = max(1, scan_x * pattern[0] * pattern[1] * 8 * _COPIES)
    return max(1, int(budget_bytes) // per_row)


def run_stage(
    read_raw: nr.RowReader,
    recompute: nr.RowReader,
    target: Any,
    store: OutputStore | None,
    scan_shape: tuple[int, int],
    pattern: tuple[int, int],
    band_rows: int,
    cancel: Callable[[], bool] | None = None,
) -> nr.NeighbourCorrection | None:
    """Choose and apply the neighbour-residual correction to ``target`` in place.

    Parameters
    ----------
    read_raw : callable
        ``read_raw(y0, y1)`` → raw scan rows of the region, counts.
    recompute : callable
        ``recompute(y0, y1)`` → those rows restored again by the network
        (used only when resuming a stage that was interrupted).
    target : numpy.ndarray or zarr.Array
        The restored region, overwritten with the corrected patterns.
    store : OutputStore or None
        The store ``target`` belongs to (None for an in-memory result).
    scan_shape, pattern : tuple of int
        The region's scan shape and the pattern shape.
    band_rows : int
        Scan rows per band (a resumed stage keeps its own).
    cancel : callable, optional
        Polled between bands.

    Returns
    -------
    NeighbourCorrection or None
        What was applied (None: nothing, no window lowered the estimated error).
    """
    n_rows = scan_shape[0]

    def read_restored(a: int, b: int) -> np.ndarray:
        return np.asarray(target[a:b], dtype=np.float32)

    def write(a: int, b: int, rows: np.ndarray) -> None:
        target[a:b] = rows

    state = dict(store.record.get(RECORD_FIELD) or {}) if store is not None else {}
    if state.get("finished"):
        found = state.get("correction")
        return nr.NeighbourCorrection.from_record(found) if found else None

    start, carried = 0, None
    if "correction" in state:  # resuming a stage that chose its correction already
        correction = (
            nr.NeighbourCorrection.from_record(state["correction"]) if state["correction"] else None
        )
        band_rows = int(state["band_rows"])
        start = int(state["rows_done"])
        claimed = max(start, int(state.get("rows_claimed", start)))
        lo = start if correction is None else max(0, start - correction.halo)
        # Rows start:claimed may be half written and rows lo:start are the
        # uncorrected halo above the next band: both are restored again. (A
        # whole-scan window stopped between two claims needs neither.)
        if start < n_rows and lo < claimed:
            fresh = np.asarray(recompute(lo, claimed), dtype=np.float32)
            if claimed > start:
                write(start, claimed, fresh[start - lo :])  # undo what may be half written
            carried = fresh[: start - lo]
    else:
        sums = nr.residual_statistics(
            read_raw, read_restored, scan_shape, pattern, band_rows, cancel=cancel
        )
        correction = nr.choose_correction(sums)
        state = {
            "correction": None if correction is None else correction.to_record(),
            "band_rows": int(band_rows),
            "rows_done": 0,
            "rows_claimed": 0,
            "finished": correction is None,
        }
        if store is not None:
            store.save_stage(RECORD_FIELD, state)
    if correction is None:
        return None

    def before_write(end: int) -> None:
        if store is not None and end > state["rows_claimed"]:
            state["rows_claimed"] = min(n_rows, end + (BANDS_PER_CLAIM - 1) * band_rows)
            store.save_stage(RECORD_FIELD, state)

    def on_band(done: int) -> None:
        if store is not None and done in (state["rows_claimed"], n_rows):
            state["rows_done"] = int(done)
            store.save_stage(RECORD_FIELD, state)

    nr.apply_in_bands(
        read_raw,
        read_restored,
        write,
        n_rows,
        band_rows,
        correction,
        start_row=start,
        carried=carried,
        before_write=before_write,
        on_band=on_band,
        cancel=cancel,
    )
    if store is not None:
        state["finished"] = True
        store.save_stage(RECORD_FIELD, state)
    return correction
