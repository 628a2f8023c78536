"""Restore with an adapted network only where it helps: a choice by estimated error.

Adapting a network to one image (:func:`napari_emdenoise.training.adapt.adapt`)
gains 1–2 dB on most atomic-resolution images, but on some it loses against the
model it started from (weak-phase graphene HRTEM: up to 2 dB,
docs/restoration_fidelity.md section 15). The clean image is unknown, so the
choice is made with the unbiased risk estimate of
:mod:`napari_emdenoise.engine.risk` and the noise fitted during adaptation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine.risk import NoiseLine, RiskChoice, choose_restoration

__all__ = ["CANDIDATES", "ESTIMATE_PIXELS", "restore_with_adapted"]

#: The restorations compared, in order (ties go to the first): the model the
#: adaptation started from, the adapted network, and the adapted network
#: without the Wiener refinement (left out when the refinement is off anyway).
CANDIDATES = ("bundled", "adapted", "adapted, no Wiener step")

#: Pixels of the central crop the command line compares on (1024²): 16× the
#: 256² images on which ``benchmarks/risk_accuracy.py`` measured how well the
#: estimates order restorations. The choice then costs 2.5 restorations of a
#: 2048² frame and 1.4 of a 4096² one, instead of six. The crop stands for the
#: whole image: an image whose centre differs from the rest (a particle on
#: vacuum) is judged by its centre.
ESTIMATE_PIXELS = 1 << 20


def restore_with_adapted(
    image: Any,
    result: Any,
    *,
    parent: Any = None,
    rng: np.random.Generator,
    device: Any = None,
    probes: int = 1,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    candidates: tuple[str, ...] = CANDIDATES,
    max_pixels: int | None = None,
    **options: Any,
) -> RiskChoice:
    """The lowest-risk of :data:`CANDIDATES` for ``image``.

    Parameters
    ----------
    image : array_like
        The image (or stack of frames) that was adapted to, in its own units.
    result : AdaptResult
        What :func:`~napari_emdenoise.training.adapt.adapt` returned.
    parent : str, pathlib.Path or torch.nn.Module, optional
        The model the adaptation started from; default ``result.parent``.
    rng : numpy.random.Generator
        Source of the risk estimate's probes.
    device : str or torch.device, optional
        Where to run the restorations.
    probes : int
        Monte-Carlo probes per candidate (each costs one more restoration).
    cancel : callable, optional
        Passed to :func:`~napari_emdenoise.engine.predictor.restore`.
    progress : callable, optional
        Called with each candidate's name before it runs.
    candidates : tuple of str
        Which of :data:`CANDIDATES` to compare (at least one).
    max_pixels : int, optional
        Compare on a central crop of at most this many pixels and restore the
        whole image with the chosen candidate only
        (:func:`~napari_emdenoise.engine.risk.choose_restoration`); then
        ``outputs`` hold the crop's restorations.
    **options
        Further keyword arguments of :func:`~napari_emdenoise.engine.predictor.
        restore` (``refine``, ``lattice``, ``keep_defects``, ``ensemble``,
        ``safeguard``, ``tile_size``) used for every candidate.

    Returns
    -------
    RiskChoice
        ``name`` is one of :data:`CANDIDATES`; ``risks`` holds every estimate
        (mean squared error, image units²). Cost: six restorations of the image
        with one probe (four with ``refine=False``), or six of the crop and
        one of the image with ``max_pixels``.

    Raises
    ------
    ValueError
        If the adaptation fitted no noise model (the estimate needs one).
    """
    from ..engine.predictor import restore

    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise ValueError(f"candidates must be among {CANDIDATES}, got {candidates!r}")
    if result.noise_fit is None:
        raise ValueError(
            "the adaptation fitted no noise model, so the restorations cannot be compared; "
            "use restore(image, model=result.model) directly"
        )
    data = np.asarray(image, dtype=np.float32)
    parent = result.parent if parent is None else parent
    net = result.model

    def run(model: Any, **kw: Any) -> Callable[[np.ndarray], np.ndarray]:
        kw = {**options, **kw}
        return lambda z: restore(z, model=model, device=device, cancel=cancel, **kw)

    runs = {CANDIDATES[0]: run(parent), CANDIDATES[1]: run(net)}
    if options.get("refine", True):
        runs[CANDIDATES[2]] = run(net, refine=False)
    return choose_restoration(
        data,
        {name: runs[name] for name in candidates if name in runs},
        NoiseLine.from_fit(result.noise_fit),
        rng=rng,
        probes=probes,
        progress=progress,
        max_pixels=max_pixels,
    )
