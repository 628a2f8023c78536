"""Typed parameter objects shared by every distortion layer.

Each distortion layer of the noise model has a dataclass derived from
:class:`LayerParams`. Its fields are declared with :func:`param`, which records
the range the paper samples from, the hard validity limits, the unit and a
one-line description in the field metadata. The playground widget and the
JSON round trip are generated from this metadata, so a new parameter needs no
GUI code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = [
    "LayerParams",
    "check_known_keys",
    "OccurringParams",
    "ParamSpec",
    "param",
    "param_specs",
    "sample_uniform",
]

P = TypeVar("P", bound="LayerParams")
O = TypeVar("O", bound="OccurringParams")


@dataclass(frozen=True)
class ParamSpec:
    """Metadata of one parameter, read from the dataclass field.

    Attributes
    ----------
    name : str
        Field name.
    default : Any
        Default value.
    low, high : float or None
        Range used by the paper when it draws the parameter at random; the
        playground slider spans it.
    hard_min, hard_max : float or None
        Validity limits; :meth:`LayerParams.validate` rejects values outside.
    unit : str
        Physical unit (``"Å"``, ``"e⁻/pixel"``, ``"pixels"``, ...), empty if
        dimensionless.
    doc : str
        One-line description shown as the widget tooltip.
    log : bool
        Whether the slider should be logarithmic (dose-like parameters).
    choices : tuple or None
        Allowed values for categorical parameters.
    """

    name: str
    default: Any
    low: float | None
    high: float | None
    hard_min: float | None
    hard_max: float | None
    unit: str
    doc: str
    log: bool
    choices: tuple | None
    type: type


def param(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    hard_min: float | None = None,
    hard_max: float | None = None,
    unit: str = "",
    doc: str = "",
    log: bool = False,
    choices: tuple | None = None,
) -> Any:
    """Declare a dataclass field of a distortion layer's parameters.

    Parameters
    ----------
    default
        Default value (a typical experimental setting).
    low, high
        The paper's sampling range; also the playground slider range.
    hard_min, hard_max
        Validity limits (default: none). Values outside raise ``ValueError``
        in :meth:`LayerParams.validate`.
    unit, doc
        Unit and a one-line description.
    log
        Logarithmic slider.
    choices
        Allowed values for a categorical parameter.
    """
    meta = {
        "low": low,
        "high": high,
        "hard_min": hard_min,
        "hard_max": hard_max,
        "unit": unit,
        "doc": doc,
        "log": log,
        "choices": tuple(choices) if choices is not None else None,
    }
    return field(default=default, metadata=meta)


def check_known_keys(data: object, allowed: Iterable[str], where: str) -> Mapping[str, Any]:
    """Return ``data`` if it is a mapping whose keys are all in ``allowed``.

    Every settings dict (a layer's parameters, a whole pipeline's) goes
    through this, so a misspelt parameter is refused by name instead of being
    silently ignored.

    Parameters
    ----------
    data : object
        Candidate mapping of settings.
    allowed : iterable of str
        The names it may hold.
    where : str
        What ``data`` describes, for the message (e.g. ``"ShotNoiseParams"``).

    Returns
    -------
    Mapping
        ``data`` itself.

    Raises
    ------
    ValueError
        If ``data`` is not a mapping, or names unknown keys (with the closest
        known names as suggestions).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: settings must be a dict, got {type(data).__name__}")
    known = sorted(str(name) for name in allowed)
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hints.append(f"{key!r} (did you mean {close[0]!r}?)")
        hint = f"; {', '.join(hints)}" if hints else ""
        raise ValueError(
            f"{where}: unknown parameter(s) {unknown}{hint}; known parameters: {known}"
        )
    return data


def param_specs(params_type: type[LayerParams] | LayerParams) -> list[ParamSpec]:
    """Return the :class:`ParamSpec` of every field except ``enabled``."""
    cls = params_type if isinstance(params_type, type) else type(params_type)
    hints = _resolved_types(cls)
    specs = []
    for f in fields(cls):
        if f.name == "enabled":
            continue
        m = f.metadata
        specs.append(
            ParamSpec(
                name=f.name,
                default=f.default,
                low=m.get("low"),
                high=m.get("high"),
                hard_min=m.get("hard_min"),
                hard_max=m.get("hard_max"),
                unit=m.get("unit", ""),
                doc=m.get("doc", ""),
                log=m.get("log", False),
                choices=m.get("choices"),
                type=hints.get(f.name, type(f.default)),
            )
        )
    return specs


def _resolved_types(cls: type) -> dict[str, type]:
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - defensive: unresolvable annotations
        return {}
    out = {}
    for k, v in hints.items():
        origin = typing.get_origin(v)
        out[k] = v if origin is None else origin
    return out


def sample_uniform(spec: ParamSpec, rng: np.random.Generator) -> Any:
    """Draw one value uniformly (log-uniformly if ``spec.log``) in the paper range."""
    if spec.choices is not None:
        return spec.choices[int(rng.integers(len(spec.choices)))]
    if spec.low is None or spec.high is None:
        return spec.default
    lo, hi = float(spec.low), float(spec.high)
    if spec.log and lo > 0:
        v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        v = rng.uniform(lo, hi)
    if spec.type is int:
        return int(round(v))
    return float(v)


