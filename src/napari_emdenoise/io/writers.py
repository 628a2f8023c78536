"""Write restored images with their pixel size, and the npe2 writer hook.

TIFF (:func:`write_tif`): ImageJ hyperstacks for the dtypes ImageJ knows
(uint8, uint16, float32; bool, int8, int16 and float16 are stored exactly as
uint8/float32) with the pixel size in nm in the resolution tags and the
``unit`` entry, Z spacing / frame interval, and the exact calibration of every
axis as JSON in the ImageJ ``Properties`` (read back by
:func:`~napari_emdenoise.io.readers.read_em`). Other dtypes (int32, float64, …)
go to OME-TIFF with ``PhysicalSize{X,Y,Z}`` in nm. zarr (:func:`write_zarr`)
stores the same JSON in the array's attributes and accepts dask arrays
chunk by chunk.

What happens to the files on disk:

* every writer writes to a temporary file (or folder) beside the target and
  moves it into place with :func:`os.replace` only once it is complete, so a
  failed write leaves the previous file, and any folder, untouched;
* existing files are never replaced unless ``overwrite=True`` (the napari hook
  passes it because napari has already asked the user), and never when the
  target is the file the image was read from (``metadata["source"]``,
  compared by file identity, so hard links and symlinks count);
* an existing ``.zarr`` folder is only replaced when it is a zarr store that
  this plugin wrote (zarr metadata, the ``napari_emdenoise`` attribute and
  nothing but zarr keys inside); anything else is refused, never deleted;
* everything that can be checked (extension, dtype, shape, calibration) is
  checked before the disk is touched.

``int64``/``uint64`` data, which OME-TIFF cannot hold, are stored exactly as
``int32``/``uint32`` when the values fit, else as ``float64`` when every value
is an integer of magnitude at most 2**53; other values are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_fits_in_memory
from ._units import PIXEL, to_nm
from .readers import CALIBRATION_KEY

__all__ = ["write_single_image", "write_tif", "write_zarr"]

_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_EXACT_TO_FLOAT32 = {np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.float16)}
_IMAGEJ_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
_TIME_UNITS = {"s", "ms", "µs"}
#: Most non-colour axes a TIFF (ImageJ or OME) can hold: T, Z, C, Y, X.
_MAX_TIFF_AXES = 5
_EXACT_FLOAT64 = 2**53
#: File and folder names a zarr store holds (metadata documents and chunk keys).
_ZARR_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
_ZARR_CHUNK = re.compile(r"^(c|\d+)([./]\d+)*$")


def _sequence(value: object, n: int) -> list[Any] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        return None
    return items if len(items) == n else None


def _axis_number(value: object, axis: int, what: str) -> float:
    """``float(value)`` if it is a finite number, else a ValueError naming the axis."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"the {what} of axis {axis} must be a finite number, got {value!r}")
    return number


