"""Resumable zarr output of :func:`~napari_emdenoise.engine.stack4d.restore_4dstem`.

The output is one zarr array of shape ``(scan_y, scan_x, det_y, det_x)``,
float32, filled with NaN where nothing has been written yet. Its attributes
hold

``napari_emdenoise``
    The per-axis calibration in the format of
    :func:`~napari_emdenoise.io.readers.read_em` (``scale``, ``units``,
    ``translate``, ``axis_names``, ``name``), so the store reads back
    calibrated.
``napari_emdenoise_4dstem``
    The run record: the block layout (scan rows × scan columns per block),
    what produced the store (input shape and dtype, scan region, model) and
    the completion record ``done``, the sorted indices of the blocks that are
    completely written. A block is added to ``done`` only after its data have
    been written (only the process driving the run writes the record), so a
    run that was interrupted, cancelled or failed resumes by computing the
    blocks not in ``done`` and never trusts a half-written block.
``stem4d_calibration``
    The calibration as given by the caller (e.g. ``scan_step`` in Å and
    ``detector_step`` in mrad from :func:`~napari_emdenoise.synth.diffraction.simulate_4dstem`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RECORD_KEY", "open_output"]

#: Attribute holding the run record.
RECORD_KEY = "napari_emdenoise_4dstem"
#: Attribute holding the caller's own calibration dictionary.
RAW_CALIBRATION_KEY = "stem4d_calibration"
_RECORD_VERSION = 1


class OutputStore:
    """A zarr array being filled block by block, with its completion record.

    Parameters
    ----------
    array : zarr.Array
        The output array.
    record : dict
        Its run record (see the module notes).
    """

    def __init__(self, array: Any, record: dict[str, Any]) -> None:
        self.array = array
        self.record = record
        self._done = {int(i) for i in record.get("done", [])}

    @property
    def done(self) -> set[int]:
        """Indices of the blocks already written completely."""
        return set(self._done)

    def mark_done(self, index: int) -> None:
        """Record block ``index`` as complete (call only after its data are written)."""
        self._done.add(int(index))
        self._save()

    def save_stage(self, key: str, state: dict[str, Any]) -> None:
        """Keep a later stage's state (JSON-able) in the run record, for resuming."""
        self.record[key] = state
        self._save()

    def mark_complete(self) -> None:
        """Record that every block is written."""
        self.record["complete"] = True
        self._save()

    def _save(self) -> None:
        self.record["done"] = sorted(self._done)
        self.array.attrs[RECORD_KEY] = self.record


def _fingerprint(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "input_shape",
        "input_dtype",
        "region",
        "model",
        "local_counts_sigma",
        "local_counts_passes",
        "neighbour_residuals",
    )
    found = {k: record.get(k) for k in keys}
    if "local_counts_passes" not in record and found["local_counts_sigma"]:
        # stores written before the count correction had passes ran one pass
        found["local_counts_passes"] = 1
    return found


def _describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = [
        f"{k}: {old.get(k)!r} in the store, {new.get(k)!r} now"
        for k in new
        if old.get(k) != new.get(k)
    ]
    return "; ".join(parts)


def _check_not_input(path: Path, input_path: str | None) -> None:
    if input_path is None:
        return
    try:
        same = os.path.samefile(path, input_path)
    except OSError:
        same = Path(path).absolute() == Path(input_path).absolute()
    if same:
        raise ValueError(
            f"the output {path} is the input store; results go to a new store, the input "
            "is never overwritten"
        )


