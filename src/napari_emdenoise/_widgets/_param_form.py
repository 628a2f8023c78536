"""Editors generated from :class:`~napari_emdenoise.noise._params.LayerParams` metadata.

One :class:`LayerParamsForm` per distortion layer: a checkbox for ``enabled``
and one magicgui widget per :func:`~napari_emdenoise.noise._params.param`
field (slider over the paper range, log slider for dose-like values, spin box
for integers, combo box for choices). No widget is written by hand for a
particular parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from magicgui import widgets as mw

from ..noise._params import LayerParams, ParamSpec, param_specs

__all__ = ["LayerParamsForm", "widget_for_spec"]


def _label(spec: ParamSpec) -> str:
    text = spec.name.replace("_", " ")
    return f"{text} [{spec.unit}]" if spec.unit else text


def widget_for_spec(spec: ParamSpec, value: object) -> mw.ValueWidget:
    """Build the magicgui widget that edits one parameter."""
    common = {"label": _label(spec), "tooltip": spec.doc or None, "name": spec.name}
    if spec.choices is not None:
        return mw.ComboBox(choices=list(spec.choices), value=value, **common)
    if spec.type is bool or isinstance(value, bool):
        return mw.CheckBox(value=bool(value), **common)
    lo = spec.low if spec.low is not None else spec.hard_min
    hi = spec.high if spec.high is not None else spec.hard_max
    if spec.type is int or isinstance(value, int):
        lo_i = int(lo) if lo is not None else 0
        hi_i = int(hi) if hi is not None else max(10 * int(value), 100)
        lo_i, hi_i = min(lo_i, int(value)), max(hi_i, int(value))
        return mw.SpinBox(value=int(value), min=lo_i, max=hi_i, **common)
    v = float(value)  # type: ignore[arg-type]
    if lo is None or hi is None or lo == hi:
        return mw.FloatSpinBox(value=v, min=-1e9, max=1e9, step=abs(v) / 10 or 0.01, **common)
    # sliders keep 6 decimals: round the range outwards so the exact bounds stay reachable
    lo_f = math.floor(min(float(lo), v) * 1e6) / 1e6
    hi_f = math.ceil(max(float(hi), v) * 1e6) / 1e6
    if spec.log and lo_f > 0 and v > 0:
        # magicgui's LogSlider has ~100 positions; a fine slider over log10(value) keeps
        # 6 significant digits (see LayerParamsForm, which converts back).
        common["label"] = f"{common['label']} (log₁₀)"
        lo_l, hi_l = math.log10(min(float(lo), v)), math.log10(max(float(hi), v))
        lo_l, hi_l = math.floor(lo_l * 1e6) / 1e6, math.ceil(hi_l * 1e6) / 1e6
        return mw.FloatSlider(
            value=math.log10(v), min=lo_l, max=hi_l, step=_step(lo_l, hi_l), **common
        )
    return mw.FloatSlider(value=v, min=lo_f, max=hi_f, step=_step(lo_f, hi_f), **common)


def _snap(value: float, spec: ParamSpec) -> float:
    """Undo the slider's 6-decimal rounding at the default and the range ends (e.g. π/2)."""
    for exact in (spec.default, spec.low, spec.high):
        if isinstance(exact, (int, float)) and abs(value - exact) <= 1e-5 * max(1.0, abs(exact)):
            return float(exact)
    return value


def _step(lo: float, hi: float) -> float:
    """A power of ten giving at least ~100 slider positions (keeps decimal values exact)."""
    return max(10.0 ** math.floor(math.log10(max(hi - lo, 1e-6) / 100)), 1e-6)


class LayerParamsForm(mw.Container):
    """Editable form for one layer's parameters.

    Parameters
    ----------
    title : str
        Shown as the enable checkbox's text (e.g. "Shot noise (eq 30)").
    params : LayerParams
        Initial values; the form's type is ``type(params)``.
    on_change : callable, optional
        Called with no argument after any edit.
    """

    def __init__(
        self,
        title: str,
        params: LayerParams,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._type = type(params)
        self.enabled_box = mw.CheckBox(value=params.enabled, text=title, name="enabled")
        self.editors: dict[str, mw.ValueWidget] = {
            spec.name: widget_for_spec(spec, getattr(params, spec.name))
            for spec in param_specs(self._type)
        }
        #: Parameters whose editor shows log10(value).
        self._log = {n for n, e in self.editors.items() if e.label.endswith("(log₁₀)")}
        super().__init__(widgets=[self.enabled_box, *self.editors.values()], labels=True)
        self._on_change = on_change
        self.enabled_box.changed.connect(self._changed)
        for editor in self.editors.values():
            editor.changed.connect(self._changed)
        self._sync_enabled()

    def _sync_enabled(self) -> None:
        for editor in self.editors.values():
            editor.enabled = self.enabled_box.value

    def _changed(self, *_: object) -> None:
        self._sync_enabled()
        if self._on_change is not None:
            self._on_change()

    @property
    def params(self) -> LayerParams:
        """The current values as a validated parameter object."""
        values = {name: editor.value for name, editor in self.editors.items()}
        for name in self._log:
            values[name] = float(f"{10.0 ** values[name]:.5g}")
        for spec in param_specs(self._type):
            if spec.type is int:
                values[spec.name] = int(round(values[spec.name]))
            elif spec.type is float:
                values[spec.name] = _snap(float(values[spec.name]), spec)
        return self._type(enabled=bool(self.enabled_box.value), **values).validate()

    def set_params(self, params: LayerParams) -> None:
        """Show ``params`` without emitting one change per field."""
        if type(params) is not self._type:
            raise TypeError(f"expected {self._type.__name__}, got {type(params).__name__}")
        callback, self._on_change = self._on_change, None
        try:
            self.enabled_box.value = params.enabled
            for name, editor in self.editors.items():
                value = getattr(params, name)
                if name in self._log:
                    value = math.log10(value)
                if hasattr(editor, "max") and isinstance(value, (int, float)):
                    editor.max = max(editor.max, value)
                    editor.min = min(editor.min, value)
                editor.value = value
            self._sync_enabled()
        finally:
            self._on_change = callback