def calibration_from_metadata(ndim: int, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-axis calibration (nm) from reader metadata or a napari layer's attributes.

    Parameters
    ----------
    ndim : int
        Number of non-colour axes of the data.
    meta : mapping or None
        Either the metadata of :func:`~napari_emdenoise.io.readers.read_em`
        or the ``meta`` dict napari hands to a writer (``scale``,
        ``translate``, ``units`` as pint units, ``name``, ``metadata``).

    Returns
    -------
    dict
        ``scale``, ``translate``, ``units`` (``"nm"``, ``"1/nm"``, ``"pixel"``
        or as given), ``axis_names`` and ``name``; uncalibrated axes get
        scale 1 in pixels.

    Raises
    ------
    ValueError
        If a scale is not a positive finite number or a translate not finite.
    """
    meta = dict(meta or {})
    nested = meta.get("metadata") if isinstance(meta.get("metadata"), Mapping) else {}
    scale = _sequence(meta.get("scale"), ndim) or [1.0] * ndim
    translate = _sequence(meta.get("translate"), ndim) or [0.0] * ndim
    units = _sequence(meta.get("units"), ndim)
    if units is None or all(str(u).strip().lower() in ("pixel", "pixels", "") for u in units):
        # napari layers default to pixel units: fall back to the reader's units,
        # whose scale is the layer's scale when the layer came from read_em.
        units = _sequence(nested.get("units"), ndim) or [PIXEL] * ndim
    out_scale, out_translate, out_units = [], [], []
    for axis, (s, t, u) in enumerate(zip(scale, translate, units, strict=True)):
        s, t = _axis_number(s, axis, "scale (pixel size)"), _axis_number(t, axis, "translate")
        if s <= 0:
            raise ValueError(f"the scale (pixel size) of axis {axis} must be positive, got {s!r}")
        new_scale, new_unit = to_nm(s, None if u is None else str(u))
        if not (math.isfinite(new_scale) and new_scale > 0):
            raise ValueError(f"the scale of axis {axis} ({s!r} {u}) is out of range in nm")
        factor = new_scale / s
        out_scale.append(new_scale)
        out_translate.append(t * factor)
        out_units.append(new_unit)
    names = (
        _sequence(meta.get("axis_names"), ndim)
        or _sequence(nested.get("axis_names"), ndim)
        or _sequence(meta.get("axis_labels"), ndim)
        or [""] * ndim
    )
    return {
        "name": str(meta.get("name") or nested.get("name") or ""),
        "scale": out_scale,
        "translate": out_translate,
        "units": out_units,
        "axis_names": [str(n) for n in names],
    }


def _same_file(a: Path, b: object) -> bool:
    """Whether ``a`` and ``b`` are the same file on disk (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, os.fspath(b))  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return False


def _source_paths(metadata: Mapping[str, Any] | None) -> list[str]:
    """The files an image was read from, as recorded by the reader (``source``)."""
    meta = dict(metadata or {})
    nested = meta.get("metadata") if isinstance(meta.get("metadata"), Mapping) else {}
    return [str(s) for s in (meta.get("source"), nested.get("source")) if s]


def _prepare(
    path: str | Path,
    data: object,
    overwrite: bool,
    suffixes: tuple[str, ...],
    metadata: Mapping[str, Any] | None,
) -> Path:
    """Check everything about a write that can be checked before touching the disk."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path.name}: expected one of the extensions {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        for source in _source_paths(metadata):
            if _same_file(path, source):
                raise ValueError(
                    f"refusing to overwrite {path}: it is the file this image was read from "
                    f"({source}); inputs are never modified, choose another name"
                )
    dtype = np.dtype(data.dtype if hasattr(data, "dtype") else np.asarray(data).dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"cannot write data of dtype {dtype}: only real numbers are supported")
    shape = tuple(getattr(data, "shape", np.shape(data)))
    if len(shape) < 2 or 0 in shape:
        raise ValueError(f"data must be a non-empty image of 2 or more dimensions, got {shape}")
    return path


def _umask() -> int:
    """The process's file-creation mask."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``; move it into place on success.

    On any error (or interruption) the temporary file is removed and ``path``
    is left as it was.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exact_ome_dtype(array: np.ndarray) -> np.ndarray:
    """int64/uint64 as the narrowest type OME-TIFF holds that keeps every value exactly."""
    if array.dtype.kind not in "iu" or array.dtype.itemsize < 8:
        return array
    lo, hi = int(array.min()), int(array.max())
    narrow = np.dtype(np.int32 if array.dtype.kind == "i" else np.uint32)
    info = np.iinfo(narrow)
    if info.min <= lo and hi <= info.max:
        return array.astype(narrow)
    if -_EXACT_FLOAT64 <= lo and hi <= _EXACT_FLOAT64:
        return array.astype(np.float64)
    raise ValueError(
        f"cannot write {array.dtype} data with values in [{lo}, {hi}] to TIFF exactly: "
        "TIFF holds at most 32-bit integers and float64 is exact only up to 2**53; "
        "write .zarr instead"
    )


def write_tif(
    path: str | Path,
    data: object,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write an image or stack to TIFF, keeping its pixel size.

    The file is written to a temporary file in the same folder and moved into
    place only when complete: a failed write leaves an existing file untouched.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.tif``/``.tiff`` file.
    data : array_like
        2-D image, or a stack with up to 5 axes (``…, y, x``), real dtype; a
        trailing RGB(A) axis when ``metadata["rgb"]`` is true.
    metadata : mapping, optional
        Reader metadata or napari layer attributes (see
        :func:`calibration_from_metadata`): ``scale`` and ``units`` per axis;
        ``source`` (the file the image was read from) is never overwritten.
    overwrite : bool
        Replace an existing file. Default False: refuse.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        For a wrong extension, complex/object data, fewer than 2 or more than
        5 image axes, an empty array, a scale that is not a positive finite
        number, 64-bit integers that no TIFF type holds exactly, or a target
        that is the image's own source file.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    import tifffile

    path = _prepare(path, data, overwrite, (".tif", ".tiff"), metadata)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    if not isinstance(data, np.ndarray) and hasattr(data, "dtype"):  # dask, zarr: load it
        shape = tuple(int(n) for n in np.shape(data))
        check_fits_in_memory(
            math.prod(shape) * np.dtype(data.dtype).itemsize,  # type: ignore[attr-defined]
            f"writing {path.name} ({'×'.join(map(str, shape))})",
            hint="write a .zarr store instead, chunk by chunk",
        )
    array = np.asarray(data)
    rgb = bool((metadata or {}).get("rgb", False)) and array.shape[-1] in (3, 4)
    n_axes = array.ndim - (1 if rgb else 0)
    if n_axes < 2:
        raise ValueError(f"data must have 2 or more image axes, got shape {array.shape}")
    if n_axes > _MAX_TIFF_AXES:
        raise ValueError(
            f"TIFF holds at most {_MAX_TIFF_AXES} image axes (T, Z, C, Y, X); got "
            f"{n_axes}-D data of shape {array.shape}: write .zarr instead"
        )
    calib = calibration_from_metadata(n_axes, metadata)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype in _EXACT_TO_FLOAT32:
        array = array.astype(np.float32)
    imagej = array.dtype in _IMAGEJ_DTYPES and n_axes in _IMAGEJ_AXES
    if rgb and array.dtype != np.uint8:
        imagej = False
    if imagej:
        _replace_atomically(path, lambda tmp: _write_imagej(tifffile, tmp, array, calib, rgb))
    else:
        array = _exact_ome_dtype(array)
        _replace_atomically(path, lambda tmp: _write_ome(tifffile, tmp, array, calib, rgb))
    return str(path)


def _write_imagej(tifffile: Any, path: Path, array: np.ndarray, calib: dict, rgb: bool) -> None:
    n = array.ndim - (1 if rgb else 0)
    axes = _IMAGEJ_AXES[n]
    units = calib["units"]
    scale = calib["scale"]
    if n == 3 and units[0] in _TIME_UNITS:
        axes = "TYX"
    meta: dict[str, Any] = {
        "axes": axes + ("S" if rgb else ""),
        "Properties": {CALIBRATION_KEY: json.dumps(calib)},
    }
    resolution = None
    if units[-1] == units[-2] and units[-1] != PIXEL:
        unit = units[-1]
        meta["unit"] = "micron" if unit == "µm" else unit
        resolution = (1.0 / scale[-1], 1.0 / scale[-2])
        if calib["translate"][-1] or calib["translate"][-2]:
            meta["xorigin"] = -calib["translate"][-1] / scale[-1]
            meta["yorigin"] = -calib["translate"][-2] / scale[-2]
        if "Z" in axes and units[axes.index("Z")] == unit:
            meta["spacing"] = scale[axes.index("Z")]
    if "T" in axes and units[axes.index("T")] == "s":
        meta["finterval"] = scale[axes.index("T")]
    _imwrite(tifffile, path, array, rgb, imagej=True, resolution=resolution, metadata=meta)


def _write_ome(tifffile: Any, path: Path, array: np.ndarray, calib: dict, rgb: bool) -> None:
    n = array.ndim - (1 if rgb else 0)
    letters = _IMAGEJ_AXES.get(n, "Q" * (n - 5) + "TZCYX")
    if n == 3 and calib["units"][0] in _TIME_UNITS:
        letters = "TYX"
    meta: dict[str, Any] = {"axes": letters + ("S" if rgb else "")}
    if calib["name"]:
        meta["Name"] = calib["name"]
    for letter in "XYZ":
        if letter in letters:
            i = letters.index(letter)
            if calib["units"][i] == "nm":
                meta[f"PhysicalSize{letter}"] = calib["scale"][i]
                meta[f"PhysicalSize{letter}Unit"] = "nm"
    if "T" in letters and calib["units"][letters.index("T")] == "s":
        meta["TimeIncrement"] = calib["scale"][letters.index("T")]
        meta["TimeIncrementUnit"] = "s"
    _imwrite(tifffile, path, array, rgb, ome=True, metadata=meta)


def _imwrite(tifffile: Any, path: Path, array: np.ndarray, rgb: bool, **options: Any) -> None:
    """``tifffile.imwrite`` with the photometric interpretation and software tag we always set."""
    tifffile.imwrite(
        path,
        array,
        photometric="rgb" if rgb else "minisblack",
        software="napari-emdenoise",
        **options,
    )


def _is_our_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a zarr array folder written by :func:`write_zarr`.

    True only for a real folder (not a symlink) holding zarr metadata, whose
    array carries the ``napari_emdenoise`` attribute, and holding nothing but
    zarr metadata documents and chunk keys.
    """
    if path.is_symlink() or not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if not names & {"zarr.json", ".zarray"}:
        return False
    for root, dirs, files in os.walk(path, followlinks=False):
        rel = Path(root).relative_to(path)
        for name in [*dirs, *files]:
            if rel == Path(".") and name in _ZARR_METADATA:
                continue
            if not _ZARR_CHUNK.match(name):
                return False
        if any(Path(root, d).is_symlink() for d in dirs):
            return False
    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return isinstance(node, zarr.Array) and CALIBRATION_KEY in node.attrs


def write_zarr(
    path: str | Path,
    data: object,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write an array (numpy or dask, e.g. from ``restore_dask``) to a zarr store.

    The store is written into a temporary folder beside ``path`` and renamed
    into place when complete. With ``overwrite=True`` an existing store is
    replaced only if it is one this plugin wrote (see the module notes);
    any other folder or file is refused and left untouched.

    Parameters
    ----------
    path : str or pathlib.Path
        Output directory ending in ``.zarr``.
    data : array_like or dask.array.Array
        Real-valued array of 2 or more dimensions; dask arrays are written
        chunk by chunk without loading the whole array.
    metadata : mapping, optional
        As for :func:`write_tif`; the calibration is stored in the array's
        attributes under ``"napari_emdenoise"``.
    overwrite : bool
        Replace an existing store written by this plugin. Default False: refuse.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        As for :func:`write_tif`, and when ``path`` exists but is not a zarr
        store written by this plugin.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    import zarr

    path = _prepare(path, data, overwrite, (".zarr",), metadata)
    if os.path.lexists(path) and not _is_our_zarr_store(path):
        raise ValueError(
            f"refusing to replace {path}: it is not a zarr store written by napari-emdenoise "
            "(it may hold other data); choose another name or remove it yourself"
        )
    calib = calibration_from_metadata(len(np.shape(data)), metadata)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        if hasattr(data, "dask"):
            data.to_zarr(str(tmp), overwrite=True)  # type: ignore[attr-defined]
            array = zarr.open_array(str(tmp), mode="r+")
        else:
            values = np.asarray(data)
            chunks = (1,) * (values.ndim - 2) + tuple(min(s, 2048) for s in values.shape[-2:])
            array = zarr.create_array(
                store=str(tmp), shape=values.shape, dtype=values.dtype, chunks=chunks
            )
            array[...] = values
        array.attrs[CALIBRATION_KEY] = calib
        os.chmod(tmp, 0o777 & ~_umask())
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(path)


def _swap_in(new: Path, path: Path) -> None:
    """Rename the folder ``new`` to ``path``, replacing a store :func:`write_zarr` wrote."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    old.rmdir()
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the previous store back
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_single_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer hook for one image layer (``napari_emdenoise.io.writers:write_single_image``).

    Parameters
    ----------
    path : str
        Target path chosen in napari: ``.tif``, ``.tiff`` or ``.zarr``.
    data : array_like
        The layer's data.
    meta : dict
        The layer's attributes (``scale``, ``units``, ``name``, ``metadata``,
        ``rgb``…).

    Returns
    -------
    list of str
        The paths written. napari confirms overwriting with the user, so an
        existing file is replaced, but never the file the layer was read from,
        and never a folder that is not a zarr store this plugin wrote.

    Raises
    ------
    ValueError, OSError
        As for :func:`write_tif` and :func:`write_zarr`.
    """
    if Path(path).suffix.lower() == ".zarr":
        return [write_zarr(path, data, meta, overwrite=True)]
    return [write_tif(path, data, meta, overwrite=True)]
