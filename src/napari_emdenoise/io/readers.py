"""Read EM image files into arrays with calibrated axes, and the npe2 reader hook.

Formats: Gatan ``.dm3``/``.dm4``, ``.emd`` (Velox and Berkeley/NCEM),
FEI TIA ``.ser``, ``.mrc``, Merlin ``.mib``, ASTAR ``.blo``, HyperSpy ``.hspy``, EMPAD
4D-STEM (the acquisition ``.xml`` or the ``.raw`` it names) through
rosettasciio (``rsciio``, imported only when such a file is read); TIFF
through tifffile (ImageJ and OME calibrations are read here, vendor tags of
FEI/Thermo, Zeiss, TVIPS, Olympus, JEOL and DigitalMicrograph TIFFs through
rosettasciio); ``.npy`` through numpy; ``.zarr`` arrays through zarr.

Every dataset comes back as ``(data, metadata)`` with ``metadata`` holding

``name``
    Title stored in the file, else the file name (``stem [i]`` for several).
``scale``
    Pixel size per array axis: **nm** for real-space axes, **1/nm** for
    reciprocal-space axes (diffraction), the file's unit otherwise (s, eV),
    1 for uncalibrated axes.
``units``
    Unit per axis: ``"nm"``, ``"1/nm"``, ``"pixel"`` or the file's unit.
``translate``
    Position of the first pixel per axis, in the same units.
``axis_names``
    Name per axis (``"y"``, ``"x"``, ``"z"``, … or ``""``).
``rgb``
    Whether the last axis holds colour samples (not included in ``scale``).
``source``, ``format``
    The file path and the format that read it.
``original_metadata``
    A flat, JSON-friendly subset of the file's own metadata (dotted keys,
    scalars and short lists only, at most 400 entries).
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import TooLargeError, check_fits_in_memory
from ._units import PIXEL, to_nm

__all__ = ["SUPPORTED_EXTENSIONS", "napari_get_reader", "read_em"]

logger = logging.getLogger(__name__)

#: Key under which :func:`~napari_emdenoise.io.writers.write_tif` stores the
#: exact calibration (ImageJ ``Properties``) and zarr attributes hold it.
CALIBRATION_KEY = "napari_emdenoise"

#: Extension → (rosettasciio module, format name).
_RSCIIO_FORMATS: dict[str, tuple[str, str]] = {
    ".dm3": ("rsciio.digitalmicrograph", "DigitalMicrograph"),
    ".dm4": ("rsciio.digitalmicrograph", "DigitalMicrograph"),
    ".emd": ("rsciio.emd", "EMD"),
    ".ser": ("rsciio.tia", "TIA"),
    ".mrc": ("rsciio.mrc", "MRC"),
    ".mib": ("rsciio.quantumdetector", "QuantumDetector"),
    ".blo": ("rsciio.blockfile", "Blockfile"),
    ".hspy": ("rsciio.hspy", "HSPY"),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    *_RSCIIO_FORMATS,
    ".tif",
    ".tiff",
    ".npy",
    ".zarr",
    *(".xml", ".raw"),  # EMPAD 4D-STEM: the .xml acquisition file and its .raw data
)
#: Largest .xml file inspected when looking for an EMPAD acquisition file.
_MAX_EMPAD_XML_BYTES = 16 * 2**20

_MAX_METADATA_ENTRIES = 400
_MAX_STRING = 256
_MAX_LIST = 16

LayerData = tuple[Any, dict[str, Any], str]


# --------------------------------------------------------------------------- helpers


def _extension(path: Path) -> str:
    return path.suffix.lower()


def _flatten_metadata(tree: object) -> dict[str, Any]:
    """Flatten nested metadata into ``{"a.b.c": scalar}``; drop arrays and blobs."""
    out: dict[str, Any] = {}

    def scalar(value: object) -> tuple[bool, Any]:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int)):
            return True, value
        if isinstance(value, float):
            return (True, value) if math.isfinite(value) else (True, str(value))
        if isinstance(value, str):
            return True, value[:_MAX_STRING]
        if isinstance(value, bytes):
            return True, value[:_MAX_STRING].decode("utf-8", errors="replace")
        return False, None

    def visit(prefix: str, value: object, depth: int) -> None:
        if len(out) >= _MAX_METADATA_ENTRIES or depth > 12:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item, depth + 1)
            return
        ok, plain = scalar(value)
        if ok:
            out[prefix] = plain
            return
        if isinstance(value, (list, tuple, np.ndarray)) and 0 < len(value) <= _MAX_LIST:
            items = [
                scalar(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)
            ]
            if all(ok for ok, _ in items):
                out[prefix] = [v for _, v in items]

    visit("", tree, 0)
    return out


def _is_finite_positive(value: object) -> bool:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number > 0


def _axis_calibration(scale: object, offset: object, unit: object) -> tuple[float, float, str]:
    """(scale, translate, unit) of one axis in nm / 1/nm, or uncalibrated pixels."""
    if not _is_finite_positive(scale):
        return 1.0, 0.0, PIXEL
    raw_scale = float(scale)  # type: ignore[arg-type]
    new_scale, new_unit = to_nm(raw_scale, unit)
    try:
        raw_offset = float(offset)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raw_offset = 0.0
    if not math.isfinite(raw_offset):
        raw_offset = 0.0
    return new_scale, raw_offset * (new_scale / raw_scale), new_unit


def _structured_to_channels(data: Any) -> tuple[Any, bool]:
    """Turn rosettasciio's structured RGB(A) dtype into a trailing channel axis."""
    names = getattr(getattr(data, "dtype", None), "names", None)
    if not names:
        return data, False
    array = np.asarray(data)
    return np.stack([array[name] for name in names], axis=-1), True


