"""Qt-free helpers of the 4D-STEM dock: detectors ↔ napari ellipses, scan regions, layer geometry.

Detectors are drawn as ellipses of a napari Shapes layer in detector pixels
(the Shapes layer carries the detector calibration as its scale, so it sits on
the patterns). Each ellipse has a ``role`` feature:

* ``"BF"`` — the bright-field disk;
* ``"ADF inner"`` / ``"ADF outer"`` — the two edges of the annular detector;
  the annulus is centred on its outer ellipse.

An ellipse stands for the circle of radius ``(ry + rx) / 2`` about its centre
(the masks are circular; a stretched ellipse is read as its mean radius).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.virtual_detectors import DiskFit, VirtualDetector

__all__ = [
    "DETECTOR_COLORS",
    "ROLES",
    "default_detectors",
    "detector_ellipses",
    "detectors_from_ellipses",
    "format_region",
    "parse_region",
    "scan_geometry",
    "split_geometry",
]

#: Shape roles, in drawing order.
ROLES = ("BF", "ADF inner", "ADF outer")
#: Edge colour of each role.
DETECTOR_COLORS = {"BF": "cyan", "ADF inner": "orange", "ADF outer": "orange"}


def default_detectors(fit: DiskFit, shape: tuple[int, int]) -> dict[str, VirtualDetector]:
    """BF on the central disk; ADF from 1.25 × its radius to the nearest detector edge.

    Parameters
    ----------
    fit : DiskFit
        The central disk (detector pixels).
    shape : tuple of int
        Pattern shape ``(det_y, det_x)``.
    """
    cy, cx = fit.center
    edge = min(cy, cx, shape[0] - 1 - cy, shape[1] - 1 - cx) + 0.5
    inner = 1.25 * fit.radius
    outer = max(edge, inner + 2.0)
    return {
        "BF": VirtualDetector(fit.center, 0.0, max(fit.radius, 0.5)),
        "ADF": VirtualDetector(fit.center, inner, outer),
    }


def _ellipse(center: tuple[float, float], radius: float) -> np.ndarray:
    cy, cx = center
    r = float(radius)
    return np.array(
        [[cy - r, cx - r], [cy - r, cx + r], [cy + r, cx + r], [cy + r, cx - r]], dtype=float
    )


def detector_ellipses(detectors: dict[str, VirtualDetector]) -> tuple[list[np.ndarray], list[str]]:
    """Ellipses (4 bounding-box corners each, detector pixels) and their roles."""
    bf, adf = detectors["BF"], detectors["ADF"]
    shapes = [_ellipse(bf.center, bf.outer)]
    roles = ["BF"]
    if adf.inner > 0:
        shapes.append(_ellipse(adf.center, adf.inner))
        roles.append("ADF inner")
    shapes.append(_ellipse(adf.center, adf.outer))
    roles.append("ADF outer")
    return shapes, roles


def _circle(corners: np.ndarray) -> tuple[tuple[float, float], float]:
    corners = np.asarray(corners, float)[:, -2:]
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    center = (lo + hi) / 2.0
    radius = float(np.mean((hi - lo) / 2.0))
    return (float(center[0]), float(center[1])), radius


def detectors_from_ellipses(shapes: list[Any], roles: list[str]) -> dict[str, VirtualDetector]:
    """The detectors the (possibly moved or resized) ellipses describe.

    Raises
    ------
    ValueError
        When the BF disk or the ADF outer edge was deleted, or the ADF inner
        edge is not inside the outer one.
    """
    found: dict[str, tuple[tuple[float, float], float]] = {}
    for corners, role in zip(shapes, roles):
        if role in ROLES and role not in found:
            found[role] = _circle(corners)
    missing = [r for r in ("BF", "ADF outer") if r not in found]
    if missing:
        raise ValueError(
            f"the {' and '.join(missing)} detector shape was deleted: press "
            "'find central disk' to draw the detectors again"
        )
    bf_center, bf_radius = found["BF"]
    center, outer = found["ADF outer"]
    inner = found["ADF inner"][1] if "ADF inner" in found else 0.0
    if not inner < outer:
        raise ValueError(
            f"the ADF inner edge ({inner:.1f} px) must lie inside its outer edge ({outer:.1f} px)"
        )
    return {
        "BF": VirtualDetector(bf_center, 0.0, max(bf_radius, 0.5)),
        "ADF": VirtualDetector(center, inner, outer),
    }


def parse_region(text: str, scan_shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """``"y0:y1,x0:x1"`` (scan pixels, end excluded, like numpy) → slices; ``""`` → None.

    Omitted bounds mean the scan's edges (``":,4:12"``); the region must be
    inside the scan and not empty.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or any(p.count(":") != 1 for p in parts):
        raise ValueError(
            f"scan region {text!r} is not of the form y0:y1,x0:x1 (scan pixels, e.g. 0:16,4:20)"
        )
    slices = []
    for part, size, axis in zip(parts, scan_shape, ("y", "x")):
        lo_text, hi_text = (s.strip() for s in part.split(":"))
        try:
            lo = int(lo_text) if lo_text else 0
            hi = int(hi_text) if hi_text else int(size)
        except ValueError:
            raise ValueError(f"scan region {text!r}: bounds must be whole scan pixels") from None
        if not 0 <= lo < hi <= size:
            raise ValueError(
                f"scan region {axis} = {lo}:{hi} is empty or outside the scan (0:{size})"
            )
        slices.append(slice(lo, hi))
    return slices[0], slices[1]


def format_region(region: tuple[slice, slice]) -> str:
    """The ``"y0:y1,x0:x1"`` text of a region."""
    ys, xs = region
    return f"{ys.start}:{ys.stop},{xs.start}:{xs.stop}"


def split_geometry(layer: Any) -> dict[str, dict[str, Any]]:
    """Scale/translate/units of a 4-D layer, as ``"stack"``, ``"scan"`` and ``"detector"``."""
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    units = getattr(layer, "units", None)
    units = tuple(units) if units is not None else None

    def part(sl: slice) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": scale[sl], "translate": translate[sl]}
        if units is not None:
            out["units"] = units[sl]
        return out

    return {"stack": part(slice(None)), "scan": part(slice(0, 2)), "detector": part(slice(2, 4))}


def scan_geometry(geometry: dict[str, Any], offset: tuple[int, int], ndim: int) -> dict[str, Any]:
    """``geometry`` (stack or scan) moved to a region starting at scan pixel ``offset``."""
    out = dict(geometry)
    translate = list(out["translate"])
    scale = out["scale"]
    for axis in range(2):
        translate[axis] = translate[axis] + offset[axis] * scale[axis]
    out["translate"] = tuple(translate)
    if len(translate) != ndim:  # pragma: no cover - caller error
        raise ValueError("geometry does not match the layer")
    return out
