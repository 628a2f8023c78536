"""Layers a widget creates and keeps updating, without ever touching the user's own."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import find_layer

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["OwnedLayers"]


class OwnedLayers:
    """Image layers owned by one widget, updated in place.

    A layer is created on first use and its data replaced afterwards. If the
    user already has a layer of that name, the widget's layer gets a suffix:
    the user's layer is never overwritten.

    Ownership is recorded by ``layer.unique_id``, not by object identity: a
    plugin widget sees the viewer through napari's ``PublicOnlyProxy``, which
    hands out a new proxy object for every access to a layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (or napari's proxy of it).
    suffix : str
        Appended (in parentheses) to a name that a user layer already has.
    """

    def __init__(self, viewer: napari.viewer.Viewer, suffix: str) -> None:
        self.viewer = viewer
        self.suffix = suffix
        #: requested name → unique_id of the layer created for it (the user may remove
        #: ours and add one with its name: the id, not the name, says which one is ours)
        self._ids: dict[str, Hashable] = {}

    def get(self, name: str) -> Any:
        """The owned layer requested as ``name`` if it is still in the viewer, else None."""
        uid = self._ids.get(name)
        return None if uid is None else find_layer(self.viewer, uid)

    def owns(self, layer: Any) -> bool:
        """Whether ``layer`` (or a proxy of it) is one of ours."""
        return layer.unique_id in self._ids.values()

    def __contains__(self, layer_name: object) -> bool:
        """Whether a layer *currently called* ``layer_name`` is one of ours."""
        ids = set(self._ids.values())
        return any(
            layer.name == layer_name and layer.unique_id in ids for layer in self.viewer.layers
        )

    def __len__(self) -> int:
        """Number of owned layers still in the viewer."""
        ids = set(self._ids.values())
        return sum(layer.unique_id in ids for layer in self.viewer.layers)

    def set(
        self, name: str, data: np.ndarray, geometry: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Create or update the owned layer ``name`` with ``data``; return the layer.

        ``geometry`` (scale, translate, units…) is applied every time; ``kwargs``
        (e.g. ``visible``) only when the layer is created.
        """
        geometry = geometry or {}
        layer = self.get(name)
        if layer is not None:
            layer.data = data
            for key, value in geometry.items():
                setattr(layer, key, value)
            layer.reset_contrast_limits()
            return layer
        from napari.layers import Image

        actual = name if name not in self.viewer.layers else f"{name} ({self.suffix})"
        layer = Image(data, name=actual, **geometry, **kwargs)
        # recorded before it is inserted: handlers of the viewer's "inserted" event
        # (e.g. the widget's own input lists) must already see it as ours
        self._ids[name] = layer.unique_id
        self.viewer.add_layer(layer)
        return layer

    def remove(self, name: str) -> None:
        """Remove the owned layer ``name`` if it is still in the viewer."""
        layer = self.get(name)
        self._ids.pop(name, None)
        if layer is not None:
            self.viewer.layers.remove(layer)

    def retain(self, keep: set[str]) -> None:
        """Remove every owned layer whose requested name is not in ``keep``."""
        for name in sorted(set(self._ids) - keep):
            self.remove(name)