Calibration = tuple[Sequence[float], Sequence[float], Sequence[str]]
"""Per-axis ``(scales, translates, units)`` of one dataset."""


def _metadata(
    *,
    name: str,
    calibration: Calibration,
    axis_names: Sequence[str],
    rgb: bool,
    source: Path,
    fmt: str,
    original: object = None,
    **extra: Any,
) -> dict[str, Any]:
    """Reader metadata of one dataset; ``original`` is the raw metadata tree (flattened here)."""
    scales, translates, units = calibration
    meta: dict[str, Any] = {
        "name": name,
        "scale": tuple(float(s) for s in scales),
        "units": tuple(str(u) for u in units),
        "translate": tuple(float(t) for t in translates),
        "axis_names": tuple(str(n) for n in axis_names),
        "rgb": bool(rgb),
        "source": str(source),
        "format": fmt,
        "original_metadata": _flatten_metadata(original) if original is not None else {},
    }
    meta.update(extra)
    return meta


def _uncalibrated(data: Any, rgb: bool) -> tuple[list[float], list[float], list[str]]:
    n = np.ndim(data) - (1 if rgb else 0)
    return [1.0] * n, [0.0] * n, [PIXEL] * n


def _dataset_name(title: object, path: Path, index: int, count: int) -> str:
    text = str(title).strip() if title else ""
    if text:
        return text
    return path.stem if count == 1 else f"{path.stem} [{index}]"


def _saved_calibration(text: object, ndim: int) -> dict[str, Any] | None:
    """Calibration JSON written by our writers, if it matches ``ndim`` axes."""
    if not isinstance(text, str):
        return None
    try:
        saved = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(saved, dict):
        return None
    try:
        if not all(len(saved[key]) == ndim for key in ("scale", "units", "translate")):
            return None
    except (KeyError, TypeError):
        return None
    return saved


# --------------------------------------------------------------------------- rosettasciio


