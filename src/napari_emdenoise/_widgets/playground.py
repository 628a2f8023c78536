"""Noise-model playground: see every distortion layer and tune it by eye.

The widget only collects parameters, runs :func:`napari_emdenoise.noise.distort`
in a worker thread and shows the result: the clean input, the distorted image,
and (optionally) one layer per stage plus the difference each stage made. The
editors for every parameter are generated from the parameter dataclasses by
:class:`~napari_emdenoise._widgets._param_form.LayerParamsForm`.

*Fit noise to image* estimates dose, read noise and row lines of a real
micrograph (optionally only inside the shapes of a Shapes layer) with
:func:`napari_emdenoise.noise.fit.fit_noise` and loads the result into the
sliders (:meth:`PlaygroundWidget.fit_to_layer`).
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

from ..noise.fit import NoiseFit, fit_noise
from ..noise.pipeline import MODALITIES, NoiseParams, distort, layers_for, sample_params
from ..simulate import simulation_rngs
from ..synth import generate_clean
from ._common import (
    WorkerHost,
    caught,
    grey_image_layers,
    is_grey_image,
    scrolling,
    section,
    unexpected_error_text,
    wrap_labels,
)
from ._layers import OwnedLayers
from ._param_form import LayerParamsForm

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["PlaygroundWidget", "find_playground"]

_PREFIX = "playground"
_SYNTHETIC = "synthetic"
_WHOLE_IMAGE = "whole image"


def normalise_to_unit(image: np.ndarray) -> np.ndarray:
    """Map an image linearly onto [0, 1] (the clean-image convention of the noise model)."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not np.isfinite([lo, hi]).all():
        raise ValueError("the selected layer contains NaN or infinite values")
    if hi - lo <= 0:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


