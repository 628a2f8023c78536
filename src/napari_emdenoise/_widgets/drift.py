"""Drift correction dock widget: align a frame stack, plot the drift, export the table.

A thin layer over :func:`napari_emdenoise.drift.align_stack`: the chosen
``(frames, y, x)`` image layer is aligned in a worker thread (progress bar,
Cancel), and the results are new layers only — ``"<name> aligned"`` (the raw
frames shifted, same scale, translate and units) and ``"<name> drift"`` (a
tracks layer: where a fixed specimen point sits in every frame) — a
dy/dx-per-frame plot with ±1σ bands and the outlier frames marked, and a
table that "Save CSV…" writes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..drift.table import drift_table, write_table
from ._common import (
    StatefulRun,
    WorkerHost,
    disconnect_quietly,
    fast_scan_axis_box,
    is_grey_image,
    scrolling_with_view,
    wrap_labels,
)
from ._run_state import RunState

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["DriftPlot", "DriftWidget", "drift_table", "write_table"]

NO_DENOISER = "(raw frames)"


def _short_unit(unit: Any) -> str:
    """``"nm"`` for a pint unit (napari's ``layer.units``) or a string; ``""`` for pixels."""
    try:
        text = format(unit, "~")
    except (TypeError, ValueError):
        text = str(unit)
    return "" if text in ("", "pixel", "px", "dimensionless") else text


class DriftPlot(QWidget):
    """dy and dx per frame with ±1σ bands and outlier markers (pyqtgraph)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self.graphics = pg.PlotWidget()
        self.graphics.setMinimumHeight(180)
        self.plot = self.graphics.getPlotItem()
        self.plot.setLabel("left", "shift", units="px")
        self.plot.setLabel("bottom", "frame")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.addLegend(offset=(-10, 5), labelTextSize="8pt", brush=(0, 0, 0, 110))
        self.save_button = QPushButton("Save CSV…")
        self.save_button.setEnabled(False)
        controls = QHBoxLayout()
        controls.addStretch(1)
        controls.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)
        #: Items currently drawn, by name (tests read them).
        self.items: dict[str, Any] = {}

    def show_drift(self, shifts: np.ndarray, sigma: np.ndarray, outlier: np.ndarray) -> None:
        """Draw the shifts of every frame (pixels) with their 1-σ bands."""
        import pyqtgraph as pg

        self.plot.clear()
        self.items.clear()
        frames = np.arange(len(shifts), dtype=float)
        for axis, (name, color) in enumerate((("dy", (0, 190, 255)), ("dx", (255, 150, 0)))):
            value = np.asarray(shifts[:, axis], float)
            band = np.nan_to_num(np.asarray(sigma[:, axis], float))
            upper = pg.PlotDataItem(frames, value + band, pen=pg.mkPen(None))
            lower = pg.PlotDataItem(frames, value - band, pen=pg.mkPen(None))
            fill = pg.FillBetweenItem(upper, lower, brush=pg.mkBrush(*color, 60))
            self.plot.addItem(fill)
            curve = self.plot.plot(
                frames,
                value,
                pen=pg.mkPen(color, width=1.5),
                name=name,
                symbol="o",
                symbolSize=4,
                symbolBrush=color,
            )
            self.items[name] = curve
            self.items[f"{name} band"] = (upper, lower, fill)
            bad = np.asarray(outlier, bool)
            if bad.any():
                marks = pg.ScatterPlotItem(
                    frames[bad],
                    value[bad],
                    symbol="x",
                    size=10,
                    pen=pg.mkPen((255, 60, 60), width=2),
                )
                self.plot.addItem(marks)
                self.items[f"{name} outliers"] = marks
        self.save_button.setEnabled(True)


class DriftWidget(StatefulRun, mw.Container):
    """Dock widget that aligns a frame stack and shows the measured drift.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its ``PublicOnlyProxy`` when the widget is
        opened from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        from ..drift import METHODS, REFERENCES

        self.viewer = viewer
        self._worker: Any = None
        self._cancel = threading.Event()
        #: Where the alignment stands, as the dock shows it (see :meth:`_enter`).
        self.state = RunState.IDLE
        self._produced: set[Any] = set()
        #: Rows of the last drift table (see :func:`drift_table`).
        self.table: list[dict] = []
        #: The last AlignmentInfo and output layers (tests read them).
        self.info: Any = None
        self.outputs: list[Any] = []
        self.last_error = ""

        self.layer = mw.ComboBox(label="frame stack", choices=self._layer_choices)
        self.reference = mw.ComboBox(label="reference", choices=list(REFERENCES), value="first")
        self.method = mw.ComboBox(label="method", choices=list(METHODS), value="cnn")
        self.group = mw.SpinBox(label="frames per group", value=1, min=1, max=64)
        self.group.tooltip = (
            "Measure the drift on the means of this many consecutive frames and interpolate "
            "it between them (MotionCor2's frame grouping): for a slow, steady drift in movies "
            "too noisy to register frame by frame even with the mean reference. 1: every "
            "frame on its own."
        )
        self.max_shift = mw.FloatSpinBox(
            label="largest shift [px]", value=0.0, min=0.0, max=4096.0, step=1.0
        )
        self.max_shift.tooltip = (
            "Largest shift searched per frame (or group) and axis, in pixels; 0: 3/8 of the "
            "frame. At low dose a wrong correlation peak far away can win: a limit that the "
            "drift is known to stay within rules those out."
        )
        self.denoise = mw.CheckBox(text="estimate on denoised copies", value=True)
        self.denoiser = mw.ComboBox(label="denoiser", choices=self._denoiser_choices)
        self.fast_scan_axis = fast_scan_axis_box(
            "The frames' fast-scan axis, for the S(T)EM/SEM denoisers, which correct "
            "scan distortions along x as they were trained: choose y for frames scanned along "
            "their columns or stored transposed. The shifts are always in the frames' own axes."
        )
        self._make_run_controls("Align")
        wrap_labels(self.status)
        self.reference.tooltip = (
            "first: every frame against frame 0; previous: frame to frame, chained, with a "
            "transitivity check that flags outliers; mean: every frame against the mean of "
            "the other frames, refined over up to three passes (the most accurate for noisy "
            "movies; frames it cannot register get their neighbours' shift and are flagged)"
        )
        self.method.tooltip = (
            "cnn: CNN refinement of the correlation peak, with a learned uncertainty; "
            "ncc: parabola through the correlation peak; phase: skimage phase correlation"
        )
        form = mw.Container(
            widgets=[
                self.layer,
                self.reference,
                self.method,
                self.group,
                self.max_shift,
                self.denoise,
                self.denoiser,
                self.fast_scan_axis,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ],
            labels=True,
        )
        self._form = form
        self.plot = DriftPlot()
        self.native.layout().addWidget(scrolling_with_view(form, self.plot))
        self.denoise.changed.connect(self._sync_denoiser)
        self.plot.save_button.clicked.connect(self._save_dialog)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self.host = WorkerHost(self.native, self._on_close)
        self._refresh_layers()
        self._sync_denoiser()

    # -- lifecycle ----------------------------------------------------------------
    def _on_close(self) -> None:
        """The viewer is closing or the dock was removed: cancel, let go of the viewer."""
        self._enter(RunState.CLOSED)
        self._cancel.set()
        if self._worker is not None:
            self._worker.quit()
        disconnect_quietly(
            (self.viewer.layers.events.inserted, self._refresh_layers),
            (self.viewer.layers.events.removed, self._refresh_layers),
        )

    # -- choices --------------------------------------------------------------------
    def _layer_choices(self, *_: object) -> list[str]:
        return [
            layer.name
            for layer in self.viewer.layers
            if is_grey_image(layer, (3,)) and layer.unique_id not in self._produced
        ]

    def _denoiser_choices(self, *_: object) -> list[str]:
        from ..drift import DEFAULT_DENOISER
        from ..models.registry import list_models

        names = sorted(list_models())
        if DEFAULT_DENOISER in names:
            names.remove(DEFAULT_DENOISER)
            names.insert(0, DEFAULT_DENOISER)
        return names or [NO_DENOISER]

    def _sync_denoiser(self, *_: object) -> None:
        self.denoiser.enabled = bool(self.denoise.value)
        self.fast_scan_axis.enabled = bool(self.denoise.value)

    def _refresh_layers(self, *_: object) -> None:
        if self.host.closing:
            return
        current = self.layer.value
        self.layer.reset_choices()
        choices = list(self.layer.choices)
        if current in choices:
            self.layer.value = current
        elif choices:
            self.layer.value = choices[-1]

    # -- run ------------------------------------------------------------------------
    def start(self) -> None:
        """Align the selected stack in a worker thread."""
        from ..drift import align_stack
        from .restore import run_with_progress

        if self._worker is not None or self.host.closing:
            return
        if not self.layer.value:
            self._error("no (frames, y, x) image layer: open a movie or a frame series first")
            return
        layer = self.viewer.layers[self.layer.value]
        denoise: Any = False
        if self.denoise.value:
            if self.denoiser.value in (None, NO_DENOISER):
                self._error("no restoration model available: untick denoising")
                return
            denoise = self.denoiser.value
        data = layer.data
        if not hasattr(data, "compute"):  # dask stays lazy; everything else in memory
            data = np.asarray(data)
        request = {
            "name": layer.name,
            "scale": tuple(float(s) for s in layer.scale),
            "translate": tuple(float(t) for t in layer.translate),
            "units": tuple(getattr(layer, "units", ()) or ()),
            "metadata": dict(layer.metadata),
            "shape": tuple(int(s) for s in data.shape),
            "max_shift": float(self.max_shift.value) or None,
        }
        self._begin(f"aligning {layer.name} ({self.method.value}, {self.reference.value})…")
        self._launch(
            lambda value: self._on_result(request, *value),
            run_with_progress,
            align_stack,
            data,
            reference=self.reference.value,
            method=self.method.value,
            denoise=denoise,
            cancel=self._cancel.is_set,
            return_info=True,
            fast_scan_axis=self.fast_scan_axis.value,
            group=int(self.group.value),
            max_shift=request["max_shift"],
        )

    def _on_result(self, request: dict, aligned: Any, shifts: np.ndarray, info: Any) -> None:
        name = request["name"]
        scale, translate = request["scale"], request["translate"]
        geometry: dict[str, Any] = {"scale": scale, "translate": translate}
        if request["units"]:
            geometry["units"] = request["units"]
        meta = {
            **request["metadata"],
            "drift_shifts_px": shifts.tolist(),
            "drift_method": info.method,
            "drift_reference": info.reference,
            "drift_denoiser": info.denoiser,
            "drift_frames_per_group": int(info.extra.get("group", 1)),
            "drift_max_shift_px": request["max_shift"],
        }
        image = self.viewer.add_image(aligned, name=f"{name} aligned", metadata=meta, **geometry)
        n, h, w = request["shape"]
        # a specimen point at the frame centre in frame 0 sits at centre - shift in frame i
        track = np.column_stack(
            [np.zeros(n), np.arange(n), (h - 1) / 2.0 - shifts[:, 0], (w - 1) / 2.0 - shifts[:, 1]]
        )
        tracks = self.viewer.add_tracks(
            track, name=f"{name} drift", tail_length=max(n, 2), **geometry
        )
        self.outputs = [image, tracks]
        self._produced.update(layer.unique_id for layer in self.outputs)
        self._refresh_layers()  # outputs are never offered as inputs
        unit = _short_unit(request["units"][-1]) if request["units"] else ""
        self.info = info
        self.table = drift_table(info, scale[-2:], unit)
        self.plot.show_drift(info.shifts, info.sigma, info.outlier)
        worst = float(np.max(np.hypot(shifts[:, 0], shifts[:, 1])))
        flagged = int(np.count_nonzero(info.outlier))
        note = f"; {flagged} frame(s) flagged" if flagged else ""
        if info.extra.get("group", 1) > 1:
            note += f"; measured on groups of {info.extra['group']} frames"
        advice = info.advice()
        advice = f". Note: {advice}" if advice else ""
        self.status.value = f"{name}: largest drift {worst:.2f} px{note}{advice}"
        self.progress.value = self.progress.max
        self._finish()

    # -- export ---------------------------------------------------------------------
    def save_csv(self, path: str | Path) -> Path:
        """Write the drift table of the last run as CSV."""
        return write_table(self.table, path)

    def _save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save drift table", "drift.csv", "CSV (*.csv)"
        )
        if path:
            self.save_csv(path)
