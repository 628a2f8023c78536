"""Length units of EM files, converted to nanometres.

Every reader and writer of :mod:`napari_emdenoise.io` reports spatial axes in
nm and reciprocal-space axes in 1/nm, whatever the file used (m, µm, Å, …).
Axes with other units (time, energy, angles) keep their scale and get a short
unit name (``"s"``, ``"eV"``, ``"mrad"``, …); an axis without a unit is
reported in ``"pixel"``.
"""

from __future__ import annotations

import re

__all__ = ["PIXEL", "normalize_unit", "to_nm"]

PIXEL = "pixel"

#: Size of one unit, in nm. Keys are lower-case.
_LENGTH_IN_NM: dict[str, float] = {
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "metres": 1e9,
    "cm": 1e7,
    "centimeter": 1e7,
    "mm": 1e6,
    "millimeter": 1e6,
    "µm": 1e3,  # micro sign U+00B5
    "μm": 1e3,  # greek mu U+03BC
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "å": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ångström": 0.1,
    "\\aa": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
}

#: Spellings of non-length units (pint's long names included) → short form.
_OTHER_ALIASES: dict[str, str] = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "ms": "ms",
    "millisecond": "ms",
    "milliseconds": "ms",
    "µs": "µs",
    "us": "µs",
    "microsecond": "µs",
    "ev": "eV",
    "electron_volt": "eV",
    "kev": "keV",
    "kiloelectron_volt": "keV",
    "rad": "rad",
    "radian": "rad",
    "mrad": "mrad",
    "milliradian": "mrad",
    "deg": "deg",
    "degree": "deg",
    "degrees": "deg",
}

_NO_UNIT = {"", "none", "<undefined>", "undefined", "pixel", "pixels", "px", "a.u.", "au"}

_RECIPROCAL = (
    re.compile(r"^1\s*/\s*(?P<unit>.+)$"),
    re.compile(r"^(?P<unit>[^\s^/]+)\s*(?:\^\s*-\s*1|-1|⁻¹)$"),
)


def _length_factor(unit: str) -> float | None:
    return _LENGTH_IN_NM.get(unit.strip().lower())


def to_nm(scale: float, unit: object) -> tuple[float, str]:
    """Convert one axis' pixel size to nm (or 1/nm for reciprocal lengths).

    Parameters
    ----------
    scale : float
        Pixel size in ``unit``.
    unit : str or None
        The file's unit: any common spelling of m, cm, mm, µm, nm, Å, pm, or
        their reciprocals (``"1/nm"``, ``"nm^-1"``, ``"1 / Å"``). pint-style
        names (``"nanometer"``, ``"1 / angstrom"``) are understood too.

    Returns
    -------
    scale : float
        Pixel size in nm, in 1/nm, or unchanged for other units.
    unit : str
        ``"nm"``, ``"1/nm"``, ``"pixel"`` for a missing unit, the short
        name of a known time/energy/angle unit, or the string unchanged.
    """
    text = "" if unit is None else str(unit).strip()
    if text.lower() in _NO_UNIT:
        return float(scale), PIXEL
    factor = _length_factor(text)
    if factor is not None:
        return float(scale) * factor, "nm"
    for pattern in _RECIPROCAL:
        match = pattern.match(text)
        if match:
            factor = _length_factor(match.group("unit"))
            if factor is not None:
                return float(scale) / factor, "1/nm"
    return float(scale), _OTHER_ALIASES.get(text.lower(), text)


def normalize_unit(unit: object) -> str:
    """The unit :func:`to_nm` reports for ``unit`` (``"nm"``, ``"1/nm"``, ``"pixel"`` or as is)."""
    return to_nm(1.0, unit)[1]