def _read_rsciio(path: Path, module_name: str, fmt: str, lazy: bool) -> list[tuple[Any, dict]]:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"reading {path.suffix} files needs rosettasciio and its dependencies "
            f"({exc}); install them with `pip install rosettasciio h5py`"
        ) from exc
    try:
        signals = module.file_reader(str(path), lazy=lazy)
    except ImportError as exc:  # e.g. h5py for .emd
        raise ImportError(f"reading {path.name} as {fmt} needs an optional package: {exc}") from exc
    except Exception as exc:  # rosettasciio raises many kinds on corrupt files
        raise ValueError(f"could not read {path} as a {fmt} file: {exc}") from exc
    if not signals:
        raise ValueError(f"{path} contains no dataset")
    return [
        _from_rsciio_signal(signal, path, fmt, index, len(signals))
        for index, signal in enumerate(signals)
    ]


def _from_rsciio_signal(
    signal: Mapping[str, Any], path: Path, fmt: str, index: int, count: int
) -> tuple[Any, dict]:
    data, rgb = _structured_to_channels(signal["data"])
    axes = list(signal.get("axes") or [])
    if any("index_in_array" in ax for ax in axes):
        axes.sort(key=lambda ax: ax.get("index_in_array", 0))
    n_axes = np.ndim(data) - (1 if rgb else 0)
    original = signal.get("original_metadata") or {}
    if len(axes) != n_axes:
        scales, translates, units = _uncalibrated(data, rgb)
        names = [""] * n_axes
    else:
        scales, translates, units, names = [], [], [], []
        for ax in axes:
            s, t, u = _axis_calibration(ax.get("scale"), ax.get("offset"), ax.get("units"))
            scales.append(s)
            translates.append(t)
            units.append(u)
            names.append(str(ax.get("name") or "").strip())
        if fmt == "MRC":
            _mark_uncalibrated_mrc(original, scales, translates, units)
    general = (signal.get("metadata") or {}).get("General", {}) or {}
    sig = (signal.get("metadata") or {}).get("Signal", {}) or {}
    meta = _metadata(
        name=_dataset_name(general.get("title"), path, index, count),
        calibration=(scales, translates, units),
        axis_names=names,
        rgb=rgb,
        source=path,
        fmt=fmt,
        original=original,
        signal_type=str(sig.get("signal_type") or ""),
        quantity=str(sig.get("quantity") or ""),
    )
    return data, meta


def _mark_uncalibrated_mrc(
    original: Mapping[str, Any], scales: list[float], translates: list[float], units: list[str]
) -> None:
    """rosettasciio reports 1 nm for MRC axes whose cell length is 0 (no calibration)."""
    header = original.get("std_header", {}) if isinstance(original, Mapping) else {}
    lengths = [header.get(key) for key in ("Zlen", "Ylen", "Xlen")]
    for axis, length in zip(range(-1, -len(scales) - 1, -1), reversed(lengths), strict=False):
        value = np.asarray(length).ravel()
        if value.size and float(value[0]) == 0.0:
            scales[axis], translates[axis], units[axis] = 1.0, 0.0, PIXEL


# --------------------------------------------------------------------------- TIFF

_TIFF_AXIS_NAMES = {"Y": "y", "X": "x", "Z": "z", "T": "t", "C": "c", "Q": "", "I": "i"}


def _read_tiff(path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    import tifffile

    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as exc:
        raise ValueError(f"could not read {path} as a TIFF file: {exc}") from exc
    try:
        if tif.is_imagej:
            return [_read_imagej(tif, path, lazy)]
        if tif.is_ome:
            return _read_ome(tif, path, lazy)
        plain = not (
            tif.is_fei
            or tif.is_sem
            or tif.is_tvips
            or tif.is_sis
            or any(tag.code in range(65003, 65028) for tag in tif.pages.first.tags)
        )
        if plain:
            return _read_plain_tiff(tif, path, lazy)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"could not read {path} as a TIFF file: {exc}") from exc
    finally:
        tif.close()
    try:
        return _read_rsciio(path, "rsciio.tiff", "TIFF", lazy)
    except ImportError:
        logger.info("rosettasciio missing: reading %s without its vendor calibration", path)
        with tifffile.TiffFile(str(path)) as tif:
            return _read_plain_tiff(tif, path, lazy)


