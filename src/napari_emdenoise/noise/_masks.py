"""Random-walk defect masks shared by the TEM and S(T)EM noise models.

Black pixels and zingers (Lobato et al. 2023, eqs 37–38 for TEM, 52–53 for S(T)EM) are
modelled by a sensitivity mask: a number of seed points placed uniformly on the
sensor, each grown into a small region by a random walk. This module builds the
boolean mask; the layers decide what happens to the masked pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_walk_mask"]

# The four nearest-neighbour moves (row, column): up, down, left, right.
_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)


def random_walk_mask(
    shape: tuple[int, int],
    n_points: int,
    max_steps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Boolean mask of random-walk regions grown from uniformly placed points.

    Each of the ``n_points`` seed points is placed uniformly on the image and
    then performs a 4-connected random walk of ``k`` unit steps, with ``k``
    drawn uniformly from ``{0, ..., max_steps}`` independently for each point.
    Every visited pixel is masked, so each region is 4-connected and holds at
    most ``max_steps + 1`` pixels. A step that would leave the image keeps the
    walker on the border (coordinates are clipped), so a region never splits
    in two at an edge. Vectorised over points; the only Python loop runs over
    the (few) steps.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of the image, in pixels; both at least 1.
    n_points : int
        Number of seed points (defective spots); 0 gives an empty mask.
    max_steps : int
        Largest number of random-walk steps per seed point, in pixels; 0 gives
        isolated single pixels.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Boolean array of ``shape``; True where the pixel is defective. With
        ``n_points >= 1`` at least one pixel is masked (the first seed point is
        always inside the image).

    Raises
    ------
    ValueError
        If ``shape`` is not two positive integers or ``n_points`` or
        ``max_steps`` is negative or not an integer.
    TypeError
        If ``rng`` is not a :class:`numpy.random.Generator`.

    Examples
    --------
    >>> import numpy as np
    >>> mask = random_walk_mask((64, 64), 5, 10, np.random.default_rng(0))
    >>> mask.shape, mask.dtype, 1 <= mask.sum() <= 5 * 11
    ((64, 64), dtype('bool'), True)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"shape must be two positive sizes in pixels, got {shape!r}")
    for name, value in (("n_points", n_points), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    mask = np.zeros((height, width), dtype=bool)
    if n_points == 0:
        return mask

    start = np.stack(
        [rng.integers(0, height, n_points), rng.integers(0, width, n_points)], axis=1
    )  # (n_points, 2)
    n_steps = rng.integers(0, max_steps + 1, n_points)
    if max_steps > 0:
        moves = _MOVES[rng.integers(0, 4, (n_points, max_steps))]  # (n, steps, 2)
        # Clipping after every step (not once at the end) so that the walker
        # moves off the border again at its next inward step.
        path = np.empty((n_points, max_steps, 2), dtype=np.int64)
        pos = start.copy()
        upper = np.array([height - 1, width - 1])
        for k in range(max_steps):  # loop over steps only, vectorised over points
            pos = np.clip(pos + moves[:, k], 0, upper)
            path[:, k] = pos
        taken = np.arange(1, max_steps + 1)[None, :] <= n_steps[:, None]
        visited = np.concatenate([start, path[taken]], axis=0)
    else:
        visited = start
    mask[visited[:, 0], visited[:, 1]] = True
    return mask
