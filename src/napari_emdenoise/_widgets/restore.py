"""Restore dock widget: pick a layer and a model, restore in a worker, get a new layer.

The input layer is never modified: the result goes to ``"<name> restored"``
(and optionally ``"<name> residual"`` = input − restored, to check that only
noise was removed), with the input's scale, translate, units and metadata and
the name of the model asked for when *Restore* was clicked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

from ._common import (
    StatefulRun,
    WorkerHost,
    disconnect_quietly,
    fast_scan_axis_box,
    is_grey_image,
    run_in_thread,
    scrolling,
    topmost_name,
    wrap_labels,
)
from ._run_state import RunState

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["RestoreWidget", "is_checkpoint", "model_label", "run_with_progress"]

#: Self-ensemble choices of the dock: label → number of transforms
#: (:mod:`napari_emdenoise.engine.self_ensemble`).
ENSEMBLE_CHOICES = {
    "off (1 pass)": 1,
    "2: + upside-down (any model, 2× time)": 2,
    "8: all flips and rotations (TEM/SEM, counting noise; 8× time)": 8,
}


def run_with_progress(func, *args: Any, **kwargs: Any) -> Iterator[tuple[int, int]]:
    """Run ``func(*args, progress=..., **kwargs)`` in a thread, yielding its progress.

    A generator for ``napari.qt.threading``: yields ``(done, total)`` as ``func``
    reports it and returns ``("ok", result)``. The errors a user can cause (bad
    input: ``ValueError``; ``Cancelled``; ``MemoryError``) come back as
    ``("error", message)`` / ``("cancelled", message)`` so the widget can show them;
    anything else is re-raised (a bug, reported by napari).
    """
    return (
        yield from run_in_thread(
            lambda put: func(*args, progress=lambda d, t: put((d, t)), **kwargs),
            name="emdenoise-restore",
        )
    )


def restore_in_viewer(data: Any, *, model: str, device: str | None, **kwargs: Any) -> Any:
    """:func:`~napari_emdenoise.engine.restore` with ONNX Runtime prepared out of process.

    On the CPU the first large restoration with a model exports its ONNX graph
    (seconds, once per model and torch version). Done in a child process
    (:func:`~napari_emdenoise.engine.onnx_backend.prepare_backend`), Cancel
    stops it and a viewer closed meanwhile never waits on it.
    """
    from ..engine import restore
    from ..engine.onnx_backend import prepare_backend

    n_pixels = int(np.prod(np.shape(data)))
    backend = prepare_backend(model, device, n_pixels, cancel=kwargs.get("cancel"))
    return restore(data, model=model, device=device, backend=backend, **kwargs)


def image_models(cards: dict[str, Any]) -> dict[str, Any]:
    """The models that restore micrographs (diffraction-pattern models go to the 4D-STEM dock)."""
    return {name: card for name, card in cards.items() if card.modality != "diffraction"}


def _card_text(card: Any) -> str:
    m = card.metrics or {}
    training = card.training or {}
    steps = training.get("steps", "?")
    stages = training.get("stage_steps")  # bundled models fine-tuned in several stages
    trained = f"{sum(stages)} steps in {len(stages)} stages" if stages else f"{steps} steps"
    parts = [f"{card.arch} · {card.kind.upper()}-{card.modality.upper()} · {trained}"]
    if is_checkpoint(card):
        planned = training.get("planned_steps")
        of = f" of {planned}" if planned else ""
        parts.append(f"checkpoint: training was stopped at step {steps}{of}")
    if "val_psnr" in m:
        parts.append(
            f"validation PSNR {m['val_psnr']:.2f} dB "
            f"(input {m.get('val_psnr_input', float('nan')):.2f} dB)"
        )
    return "\n".join(parts)


def is_checkpoint(card: Any) -> bool:
    """Whether a model card describes a run that was stopped before its last step."""
    return bool((card.training or {}).get("stopped", False))


def model_label(name: str, card: Any) -> str:
    """What the model drop-down shows: the name, marked when it is an unfinished run."""
    return f"{name} (checkpoint)" if card is not None and is_checkpoint(card) else name


class RestoreWidget(StatefulRun, mw.Container):
    """Dock widget that restores an image layer with a bundled or user-trained model.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its ``PublicOnlyProxy`` when the widget is
        opened from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        from ..engine.device import available_devices
        from ..models.registry import list_models

        self.viewer = viewer
        self._worker: Any = None
        self._cancel = threading.Event()
        #: Where the restoration stands, as the dock shows it (see :meth:`_enter`).
        self.state = RunState.IDLE
        self.cards = image_models(list_models())
        #: The last layers produced (tests read them).
        self.outputs: list[Any] = []
        #: unique_id of every layer this widget produced (never proposed as input).
        self._produced: set[Any] = set()
        self.last_error = ""

        self.layer = mw.ComboBox(label="image layer", choices=self._layer_choices)
        self.model = mw.ComboBox(label="model", choices=self._model_choices)
        if "hrstem" in self.cards:
            self.model.value = "hrstem"
        self.card = mw.Label(label="model card")
        self.device = mw.ComboBox(label="device", choices=["auto", *available_devices()])
        self.tile_size = mw.SpinBox(
            label="tile size [px] (0 = auto)", value=0, min=0, max=8192, step=64
        )
        self.residual = mw.CheckBox(text="show residual (input − restored)", value=False)
        self.safeguard = mw.CheckBox(
            text="safeguard: keep only the change that lowers the estimated error",
            value=False,
            tooltip="Keep, in each frequency band, the share of the network's change that lowers "
            "Stein's unbiased estimate of the error (the rest of the input is kept). For "
            "counting-noise-limited images; it assumes pixel-independent (Poisson–Gaussian) noise "
            "and gives back corrections of scan distortions (blur, jitter, row lines). Tick it "
            "for low-magnification images of particles on an amorphous film restored with "
            "lrstem or lrtem, which otherwise still remove part of the film's texture and "
            "the particles' fringes.",
        )
        self.refine = mw.CheckBox(
            text="Wiener refinement: give back detail the network over-smoothed",
            value=True,
            tooltip="Use the network's output as the pilot of an empirical Wiener filter of the "
            "raw image (64-pixel windows): lattice fringes and column peaks that the network "
            "attenuated more than the image's noise requires come back, and the faint 2-pixel "
            "pattern networks leave near the Nyquist frequencies is replaced by the raw image's "
            "content there, filtered like the neighbouring frequencies. It also blurs single "
            "columns a little: at 2-5 counts/pixel vacancies and substitutions keep 0.8-0.9 of "
            "their contrast (the network alone: about 1.0). Off: the network's output alone, "
            "for counting vacancies or dopants and measuring column intensities.",
        )
        self.lattice = mw.CheckBox(
            text="lattice pass: give back lattice fringes the network erased",
            value=True,
            tooltip="After the refinement, add back the lattice reflections (Bragg peaks) that "
            "stand out of the noise in the spectrum of what the restoration removed, with their "
            "local amplitude and phase: fine fringes (periods of 6 pixels and less) and weak "
            "ones at low dose come back from the raw image. Periodic noise in the raw image "
            "(mains interference) comes back with them. Needs the Wiener refinement.",
        )
        self.keep_defects = mw.CheckBox(
            text="keep defects: put the raw image back where it differs significantly",
            value=False,
            tooltip="Last step: wherever the output differs from the raw image by more than 3 "
            "noise deviations at the scale of an atom column (a vacancy or dopant column that "
            "the restoration averaged away), the raw image is put back. For counting-noise "
            "limited atomic-resolution images where single columns matter; it also puts back "
            "scan distortions the network corrected (row offsets, jitter).",
        )
        self.refine.changed.connect(lambda on: setattr(self.lattice, "enabled", bool(on)))
        self.ensemble = mw.ComboBox(
            label="self-ensemble",
            choices=list(ENSEMBLE_CHOICES.items()),
            value=1,
            tooltip="Restore the image under flips and rotations and average the results (the "
            "time is multiplied by the number of transforms). '2' adds the upside-down image and "
            "suits every model; '8' uses all flips and 90° rotations, for TEM/SEM images and "
            "S(T)EM images limited by counting noise (it turns scan distortions away from the "
            "fast-scan axis the S(T)EM models correct).",
        )
        self.fast_scan_axis = fast_scan_axis_box(
            "The image axis the beam was scanned fast along. The S(T)EM and SEM models "
            "undo detector lag, fast-scan blur and line jitter along x, as they were trained; "
            "choose y for an image scanned rotated by 90° or stored transposed. The status line "
            "says when the image's noise points to the other axis. No effect on TEM models "
            "beyond the transposition. 'Adapt to this image' follows it too (the adapted model "
            "is then meant for this axis)."
        )
        self._make_run_controls("Restore", "" if self.cards else "no models found")
        wrap_labels(self.card, self.status)
        form = mw.Container(
            widgets=[
                self.layer,
                self.model,
                self.card,
                self.device,
                self.tile_size,
                self.residual,
                self.safeguard,
                self.refine,
                self.lattice,
                self.keep_defects,
                self.ensemble,
                self.fast_scan_axis,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ],
            labels=True,
        )
        # "Adapt to this image" (issue 12): self-supervised fine-tuning, see _adapt_panel
        from ._adapt_panel import AdaptPanel

        self.adapt_panel = AdaptPanel(self)
        form.append(self.adapt_panel)
        form.native.layout().addStretch(1)
        self.native.layout().addWidget(scrolling(form.native, 60))
        self._form = form  # keep the magicgui wrappers alive
        self.model.changed.connect(self._show_card)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        from ..models.registry import on_models_changed

        self._unsubscribe = on_models_changed(self.refresh_models)
        self.host = WorkerHost(self.native, self._on_close)
        default = self._default_layer()
        if default is not None:
            self.layer.value = default
        self._show_card()

    def _on_close(self) -> None:
        """The viewer is closing or the dock was removed: cancel, let go of the viewer."""
        self._enter(RunState.CLOSED)
        self._cancel.set()
        self.adapt_panel.close()
        if self._worker is not None:
            self._worker.quit()
        self._unsubscribe()
        disconnect_quietly(
            (self.viewer.layers.events.inserted, self._refresh_layers),
            (self.viewer.layers.events.removed, self._refresh_layers),
            (self.viewer.layers.selection.events.active, self._follow_selection),
        )

    # -- choices ----------------------------------------------------------------
    def refresh_models(self) -> None:
        """Re-read the bundled and user models (called when a model is installed)."""
        from ..models.registry import list_models

        if self.host.closing:
            return
        self.cards = image_models(list_models())
        self.model.reset_choices()
        self._show_card()

    def _model_choices(self, *_: object) -> list[tuple[str, str]] | list[str]:
        if not self.cards:
            return [""]
        return [(model_label(n, self.cards[n]), n) for n in sorted(self.cards)]

    def _layer_choices(self, *_: object) -> list[str]:
        """2-D images and (frames, y, x) stacks; RGB layers are listed and refused at Start."""
        from napari.layers import Image

        return [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim in (2, 3)
        ]

    def _candidate(self, layer: Any) -> bool:
        return is_grey_image(layer, (2, 3)) and layer.unique_id not in self._produced

    def _default_layer(self) -> str | None:
        """The selected layer if it can be restored, else the topmost visible one."""
        active = self.viewer.layers.selection.active
        if active is not None and self._candidate(active):
            return active.name
        layers = [layer for layer in self.viewer.layers if self._candidate(layer)]
        return topmost_name([layer for layer in layers if layer.visible], layers)

    def _refresh_layers(self, *_: object) -> None:
        if self.host.closing:
            return
        current = self.layer.value
        self.layer.reset_choices()
        if current is None or current not in self.layer.choices:
            default = self._default_layer()
            if default is not None:
                self.layer.value = default

    def _follow_selection(self, event: Any = None) -> None:
        """Selecting a layer in the layer list makes it the input (outputs excluded)."""
        active = self.viewer.layers.selection.active
        if self._worker is None and active is not None and self._candidate(active):
            if active.name in self.layer.choices:
                self.layer.value = active.name

    def _show_card(self, *_: object) -> None:
        card = self.cards.get(self.model.value)
        self.card.value = _card_text(card) if card else ""

    # -- run ----------------------------------------------------------------------
    def start(self) -> None:
        """Restore the selected layer in a worker thread."""
        if self._worker is not None or self.adapt_panel.busy or self.host.closing:
            return
        if not self.layer.value:
            self._error("no image layer selected")
            return
        model = self.model.value
        if not model:
            self._error("no model available")
            return
        layer = self.viewer.layers[self.layer.value]
        if getattr(layer, "rgb", False):
            self._error(
                f"{layer.name!r} is an RGB(A) image: the models restore grey-scale "
                "micrographs; open the raw data, or convert the layer to grey first"
            )
            return
        if getattr(layer, "multiscale", False):
            self._error(f"{layer.name!r} is a multiscale (pyramid) image: open its full resolution")
            return
        data = np.asarray(layer.data)
        request = {
            "model": model,
            "name": layer.name,
            "geometry": _geometry(layer),
            "metadata": dict(layer.metadata),
        }
        self._begin(f"restoring {layer.name} with {model}…")
        device = None if self.device.value == "auto" else self.device.value
        tile = int(self.tile_size.value) or None
        safeguard = bool(self.safeguard.value)
        ensemble = int(self.ensemble.value)
        request["ensemble"] = ensemble
        request["refine"] = refine = bool(self.refine.value)
        request["lattice"] = lattice = refine and bool(self.lattice.value)
        request["keep_defects"] = keep_defects = bool(self.keep_defects.value)
        request["fast_scan_axis"] = fast_scan_axis = str(self.fast_scan_axis.value)
        band_weights: list[tuple[float, ...]] = []  # filled by the worker, read when it is done
        shares: list[float] = []  # lattice pass: share of each frame's detail it gave back
        self._launch(
            lambda restored: self._on_result(request, data, restored, band_weights, shares),
            run_with_progress,
            restore_in_viewer,
            data,
            model=model,
            device=device,
            tile_size=tile,
            cancel=self._cancel.is_set,
            safeguard=safeguard,
            safeguard_report=(lambda _i, r: band_weights.append(r.band_weights))
            if safeguard
            else None,
            ensemble=ensemble,
            refine=refine,
            lattice=lattice,
            keep_defects=keep_defects,
            lattice_report=(lambda _i, share: shares.append(share)) if lattice else None,
            fast_scan_axis=fast_scan_axis,
        )

    def _on_result(
        self,
        request: dict,
        data: np.ndarray,
        restored: np.ndarray,
        band_weights: list[tuple[float, ...]] | None = None,
        lattice_shares: list[float] | None = None,
    ) -> None:
        """Add the result layers, recorded with the model that was asked for at Start."""
        name, model = request["name"], request["model"]
        metadata = {
            **request["metadata"],
            "emdenoise_model": model,
            "emdenoise_wiener_refinement": request.get("refine", True),
            "emdenoise_lattice_pass": request.get("lattice", True),
            "emdenoise_keep_defects": request.get("keep_defects", False),
        }
        ensemble = request.get("ensemble", 1)
        if ensemble > 1:
            metadata["emdenoise_ensemble"] = ensemble
        if band_weights:
            metadata["emdenoise_safeguard_band_weights"] = [list(w) for w in band_weights]
        if lattice_shares:
            metadata["emdenoise_lattice_share"] = [round(float(v), 4) for v in lattice_shares]
        axis = request.get("fast_scan_axis", "x")
        if axis != "x":
            metadata["emdenoise_fast_scan_axis"] = axis
        common = {**request["geometry"], "metadata": metadata}
        self.outputs = [self.viewer.add_image(restored, name=f"{name} restored", **common)]
        if self.residual.value:
            residual = data.astype(np.float32) - restored
            self.outputs.append(
                self.viewer.add_image(
                    residual,
                    name=f"{name} residual",
                    visible=False,
                    colormap="twilight_shifted",
                    **common,
                )
            )
        self._produced.update(layer.unique_id for layer in self.outputs)
        self.status.value = f"{name} restored with {model}"
        if request.get("refine", True):
            self.status.value += " + Wiener refinement"
        if request.get("lattice", True):
            self.status.value += " + lattice pass"
        if request.get("keep_defects", False):
            self.status.value += " + keep defects"
        if ensemble > 1:
            self.status.value += f" (mean of {ensemble} flips/rotations)"
        if band_weights:
            from ..engine.safeguard import describe_band_weights

            self.status.value += f"; {describe_band_weights(band_weights)}"
        if lattice_shares and not request.get("keep_defects", False):
            from ..engine.lattice import LATTICE_SHARE_WARNING

            if max(lattice_shares) > LATTICE_SHARE_WARNING:
                self.status.value += (
                    ". Most of the fine detail was given back by the lattice pass (the network "
                    "erased a lattice finer than it resolves): it is rebuilt from a 32-pixel "
                    "average, so vacancies and dopant columns are averaged away. Tick 'keep "
                    "defects' to see them."
                )
        self.status.value += self._scan_axis_note(model, data, axis)
        self._finish()

    def _scan_axis_note(self, model: str, data: np.ndarray, axis: str) -> str:
        """A sentence when a S(T)EM/SEM model met an image scanned along its other axis."""
        from ..engine.scan_axis import SCANNED_MODALITIES, scan_axis_mismatch

        card = self.cards.get(model)
        if card is None or card.modality not in SCANNED_MODALITIES:
            return ""
        frame = data if data.ndim == 2 else data[0]
        mismatch = scan_axis_mismatch(frame, axis)
        if mismatch is None:
            return ""
        return (
            f". Note: {mismatch.describe()} Set 'fast-scan axis' to {mismatch.suggested} and "
            "restore again."
        )


def _geometry(layer: Any) -> dict[str, Any]:
    """What a result layer copies from its input: scale, translate, units, axis labels."""
    geometry: dict[str, Any] = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
    for key in ("units", "axis_labels"):
        value = getattr(layer, key, None)
        if value is not None:
            geometry[key] = tuple(value)
    return geometry
