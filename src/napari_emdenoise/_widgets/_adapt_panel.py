"""The Restore dock's "Adapt to this image" panel (self-supervised fine-tuning, issue 12).

Thin: it reads the Restore widget's layer and model, runs
:func:`napari_emdenoise.training.adapt.adapt` and then
:func:`napari_emdenoise.engine.predictor.restore` in a worker, plots the
losses in a :class:`.loss_plot.LossPlot` dock, shows a live preview of the
restored centre crop, and at the end selects the adapted model and writes the
comparison layers: ``"<name> restored"`` (adapted), ``"<name> restored
[<parent>]"`` (the model it started from) and both residuals; *side by side*
switches napari's grid view on to compare them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

from ..engine.scan_axis import scan_rows
from ._common import CancellableRun, WorkerHost, run_in_thread, wrap_labels

if TYPE_CHECKING:  # pragma: no cover
    from .restore import RestoreWidget

__all__ = ["AdaptPanel", "adapted_name", "run_adapt"]

#: Side of the centred crop shown as a live preview, pixels.
PREVIEW_SIDE = 256


def adapted_name(parent: str, layer: str, image_hash: str) -> str:
    """A model name for ``parent`` adapted to ``layer``: ``<parent>-<layer>-<hash8>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip("_.-")[:40] or "image"
    return f"{parent}-{stem}-{image_hash[:8]}"


def run_adapt(
    model: str,
    data: np.ndarray,
    layer_name: str,
    cancel: threading.Event,
    closing: threading.Event | None = None,
    **kwargs: Any,
) -> Iterator[tuple[str, Any]]:
    """Worker generator: adapt, then restore with the adapted and the parent model.

    Yields ``("progress", AdaptProgress)`` while adapting and ``("phase", text)``
    afterwards; returns ``("ok", dict)``, ``("error", message)`` or
    ``("cancelled", message)``. A cancelled adaptation still returns its best
    state; ``closing`` (the viewer closes, or the worker was quit) also skips the
    restorations. Saving is
    left to the caller, on the main thread: saving notifies the
    widgets that list models, which touch Qt.
    """
    from ..engine.predictor import restore
    from ..training.adapt import adapt
    from ..training.adapt_select import restore_with_adapted

    def work(put: Any) -> dict[str, Any]:
        result = adapt(
            model,
            data,
            progress=lambda e: put(("progress", e)),
            cancel=cancel.is_set,
            **kwargs,
        )
        name = adapted_name(result.parent, layer_name, result.image_hash)
        put(("phase", f"restoring with {name} and {model}…"))
        stop = closing.is_set if closing is not None else None
        if result.noise_fit is None:  # nothing to estimate the errors with
            choice = None
            adapted = restore(data, model=result.model, backend="torch", cancel=stop)
            parent = restore(data, model=model, backend="torch", cancel=stop)
        else:  # both restorations, and which is likely closer to the truth (two more runs)
            choice = restore_with_adapted(
                data,
                result,
                parent=model,
                rng=np.random.default_rng(0),
                cancel=stop,
                candidates=("bundled", "adapted"),
                backend="torch",
            )
            adapted, parent = choice.outputs["adapted"], choice.outputs["bundled"]
        return {
            "result": result,
            "name": name,
            "adapted": adapted,
            "parent": parent,
            "risk": choice,
        }

    return (
        yield from run_in_thread(
            work, name="emdenoise-adapt", user_errors=(ValueError, MemoryError, OSError)
        )
    )


