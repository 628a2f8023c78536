"""Restore dock widget: pick a layer and a model, restore in a worker, get a new layer.

The input layer is never modified: the result goes to ``"<name> restored"``
(and optionally ``"<name> residual"`` = input − restored, to check that only
noise was removed), with the input's scale, translate and metadata.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["RestoreWidget", "run_with_progress"]


def run_with_progress(func, *args: Any, **kwargs: Any) -> Iterator[tuple[int, int]]:
    """Run ``func(*args, progress=..., **kwargs)`` in a thread, yielding its progress.

    A generator for ``napari.qt.threading``: yields ``(done, total)`` as ``func``
    reports it and returns ``("ok", result)``. The errors a user can cause (bad
    input: ``ValueError``; ``Cancelled``; ``MemoryError``) come back as
    ``("error", message)`` / ``("cancelled", message)`` so the widget can show them;
    anything else is re-raised (a bug, reported by napari).
    """
    from ..engine.predictor import Cancelled

    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = func(*args, progress=lambda d, t: events.put((d, t)), **kwargs)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=target, daemon=True, name="emdenoise-restore")
    thread.start()
    while (item := events.get()) is not None:
        yield item
    thread.join()
    error = outcome.get("error")
    if isinstance(error, Cancelled):
        return ("cancelled", str(error))
    if isinstance(error, (ValueError, MemoryError)):
        return ("error", str(error))
    if error is not None:
        raise error
    return ("ok", outcome["value"])


def _card_text(card: Any) -> str:
    m = card.metrics or {}
    steps = (card.training or {}).get("steps", "?")
    parts = [f"{card.arch} · {card.kind.upper()}-{card.modality.upper()} · {steps} steps"]
    if "val_psnr" in m:
        parts.append(
            f"validation PSNR {m['val_psnr']:.2f} dB "
            f"(input {m.get('val_psnr_input', float('nan')):.2f} dB)"
        )
    return "\n".join(parts)


class RestoreWidget(mw.Container):
    """Dock widget that restores an image layer with a bundled or user-trained model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        from ..engine.device import available_devices
        from ..models.registry import list_models

        self.viewer = viewer
        self._worker: Any = None
        self._cancel = threading.Event()
        self.cards = list_models()
        #: The last layers produced (tests read them).
        self.outputs: list[Any] = []
        self.last_error = ""

        self.layer = mw.ComboBox(label="image layer", choices=self._layer_choices)
        names = sorted(self.cards)
        self.model = mw.ComboBox(
            label="model",
            choices=names or [""],
            value="hrstem" if "hrstem" in names else (names or [""])[0],
        )
        self.card = mw.Label(label="model card")
        self.device = mw.ComboBox(label="device", choices=["auto", *available_devices()])
        self.tile_size = mw.SpinBox(
            label="tile size [px] (0 = auto)", value=0, min=0, max=8192, step=64
        )
        self.residual = mw.CheckBox(text="also show residual (input − restored)", value=False)
        self.run_button = mw.PushButton(text="Restore")
        self.cancel_button = mw.PushButton(text="Cancel", enabled=False)
        self.progress = mw.ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = mw.Label(value="" if names else "no models found")
        self.extend(
            [
                self.layer,
                self.model,
                self.card,
                self.device,
                self.tile_size,
                self.residual,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self.model.changed.connect(self._show_card)
        self.run_button.changed.connect(lambda *_: self.start())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        viewer.layers.events.inserted.connect(lambda *_: self.layer.reset_choices())
        viewer.layers.events.removed.connect(lambda *_: self.layer.reset_choices())
        from ..models.registry import on_models_changed

        unsubscribe = on_models_changed(self.refresh_models)
        self.native.destroyed.connect(lambda *_: (self._cancel.set(), unsubscribe()))
        self._show_card()

    def refresh_models(self) -> None:
        """Re-read the bundled and user models (called when a model is installed)."""
        from ..models.registry import list_models

        self.cards = list_models()
        current = self.model.value
        names = sorted(self.cards) or [""]
        self.model.choices = names
        self.model.value = current if current in names else names[0]
        self._show_card()

    def _layer_choices(self, *_: object) -> list[str]:
        return [
            layer.name
            for layer in self.viewer.layers
            if layer.__class__.__name__ == "Image"
            and layer.ndim in (2, 3)
            and not getattr(layer, "rgb", False)
        ]

    def _show_card(self, *_: object) -> None:
        card = self.cards.get(self.model.value)
        self.card.value = _card_text(card) if card else ""

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = f"⚠ {message}"
        self._finish()

    def _finish(self) -> None:
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def cancel(self) -> None:
        """Ask the running restoration to stop (no layer is added)."""
        self._cancel.set()

    def start(self) -> None:
        """Restore the selected layer in a worker thread."""
        from napari.qt.threading import create_worker

        from ..engine.predictor import restore

        if self._worker is not None:
            return
        if not self.layer.value:
            self._error("no image layer selected")
            return
        if not self.model.value:
            self._error("no model available")
            return
        layer = self.viewer.layers[self.layer.value]
        data = np.asarray(layer.data)
        self._cancel.clear()
        self.last_error = ""
        self.status.value = f"restoring {layer.name} with {self.model.value}…"
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        device = None if self.device.value == "auto" else self.device.value
        tile = int(self.tile_size.value) or None
        worker = create_worker(
            run_with_progress,
            restore,
            data,
            model=self.model.value,
            device=device,
            tile_size=tile,
            cancel=self._cancel.is_set,
            _start_thread=False,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda outcome: self._on_outcome(layer, data, outcome))
        worker.errored.connect(lambda exc: self._error(str(exc)))
        self._worker = worker
        worker.start()

    def _on_progress(self, item: tuple[int, int]) -> None:
        done, total = item
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)

    def _on_outcome(self, layer: Any, data: np.ndarray, outcome: tuple[str, Any]) -> None:
        status, value = outcome
        if status == "cancelled":
            self.status.value = "cancelled: no layer added"
            self._finish()
        elif status == "error":
            self._error(value)
        else:
            self._on_result(layer, data, value)

    def _on_result(self, layer: Any, data: np.ndarray, restored: np.ndarray) -> None:
        common = {
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "metadata": {**dict(layer.metadata), "emdenoise_model": self.model.value},
        }
        self.outputs = [self.viewer.add_image(restored, name=f"{layer.name} restored", **common)]
        if self.residual.value:
            residual = data.astype(np.float32) - restored
            self.outputs.append(
                self.viewer.add_image(
                    residual,
                    name=f"{layer.name} residual",
                    visible=False,
                    colormap="twilight_shifted",
                    **common,
                )
            )
        self.status.value = f"{layer.name} restored with {self.model.value}"
        self._finish()
