"""napari-emdenoise: restore electron-microscopy images in napari and headless.

The engine (``noise``, ``synth``, ``models``, ``engine``, ``training``, ``drift``,
``io``) imports neither Qt nor napari; only ``_widgets`` does.
"""

__version__ = "0.1.0"

from .drift import align_stack, estimate_shift  # noqa: E402 - numpy only, no torch at import

__all__ = ["__version__", "align_stack", "estimate_shift"]

# 4D-STEM engine (numpy only at import; torch, dask and zarr load on first call)
from .engine.stack4d import restore_4dstem  # noqa: E402

__all__ += ["restore_4dstem"]