@dataclass
class LayerParams:
    """Base class of every distortion layer's parameters.

    Attributes
    ----------
    enabled : bool
        Whether the layer is applied in a pipeline.
    """

    enabled: bool = True

    # -- validation ---------------------------------------------------------
    def validate(self: P) -> P:
        """Check every value against its validity limits.

        Returns
        -------
        self
            For chaining.

        Raises
        ------
        ValueError
            Naming the layer, the parameter, its value and the allowed range.
        """
        for spec in param_specs(self):
            value = getattr(self, spec.name)
            where = f"{type(self).__name__}.{spec.name}"
            if spec.choices is not None:
                if value not in spec.choices:
                    raise ValueError(f"{where} must be one of {spec.choices}, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if not math.isfinite(float(value)):
                raise ValueError(f"{where} must be finite, got {value!r}")
            if spec.hard_min is not None and value < spec.hard_min:
                raise ValueError(
                    f"{where} = {value!r} is below its minimum {spec.hard_min} {spec.unit}".rstrip()
                )
            if spec.hard_max is not None and value > spec.hard_max:
                raise ValueError(
                    f"{where} = {value!r} is above its maximum {spec.hard_max} {spec.unit}".rstrip()
                )
        return self

    # -- sampling -----------------------------------------------------------
    @classmethod
    def sample(cls: type[P], rng: np.random.Generator) -> P:
        """Draw random parameters as the paper does.

        The default draws every numeric field uniformly in its paper range;
        layers with occurrence probabilities or coupled parameters override it.
        """
        values = {spec.name: sample_uniform(spec, rng) for spec in param_specs(cls)}
        return cls(**values)

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, np.generic):
                v = v.item()
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any]) -> P:
        """Build from a dict; a non-dict or unknown keys raise ``ValueError`` naming them."""
        check_known_keys(data, (f.name for f in fields(cls)), cls.__name__)
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                v = data[f.name]
                if isinstance(f.default, tuple) and isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
        return cls(**kwargs).validate()

    def replace(self: P, **changes: Any) -> P:
        """Return a copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class OccurringParams(LayerParams):
    """Parameters of a layer that a random pipeline enables with a probability.

    On top of :class:`LayerParams` it type-checks every numeric field and
    samples ``enabled`` with probability :attr:`occurrence`.

    Attributes
    ----------
    occurrence : float
        Class constant: probability with which :meth:`sample` draws
        ``enabled=True``.
    enabled_drawn_last : bool
        Class constant: whether :meth:`sample` draws ``enabled`` after the
        field values (True) or before them (False). It fixes the order of the
        random draws, so a seed keeps producing the same parameters.
    """

    occurrence: ClassVar[float] = 1.0
    enabled_drawn_last: ClassVar[bool] = False

    def validate(self: O) -> O:
        """Check types, then the limits declared with :func:`param`.

        Raises
        ------
        ValueError
            If ``enabled`` is not a bool, a numeric field holds a non-number
            (or a non-integer where an integer is declared), or a value lies
            outside its limits.
        """
        name = type(self).__name__
        if not isinstance(self.enabled, (bool, np.bool_)):
            raise ValueError(f"{name}.enabled must be True or False, got {self.enabled!r}")
        for spec in param_specs(self):
            value = getattr(self, spec.name)
            if spec.choices is not None:
                continue
            if spec.type is int and (
                isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            ):
                raise ValueError(f"{name}.{spec.name} must be an integer, got {value!r}")
            if spec.type is float and (
                isinstance(value, (bool, np.bool_))
                or not isinstance(value, (int, float, np.integer, np.floating))
            ):
                raise ValueError(f"{name}.{spec.name} must be a real number, got {value!r}")
        return super().validate()

    @classmethod
    def draw_enabled(cls, rng: np.random.Generator) -> bool:
        """One uniform draw: True with probability :attr:`occurrence`."""
        return bool(rng.random() < cls.occurrence)

    @classmethod
    def draw_values(cls, rng: np.random.Generator, *skip: str) -> dict[str, Any]:
        """Draw every field except ``skip`` uniformly (log-uniformly) in its paper range."""
        return {s.name: sample_uniform(s, rng) for s in param_specs(cls) if s.name not in skip}

    @classmethod
    def sample(cls: type[O], rng: np.random.Generator) -> O:
        """Draw ``enabled`` with probability ``occurrence``, values uniformly.

        Every field is drawn even when the layer comes out disabled, so the
        number of random draws, and thus the stream, does not depend on it.
        """
        if cls.enabled_drawn_last:
            values = cls.draw_values(rng)
            return cls(enabled=cls.draw_enabled(rng), **values).validate()
        enabled = cls.draw_enabled(rng)
        return cls(enabled=enabled, **cls.draw_values(rng)).validate()
