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

Existing files are never replaced unless ``overwrite=True``; the napari hook
passes it because napari has already asked the user.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._units import PIXEL, to_nm
from .readers import CALIBRATION_KEY

__all__ = ["write_single_image", "write_tif", "write_zarr"]

_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_EXACT_TO_FLOAT32 = {np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.float16)}
_IMAGEJ_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
_TIME_UNITS = {"s", "ms", "µs"}


def _sequence(value: object, n: int) -> list[Any] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        return None
    return items if len(items) == n else None


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
    for s, t, u in zip(scale, translate, units, strict=True):
        s, t = float(s), float(t)
        new_scale, new_unit = to_nm(s, None if u is None else str(u))
        factor = new_scale / s if s else 1.0
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


def _prepare(path: str | Path, data: object, overwrite: bool, suffixes: tuple[str, ...]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path.name}: expected one of the extensions {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    dtype = np.dtype(getattr(data, "dtype", np.asarray(data).dtype))
    if dtype.kind not in "biuf":
        raise ValueError(f"cannot write data of dtype {dtype}: only real numbers are supported")
    shape = tuple(getattr(data, "shape", np.shape(data)))
    if len(shape) < 2 or 0 in shape:
        raise ValueError(f"data must be a non-empty image of 2 or more dimensions, got {shape}")
    return path


def write_tif(
    path: str | Path,
    data: object,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write an image or stack to TIFF, keeping its pixel size.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.tif``/``.tiff`` file.
    data : array_like
        2-D image, or a stack with up to 5 axes (``…, y, x``), real dtype; a
        trailing RGB(A) axis when ``metadata["rgb"]`` is true.
    metadata : mapping, optional
        Reader metadata or napari layer attributes (see
        :func:`calibration_from_metadata`): ``scale`` and ``units`` per axis.
    overwrite : bool
        Replace an existing file. Default False: refuse.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        For a wrong extension, complex/object data, fewer than 2 dimensions
        or an empty array.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    import tifffile

    path = _prepare(path, data, overwrite, (".tif", ".tiff"))
    array = np.asarray(data)
    rgb = bool((metadata or {}).get("rgb", False)) and array.shape[-1] in (3, 4)
    n_axes = array.ndim - (1 if rgb else 0)
    if n_axes < 2:
        raise ValueError(f"data must have 2 or more image axes, got shape {array.shape}")
    calib = calibration_from_metadata(n_axes, metadata)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype in _EXACT_TO_FLOAT32:
        array = array.astype(np.float32)
    imagej = array.dtype in _IMAGEJ_DTYPES and n_axes in _IMAGEJ_AXES
    if rgb and array.dtype != np.uint8:
        imagej = False
    if imagej:
        _write_imagej(tifffile, path, array, calib, rgb)
    else:
        _write_ome(tifffile, path, array, calib, rgb)
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


def write_zarr(
    path: str | Path,
    data: object,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write an array (numpy or dask, e.g. from ``restore_dask``) to a zarr store.

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
        Replace an existing store. Default False: refuse.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError, FileExistsError
        As for :func:`write_tif`.
    """
    import zarr

    path = _prepare(path, data, overwrite, (".zarr",))
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    calib = calibration_from_metadata(len(data.shape), metadata)  # type: ignore[attr-defined]
    if hasattr(data, "dask"):
        data.to_zarr(str(path), overwrite=True)  # type: ignore[attr-defined]
        array = zarr.open_array(str(path), mode="r+")
    else:
        values = np.asarray(data)
        chunks = (1,) * (values.ndim - 2) + tuple(min(s, 2048) for s in values.shape[-2:])
        array = zarr.create_array(
            store=str(path), shape=values.shape, dtype=values.dtype, chunks=chunks
        )
        array[...] = values
    array.attrs[CALIBRATION_KEY] = calib
    return str(path)


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
        existing file is replaced.
    """
    if Path(path).suffix.lower() == ".zarr":
        return [write_zarr(path, data, meta, overwrite=True)]
    return [write_tif(path, data, meta, overwrite=True)]
