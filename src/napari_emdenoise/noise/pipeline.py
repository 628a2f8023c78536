"""The distortion pipelines: TEM, S(T)EM and SEM, followed by post-processing.

A pipeline is an ordered tuple of :class:`~napari_emdenoise.noise._layer.Layer`
records. :class:`NoiseParams` holds one parameter object per layer;
:func:`distort` applies the enabled layers in order and can return every
intermediate stage (the playground shows one napari layer per stage);
:func:`make_pair` also returns the clean *target*, to which the layers that the
paper applies to both images (TEM camera MTF, eq 27; interpolation,
annotations and crops) are applied identically; :func:`sample_params` draws
random parameters as Lobato et al. (2023) do for training.

Every layer receives its own child generator spawned from the caller's
generator, so switching one layer off or changing one of its parameters leaves
the random draws of every other layer unchanged: the playground shows the
effect of one knob at a time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import as_float_image
from ._layer import Layer
from ._params import LayerParams, check_known_keys
from .post import POST_LAYERS
from .stem import STEM_LAYERS, fast_scan_lag, shift_along_fast_scan
from .tem import TEM_LAYERS

__all__ = [
    "MODALITIES",
    "NoiseParams",
    "Stage",
    "distort",
    "layers_for",
    "make_pair",
    "sample_params",
]

#: Modalities with a distortion model. SEM uses the S(T)EM scan model without
#: black pixels: the paper notes that dark spots in SEM images are usually pores.
MODALITIES: tuple[str, ...] = ("stem", "tem", "sem")

#: Layers the paper does not generate for a modality.
_EXCLUDED: dict[str, frozenset[str]] = {"sem": frozenset({"black_pixels"})}

#: Format version of the JSON written by :meth:`NoiseParams.save`.
PARAMS_FORMAT_VERSION = 1

Stage = tuple[str, np.ndarray]


def check_modality(modality: str) -> str:
    """Return ``modality`` lower-cased if it is one of :data:`MODALITIES`, else raise ValueError."""
    m = str(modality).lower()
    if m not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return m


def layers_for(modality: str) -> tuple[Layer, ...]:
    """Ordered distortion layers of ``modality`` (detector/scan model, then post-processing)."""
    m = check_modality(modality)
    core = TEM_LAYERS if m == "tem" else STEM_LAYERS
    excluded = _EXCLUDED.get(m, frozenset())
    return tuple(layer for layer in (*core, *POST_LAYERS) if layer.name not in excluded)


@dataclass
class NoiseParams:
    """Parameters of every layer of one modality's pipeline.

    Attributes
    ----------
    modality : {"stem", "tem", "sem"}
        Which pipeline these parameters drive.
    layers : dict[str, LayerParams]
        Layer name → parameters, in pipeline order.
    """

    modality: str
    layers: dict[str, LayerParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modality = check_modality(self.modality)
        expected = layers_for(self.modality)
        given = dict(self.layers)
        unknown = set(given) - {layer.name for layer in expected}
        if unknown:
            raise ValueError(
                f"unknown layer(s) {sorted(unknown)} for modality {self.modality!r}; "
                f"expected {[layer.name for layer in expected]}"
            )
        ordered: dict[str, LayerParams] = {}
        for layer in expected:
            p = given.get(layer.name, layer.params_type())
            if not isinstance(p, layer.params_type):
                raise ValueError(
                    f"layer {layer.name!r} needs {layer.params_type.__name__}, "
                    f"got {type(p).__name__}"
                )
            ordered[layer.name] = p
        self.layers = ordered

    @classmethod
    def default(cls, modality: str = "stem") -> NoiseParams:
        """Default (typical experimental) parameters of every layer."""
        return cls(modality)

    def __getitem__(self, name: str) -> LayerParams:
        return self.layers[name]

    def replace_layer(self, name: str, params: LayerParams) -> NoiseParams:
        """Return a copy with the parameters of one layer replaced."""
        if name not in self.layers:
            raise KeyError(f"no layer {name!r} in the {self.modality} pipeline")
        new = dict(self.layers)
        new[name] = params
        return NoiseParams(self.modality, new)

    def with_dose(self, dose: float) -> NoiseParams:
        """Copy with every layer's ``dose`` (e⁻/pixel, shot/detector noise and dark current) set."""
        new = {
            name: p.replace(dose=float(dose)) if hasattr(p, "dose") else p
            for name, p in self.layers.items()
        }
        return NoiseParams(self.modality, new).validate()

    def validate(self) -> NoiseParams:
        """Validate every layer's parameters (raises ``ValueError``)."""
        for p in self.layers.values():
            p.validate()
        return self

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        return {
            "format": "napari-emdenoise/noise-params",
            "version": PARAMS_FORMAT_VERSION,
            "modality": self.modality,
            "layers": {name: p.to_dict() for name, p in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseParams:
        """Inverse of :meth:`to_dict`; validates every value."""
        if not isinstance(data, Mapping) or "modality" not in data:
            raise ValueError("noise parameters must be a mapping with a 'modality' key")
        check_known_keys(data, ("format", "version", "modality", "layers"), "noise parameters")
        version = data.get("version", PARAMS_FORMAT_VERSION)
        if version > PARAMS_FORMAT_VERSION:
            raise ValueError(
                f"noise parameter file version {version} is newer than this "
                f"napari-emdenoise understands ({PARAMS_FORMAT_VERSION})"
            )
        modality = check_modality(data["modality"])
        by_name = {layer.name: layer for layer in layers_for(modality)}
        layer_data = data.get("layers", {})
        unknown = set(layer_data) - set(by_name)
        if unknown:
            raise ValueError(f"unknown layer(s) {sorted(unknown)} for modality {modality!r}")
        layers = {
            name: by_name[name].params_type.from_dict(values) for name, values in layer_data.items()
        }
        return cls(modality, layers)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the parameters as JSON (atomically: temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NoiseParams:
        """Read parameters written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a valid noise-parameter JSON file: {exc}") from exc
        return cls.from_dict(data)


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def _resolve_params(modality: str, params: NoiseParams | Mapping[str, Any] | None) -> NoiseParams:
    modality = check_modality(modality)
    if params is None:
        return NoiseParams.default(modality)
    if isinstance(params, Mapping):
        data = dict(params)
        data.setdefault("modality", modality)
        params = NoiseParams.from_dict(data)
    if not isinstance(params, NoiseParams):
        raise TypeError(f"params must be NoiseParams, a dict or None, got {type(params).__name__}")
    if params.modality != modality:
        raise ValueError(
            f"params are for modality {params.modality!r} but modality={modality!r} was asked"
        )
    return params.validate()


def _run(
    clean: np.ndarray,
    modality: str,
    params: NoiseParams | Mapping[str, Any] | None,
    rng: np.random.Generator | int | None,
    keep_stages: bool,
    align_target: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[Stage]]:
    target = as_float_image(clean, ndim=2, min_size=4, name="clean image")
    p = _resolve_params(modality, params)
    gen = _as_generator(rng)
    layers = layers_for(p.modality)
    # One child generator per layer, spawned for every layer whether enabled or not,
    # so that each layer's random draws do not depend on the other layers' settings.
    children = gen.spawn(len(layers))
    x = target.copy()
    stages: list[Stage] = []
    for layer, child in zip(layers, children):
        lp = p.layers[layer.name]
        if not lp.enabled:
            continue
        if layer.applies_to_target:
            both = layer.func(np.stack([target, x]), lp, child)
            target, x = both[0], both[1]
        else:
            x = layer.func(x, lp, child)
        if align_target and layer.name == "fast_scan_blur":
            target = shift_along_fast_scan(target, fast_scan_lag(lp))
        if keep_stages:
            stages.append((layer.name, x.copy()))
    return target.astype(np.float32, copy=False), x.astype(np.float32, copy=False), stages


def distort(
    clean: np.ndarray,
    modality: str = "stem",
    params: NoiseParams | Mapping[str, Any] | None = None,
    rng: np.random.Generator | int | None = None,
    return_stages: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[Stage]]:
    """Apply the distortion model of ``modality`` to a clean image.

    Parameters
    ----------
    clean : array_like, shape (H, W)
        Undistorted image, non-negative intensities, typically in [0, 1]
        (as produced by :func:`napari_emdenoise.synth.generate_clean`). Any
        numeric dtype; never modified.
    modality : {"stem", "tem", "sem"}
        Which pipeline to apply.
    params : NoiseParams or dict, optional
        Parameters of every layer; default :meth:`NoiseParams.default`.
    rng : numpy.random.Generator or int, optional
        Random source; the same seed gives an identical result.
    return_stages : bool
        Also return the ordered list ``[(layer_name, image_after_layer), ...]``
        of every enabled layer.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, list)
        The distorted float32 image (and the stages).
    """
    _, x, stages = _run(clean, modality, params, rng, keep_stages=return_stages)
    return (x, stages) if return_stages else x


def make_pair(
    clean: np.ndarray,
    modality: str = "stem",
    params: NoiseParams | Mapping[str, Any] | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return a training pair ``(target, distorted)``.

    ``target`` is ``clean`` with the layers the paper applies to both images
    (``Layer.applies_to_target``), moved along the fast-scan axis by the mean
    lag of the fast-scan PSF when that layer is on (:func:`.stem.fast_scan_lag`:
    a network cannot see a global shift in one image, so it must not be taught
    to add one); ``distorted`` is identical to
    ``distort(clean, modality, params, rng)`` for the same seed.
    """
    target, x, _ = _run(clean, modality, params, rng, keep_stages=False, align_target=True)
    return target, x


def sample_params(
    modality: str = "stem",
    rng: np.random.Generator | int | None = None,
    *,
    pixel_size: float | None = None,
) -> NoiseParams:
    """Draw random parameters for every layer, as Lobato et al. (2023) draw them for training.

    Occurrence probabilities are drawn by each parameter class's ``sample``
    (they set ``enabled``).

    Parameters
    ----------
    modality : {"stem", "tem", "sem"}
    rng : numpy.random.Generator or int, optional
    pixel_size : float, optional
        Pixel size of the clean image in Å; layers with a ``pixel_size`` field
        (scan jitter, whose amplitude is given in Å) use it.
    """
    m = check_modality(modality)
    gen = _as_generator(rng)
    layers = layers_for(m)
    children = gen.spawn(len(layers))
    drawn: dict[str, LayerParams] = {}
    for layer, child in zip(layers, children):
        p = layer.params_type.sample(child)
        if pixel_size is not None and hasattr(p, "pixel_size"):
            p = p.replace(pixel_size=float(pixel_size))
        drawn[layer.name] = p.validate()
    # Dark counts are converted to image units with the same dose scale α as the
    # signal (eq 33 after eq 30): one dose per exposure.
    if "shot_noise" in drawn and "dark_current" in drawn:
        drawn["dark_current"] = drawn["dark_current"].replace(dose=drawn["shot_noise"].dose)
    return NoiseParams(m, drawn)