class PlaygroundWidget(mw.Container):
    """Dock widget: tune every layer of the EM distortion model and watch the result live.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its ``PublicOnlyProxy`` when the widget is
        opened from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.layers = OwnedLayers(viewer, _PREFIX)
        self._worker: Any = None
        self._pending = False
        self._clean_cache: tuple[tuple, np.ndarray] | None = None
        #: Number of results shown so far (tests wait on it).
        self.n_updates = 0
        #: Last error message shown, or "".
        self.last_error = ""
        #: Result of the last *Fit noise to image*, or None.
        self.last_fit: NoiseFit | None = None

        self.source = mw.ComboBox(label="clean input", choices=self._source_choices)
        self.kind = mw.ComboBox(label="kind", choices=["hr", "lr"], value="hr")
        self.size = mw.SpinBox(label="size [pixels]", value=256, min=16, max=4096, step=16)
        self.modality = mw.ComboBox(label="modality", choices=list(MODALITIES), value="stem")
        self.seed = mw.SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.live = mw.CheckBox(text="update live", value=True)
        self.show_stages = mw.CheckBox(text="one layer per stage", value=True)
        self.show_diffs = mw.CheckBox(text="difference of each stage", value=False)
        self.status = mw.Label(value="")
        header = mw.Container(
            widgets=[self.source, self.kind, self.size, self.modality, self.seed], labels=True
        )
        toggles = mw.Container(widgets=[self.live, self.show_stages, self.show_diffs], labels=False)
        self.update_button = mw.PushButton(text="Update")
        self.random_button = mw.PushButton(text="Random (paper ranges)")
        self.reset_button = mw.PushButton(text="Defaults")
        self.save_button = mw.PushButton(text="Save settings…")
        self.load_button = mw.PushButton(text="Load settings…")
        buttons = mw.Container(
            widgets=[self.update_button, self.random_button, self.reset_button],
            layout="horizontal",
            labels=False,
        )
        files = mw.Container(
            widgets=[self.save_button, self.load_button], layout="horizontal", labels=False
        )
        self.fit_layer = mw.ComboBox(label="fit to", choices=self._fit_choices, nullable=True)
        self.fit_region = mw.ComboBox(label="region", choices=self._region_choices)
        self.fit_offset_auto = mw.CheckBox(
            text="estimate the dark level",
            value=True,
            tooltip="the detector's intensity for zero electrons (a HAADF detector's DC level); "
            "off: use the value below",
        )
        self.fit_offset = mw.FloatSpinBox(
            label="dark level [image units]",
            value=0.0,
            min=-1e15,
            max=1e15,
            step=1.0,
            enabled=False,
            tooltip="intensity of zero detected electrons, e.g. from a blanked-beam frame",
        )
        self.fit_button = mw.PushButton(text="Fit noise to image")
        self.fit_status = mw.Label(value="")
        fit_box = mw.Container(
            widgets=[
                self.fit_layer,
                self.fit_region,
                self.fit_offset_auto,
                self.fit_offset,
                self.fit_button,
                self.fit_status,
            ],
            labels=True,
        )
        wrap_labels(self.status, self.fit_status)
        # One scroll area holds everything, buttons and status first: the dock can shrink
        # to a few lines when other docks share its side (the ~12 layer forms are taller
        # than a laptop screen anyway).
        self.forms_box = mw.Container(labels=False)
        body = mw.Container(widgets=[buttons, self.status, header, toggles, files], labels=False)
        body.native.layout().addWidget(
            section("Fit the noise to a micrograph", fit_box.native, expanded=False)
        )
        body.native.layout().addWidget(section("Distortion layers", self.forms_box.native))
        body.native.layout().addStretch(1)
        self.native.layout().addWidget(scrolling(body.native, 60), 1)
        self._body = body  # keep the magicgui wrappers alive

        self.forms: dict[str, LayerParamsForm] = {}
        self._build_forms(NoiseParams.default(self.modality.value))

        for w in (self.source, self.kind, self.size, self.seed, self.show_stages, self.show_diffs):
            w.changed.connect(self._request_update)
        self.modality.changed.connect(self._on_modality)
        self.update_button.changed.connect(lambda *_: self.request_update(force=True))
        self.random_button.changed.connect(lambda *_: self.randomise())
        self.reset_button.changed.connect(
            lambda *_: self.set_params(NoiseParams.default(self.modality.value))
        )
        self.save_button.changed.connect(lambda *_: self._save_dialog())
        self.load_button.changed.connect(lambda *_: self._load_dialog())
        self.fit_button.changed.connect(lambda *_: self._fit_clicked())
        self.fit_offset_auto.changed.connect(lambda on: setattr(self.fit_offset, "enabled", not on))
        viewer.layers.events.inserted.connect(self._refresh_sources)
        viewer.layers.events.removed.connect(self._refresh_sources)
        self.host = WorkerHost(self.native, self._on_close)
        _OPEN[self] = _viewer_key(viewer)
        self.request_update(force=True)

    def _on_close(self) -> None:
        """The viewer is closing or the dock was removed: stop computing, let go of the viewer."""
        self._pending = False
        if self._worker is not None:
            self._worker.quit()
        for event, callback in (
            (self.viewer.layers.events.inserted, self._refresh_sources),
            (self.viewer.layers.events.removed, self._refresh_sources),
        ):
            try:
                event.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):  # pragma: no cover - already gone
                pass

    # -- parameters -----------------------------------------------------------
    def _build_forms(self, params: NoiseParams) -> None:
        self.forms_box.clear()
        self.forms = {}
        for layer in layers_for(params.modality):
            title = f"{layer.title} (eq {layer.equation})" if layer.equation else layer.title
            form = LayerParamsForm(title, params[layer.name], on_change=self._request_update)
            self.forms[layer.name] = form
            self.forms_box.append(form)

    @property
    def params(self) -> NoiseParams:
        """The settings currently shown in the widget."""
        return NoiseParams(
            self.modality.value, {name: form.params for name, form in self.forms.items()}
        )

    def set_params(self, params: NoiseParams) -> None:
        """Show ``params`` (switching modality if needed) and recompute."""
        if params.modality != self.modality.value:
            with self.modality.changed.blocked():
                self.modality.value = params.modality
            self._build_forms(params)
        else:
            for name, form in self.forms.items():
                form.set_params(params[name])
        self.request_update()

    def randomise(self) -> None:
        """Draw parameters as the paper does (seeded by the seed box)."""
        rng_params = simulation_rngs(int(self.seed.value))[1]
        self.set_params(sample_params(self.modality.value, rng_params))

    def save_settings(self, path: str | Path) -> Path:
        """Write the current settings as JSON (for ``emdenoise train --noise``)."""
        return self.params.save(path)

    def load_settings(self, path: str | Path) -> None:
        """Read settings written by :meth:`save_settings`."""
        self.set_params(NoiseParams.load(path))

    def _save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save noise settings", "noise_settings.json", "JSON (*.json)"
        )
        if path:
            self.status.value = f"saved {self.save_settings(path)}"

    def _load_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Load noise settings", "", "JSON (*.json)"
        )
        if path:
            try:
                self.load_settings(path)
            except (ValueError, OSError) as exc:
                self._show_error(str(exc))

    def _on_modality(self, *_: object) -> None:
        self._build_forms(NoiseParams.default(self.modality.value))
        self.request_update()

    # -- input ----------------------------------------------------------------
    def _source_choices(self, *_: object) -> list[str]:
        return [_SYNTHETIC, *grey_image_layers(self.viewer, (2,), exclude=self.layers)]

    def _refresh_sources(self, *_: object) -> None:
        if self.host.closing:
            return
        with self.source.changed.blocked():
            self.source.reset_choices()
        self.fit_layer.reset_choices()
        self.fit_region.reset_choices()

    def _fit_choices(self, *_: object) -> list[str]:
        return self._source_choices()[1:]

    def _region_choices(self, *_: object) -> list[str]:
        from napari.layers import Shapes

        shapes = [layer.name for layer in self.viewer.layers if isinstance(layer, Shapes)]
        return [_WHOLE_IMAGE, *shapes]

    def _clean_key(self) -> tuple:
        return (self.kind.value, int(self.size.value), int(self.seed.value))

    def _clean_input(self) -> tuple[np.ndarray | None, dict]:
        """The clean image (None: synthetic and not generated yet) and its layer geometry."""
        if self.source.value == _SYNTHETIC:
            key = self._clean_key()
            cached = self._clean_cache
            image = cached[1] if cached is not None and cached[0] == key else None
            return image, {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}
        layer = self.viewer.layers[self.source.value]
        geometry: dict[str, Any] = {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
        }
        if getattr(layer, "units", None) is not None:
            geometry["units"] = tuple(layer.units)
        return normalise_to_unit(np.asarray(layer.data)), geometry

    def clean_image(self) -> np.ndarray:
        """The clean input now (a synthetic one is generated here if needed)."""
        image, _ = self._clean_input()
        if image is None:
            key = self._clean_key()
            image = _synthetic_clean(key)
            self._clean_cache = (key, image)
        return image

    # -- fit to a micrograph ----------------------------------------------------
    def fit_to_layer(
        self,
        layer_name: str,
        region_name: str | None = None,
        offset: float | str | None = None,
    ) -> NoiseFit:
        """Fit the noise model to an image layer and load the result into the sliders.

        Parameters
        ----------
        layer_name : str
            A 2-D image layer (never modified).
        region_name : str, optional
            A Shapes layer: only pixels inside its shapes are used
            (``None`` or ``"whole image"``: every pixel).
        offset : float or "auto", optional
            The detector's dark level (see :func:`~napari_emdenoise.noise.fit.fit_noise`);
            default: the widget's *dark level* controls.

        Returns
        -------
        NoiseFit
            The fit; its one-line summary is shown under the button.

        Raises
        ------
        ValueError
            If the layer is missing or not a 2-D image, the region selects no
            pixels, or the fit fails (see :func:`~napari_emdenoise.noise.fit.fit_noise`).
        """
        if layer_name not in self.viewer.layers:
            raise ValueError(f"no layer named {layer_name!r}")
        layer = self.viewer.layers[layer_name]
        if not is_grey_image(layer, (2,)):
            raise ValueError(f"{layer_name!r} is not a 2-D grey-scale image layer")
        data = np.asarray(layer.data)
        mask = None
        if region_name not in (None, "", _WHOLE_IMAGE):
            mask = _shapes_mask(self.viewer, region_name, layer, data.shape)
        if offset is None:
            offset = "auto" if self.fit_offset_auto.value else float(self.fit_offset.value)
        modality = self.modality.value
        fit = fit_noise(data, mask, modality=modality, offset=offset)
        if fit.offset_estimated:
            with self.fit_offset.changed.blocked():
                self.fit_offset.value = fit.offset
        clean_mean = float(np.mean(self.clean_image()))
        if not clean_mean > 0:
            raise ValueError("the clean input is black: choose another clean input first")
        self.set_params(fit.to_noise_params(modality, base=self.params, clean_mean=clean_mean))
        self.last_fit = fit
        self.fit_status.value = fit.summary()
        return fit

    def _fit_clicked(self) -> None:
        name = self.fit_layer.value
        if not name:
            self._show_fit_error("open a 2-D image layer to fit to first")
            return
        try:
            self.fit_to_layer(name, self.fit_region.value)
        except (ValueError, KeyError) as exc:
            self._show_fit_error(str(exc))

    def _show_fit_error(self, message: str) -> None:
        self.last_error = message
        self.fit_status.value = f"⚠ {message}"

    # -- computation ----------------------------------------------------------
    def _request_update(self, *_: object) -> None:
        if self.live.value:
            self.request_update()

    def request_update(self, force: bool = False) -> None:
        """Recompute in a worker; if one is running, recompute once it ends (latest wins)."""
        if self.host.closing:
            return
        if self._worker is not None:
            self._pending = True
            return
        try:
            clean, geometry = self._clean_input()
            params = self.params
        except (ValueError, KeyError) as exc:
            self._show_error(str(exc))
            return
        from napari.qt.threading import create_worker

        key = self._clean_key()
        seed = int(self.seed.value)
        self._worker = create_worker(
            caught, _compute, clean, key, params, seed, _start_thread=False
        )
        self._worker.returned.connect(lambda outcome: self._on_outcome(outcome, geometry, key))
        self._worker.errored.connect(lambda exc: self._show_error(unexpected_error_text(exc)))
        self._worker.finished.connect(self._on_finished)
        self.host.start(self._worker)

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending and not self.host.closing:
            self._pending = False
            self.request_update()

    # -- display --------------------------------------------------------------
    def _show_error(self, message: str) -> None:
        if self.host.closing:
            return
        self.last_error = message
        self.status.value = f"⚠ {message}"

    def _on_outcome(self, outcome: tuple[str, Any], geometry: dict, key: tuple) -> None:
        """A user error (bad settings: ValueError) in the status line; else show the result."""
        status, value = outcome
        if status == "error":
            self._show_error(value)
        else:
            self._show(value, geometry, key)

    def _show(self, result: tuple, geometry: dict, key: tuple) -> None:
        if self.host.closing:
            return
        clean, distorted, stages, seconds = result
        if self.source.value == _SYNTHETIC:
            self._clean_cache = (key, clean)
        wanted = [(f"{_PREFIX} clean", clean, False), (f"{_PREFIX} distorted", distorted, True)]
        previous = clean
        for i, (name, image) in enumerate(stages, start=1):
            if self.show_stages.value:
                wanted.append((f"{_PREFIX} {i:02d} {name}", image, False))
            if self.show_diffs.value:
                wanted.append((f"{_PREFIX} Δ{i:02d} {name}", image - previous, False))
            previous = image
        self.layers.retain({name for name, _, _ in wanted})
        for name, data, visible in wanted:
            self.layers.set(name, data, geometry, visible=visible)
        self.last_error = ""
        self.status.value = (
            f"{len(stages)} layers applied in {1000 * seconds:.0f} ms "
            f"({distorted.shape[1]}×{distorted.shape[0]} px)"
        )
        self.n_updates += 1


#: Open playgrounds → key of their viewer (weak: a closed widget drops out).
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _viewer_key(viewer: Any) -> int:
    """The same number for a viewer and every napari proxy of it."""
    return id(getattr(viewer, "__wrapped__", viewer))


def find_playground(viewer: Any) -> PlaygroundWidget | None:
    """The open noise-model playground of ``viewer`` (or of the viewer it proxies), if any."""
    key = _viewer_key(viewer)
    for widget, widget_key in list(_OPEN.items()):
        if widget_key == key and not widget.host.closing:
            return widget
    return None


def _shapes_mask(
    viewer: napari.viewer.Viewer, region_name: str, image_layer: Any, shape: tuple[int, ...]
) -> np.ndarray:
    """Union of the shapes of a Shapes layer as a boolean mask on the image's pixel grid.

    Vertices are mapped through both layers' scale and translate (world
    coordinates), so a region drawn on a calibrated image lands on the right
    pixels. Rotation and shear of either layer are not taken into account.
    """
    from napari.layers import Shapes

    if region_name not in viewer.layers:
        raise ValueError(f"no layer named {region_name!r}")
    region = viewer.layers[region_name]
    if not isinstance(region, Shapes):
        raise ValueError(f"{region_name!r} is not a Shapes layer")
    if len(region.data) == 0:
        raise ValueError(f"the Shapes layer {region_name!r} has no shapes")
    s_scale, s_trans = np.asarray(region.scale)[-2:], np.asarray(region.translate)[-2:]
    i_scale, i_trans = np.asarray(image_layer.scale)[-2:], np.asarray(image_layer.translate)[-2:]
    vertices = [
        ((np.asarray(v)[:, -2:] * s_scale + s_trans) - i_trans) / i_scale for v in region.data
    ]
    on_image = Shapes(vertices, shape_type=list(region.shape_type))
    masks = on_image.to_masks(mask_shape=tuple(shape))
    mask = np.any(masks, axis=0)
    if not mask.any():
        raise ValueError(f"the shapes of {region_name!r} do not cover any pixel of the image")
    return mask


def _synthetic_clean(key: tuple) -> np.ndarray:
    kind, size, seed = key
    return generate_clean(kind=kind, shape=(size, size), rng=simulation_rngs(seed)[0])


def _compute(clean: np.ndarray | None, key: tuple, params: NoiseParams, seed: int) -> tuple:
    """Worker: (clean, distorted, stages, seconds); a synthetic clean image is made here."""
    if clean is None:
        clean = _synthetic_clean(key)
    t0 = time.perf_counter()
    distorted, stages = distort(
        clean, params.modality, params, rng=simulation_rngs(seed)[2], return_stages=True
    )
    return clean, distorted, stages, time.perf_counter() - t0
