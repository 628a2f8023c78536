"""Layers a widget creates and keeps updating, without ever touching the user's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["OwnedLayers"]


class OwnedLayers:
    """Image layers owned by one widget, updated in place.

    A layer is created on first use and its data replaced afterwards. If the
    user already has a layer of that name, the widget's layer gets a suffix:
    the user's layer is never overwritten.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    suffix : str
        Appended (in parentheses) to a name that a user layer already has.
    """

    def __init__(self, viewer: napari.viewer.Viewer, suffix: str) -> None:
        self.viewer = viewer
        self.suffix = suffix
        #: requested name → actual layer name
        self.names: dict[str, str] = {}

    def __contains__(self, layer_name: str) -> bool:
        return layer_name in self.names.values()

    def set(
        self, name: str, data: np.ndarray, geometry: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Create or update the owned layer ``name`` with ``data``; return the layer."""
        geometry = geometry or {}
        actual = self.names.get(name)
        if actual is not None and actual in self.viewer.layers:
            layer = self.viewer.layers[actual]
            layer.data = data
            for key, value in geometry.items():
                setattr(layer, key, value)
            layer.reset_contrast_limits()
            return layer
        actual = name if name not in self.viewer.layers else f"{name} ({self.suffix})"
        layer = self.viewer.add_image(data, name=actual, **geometry, **kwargs)
        self.names[name] = layer.name
        return layer

    def remove(self, name: str) -> None:
        """Remove the owned layer ``name`` if it still exists."""
        actual = self.names.pop(name, None)
        if actual is not None and actual in self.viewer.layers:
            self.viewer.layers.remove(actual)

    def retain(self, keep: set[str]) -> None:
        """Remove every owned layer whose requested name is not in ``keep``."""
        for name in sorted(set(self.names) - keep):
            self.remove(name)