class AdaptPanel(CancellableRun, mw.Container):
    """Minutes, anchor, *Adapt to this image*, *Cancel*, progress and *side by side*.

    Parameters
    ----------
    owner : RestoreWidget
        The Restore dock (its layer and model choices, viewer and worker host).
    """

    def __init__(self, owner: RestoreWidget) -> None:
        super().__init__(labels=True)
        self.owner = owner
        self._cancel = threading.Event()
        self._closing = threading.Event()
        self._worker: Any = None
        self.plot: Any = None
        #: The last adaptation's result (tests read it), and the layers it produced.
        self.result: Any = None
        self.outputs: list[Any] = []
        self.last_error = ""
        #: Live previews shown during the last adaptation.
        self.previews_shown = 0
        #: Settings beyond minutes and anchor (scripts and tests may replace them).
        self.config: Any = None
        #: Optional step limit in addition to the minutes (None: the minutes only).
        self.max_steps: int | None = None
        self.minutes = mw.FloatSpinBox(
            label="adapt: minutes", value=2.0, min=0.05, max=120.0, step=0.5
        )
        self.anchor = mw.FloatSpinBox(
            label="adapt: anchor weight",
            value=0.5,
            min=0.0,
            max=0.95,
            step=0.05,
            tooltip="Weight of synthetic pairs with the noise fitted to this image: keeps the "
            "network close to what it learnt (0: self-supervised loss only).",
        )
        self.adapt_button = mw.PushButton(
            text="Adapt to this image",
            tooltip="Fine-tune the selected model on this image with a blind-spot loss "
            "(Noise2Void / Noise2Self; line mask for scan-correlated noise, structN2V). "
            "The result is saved as a user model and selected.",
        )
        self.cancel_button = mw.PushButton(text="Cancel adaptation", enabled=False)
        self.progress = mw.ProgressBar(value=0, min=0, max=1000, label="adapt: progress")
        self.status = mw.Label(value="")
        self.side_by_side = mw.CheckBox(
            text="compare side by side (grid view)", value=False, enabled=False
        )
        wrap_labels(self.status)
        self.extend(
            [
                self.minutes,
                self.anchor,
                self.adapt_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.side_by_side,
            ]
        )
        self.adapt_button.changed.connect(lambda *_: self.start())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.side_by_side.changed.connect(self._grid)

    # -- run ----------------------------------------------------------------------
    #: Status shown when the adaptation was quit (napari's activity dock, ``worker.quit()``).
    cancelled_text = "adaptation cancelled: no model saved, no layer added"

    @property
    def host(self) -> WorkerHost:
        """The Restore dock's worker host (the panel's workers run there)."""
        return self.owner.host

    @property
    def busy(self) -> bool:
        """True while an adaptation runs."""
        return self._worker is not None

    def cancel(self) -> None:
        """Stop after the current step; the best state so far is kept."""
        self._cancel.set()

    def close(self) -> None:
        """The viewer is closing: stop adapting and skip the final restorations."""
        self._stop_computation()

    def _stop_computation(self) -> None:
        """Quit (napari's activity dock, ``worker.quit()``) or closing: stop everything.

        Unlike *Cancel adaptation*, which keeps the best state so far and restores
        with it, the restorations are skipped too and nothing is saved.
        """
        self._closing.set()
        self._cancel.set()

    def start(self) -> None:
        """Adapt the selected model to the selected layer in a worker."""
        from ..training.adapt import AdaptConfig

        owner = self.owner
        if self._worker is not None or owner._worker is not None or owner.host.closing:
            return
        if not owner.layer.value or not owner.model.value:
            self._error("select an image layer and a model first")
            return
        layer = owner.viewer.layers[owner.layer.value]
        if getattr(layer, "rgb", False) or getattr(layer, "multiscale", False):
            self._error(f"{layer.name!r} is not a single-scale grey image: cannot adapt to it")
            return
        data = np.asarray(layer.data)
        model = owner.model.value
        # The dock's fast-scan axis: adapt to (and restore) the frames as the network
        # sees them, the scan lines along the rows; results are transposed back.
        axis = owner.fast_scan_axis.value
        self.request = {
            "layer": layer.name,
            "model": model,
            "data": data,
            "geometry": _geometry(layer),
            "metadata": dict(layer.metadata),
            "fast_scan_axis": axis,
        }
        self._cancel.clear()
        self._closing.clear()  # set by a quit worker; the viewer is not closing (checked above)
        self.last_error = ""
        self.progress.value = 0
        self.previews_shown = 0
        self.status.value = f"adapting {model} to {layer.name}…"
        self._set_running(True)
        self._ensure_plot()
        self.plot.clear()
        self._start_worker(
            run_adapt,
            model,
            scan_rows(data, axis),
            layer.name,
            self._cancel,
            self._closing,
            minutes=float(self.minutes.value),
            anchor=float(self.anchor.value),
            steps=self.max_steps,
            config=self.config or AdaptConfig(preview_size=PREVIEW_SIDE),
            on_yielded=self._on_event,
            on_returned=self._on_outcome,
        )

    def _set_running(self, running: bool) -> None:
        self.adapt_button.enabled = not running
        self.cancel_button.enabled = running
        self.owner.run_button.enabled = not running

    def _ensure_plot(self) -> None:
        from .loss_plot import LossPlot

        if self.plot is None:
            self.plot = LossPlot()
            self.plot.val_plot.setLabel("left", "held-out loss")
            self.owner.viewer.window.add_dock_widget(
                self.plot, area="bottom", name="Adaptation losses"
            )

    def _on_event(self, item: tuple[str, Any]) -> None:
        if self.owner.host.closing:
            return
        kind, value = item
        if kind == "phase":
            self.status.value = value
            return
        if value.losses:
            self.plot.add_step(value.step, value.losses)
        if value.held_out is not None:
            self.plot.add_step(value.step, {"held-out": value.held_out})
            self.status.value = (
                f"step {value.step}: held-out loss {value.held_out:.4g} "
                f"(best {value.best_held_out:.4g}), {value.elapsed:.0f} s"
            )
        if value.preview is not None:
            self._show_preview(value.preview)
        self.progress.value = int(1000 * value.fraction)

    def _show_preview(self, preview: np.ndarray) -> None:
        req = self.request
        preview = scan_rows(preview, req["fast_scan_axis"])
        name = f"{req['layer']} adapt preview"
        data = req["data"]
        frame = data if data.ndim == 2 else data[0]
        h, w = frame.shape
        ph, pw = preview.shape
        top, left = (h - ph) // 2, (w - pw) // 2
        geo = dict(req["geometry"])
        scale = geo.get("scale", (1.0, 1.0))[-2:]
        translate = list(geo.get("translate", (0.0, 0.0))[-2:])
        translate = [translate[0] + top * scale[0], translate[1] + left * scale[1]]
        names = [layer.name for layer in self.owner.viewer.layers]
        if name in names:
            self.owner.viewer.layers[name].data = preview
        else:
            layer = self.owner.viewer.add_image(
                preview, name=name, scale=tuple(scale), translate=tuple(translate)
            )
            self.owner._produced.add(layer.unique_id)
        self.previews_shown += 1

    def _on_outcome(self, outcome: tuple[str, Any]) -> None:
        if self.owner.host.closing:
            return
        status, value = outcome
        if status != "ok":
            self._error(value)
            return
        self._on_result(value)

    def _on_result(self, value: dict) -> None:
        owner, req = self.owner, self.request
        result, name = value["result"], value["name"]
        self.result = result
        try:
            result.save(name)  # on the main thread: the model lists refresh (Qt)
        except (ValueError, OSError) as exc:
            self._error(f"the adapted model could not be saved: {exc}")
            return
        owner.refresh_models()
        if name in owner.cards:
            owner.model.value = name
        layer, parent = req["layer"], result.parent
        data = req["data"].astype(np.float32)
        axis = req["fast_scan_axis"]
        value = {**value, **{k: scan_rows(value[k], axis) for k in ("adapted", "parent")}}
        meta = req["metadata"]
        outputs = [
            (f"{layer} restored", value["adapted"], name, {}),
            (f"{layer} restored [{parent}]", value["parent"], parent, {}),
            (
                f"{layer} residual",
                data - value["adapted"],
                name,
                {"colormap": "twilight_shifted"},
            ),
            (
                f"{layer} residual [{parent}]",
                data - value["parent"],
                parent,
                {"colormap": "twilight_shifted"},
            ),
        ]
        names = [lay.name for lay in owner.viewer.layers]
        self.outputs = []
        for title, image, model, style in outputs:
            metadata = {**meta, "emdenoise_model": model}
            if axis != "x":
                metadata["emdenoise_fast_scan_axis"] = axis
            if title in names:  # the restored layer is updated, not duplicated
                target = owner.viewer.layers[title]
                target.data = image
                target.metadata = metadata
            else:
                target = owner.viewer.add_image(
                    image, name=title, metadata=metadata, **req["geometry"], **style
                )
            self.outputs.append(target)
            owner._produced.add(target.unique_id)
        preview = f"{layer} adapt preview"
        if preview in [lay.name for lay in owner.viewer.layers]:
            owner.viewer.layers.remove(preview)
        self.side_by_side.enabled = True
        cancelled = " (cancelled: best state so far)" if result.stopped == "cancelled" else ""
        self.status.value = (
            f"adapted{cancelled}: {name}, {result.steps} steps in {result.seconds / 60:.1f} min, "
            f"held-out loss {result.initial_held_out:.4g} → {result.best_held_out:.4g}; "
            f"{result.mask.describe()}"
        )
        risk = value.get("risk")
        if risk is not None:
            better = "adapted" if risk.name == "adapted" else parent
            self.status.value += (
                f". {risk.describe({'bundled': parent})}: {better} is likely the closer "
                "to the truth (estimated from the noise alone)"
            )
        self.progress.value = self.progress.max
        self._finish()

    def _grid(self, on: bool) -> None:
        self.grid().enabled = bool(on)

    def grid(self) -> Any:
        """napari's grid view settings (``viewer.canvas.grid`` since napari 0.9)."""
        viewer = self.owner.viewer
        canvas = getattr(viewer, "canvas", None)
        return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid

    def _finish(self) -> None:
        self._worker = None
        self._set_running(False)


def _geometry(layer: Any) -> dict[str, Any]:
    from .restore import _geometry as geometry

    return geometry(layer)
