"""Overlapping tiles and seamless blending for images larger than one network pass.

The image is covered by equal tiles of ``tile_shape`` pixels whose neighbours
share ``overlap`` pixels; the last tile of each row and column is snapped to
the image border, so any image size works (an image smaller than a tile is
one tile of the image's size). Every tile output is multiplied by a window
and the weighted sum is divided by the summed weights.

The window of a tile is 1 except inside the overlap zones toward its
*neighbouring* tiles (never at the image border). There, the outer ``margin``
pixels get weight 0 — a convolutional network's output is wrong near a tile
edge that is not an image edge, by up to its receptive-field radius — and the
next ``overlap − 2·margin`` pixels rise as a raised cosine
``sin²(π/2 · (k + ½)/ramp)``. The rising ramp of one tile and the falling
ramp of its neighbour cover the same pixels and sum to 1, so the blend is
seam free; with the normalisation by the summed weights the result is

* exactly the untiled result for a pointwise model (any positive weights),
* exactly the untiled result, up to float rounding, for a translation
  equivariant convolutional model whose receptive-field radius is at most
  ``margin`` pixels (tiles only contribute where their output is exact),
* a smooth cross-fade otherwise.

Pure numpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Tile", "TileBlender", "TileGrid", "assemble", "blend_window", "default_margin"]


def default_margin(overlap: int) -> int:
    """Pixels discarded at each tile edge that faces a neighbour: ``overlap // 4``.

    Parameters
    ----------
    overlap : int
        Overlap between neighbouring tiles, in pixels.

    Returns
    -------
    int
        The margin, in pixels; the cross-fade then spans the middle half of
        the overlap.
    """
    return int(overlap) // 4


def _check_overlap_margin(overlap: int, margin: int) -> None:
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    if overlap > 0 and 2 * margin >= overlap:
        raise ValueError(
            f"margin ({margin} px) must be smaller than half the overlap ({overlap} px) so that "
            "neighbouring tiles leave at least one pixel to cross-fade"
        )
    if overlap == 0 and margin != 0:
        raise ValueError("margin must be 0 when the overlap is 0")


def _axis_profile(length: int, before: bool, after: bool, overlap: int, margin: int) -> np.ndarray:
    """1-D window: ramps only on the sides that face a neighbouring tile."""
    profile = np.ones(length, dtype=np.float64)
    ramp = overlap - 2 * margin
    if ramp <= 0:
        return profile
    k = np.arange(ramp, dtype=np.float64)
    rising = np.sin(0.5 * np.pi * (k + 0.5) / ramp) ** 2
    if before:
        head = np.concatenate([np.zeros(margin), rising])[:length]
        profile[: head.size] *= head
    if after:
        tail = np.concatenate([rising[::-1], np.zeros(margin)])[-length:]
        profile[length - tail.size :] *= tail
    return profile


@functools.lru_cache(maxsize=64)
def _cached_window(
    tile_shape: tuple[int, int],
    overlap: int,
    neighbours: tuple[bool, bool, bool, bool],
    margin: int,
) -> np.ndarray:
    top, bottom, left, right = neighbours
    wy = _axis_profile(tile_shape[0], top, bottom, overlap, margin)
    wx = _axis_profile(tile_shape[1], left, right, overlap, margin)
    window = np.outer(wy, wx).astype(np.float32)
    window.setflags(write=False)
    return window


def blend_window(
    tile_shape: tuple[int, int],
    overlap: int,
    neighbours: tuple[bool, bool, bool, bool] = (True, True, True, True),
    margin: int | None = None,
) -> np.ndarray:
    """Blending weights of one tile.

    Parameters
    ----------
    tile_shape : tuple of int
        ``(height, width)`` of the tile, in pixels.
    overlap : int
        Pixels shared with each neighbouring tile.
    neighbours : tuple of bool
        Whether the tile has a neighbour above, below, to the left and to
        the right. Sides without one (image borders) keep weight 1.
    margin : int, optional
        Pixels given weight 0 at each side with a neighbour (default
        ``overlap // 4``); must be smaller than ``overlap / 2``.

    Returns
    -------
    numpy.ndarray
        Read-only float32 array of ``tile_shape``: the separable product of
        two 1-D profiles, each 0 on the margin, a raised-cosine ramp over
        ``overlap − 2·margin`` pixels, then 1.

    Raises
    ------
    ValueError
        For a negative overlap or margin, or a margin too large for the
        overlap.
    """
    overlap = int(overlap)
    margin = default_margin(overlap) if margin is None else int(margin)
    _check_overlap_margin(overlap, margin)
    shape = (int(tile_shape[0]), int(tile_shape[1]))
    if min(shape) < 1:
        raise ValueError(f"tile_shape must be positive, got {tile_shape}")
    flags = tuple(bool(n) for n in neighbours)
    if len(flags) != 4:
        raise ValueError("neighbours must be four booleans: (top, bottom, left, right)")
    return _cached_window(shape, overlap, flags, margin)  # type: ignore[arg-type]


def _axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile origins along one axis: stride ``tile − overlap``, last one snapped to the end."""
    if tile >= length:
        return (0,)
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return tuple(starts)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes
    ----------
    index : int
        Position in the grid's row-major order.
    y, x : int
        Top-left corner in the image, in pixels.
    height, width : int
        Size, in pixels.
    neighbours : tuple of bool
        Whether a neighbouring tile lies above, below, left and right.
    """

    index: int
    y: int
    x: int
    height: int
    width: int
    neighbours: tuple[bool, bool, bool, bool]

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` slices selecting the tile in the image."""
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering an image of any size.

    Parameters
    ----------
    image_shape : tuple of int
        ``(height, width)`` of the image, in pixels.
    tile_size : int or tuple of int
        Nominal tile ``(height, width)`` in pixels (an int for squares).
        Along an axis shorter than the tile, the tile is the axis length.
    overlap : int
        Pixels shared by neighbouring tiles (at least; the last tile, snapped
        to the border, may overlap more). Must be smaller than the tile.
    margin : int, optional
        See :func:`blend_window`; default ``overlap // 4``.

    Raises
    ------
    ValueError
        For empty images, tiles smaller than 1 pixel, an overlap not smaller
        than the tile, or an invalid margin.
    """

    image_shape: tuple[int, int]
    tile_size: int | tuple[int, int]
    overlap: int = 0
    margin: int | None = None
    tile_shape: tuple[int, int] = field(init=False)
    starts_y: tuple[int, ...] = field(init=False)
    starts_x: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"image_shape must be two positive sizes, got {self.image_shape}")
        size = (
            (int(self.tile_size), int(self.tile_size))
            if np.isscalar(self.tile_size)
            else tuple(int(s) for s in self.tile_size)  # type: ignore[union-attr]
        )
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"tile_size must be one or two positive sizes, got {self.tile_size}")
        overlap = int(self.overlap)
        margin = default_margin(overlap) if self.margin is None else int(self.margin)
        _check_overlap_margin(overlap, margin)
        for axis, (length, tile) in enumerate(zip(shape, size, strict=True)):
            if tile < length and overlap >= tile:
                raise ValueError(
                    f"overlap ({overlap} px) must be smaller than the tile size ({tile} px on "
                    f"axis {axis})"
                )
        tile_shape = (min(size[0], shape[0]), min(size[1], shape[1]))
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "margin", margin)
        object.__setattr__(self, "tile_shape", tile_shape)
        object.__setattr__(self, "starts_y", _axis_starts(shape[0], tile_shape[0], overlap))
        object.__setattr__(self, "starts_x", _axis_starts(shape[1], tile_shape[1], overlap))

    def __len__(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def __iter__(self) -> Iterator[Tile]:
        ny, nx = len(self.starts_y), len(self.starts_x)
        th, tw = self.tile_shape
        for iy, y in enumerate(self.starts_y):
            for ix, x in enumerate(self.starts_x):
                yield Tile(
                    index=iy * nx + ix,
                    y=y,
                    x=x,
                    height=th,
                    width=tw,
                    neighbours=(iy > 0, iy < ny - 1, ix > 0, ix < nx - 1),
                )

    def window(self, tile: Tile) -> np.ndarray:
        """Blending weights of ``tile`` (read-only float32, the tile's shape)."""
        return blend_window(self.tile_shape, self.overlap, tile.neighbours, self.margin)


class TileBlender:
    """Accumulate weighted tile outputs and return their normalised blend.

    Parameters
    ----------
    grid : TileGrid
        The tiling the outputs belong to.

    Notes
    -----
    Tiles may be added in any order and at most once each; memory is two
    float32 images of the grid's size.
    """

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self._sum = np.zeros(grid.image_shape, dtype=np.float32)
        self._weight = np.zeros(grid.image_shape, dtype=np.float32)
        self._added = np.zeros(len(grid), dtype=bool)

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Add the output of one tile.

        Parameters
        ----------
        tile : Tile
            A tile of the grid.
        values : numpy.ndarray
            Output for that tile, of shape ``grid.tile_shape``.

        Raises
        ------
        ValueError
            If the shape is wrong or the tile was already added.
        """
        values = np.asarray(values)
        if values.shape != self.grid.tile_shape:
            raise ValueError(
                f"tile output has shape {values.shape}, expected {self.grid.tile_shape}"
            )
        if self._added[tile.index]:
            raise ValueError(f"tile {tile.index} was already added")
        window = self.grid.window(tile)
        rows, cols = tile.slices
        self._sum[rows, cols] += window * values
        self._weight[rows, cols] += window
        self._added[tile.index] = True

    @property
    def complete(self) -> bool:
        """Whether every tile of the grid was added."""
        return bool(self._added.all())

    def result(self) -> np.ndarray:
        """The blended image (a new float32 array of the grid's image shape).

        Raises
        ------
        ValueError
            If some tiles are missing.
        """
        if not self.complete:
            missing = int((~self._added).sum())
            raise ValueError(f"{missing} of {len(self.grid)} tile(s) were never added")
        # Every pixel has a positive total weight by construction (see module notes).
        return self._sum / self._weight


def assemble(tile_outputs: Iterable[np.ndarray], grid: TileGrid) -> np.ndarray:
    """Blend the outputs of all tiles of ``grid`` given in grid order.

    Parameters
    ----------
    tile_outputs : iterable of numpy.ndarray
        One array of shape ``grid.tile_shape`` per tile, in the order of
        ``iter(grid)``.
    grid : TileGrid
        The tiling.

    Returns
    -------
    numpy.ndarray
        Float32 image of ``grid.image_shape``.

    Raises
    ------
    ValueError
        If the number of outputs differs from the number of tiles or a shape
        is wrong.
    """
    blender = TileBlender(grid)
    tiles = iter(grid)
    count = 0
    for values in tile_outputs:
        tile = next(tiles, None)
        if tile is None:
            raise ValueError(f"got more tile outputs than the {len(grid)} tiles of the grid")
        blender.add(tile, values)
        count += 1
    if count != len(grid):
        raise ValueError(f"got {count} tile outputs for a grid of {len(grid)} tiles")
    return blender.result()


def balanced_tile(length: int, max_tile: int, overlap: int) -> int:
    """Smallest tile ≤ ``max_tile`` that covers ``length`` with the fewest tiles.

    With ``n = ceil((length − overlap) / (max_tile − overlap))`` tiles, each needs
    only ``ceil((length − overlap) / n) + overlap`` pixels: e.g. 2048 px with
    512-px tiles and 32 px overlap needs 5 tiles, which can be 436 px wide
    instead of 512 (27 % fewer pixels to compute).
    """
    if length <= max_tile:
        return length
    n = math.ceil((length - overlap) / (max_tile - overlap))
    return math.ceil((length - overlap) / n) + overlap
