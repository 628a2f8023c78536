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
        #: requested name → the layer object created for it (identity, not name, says
        #: which layer is ours: the user may remove ours and add one with its name)
        self._layers: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The owned layer requested as ``name`` if it is still in the viewer, else None."""
        layer = self._layers.get(name)
        if layer is not None and any(other is layer for other in self.viewer.layers):
            return layer
        return None

    def __contains__(self, layer_name: str) -> bool:
        """Whether a layer *currently called* ``layer_name`` is one of ours."""
        return any(layer.name == layer_name for name in self._layers if (layer := self.get(name)))

    def set(
        self, name: str, data: np.ndarray, geometry: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Create or update the owned layer ``name`` with ``data``; return the layer.

        ``kwargs`` (e.g. ``visible``) only apply when the layer is created.
        """
        geometry = geometry or {}
        layer = self.get(name)
        if layer is not None:
            layer.data = data
            for key, value in geometry.items():
                setattr(layer, key, value)
            layer.reset_contrast_limits()
            return layer
        actual = name if name not in self.viewer.layers else f"{name} ({self.suffix})"
        layer = self.viewer.add_image(data, name=actual, **geometry, **kwargs)
        self._layers[name] = layer
        return layer

    def remove(self, name: str) -> None:
        """Remove the owned layer ``name`` if it is still in the viewer."""
        layer = self.get(name)
        self._layers.pop(name, None)
        if layer is not None:
            self.viewer.layers.remove(layer)

    def retain(self, keep: set[str]) -> None:
        """Remove every owned layer whose requested name is not in ``keep``."""
        for name in sorted(set(self._layers) - keep):
            self.remove(name)
