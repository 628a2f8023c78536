"""Synthetic (distorted, target) training pairs drawn from ``synth`` + ``noise``.

Every pair is a pure function of ``(seed, split, index)``, so a data-loader
worker can produce pair ``i`` without any shared state, a resumed run continues
with exactly the pairs it would have seen, and the validation and held-out test
sets are disjoint from the training stream by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..noise.pipeline import NoiseParams, layers_for, make_pair, sample_params
from ..synth import generate_clean
from ..synth._random import log_uniform

__all__ = ["SPLITS", "PairConfig", "SyntheticPairs", "make_training_pair"]

#: Independent random streams. ``test`` is reserved for the benchmarks' held-out set.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_POOL_STREAM = 3

#: Probability of mirroring a finished (distorted, target) pair along the
#: fast-scan axis. The fast-scan PSF is causal (its tail points to +x) and
#: its amount cannot always be read off one image; a network trained only on
#: +x tails learns to move *every* image's features by the average correction,
#: lag-free images included (measured: 0.7–1.2 px on a lattice of Gaussian
#: columns). With mirrored pairs, an image without a visible tail is left in
#: place by symmetry, while a visible tail is still removed.
FAST_SCAN_FLIP_PROBABILITY = 0.5

#: ``PairConfig`` probabilities that redraw a share of the paper's pairs; each is
#: stored in configs and model cards only when used.
VARIANT_FRACTIONS = (
    "plain_fraction",
    "high_dose_fraction",
    "fine_lattice_fraction",
    "pulse_spread_fraction",
    "texture_fraction",
)

#: Layers a "plain" pair keeps (see ``PairConfig.plain_fraction``): counting
#: noise, read noise, dark counts and the TEM camera MTF (which the target
#: carries too). Layers applied to both images (``Layer.applies_to_target``)
#: are kept as drawn.
PLAIN_LAYERS = frozenset(
    {"detector_noise", "shot_noise", "dark_current", "thermal_noise", "camera_mtf"}
)

#: Dose range (e⁻/pixel, log-uniform) of the pairs redrawn at high dose
#: (``PairConfig.high_dose_fraction``).
HIGH_DOSE_RANGE = (100.0, 10_000.0)

#: Stream of the extra draws of plain / high-dose pairs (separate, so that
#: every other pair stays identical when both fractions are zero).
_VARIANT_STREAM = 4

#: Pixel sizes (Å, log-uniform) of the zone-axis crystals drawn for
#: ``PairConfig.fine_lattice_fraction``: columns 1.5–4 Å apart then repeat every
#: 2–15 pixels, as in an atomic-resolution overview recorded at 0.2–0.3 Å/pixel.
FINE_LATTICE_PIXEL_RANGE = (0.25, 0.9)

#: Stream of the fine-lattice draw (separate, for the same reason).
_FINE_LATTICE_STREAM = 5

#: Relative pulse-height spreads (uniform) of the S(T)EM/SEM pairs drawn for
#: ``PairConfig.pulse_spread_fraction`` (see ``DetectorNoiseParams.pulse_spread``).
PULSE_SPREAD_RANGE = (0.2, 1.2)

#: Stream of the pulse-spread draw (separate, for the same reason).
_PULSE_SPREAD_STREAM = 6

#: Stream of the low-magnification texture draw (separate, for the same reason).
_TEXTURE_STREAM = 7


@dataclass
class PairConfig:
    """What pairs to draw.

    Attributes
    ----------
    modality : {"stem", "tem", "sem", "diffraction"}
        ``"diffraction"`` draws 4D-STEM pattern pairs from
        :func:`napari_emdenoise.synth.diffraction.make_diffraction_pair`
        (dose log-uniform over ``diffraction["counts_range"]``, 10–10⁵ counts
        per pattern by default); ``kind``, ``noise`` and ``clean_pool`` do not
        apply to it.
    kind : {"hr", "lr"}
    patch_size : int
        Side of the square patches, in pixels.
    noise : NoiseParams or None
        Fixed distortion settings (e.g. saved from the playground); ``None``
        draws new parameters for every pair as Lobato et al. (2023) do.
    seed : int
        Base seed of every stream.
    clean_pool : int
        0: generate a new clean image for every pair (the paper's scheme).
        N > 0: reuse N clean images of side ``pool_image_size`` (random crops and
        flips), with fresh distortions for every pair; much cheaper on a CPU.
    pool_image_size : int
        Side of the pooled clean images, in pixels (≥ ``patch_size``).
    diffraction : dict or None
        With ``modality="diffraction"``: settings of
        :class:`napari_emdenoise.synth.diffraction.DiffractionConfig` (None: its defaults).
    plain_fraction : float
        Probability, in [0, 1], that a pair keeps only its counting and read
        noise (``PLAIN_LAYERS``): no blur, scan jitter, clipping, row lines or
        detector artefacts. Lobato et al. (2023) almost always blur their
        S(T)EM inputs (fast-scan PSF in 80 % of pairs, a Gaussian in 28 %), so
        a network trained only on their draw sharpens images that were never
        blurred and, on multislice images, erased lattices of 1–2 px columns.
        Plain pairs teach it that a sharp, undistorted image keeps its
        sharpness. 0 (default) is the paper's scheme.
    high_dose_fraction : float
        Probability, in [0, 1], that a pair's dose is redrawn log-uniformly in
        ``HIGH_DOSE_RANGE`` (100–10⁴ e⁻/pixel). The paper's draw puts the median
        at about 4 e⁻/pixel and only 10 % of pairs above 110, so a network
        rarely learns to leave well-exposed images alone. 0 (default) is the
        paper's scheme.
    fine_lattice_fraction : float
        Probability, in [0, 1], that a high-resolution pair's clean image is a
        zone-axis crystal at a coarse pixel size (``FINE_LATTICE_PIXEL_RANGE``),
        so that its columns repeat every few pixels. In the paper's draw about
        10 % of S(T)EM targets have most of their contrast at periods below
        8 px, and networks trained on it smooth such lattices away (multislice
        Au [001] at 0.3 Å/pixel); 0 (default) is the paper's scheme.
    pulse_spread_fraction : float
        Probability, in [0, 1], that an S(T)EM or SEM pair's detected electrons
        give unequal pulses (``DetectorNoiseParams.pulse_spread`` drawn
        uniformly in ``PULSE_SPREAD_RANGE``). The paper's Gaussian PMT noise
        keeps the counting levels of a low-dose image; real scintillator/PMT
        images at a few electrons per pixel show a continuous tail of pulse
        heights instead, which a network trained without it has never seen.
        0 (default) is the paper's scheme.
    texture_fraction : float
        Probability, in [0, 1], that a low-resolution pair's clean image gets
        the fine texture of a real low-magnification scene
        (:func:`napari_emdenoise.synth.lowmag_texture.add_lowmag_texture`: an
        amorphous film's speckle and/or lattice fringes). The paper's
        low-resolution scenes have smooth interiors, and networks trained on
        them erase both even at 100 counts/pixel. 0 (default) is the paper's
        scheme.
    """

    modality: str = "stem"
    kind: str = "hr"
    patch_size: int = 128
    noise: NoiseParams | None = None
    seed: int = 0
    clean_pool: int = 0
    pool_image_size: int = 256
    diffraction: dict[str, Any] | None = None
    plain_fraction: float = 0.0
    high_dose_fraction: float = 0.0
    fine_lattice_fraction: float = 0.0
    pulse_spread_fraction: float = 0.0
    texture_fraction: float = 0.0
    _pool: dict[int, tuple[np.ndarray, dict]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.patch_size < 16:
            raise ValueError(f"patch_size must be at least 16 pixels, got {self.patch_size}")
        if self.clean_pool < 0:
            raise ValueError("clean_pool must be ≥ 0")
        for name in VARIANT_FRACTIONS:
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
            if value and self.modality == "diffraction":
                raise ValueError(f"{name} does not apply to diffraction patterns")
        if self.fine_lattice_fraction and self.kind != "hr":
            raise ValueError("fine_lattice_fraction applies to high-resolution ('hr') images only")
        if self.texture_fraction and self.kind != "lr":
            raise ValueError("texture_fraction applies to low-resolution ('lr') images only")
        if self.pulse_spread_fraction and self.modality not in ("stem", "sem"):
            raise ValueError(
                "pulse_spread_fraction applies to scintillator/PMT detectors: S(T)EM and SEM only"
            )
        if self.clean_pool and self.pool_image_size < self.patch_size:
            raise ValueError("pool_image_size must be at least patch_size")
        if self.modality == "diffraction":
            if self.noise is not None:
                raise ValueError("noise settings do not apply to diffraction patterns")
            from ..synth.diffraction import DiffractionConfig

            self.diffraction = DiffractionConfig.from_dict(self.diffraction or {}).to_dict()
        elif self.diffraction is not None:
            raise ValueError("diffraction settings need modality='diffraction'")
        if self.noise is not None and self.noise.modality != self.modality:
            raise ValueError(
                f"noise settings are for {self.noise.modality!r}, not {self.modality!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in checkpoints and model cards)."""
        out = {
            "modality": self.modality,
            "kind": self.kind,
            "patch_size": self.patch_size,
            "noise": None if self.noise is None else self.noise.to_dict(),
            "seed": self.seed,
            "clean_pool": self.clean_pool,
            "pool_image_size": self.pool_image_size,
        }
        if self.plain_fraction or self.high_dose_fraction:
            out["plain_fraction"] = self.plain_fraction
            out["high_dose_fraction"] = self.high_dose_fraction
        if self.fine_lattice_fraction:
            out["fine_lattice_fraction"] = self.fine_lattice_fraction
        if self.pulse_spread_fraction:
            out["pulse_spread_fraction"] = self.pulse_spread_fraction
        if self.texture_fraction:
            out["texture_fraction"] = self.texture_fraction
        if self.modality == "diffraction":
            out["diffraction"] = dict(self.diffraction or {})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        if d.get("noise") is not None:
            d["noise"] = NoiseParams.from_dict(d["noise"])
        return cls(**d)

    def _pool_image(self, j: int) -> tuple[np.ndarray, dict]:
        if j not in self._pool:
            rng = np.random.default_rng([self.seed, _POOL_STREAM, j])
            n = self.pool_image_size
            self._pool[j] = generate_clean(self.kind, (n, n), rng=rng, return_info=True)
        return self._pool[j]


def make_training_pair(
    cfg: PairConfig,
    index: int,
    split: str = "train",
    *,
    return_params: bool = False,
    return_info: bool = False,
) -> tuple[Any, ...]:
    """Pair ``index`` of ``split``: ``(distorted, target)``, float32 (P, P) each.

    With ``return_params`` also the :class:`NoiseParams` used (benchmarks bin by
    dose), with ``return_info`` also the clean image's record (pixel size in Å
    for atomic-resolution images, ``"pixel_size_A"``), in that order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([cfg.seed, SPLITS[split], int(index)])
    if cfg.modality == "diffraction":
        return _diffraction_pair(cfg, rng, return_params, return_info)
    rng_clean, rng_params, rng_noise, rng_crop = rng.spawn(4)
    p = cfg.patch_size
    if cfg.clean_pool and split == "train":
        image, info = cfg._pool_image(int(rng_crop.integers(cfg.clean_pool)))
        top = int(rng_crop.integers(image.shape[0] - p + 1))
        left = int(rng_crop.integers(image.shape[1] - p + 1))
        clean = image[top : top + p, left : left + p]
        if rng_crop.random() < 0.5:
            clean = clean[::-1]
        clean = np.ascontiguousarray(np.rot90(clean, int(rng_crop.integers(4))))
        info = dict(info)  # the pool's record stays as it was
        clean = _with_texture(clean, info, cfg, split, index)
    else:
        atomic = _fine_lattice(cfg, split, index)
        clean, info = generate_clean(
            cfg.kind, (p, p), rng=rng_clean, return_info=True, atomic=atomic
        )
        clean = _with_texture(clean, info, cfg, split, index)
    params = cfg.noise or sample_params(
        cfg.modality, rng_params, pixel_size=info.get("pixel_size_A")
    )
    if cfg.plain_fraction or cfg.high_dose_fraction:
        variant = np.random.default_rng([cfg.seed, SPLITS[split], int(index), _VARIANT_STREAM])
        params = _pair_variant(params, cfg, variant)
    if cfg.pulse_spread_fraction:
        params = _pulse_spread(params, cfg, split, index)
    target, distorted = make_pair(clean, cfg.modality, params, rng_noise)
    if rng_crop.random() < FAST_SCAN_FLIP_PROBABILITY:
        # Mirror the finished pair along x: the fast-scan tail then points
        # either way, so a network cannot learn a preferred direction to move
        # features in (see FAST_SCAN_FLIP_PROBABILITY).
        distorted = np.ascontiguousarray(distorted[:, ::-1])
        target = np.ascontiguousarray(target[:, ::-1])
    out: tuple[Any, ...] = (distorted, target)
    if return_params:
        out += (params,)
    if return_info:
        out += (info,)
    return out


def _fine_lattice(cfg: PairConfig, split: str, index: int) -> dict[str, Any] | None:
    """Clean-image choices of a fine-lattice pair (see ``PairConfig``), or None."""
    if not cfg.fine_lattice_fraction:
        return None
    rng = np.random.default_rng([cfg.seed, SPLITS[split], int(index), _FINE_LATTICE_STREAM])
    if rng.random() >= cfg.fine_lattice_fraction:
        return None
    return {
        "specimen": "crystalline",
        "orientation": "zone_axis",
        "pixel_size": float(log_uniform(rng, *FINE_LATTICE_PIXEL_RANGE)),
    }


def _with_texture(
    clean: np.ndarray, info: dict, cfg: PairConfig, split: str, index: int
) -> np.ndarray:
    """``clean`` with low-magnification texture, with probability ``texture_fraction``
    (the draw is recorded in ``info["texture"]``)."""
    if not cfg.texture_fraction:
        return clean
    rng = np.random.default_rng([cfg.seed, SPLITS[split], int(index), _TEXTURE_STREAM])
    if rng.random() >= cfg.texture_fraction:
        return clean
    from ..synth.lowmag_texture import add_lowmag_texture

    clean, info["texture"] = add_lowmag_texture(clean, rng)
    return clean


def _pulse_spread(params: NoiseParams, cfg: PairConfig, split: str, index: int) -> NoiseParams:
    """``params`` with unequal electron pulses, with probability ``pulse_spread_fraction``."""
    rng = np.random.default_rng([cfg.seed, SPLITS[split], int(index), _PULSE_SPREAD_STREAM])
    if rng.random() >= cfg.pulse_spread_fraction or "detector_noise" not in params.layers:
        return params
    spread = float(rng.uniform(*PULSE_SPREAD_RANGE))
    return params.replace_layer(
        "detector_noise", params["detector_noise"].replace(pulse_spread=spread)
    )


def _pair_variant(params: NoiseParams, cfg: PairConfig, rng: np.random.Generator) -> NoiseParams:
    """``params`` turned into a plain and/or high-dose pair, each with its probability."""
    plain = rng.random() < cfg.plain_fraction
    high = rng.random() < cfg.high_dose_fraction
    if not (plain or high):
        return params
    dose = float(log_uniform(rng, *HIGH_DOSE_RANGE)) if high else None
    both = {layer.name for layer in layers_for(params.modality) if layer.applies_to_target}
    layers = {}
    for name, p in params.layers.items():
        if plain and name not in PLAIN_LAYERS and name not in both:
            p = p.replace(enabled=False)
        if high and hasattr(p, "dose"):
            p = p.replace(dose=dose)
        layers[name] = p
    return NoiseParams(params.modality, layers)


def _diffraction_pair(
    cfg: PairConfig, rng: np.random.Generator, return_params: bool, return_info: bool
) -> tuple[Any, ...]:
    """A (noisy, clean) diffraction-pattern pair; params/info: ``{"counts": dose}``."""
    from ..synth.diffraction import DiffractionConfig, make_diffraction_pair

    dcfg = DiffractionConfig.from_dict(cfg.diffraction or {})
    rng_dose, rng_pair = rng.spawn(2)
    dose = float(log_uniform(rng_dose, *dcfg.counts_range))
    p = cfg.patch_size
    noisy, clean = make_diffraction_pair((p, p), dose, config=dcfg, rng=rng_pair)
    out: tuple[Any, ...] = (noisy, clean)
    record = {"counts": dose}
    if return_params:
        out += (record,)
    if return_info:
        out += (record,)
    return out


class SyntheticPairs:
    """Map-style dataset of pairs for ``torch.utils.data.DataLoader``.

    ``dataset[i]`` returns two float32 tensors of shape (1, P, P):
    ``(distorted, target)``. The length is nominal (2³¹ − 1): the stream is
    endless, the sampler decides which indices a run visits.
    """

    def __init__(self, cfg: PairConfig, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.cfg = cfg
        self.split = split

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int):
        import torch

        x, y = make_training_pair(self.cfg, int(index), self.split)
        return torch.from_numpy(x[None]), torch.from_numpy(y[None])

    def arrays(self, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` pairs as numpy stacks ``(distorted, target)`` of shape (n, P, P)."""
        pairs = [make_training_pair(self.cfg, i, self.split) for i in range(start, start + n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
