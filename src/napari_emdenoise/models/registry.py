"""Model registry: architectures, named configurations, model cards and weights.

A trained model is two files side by side in a directory:

* ``<name>.safetensors`` — the state dict (safetensors only: loading it can
  never execute code, unlike pickle-based ``.pt``/``.pth``/``.ckpt`` files);
* ``<name>.json`` — its :class:`ModelCard` (architecture, configuration,
  modality, training settings, metrics).

Bundled models live in :func:`bundled_weights_dir`; the shipped names will be
``hrstem``, ``hrtem``, ``lrstem``, ``lrtem``, ``hrsem`` and ``lrsem``
(``<kind><modality>``, see :func:`standard_model_name`).

This module imports torch only when a model is built, saved or loaded, so
listing models (e.g. to fill a widget's drop-down) stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "KINDS",
    "MODALITIES",
    "ModelCard",
    "build_model",
    "bundled_weights_dir",
    "check_model_name",
    "install_model",
    "list_models",
    "load_model",
    "named_configs",
    "on_models_changed",
    "save_model",
    "standard_model_name",
]

#: Imaging modalities a model card may declare.
MODALITIES: tuple[str, ...] = ("stem", "tem", "sem", "diffraction")
#: Resolution regimes: "hr" atomic resolution, "lr" low resolution.
KINDS: tuple[str, ...] = ("hr", "lr")

_WEIGHTS_SUFFIX = ".safetensors"
_CARD_SUFFIX = ".json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
_CARD_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Largest value a card may give one width-like setting (features, growth, channels).
_MAX_CONFIG_WIDTH = 4096
#: Largest product of a card's depth-like settings (``depth``, ``n_*``: layers, blocks).
_MAX_CONFIG_DEPTH = 4096
#: Largest number of parameters a model card may ask for (1 GiB of float32).
_MAX_PARAMETERS = 2**28


# ------------------------------------------------------------------ architectures
def _build_cgrdn(**config: Any) -> nn.Module:
    from .cgrdn import CGRDN, CGRDNConfig

    normalize = config.pop("normalize", True)
    return CGRDN(CGRDNConfig.from_dict(config), normalize=normalize)


def _build_dncnn(**config: Any) -> nn.Module:
    from .dncnn import DnCNN

    return DnCNN(**config)


def _build_dncnn_bf(**config: Any) -> nn.Module:
    from .dncnn import DnCNN

    if config.get("bias", False):
        raise ValueError("the 'dncnn_bf' architecture is bias-free; use 'dncnn' for bias=True")
    config = {"bias": False, "normalize": False, **config}
    return DnCNN(**config)


def _build_pix2pix(**config: Any) -> nn.Module:
    from .pix2pix import Pix2PixConfig, Pix2PixGenerator

    return Pix2PixGenerator(Pix2PixConfig.from_dict(config))


#: Architecture name → builder called with the configuration dict as keyword
#: arguments. Other model modules may register further entries.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "cgrdn": _build_cgrdn,
    "dncnn": _build_dncnn,
    "dncnn_bf": _build_dncnn_bf,
    "pix2pix": _build_pix2pix,
}

# Architecture name → (module in this package, attribute holding its named configs).
_NAMED_CONFIGS: dict[str, tuple[str, str]] = {
    "cgrdn": ("cgrdn", "CGRDN_CONFIGS"),
    "dncnn": ("dncnn", "DNCNN_CONFIGS"),
    "dncnn_bf": ("dncnn", "DNCNN_BF_CONFIGS"),
    "pix2pix": ("pix2pix", "PIX2PIX_CONFIGS"),
}


def named_configs(arch: str) -> dict[str, dict[str, Any]]:
    """Named configurations of an architecture, e.g. ``{"full": {...}, "small": {...}}``.

    Raises
    ------
    ValueError
        If ``arch`` is unknown.
    """
    _check_arch(arch)
    if arch not in _NAMED_CONFIGS:
        return {}
    module_name, attr = _NAMED_CONFIGS[arch]
    configs = getattr(importlib.import_module(f"{__package__}.{module_name}"), attr)
    return {
        name: (cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        for name, cfg in configs.items()
    }


def _check_arch(arch: object) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")


def build_model(arch: str, config: str | Mapping[str, Any] = "small") -> nn.Module:
    """Build an untrained model.

    Parameters
    ----------
    arch : str
        Key of :data:`ARCHITECTURES` (``"cgrdn"``, ``"dncnn"``, ``"dncnn_bf"``,
        ``"pix2pix"``).
    config : str or mapping
        A named configuration (``"full"``, ``"small"``, ``"tiny"``) or the
        constructor settings as a dict (as stored in a :class:`ModelCard`).

    Returns
    -------
    torch.nn.Module
        The model, in training mode, on the current default device.

    Raises
    ------
    ValueError
        For an unknown architecture or configuration name, or invalid settings.
    """
    _check_arch(arch)
    if isinstance(config, str):
        configs = named_configs(arch)
        if config not in configs:
            raise ValueError(
                f"unknown configuration {config!r} for {arch!r}; known: {sorted(configs)}"
            )
        settings = configs[config]
    elif isinstance(config, Mapping):
        settings = dict(config)
    else:
        raise ValueError(f"config must be a name or a dict, got {type(config).__name__}")
    try:
        return ARCHITECTURES[arch](**settings)
    except TypeError as exc:  # unknown or missing keyword
        raise ValueError(f"invalid configuration for {arch!r}: {exc}") from exc


# --------------------------------------------------------------------- model card
def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _json_default(obj: object) -> object:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def check_model_name(name: object) -> str:
    """Return ``name`` if it can name a model (it becomes a file stem), else raise ValueError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"model name {name!r} is not a valid file stem: use 1–128 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    return name


