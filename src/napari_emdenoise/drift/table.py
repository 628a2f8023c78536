"""The drift table: one row per frame, written as CSV by the widget and the command line."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "drift_table", "write_table"]

#: Columns always present (pixels); calibrated ``dy_<unit>``/``dx_<unit>`` follow when known.
COLUMNS = (
    "frame",
    "dy_px",
    "dx_px",
    "sigma_y_px",
    "sigma_x_px",
    "peak_ncc",
    "outlier",
    "ambiguous",
)


def drift_table(info: Any, scale: tuple[float, float] = (1.0, 1.0), unit: str = "") -> list[dict]:
    """One row per frame: shift, uncertainty, correlation peak, flags (and calibrated shifts).

    Parameters
    ----------
    info : napari_emdenoise.drift.AlignmentInfo
        From ``align_stack(..., return_info=True)``.
    scale : tuple of float
        ``(y, x)`` pixel size; when not 1, calibrated columns are added.
    unit : str
        Unit of ``scale`` (column names ``dy_<unit>``, ``dx_<unit>``).

    Returns
    -------
    list of dict
    """
    rows = []
    calibrated = tuple(float(s) for s in scale) != (1.0, 1.0)
    label = unit or "units"
    for i, (shift, sigma) in enumerate(zip(info.shifts, info.sigma)):
        row = {
            "frame": i,
            "dy_px": float(shift[0]),
            "dx_px": float(shift[1]),
            "sigma_y_px": float(sigma[0]),
            "sigma_x_px": float(sigma[1]),
            "peak_ncc": float(info.peak[i]),
            "outlier": bool(info.outlier[i]),
            "ambiguous": bool(info.ambiguous[i]),
        }
        if calibrated:
            row[f"dy_{label}"] = float(shift[0]) * float(scale[0])
            row[f"dx_{label}"] = float(shift[1]) * float(scale[1])
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: str | Path) -> Path:
    """Write :func:`drift_table` rows as CSV (a header line, then one line per frame)."""
    path = Path(path)
    if not rows:
        raise ValueError("there is no drift table yet: run the alignment first")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return path