def open_output(
    out: object,
    *,
    shape: tuple[int, int, int, int],
    block: tuple[int, int],
    record: dict[str, Any],
    calibration: dict[str, Any],
    raw_calibration: Mapping[str, Any] | None,
    input_path: str | None = None,
    overwrite: bool = False,
) -> OutputStore:
    """Create the output store, or reopen one of an interrupted run to resume it.

    Parameters
    ----------
    out : str, pathlib.Path or zarr.Array
        Folder of the zarr store (created if missing), or an open array.
    shape : tuple of int
        ``(scan_y, scan_x, det_y, det_x)`` of the output.
    block : tuple of int
        ``(rows, columns)`` of the scan per block, used when the store is new.
        A resumed store keeps the block layout it was created with.
    record : dict
        ``input_shape``, ``input_dtype``, ``region`` and ``model`` of this
        run; a store made by a run with different values is refused.
    calibration : dict
        Read-back calibration (``scale``, ``units``, …, see the module notes).
    raw_calibration : mapping or None
        The caller's calibration dictionary, stored as given.
    input_path : str, optional
        Store path of the input, which must not be the output.
    overwrite : bool
        Start afresh in an existing store that this function made (its
        completion record is cleared). Other folders are never replaced.

    Returns
    -------
    OutputStore
        The array and its completion record (``done`` holds the blocks a
        previous run finished).

    Raises
    ------
    ValueError
        If ``out`` is the input store, a folder that is not a store made by
        this function, or a store of another run (different input shape,
        dtype, region or model) while ``overwrite`` is False.
    """
    import zarr

    new_record = {
        "version": _RECORD_VERSION,
        **_fingerprint(record),
        "block": [int(block[0]), int(block[1])],
        "done": [],
        "complete": False,
    }
    attributes = {
        "napari_emdenoise": calibration,
        RECORD_KEY: new_record,
    }
    if raw_calibration is not None:
        attributes[RAW_CALIBRATION_KEY] = _jsonable(raw_calibration)

    if isinstance(out, zarr.Array):
        return _adopt_array(out, shape, new_record, attributes, overwrite)
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(
            f"out must be the path of a zarr store or a zarr.Array, got {type(out).__name__}"
        )
    path = Path(out)
    _check_not_input(path, input_path)
    if os.path.lexists(path):
        existing = _open_existing(path)
        old = dict(existing.attrs.get(RECORD_KEY) or {})
        if not overwrite:
            if tuple(existing.shape) != tuple(shape):
                raise ValueError(
                    f"{path} holds a result of shape {tuple(existing.shape)}, this run makes "
                    f"{tuple(shape)}; choose another output or pass overwrite=True"
                )
            if _fingerprint(old) != _fingerprint(new_record):
                raise ValueError(
                    f"{path} holds the result of a different run ("
                    + _describe_difference(_fingerprint(old), _fingerprint(new_record))
                    + "); choose another output or pass overwrite=True"
                )
            return OutputStore(existing, old)
    chunks = (1, int(block[1]), int(shape[2]), int(shape[3]))
    array = zarr.create_array(
        store=str(path),
        shape=tuple(int(s) for s in shape),
        chunks=chunks,
        dtype="float32",
        fill_value=np.float32("nan"),
        attributes=attributes,
        overwrite=bool(overwrite),
    )
    return OutputStore(array, new_record)


def _open_existing(path: Path) -> Any:
    import zarr

    if not path.is_dir():
        raise ValueError(f"{path} exists and is not a zarr store; choose another output")
    try:
        node = zarr.open(str(path), mode="r+")
    except Exception as exc:  # noqa: BLE001 - anything unreadable is not ours
        raise ValueError(
            f"{path} exists and is not a zarr store made by restore_4dstem ({exc}); choose "
            "another output"
        ) from exc
    if not isinstance(node, zarr.Array) or RECORD_KEY not in node.attrs:
        raise ValueError(
            f"{path} exists and is not a store made by restore_4dstem; it is never replaced: "
            "choose another output"
        )
    return node


def _adopt_array(
    array: Any,
    shape: tuple[int, ...],
    new_record: dict[str, Any],
    attributes: dict[str, Any],
    overwrite: bool,
) -> OutputStore:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(array.shape)}, the result has shape {tuple(shape)}")
    if np.dtype(array.dtype) != np.float32:
        raise ValueError(f"out must be a float32 zarr array, got {array.dtype}")
    old = array.attrs.get(RECORD_KEY)
    if old is not None and not overwrite:
        old = dict(old)
        if _fingerprint(old) != _fingerprint(new_record):
            raise ValueError(
                "out holds the result of a different run ("
                + _describe_difference(_fingerprint(old), _fingerprint(new_record))
                + "); pass overwrite=True to start afresh"
            )
        return OutputStore(array, old)
    chunks = tuple(int(c) for c in array.chunks)
    if chunks[0] != 1 or chunks[2:] != tuple(int(s) for s in shape[2:]):
        raise ValueError(
            f"out is chunked {chunks}; restore_4dstem needs chunks of one scan row and whole "
            "patterns, e.g. (1, scan_x, det_y, det_x)"
        )
    # blocks must cover whole chunks, so that no two blocks write the same chunk
    if chunks[1] < shape[1]:
        new_record["block"] = [int(new_record["block"][0]), chunks[1]]
    elif new_record["block"][1] < shape[1]:
        new_record["block"] = [1, int(shape[1])]
    array.attrs.update(attributes | {RECORD_KEY: new_record})
    return OutputStore(array, new_record)


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