def standard_model_name(modality: str, kind: str) -> str:
    """Name of the bundled model for a modality and kind, e.g. ``"hrstem"``."""
    if modality not in MODALITIES or kind not in KINDS:
        raise ValueError(f"modality must be one of {MODALITIES} and kind one of {KINDS}")
    return f"{kind}{modality}"


@dataclass
class ModelCard:
    """Description of a trained model, stored as ``<name>.json`` beside its weights.

    Attributes
    ----------
    name : str
        File stem of the weights and card (letters, digits, ``_ . -``).
    arch : str
        Key of :data:`ARCHITECTURES`.
    config : dict
        Constructor settings passed to the architecture builder.
    modality : str
        One of :data:`MODALITIES` (``"stem"``, ``"tem"``, ``"sem"``,
        ``"diffraction"``).
    kind : str
        ``"hr"`` (atomic resolution) or ``"lr"`` (low resolution).
    training : dict
        How it was trained: steps, batch, patch (pixels), lr, seed, loss
        weights, noise settings, ...
    metrics : dict
        Validation metrics (e.g. PSNR in dB, SSIM).
    created : str
        ISO-8601 UTC timestamp.
    notes : str
        Free text.
    weights_path : pathlib.Path or None
        Where the weights were found (set by :func:`list_models` and
        :func:`load_model`); not written to JSON.
    """

    name: str
    arch: str
    config: dict[str, Any]
    modality: str
    kind: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now_iso)
    notes: str = ""
    weights_path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a non-empty string, got {self.arch!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("config", "training", "metrics"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"ModelCard.{name} must be a dict")
            setattr(self, name, dict(getattr(self, name)))
        if not isinstance(self.created, str) or not isinstance(self.notes, str):
            raise ValueError("ModelCard.created and ModelCard.notes must be strings")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the serialised fields (without ``weights_path``)."""
        return {
            "format": _CARD_FORMAT,
            "name": self.name,
            "arch": self.arch,
            "config": self.config,
            "modality": self.modality,
            "kind": self.kind,
            "training": self.training,
            "metrics": self.metrics,
            "created": self.created,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        """Serialise to indented JSON (numpy scalars and tuples are converted)."""
        try:
            return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model card {self.name!r} is not JSON serialisable: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card written by :meth:`to_json`.

        Raises
        ------
        ValueError
            For invalid JSON, missing fields, a newer card format, or invalid values.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model card is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("model card JSON must be an object")
        version = data.pop("format", _CARD_FORMAT)
        if not isinstance(version, int) or version > _CARD_FORMAT:
            raise ValueError(
                f"model card format {version!r} is newer than this napari-emdenoise "
                f"understands ({_CARD_FORMAT}); upgrade the package"
            )
        required = ("name", "arch", "config", "modality", "kind")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"model card lacks the field(s) {missing}")
        allowed = required + ("training", "metrics", "created", "notes")
        return cls(**{k: v for k, v in data.items() if k in allowed})


# ------------------------------------------------------------------------ storage
def bundled_weights_dir() -> Path:
    """Directory of the weights shipped with the package (``napari_emdenoise/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


#: Environment variable naming the folder of the user's own trained models.
USER_MODELS_ENV = "EMDENOISE_MODELS_DIR"


def user_models_dir() -> Path:
    """Folder of the user's trained models.

    ``$EMDENOISE_MODELS_DIR`` if set, else the platform's user-data folder
    (``~/.local/share/napari-emdenoise/models`` on Linux). Models saved there
    are listed next to the bundled ones.
    """
    env = os.environ.get(USER_MODELS_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-emdenoise", appauthor=False)) / "models"


def list_models(extra_dirs: list[Path] | None = None) -> dict[str, ModelCard]:
    """Find the available models.

    Searched in order: the bundled weights, :func:`user_models_dir`, then
    ``extra_dirs``; a model found later replaces an earlier one of the same name.

    Parameters
    ----------
    extra_dirs : list of pathlib.Path, optional
        Further directories searched last. Missing directories are skipped.

    Returns
    -------
    dict of str to ModelCard
        Model name → card (with ``weights_path`` set), for every ``<name>.json``
        that has a ``<name>.safetensors`` beside it. Unreadable cards are
        skipped with a warning.
    """
    found: dict[str, ModelCard] = {}
    dirs = [bundled_weights_dir(), user_models_dir(), *(Path(d) for d in extra_dirs or [])]
    for directory in dirs:
        if not directory.is_dir():
            continue
        for card_path in sorted(directory.glob(f"*{_CARD_SUFFIX}")):
            weights = card_path.with_suffix(_WEIGHTS_SUFFIX)
            if not weights.is_file():
                continue
            try:
                card = ModelCard.from_json(card_path.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError) as exc:
                warnings.warn(f"skipping model card {card_path}: {exc}", stacklevel=2)
                continue
            if card.name != card_path.stem:
                warnings.warn(
                    f"skipping model card {card_path}: its name {card.name!r} does not match "
                    "the file name",
                    stacklevel=2,
                )
                continue
            card.weights_path = weights
            found[card.name] = card
    return found


_MODELS_CHANGED: list[Callable[[], Callable[[], None] | None]] = []


def on_models_changed(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` whenever :func:`install_model` adds or replaces a model.

    A bound method is held by a weak reference, so a subscribed widget can
    still be garbage-collected.

    Returns
    -------
    callable
        Call it to unsubscribe (e.g. when a widget closes).
    """
    import weakref

    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        ref: Callable[[], Callable[[], None] | None] = weakref.WeakMethod(callback)
    else:

        def ref() -> Callable[[], None]:
            return callback

    _MODELS_CHANGED.append(ref)

    def unsubscribe() -> None:
        if ref in _MODELS_CHANGED:
            _MODELS_CHANGED.remove(ref)

    return unsubscribe


def _notify_models_changed() -> None:
    for ref in list(_MODELS_CHANGED):
        callback = ref()
        if callback is None:  # its widget is gone
            _MODELS_CHANGED.remove(ref)
            continue
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - a broken subscriber must not break saving
            warnings.warn(f"model-change callback failed: {exc}", stacklevel=3)


def install_model(weights: str | Path, directory: str | Path | None = None) -> Path:
    """Copy ``<name>.safetensors`` + its ``<name>.json`` card into the user-model folder.

    Parameters
    ----------
    weights : str or pathlib.Path
        The ``.safetensors`` file written by :func:`save_model`.
    directory : str or pathlib.Path, optional
        Target folder (default :func:`user_models_dir`).

    Returns
    -------
    pathlib.Path
        The installed weights file. Subscribers of :func:`on_models_changed`
        are notified.

    Raises
    ------
    ValueError
        If the files are not a saved model: a missing or broken card, a card
        whose name is not the file name, weights that are not safetensors
        (pickles are never read), or weights that do not match the card.
        Nothing is copied then.
    """
    import shutil

    weights = Path(weights)
    card = weights.with_suffix(_CARD_SUFFIX)
    if weights.suffix != _WEIGHTS_SUFFIX or not weights.is_file() or not card.is_file():
        raise ValueError(
            f"{weights} is not a saved model: expected <name>{_WEIGHTS_SUFFIX} with "
            f"<name>{_CARD_SUFFIX} beside it"
        )
    parsed = ModelCard.from_json(card.read_text(encoding="utf-8"))  # refuse a broken card early
    if parsed.name != weights.stem:
        raise ValueError(
            f"the model card {card.name} names the model {parsed.name!r}, not {weights.stem!r}; "
            "it would not be listed"
        )
    _validated_state(weights, parsed)  # refuse pickles, junk and weights that do not fit the card
    target = Path(directory) if directory is not None else user_models_dir()
    target.mkdir(parents=True, exist_ok=True)
    for src in (weights, card):
        _atomic_write(target / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    _notify_models_changed()
    return target / weights.name


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through a temporary file in the same directory + ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600 files; a model file is as readable as any other the user writes
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_state_dict(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], arch: str
) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mis_shaped:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches: {show(mis_shaped)}")
        raise ValueError(
            f"the weights do not match the {arch!r} architecture of the model card; "
            + "; ".join(parts)
        )


def _check_card_size(card: ModelCard) -> None:
    """Refuse a card whose configuration would build an absurdly large network.

    Checked before anything is built: every width-like integer setting is at
    most :data:`_MAX_CONFIG_WIDTH` and the product of the depth-like ones
    (``depth``, ``n_…``) at most :data:`_MAX_CONFIG_DEPTH`.
    """
    depth = 1
    for key, value in card.config.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if key == "depth" or key.startswith("n_"):
            depth *= max(value, 1)
        elif value > _MAX_CONFIG_WIDTH:
            raise ValueError(
                f"model card {card.name!r}: {key}={value} is larger than any supported "
                f"network ({_MAX_CONFIG_WIDTH} at most)"
            )
    if depth > _MAX_CONFIG_DEPTH:
        raise ValueError(
            f"model card {card.name!r} asks for {depth} layers/blocks; at most "
            f"{_MAX_CONFIG_DEPTH} are supported"
        )


def _reference_state(card: ModelCard) -> dict[str, Any]:
    """Parameter and buffer shapes the card's network has, without allocating it (meta device)."""
    import torch

    _check_card_size(card)
    with torch.device("meta"):
        reference = build_model(card.arch, card.config)
    n_params = sum(p.numel() for p in reference.parameters())
    if n_params > _MAX_PARAMETERS:
        raise ValueError(
            f"model card {card.name!r} asks for {n_params:,} parameters; at most "
            f"{_MAX_PARAMETERS:,} are supported"
        )
    return dict(reference.state_dict())


def _validated_state(weights: Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The weights of ``weights`` after checking them against ``card``, before any network is built.

    Raises
    ------
    ValueError
        For a pickle or otherwise invalid safetensors file, a card asking for
        an oversized network, or weights whose names/shapes do not match it.
    """
    state = _read_safetensors(weights)
    _check_state_dict(_reference_state(card), state, card.arch)
    return state


def save_model(model: nn.Module, card: ModelCard, directory: Path) -> Path:
    """Write ``<card.name>.safetensors`` and ``<card.name>.json`` into ``directory``.

    Each file is written to a temporary file and moved into place with
    :func:`os.replace`, so readers never see a half-written file.

    Parameters
    ----------
    model : torch.nn.Module
        Trained model; its state dict must match ``build_model(card.arch,
        card.config)``.
    card : ModelCard
        Description; also embedded in the safetensors metadata.
    directory : pathlib.Path
        Target directory, created if needed.

    Returns
    -------
    pathlib.Path
        Path of the ``.safetensors`` file.

    Raises
    ------
    ValueError
        If the state dict does not match the card's architecture and config.
    """
    import torch
    from safetensors.torch import save_file

    if not isinstance(card, ModelCard):
        raise ValueError(f"card must be a ModelCard, got {type(card).__name__}")
    with torch.device("meta"):
        reference = build_model(card.arch, card.config)
    state = model.state_dict()
    _check_state_dict(reference.state_dict(), state, card.arch)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    card_json = card.to_json()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / f"{card.name}{_WEIGHTS_SUFFIX}"
    metadata = {"format": "pt", "napari_emdenoise_card": card_json}
    _atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    _atomic_write(
        weights_path.with_suffix(_CARD_SUFFIX),
        lambda tmp: tmp.write_text(card_json, encoding="utf-8"),
    )
    return weights_path


def _resolve_weights(name_or_path: str | Path, extra_dirs: list[Path] | None) -> Path:
    text = os.fspath(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, os.PathLike)
        or "/" in text
        or os.sep in text
        or text.lower().endswith((_WEIGHTS_SUFFIX, *_PICKLE_SUFFIXES))
    )
    if not looks_like_path:
        models = list_models(extra_dirs)
        if text not in models:
            known = ", ".join(sorted(models)) or "none installed"
            raise ValueError(f"unknown model {text!r}; available models: {known}")
        path = models[text].weights_path
        assert path is not None
        return path
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise ValueError(
            f"refusing to load {path.name}: pickle weight files can run code; "
            "convert to safetensors (safetensors.torch.save_file) and write a model card"
        )
    if suffix != _WEIGHTS_SUFFIX:
        raise ValueError(f"weights must be a {_WEIGHTS_SUFFIX} file, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else raises ``ValueError`` (never unpickles)."""
    from safetensors.torch import load_file

    with path.open("rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    # The length's low byte may be 0x80, so a leading 0x80 alone does not mean
    # pickle (a 6272-byte header starts with it).
    is_safetensors = head[8:9] == b"{"
    if not is_safetensors and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"):
        raise ValueError(
            f"{path.name} is a pickle / torch.save file, not safetensors: pickle weight "
            "files can run code; convert to safetensors"
        )
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path.name} is not a valid safetensors file: {exc}") from exc


def load_model(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    *,
    extra_dirs: list[Path] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Load a trained model in eval mode.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A name known to :func:`list_models` (e.g. ``"hrstem"``) or the path of
        a ``.safetensors`` file with its ``.json`` card beside it.
    device : str or torch.device, optional
        Where to put the model; default CPU.
    extra_dirs : list of pathlib.Path, optional
        Searched for names in addition to the bundled weights.

    Returns
    -------
    model : torch.nn.Module
        The model in eval mode, its card's modality in ``model.emdenoise_modality``.
    card : ModelCard
        Its card, with ``weights_path`` set.

    Raises
    ------
    ValueError
        For an unknown name, a pickle-based file (``.pt``, ``.pth``, ``.ckpt``,
        ...), a file that is not valid safetensors, an invalid card, a card
        asking for an oversized network, or weights that do not match the
        card's architecture (checked before the network is built).
    FileNotFoundError
        If the weights or their card do not exist.
    """
    weights = _resolve_weights(name_or_path, extra_dirs)
    card_path = weights.with_suffix(_CARD_SUFFIX)
    if not card_path.is_file():
        raise FileNotFoundError(
            f"model card {card_path.name} not found beside {weights.name}; it records the "
            "architecture needed to rebuild the model"
        )
    card = ModelCard.from_json(card_path.read_text(encoding="utf-8"))
    state = _validated_state(weights, card)  # before the network is allocated
    model = build_model(card.arch, card.config)
    _check_state_dict(model.state_dict(), state, card.arch)
    model.load_state_dict(state, strict=True)
    if device is not None:
        model = model.to(device)
    model.eval()
    # The restoration checks the fast-scan axis for scanned modalities, also when it
    # is handed the module rather than its name.
    model.emdenoise_modality = card.modality
    card.weights_path = weights
    return model, card