def _check_loadable(nbytes: float, path: Path, shape: Sequence[int], dtype: object) -> None:
    """Refuse to load a dataset that would not fit in memory (a lazy read would)."""
    check_fits_in_memory(
        nbytes,
        f"loading {path.name} ({'×'.join(map(str, shape))} {dtype})",
        hint="open it lazily instead (read_em(path, lazy=True), as napari does)",
    )


def _series_data(series: Any, path: Path, lazy: bool) -> tuple[Any, str, bool]:
    """Pixel data of a TIFF series: a dask array when ``lazy`` (and dask/zarr are installed)."""
    shape = tuple(int(s) for s in series.shape)
    if lazy:
        try:
            import dask.array as da
            import zarr
        except ImportError:
            lazy = False
    try:
        if lazy:
            data = da.from_zarr(zarr.open(series.aszarr(), mode="r"))
        else:
            nbytes = math.prod(shape) * np.dtype(series.dtype).itemsize
            _check_loadable(nbytes, path, shape, series.dtype)
            data = series.asarray()
    except TooLargeError:
        raise
    except Exception as exc:
        raise ValueError(f"could not read the pixel data of {path}: {exc}") from exc
    axes = str(series.axes)
    rgb = axes.endswith("S") and shape[-1] in (3, 4)
    return data, axes, rgb


