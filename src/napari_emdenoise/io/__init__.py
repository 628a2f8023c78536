"""Read and write EM files with calibrated axes (nm); npe2 reader and writer hooks.

Heavy format libraries (rosettasciio, tifffile, zarr) are imported only when a
file is read or written.
"""

from __future__ import annotations

from .readers import SUPPORTED_EXTENSIONS, napari_get_reader, read_em
from .writers import write_single_image, write_tif, write_zarr

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "napari_get_reader",
    "read_em",
    "write_single_image",
    "write_tif",
    "write_zarr",
]