def _read_plain_tiff(tif: Any, path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    out = []
    series_list = list(tif.series)
    if not series_list:
        raise ValueError(f"{path} contains no image")
    for index, series in enumerate(series_list):
        data, axes, rgb = _series_data(series, path, lazy)
        names = [_TIFF_AXIS_NAMES.get(a, "") for a in (axes[:-1] if rgb else axes)]
        meta = _metadata(
            name=_dataset_name(None, path, index, len(series_list)),
            calibration=_uncalibrated(data, rgb),
            axis_names=names,
            rgb=rgb,
            source=path,
            fmt="TIFF",
            original={t.name: t.value for t in series.pages[0].tags},
        )
        out.append((data, meta))
    return out


def _rational(value: object) -> float | None:
    try:
        numerator, denominator = value  # type: ignore[misc]
        return float(numerator) / float(denominator) if denominator else None
    except (TypeError, ValueError):
        return None


def _read_imagej(tif: Any, path: Path, lazy: bool) -> tuple[Any, dict]:
    series = tif.series[0]
    data, axes, rgb = _series_data(series, path, lazy)
    spatial_axes = axes[:-1] if rgb else axes
    ij = tif.imagej_metadata or {}
    page = tif.pages.first
    names = [_TIFF_AXIS_NAMES.get(a, "") for a in spatial_axes]
    original = {k: v for k, v in ij.items() if k not in ("Ranges", "LUTs", "ROI", "Overlays")}
    properties = ij.get("Properties") if isinstance(ij.get("Properties"), dict) else {}
    saved = _saved_calibration(properties.get(CALIBRATION_KEY), len(spatial_axes))
    if saved is not None:
        return data, _metadata(
            name=str(saved.get("name") or path.stem),
            calibration=(saved["scale"], saved["translate"], saved["units"]),
            axis_names=saved.get("axis_names") if any(saved.get("axis_names") or ()) else names,
            rgb=rgb,
            source=path,
            fmt="TIFF (ImageJ)",
            original=original,
        )

    unit = ij.get("unit")
    unit = "µm" if unit in ("micron", "microns") else unit
    pixel_per_unit = {
        "X": _rational(page.tags["XResolution"].value) if "XResolution" in page.tags else None,
        "Y": _rational(page.tags["YResolution"].value) if "YResolution" in page.tags else None,
    }
    scales, translates, units = [], [], []
    for letter in spatial_axes:
        scale, offset, axis_unit = 1.0, 0.0, PIXEL
        if letter in "XY" and unit and pixel_per_unit[letter]:
            scale, offset, axis_unit = _axis_calibration(1.0 / pixel_per_unit[letter], 0.0, unit)
            origin = ij.get(f"{letter.lower()}origin")
            if origin is not None:
                offset = -float(origin) * scale
        elif letter == "Z" and unit and ij.get("spacing"):
            scale, offset, axis_unit = _axis_calibration(ij["spacing"], 0.0, unit)
        elif letter == "T" and ij.get("finterval"):
            scale, offset, axis_unit = float(ij["finterval"]), 0.0, "s"
        scales.append(scale)
        translates.append(offset)
        units.append(axis_unit)
    return data, _metadata(
        name=path.stem,
        calibration=(scales, translates, units),
        axis_names=names,
        rgb=rgb,
        source=path,
        fmt="TIFF (ImageJ)",
        original=original,
    )


def _read_ome(tif: Any, path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as exc:
        raise ValueError(f"{path} has invalid OME-XML metadata: {exc}") from exc
    images = [el for el in root.iter() if el.tag.endswith("}Image") or el.tag == "Image"]
    series_list = list(tif.series)
    out = []
    for index, series in enumerate(series_list):
        data, axes, rgb = _series_data(series, path, lazy)
        spatial_axes = axes[:-1] if rgb else axes
        image = images[index] if index < len(images) else None
        pixels = None
        if image is not None:
            pixels = next((el for el in image if el.tag.endswith("Pixels")), None)
        attrs = dict(pixels.attrib) if pixels is not None else {}
        scales, translates, units = [], [], []
        for letter in spatial_axes:
            scale, axis_unit = 1.0, PIXEL
            if letter in "XYZ" and f"PhysicalSize{letter}" in attrs:
                size_unit = attrs.get(f"PhysicalSize{letter}Unit", "µm")  # OME default
                scale, _, axis_unit = _axis_calibration(
                    attrs[f"PhysicalSize{letter}"], 0.0, size_unit
                )
            elif letter == "T" and "TimeIncrement" in attrs:
                scale = float(attrs["TimeIncrement"])
                axis_unit = attrs.get("TimeIncrementUnit", "s")
            scales.append(scale)
            translates.append(0.0)
            units.append(axis_unit)
        title = image.attrib.get("Name") if image is not None else None
        out.append(
            (
                data,
                _metadata(
                    name=_dataset_name(title, path, index, len(series_list)),
                    calibration=(scales, translates, units),
                    axis_names=[_TIFF_AXIS_NAMES.get(a, "") for a in spatial_axes],
                    rgb=rgb,
                    source=path,
                    fmt="TIFF (OME)",
                    original={"Pixels": attrs},
                ),
            )
        )
    if not out:
        raise ValueError(f"{path} contains no image")
    return out


# --------------------------------------------------------------------------- npy, zarr


def _read_npy(path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"could not read {path} as a .npy array: {exc}") from exc
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path} holds no single array (use .npy, not .npz)")
    if not lazy:
        _check_loadable(data.nbytes, path, data.shape, data.dtype)
        try:
            data = np.array(data)
        except Exception as exc:
            raise ValueError(f"could not read the data of {path}: {exc}") from exc
    data, rgb = _structured_to_channels(data)
    calibration = _uncalibrated(data, rgb)
    return [
        (
            data,
            _metadata(
                name=path.stem,
                calibration=calibration,
                axis_names=[""] * len(calibration[0]),
                rgb=rgb,
                source=path,
                fmt="numpy",
            ),
        )
    ]


def _read_zarr(path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    try:
        import zarr
    except ImportError as exc:
        raise ImportError("reading .zarr needs zarr: `pip install zarr dask`") from exc
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"could not open {path} as a zarr store: {exc}") from exc
    arrays = [node] if isinstance(node, zarr.Array) else [a for _, a in node.arrays()]
    if not arrays:
        raise ValueError(f"{path} contains no zarr array")
    out = []
    for index, array in enumerate(arrays):
        if lazy:
            import dask.array as da

            data = da.from_zarr(array)
        else:
            _check_loadable(array.nbytes, path, array.shape, array.dtype)
            try:
                data = array[...]
            except Exception as exc:
                raise ValueError(f"could not read the data of {path}: {exc}") from exc
        attrs = dict(array.attrs)
        saved = attrs.get(CALIBRATION_KEY)
        saved = _saved_calibration(json.dumps(saved), array.ndim) if saved else None
        if saved is None:
            calibration = _uncalibrated(data, False)
            names, title = [""] * array.ndim, None
        else:
            calibration = (saved["scale"], saved["translate"], saved["units"])
            names, title = saved.get("axis_names") or [""] * array.ndim, saved.get("name")
        out.append(
            (
                data,
                _metadata(
                    name=_dataset_name(title, path, index, len(arrays)),
                    calibration=calibration,
                    axis_names=names,
                    rgb=False,
                    source=path,
                    fmt="zarr",
                    original={k: v for k, v in attrs.items() if k != CALIBRATION_KEY},
                ),
            )
        )
    return out


# --------------------------------------------------------------------------- EMPAD


def _empad_raw_name(xml: Path) -> str | None:
    """The ``.raw`` file an EMPAD acquisition ``.xml`` names, or None for other XML."""
    try:
        if xml.stat().st_size > _MAX_EMPAD_XML_BYTES:
            return None
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    element = root.find("raw_file") if root.tag == "root" else None
    name = None if element is None else element.get("filename")
    return str(name) if name else None


def _empad_xml(path: Path) -> Path:
    """The EMPAD acquisition ``.xml`` of ``path`` (an ``.xml`` itself, or its ``.raw``).

    Raises
    ------
    ValueError
        If an ``.xml`` is not an EMPAD acquisition file, or no ``.xml`` beside
        a ``.raw`` names it.
    """
    if _extension(path) == ".xml":
        if _empad_raw_name(path) is None:
            raise ValueError(
                f"{path.name} is not an EMPAD acquisition file (no <raw_file filename=...> "
                "element); only EMPAD .xml files are read"
            )
        return path
    for xml in sorted(path.parent.glob("*.xml")):
        if _empad_raw_name(xml) == path.name:
            return xml
    raise ValueError(
        f"{path.name}: EMPAD .raw data are read through the acquisition .xml that names "
        f"them (scan size and calibration), and no .xml in {path.parent} names this file"
    )


def _read_empad(path: Path, lazy: bool) -> list[tuple[Any, dict]]:
    """EMPAD 4D-STEM data (scan_y, scan_x, 128, 128) through rosettasciio."""
    xml = _empad_xml(path)
    out = _read_rsciio(xml, "rsciio.empad", "EMPAD", lazy)
    for _, meta in out:
        if not any(meta["axis_names"][2:]) or meta["axis_names"][2:] == ("height", "width"):
            meta["axis_names"] = (*meta["axis_names"][:-2], "det_y", "det_x")
    return out


# --------------------------------------------------------------------------- public API


def read_em(path: str | Path, *, lazy: bool = False) -> list[tuple[Any, dict[str, Any]]]:
    """Read every dataset of an EM file.

    Parameters
    ----------
    path : str or pathlib.Path
        File (or ``.zarr`` directory) with one of :data:`SUPPORTED_EXTENSIONS`.
    lazy : bool
        Return dask arrays (rosettasciio formats, TIFF, zarr) or a read-only
        memory map (``.npy``) instead of loading the data. When False, data
        that would not fit in the available memory are refused up front
        (:class:`~napari_emdenoise._validation.TooLargeError`, a ValueError).

    Returns
    -------
    list of (array, dict)
        One ``(data, metadata)`` pair per dataset; see the module notes for
        the metadata keys (``scale`` in nm for spatial axes).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unsupported extension, a corrupt/truncated file, or (eager
        reads) data larger than the available memory.
    ImportError
        If the format needs a package that is not installed (rosettasciio,
        h5py for ``.emd``, zarr).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    ext = _extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"unsupported file type {ext or '(no extension)'!r} for {path.name}; supported: "
            + ", ".join(SUPPORTED_EXTENSIONS)
        )
    if ext != ".zarr" and path.is_dir():
        raise ValueError(f"{path} is a directory, not a {ext} file")
    if ext in _RSCIIO_FORMATS:
        module, fmt = _RSCIIO_FORMATS[ext]
        return _read_rsciio(path, module, fmt, lazy)
    if ext in (".xml", ".raw"):
        return _read_empad(path, lazy)
    if ext in (".tif", ".tiff"):
        return _read_tiff(path, lazy)
    if ext == ".npy":
        return _read_npy(path, lazy)
    return _read_zarr(path, lazy)


#: Units napari (pint) is known to accept.
_NAPARI_UNITS = {"nm", "1/nm", PIXEL, "s", "ms", "µs", "eV", "keV", "rad", "mrad", "deg"}

#: Files larger than this are opened lazily by the napari reader (zarr stores always are).
_LAZY_BYTES = 1 << 30


def _layer_data(data: Any, meta: dict[str, Any]) -> LayerData | None:
    if np.ndim(data) - (1 if meta["rgb"] else 0) < 2:
        logger.info("skipping %s: napari image layers need 2 or more dimensions", meta["name"])
        return None
    if 0 in np.shape(data):
        logger.info("skipping %s: it holds no pixels (shape %s)", meta["name"], np.shape(data))
        return None
    if np.iscomplexobj(data):
        data = np.abs(data)
        meta = {**meta, "complex_part": "modulus"}
    kwargs: dict[str, Any] = {
        "name": meta["name"],
        "scale": meta["scale"],
        "translate": meta["translate"],
        "metadata": meta,
    }
    if meta["rgb"]:
        kwargs["rgb"] = True
    if all(u in _NAPARI_UNITS for u in meta["units"]):
        kwargs["units"] = meta["units"]
    names = meta["axis_names"]
    if all(names) and len(set(names)) == len(names):
        kwargs["axis_labels"] = names
    return data, kwargs, "image"


def _read_for_napari(paths: str | Sequence[str]) -> list[LayerData]:
    layers: list[LayerData] = []
    for item in [paths] if isinstance(paths, (str, Path)) else list(paths):
        path = Path(item)
        lazy = _extension(path) == ".zarr" or (path.is_file() and path.stat().st_size > _LAZY_BYTES)
        try:
            datasets = read_em(path, lazy=lazy)
        except TooLargeError:  # does not fit in memory now: open it lazily instead
            lazy = True
            datasets = read_em(path, lazy=True)
        for data, meta in datasets:
            if lazy and isinstance(data, np.memmap):
                try:
                    import dask.array as da
                except ImportError:  # a memory map is lazy too
                    pass
                else:
                    data = da.from_array(data, chunks="auto")
            layer = _layer_data(data, meta)
            if layer is not None:
                layers.append(layer)
    if not layers:
        raise ValueError(f"no image (2-D or more, with pixels) found in {paths}")
    return layers


def napari_get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """npe2 reader hook (``napari_emdenoise.io.readers:napari_get_reader``).

    Parameters
    ----------
    path : str or sequence of str
        What napari wants to open.

    Returns
    -------
    callable or None
        A function returning napari ``LayerData`` tuples
        ``(data, {"name", "scale", "translate", "units", "metadata", …}, "image")``
        when every path has a supported extension, else None.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    if not all(_extension(Path(p)) in SUPPORTED_EXTENSIONS for p in paths):
        return None
    for p in paths:  # .xml and .raw files are ours only when they are EMPAD data
        if _extension(Path(p)) in (".xml", ".raw"):
            try:
                _empad_xml(Path(p))
            except ValueError:
                return None
    return _read_for_napari
