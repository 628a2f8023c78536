"""Live training curves: every loss term, the discriminator loss and validation PSNR.

:class:`LossPlot` only stores numbers and draws them (pyqtgraph). Events arrive
on the main thread at training speed; redrawing is throttled to
``max_redraw_hz`` so a fast run never floods the event loop.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["MIN_PLOT_HEIGHT", "LossPlot", "smooth_ema"]


def smooth_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with start-up bias correction (as TensorBoard).

    Parameters
    ----------
    values : numpy.ndarray
        1-D series; NaNs are carried through without poisoning later points.
    weight : float
        Smoothing weight in [0, 1): 0 returns the values unchanged.
    """
    v = np.asarray(values, dtype=np.float64)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight!r}")
    if weight == 0.0 or v.size == 0:
        return v.copy()
    out = np.empty_like(v)
    acc, norm = 0.0, 0.0
    for i, x in enumerate(v):
        if np.isfinite(x):
            acc = weight * acc + (1.0 - weight) * x
            norm = weight * norm + (1.0 - weight)
        out[i] = acc / norm if norm > 0 else np.nan
    return out


class _Series:
    """Growing (step, value) arrays with amortised O(1) appends."""

    def __init__(self) -> None:
        self._x = np.empty(256, dtype=np.float64)
        self._y = np.empty(256, dtype=np.float64)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == self._x.size:
            self._x = np.resize(self._x, 2 * self.n)
            self._y = np.resize(self._y, 2 * self.n)
        self._x[self.n] = x
        self._y[self.n] = y
        self.n += 1

    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]


#: Pens of the validation curves: the network's output bright, the noisy input grey, dashed.
_VALIDATION_STYLE = {
    "restored": {"color": (0, 190, 255)},
    "input": {"color": (150, 150, 150), "style": Qt.PenStyle.DashLine},
}


#: Smallest height of the plots, in pixels: the axes, ticks and a 3-row legend stay readable.
MIN_PLOT_HEIGHT = 160
#: Legend style: top right, small font, translucent background.
_LEGEND = {"offset": (-10, 5), "labelTextSize": "8pt", "brush": (0, 0, 0, 110)}


class LossPlot(QWidget):
    """Dockable plot of the training losses (left) and validation PSNR (right).

    Parameters
    ----------
    max_redraw_hz : float
        Upper bound on redraws per second, whatever the step rate.
    """

    def __init__(self, parent: QWidget | None = None, max_redraw_hz: float = 10.0) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self.series: dict[str, _Series] = {}
        self.validation: dict[str, _Series] = {}
        self._curves: dict[str, object] = {}
        self._val_curves: dict[str, object] = {}
        #: Number of redraws so far (tests and benchmarks read it).
        self.n_redraws = 0

        # side by side: a bottom dock has width to spare and little height
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumHeight(MIN_PLOT_HEIGHT)
        self.loss_plot = self.graphics.addPlot(row=0, col=0)
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.3)
        # several columns and a small font: the legend of ~9 terms stays inside the plot
        self.loss_plot.addLegend(**_LEGEND, colCount=3)
        self.val_plot = self.graphics.addPlot(row=0, col=1)
        self.val_plot.setLabel("left", "validation PSNR", units="dB")
        self.val_plot.setLabel("bottom", "step")
        self.val_plot.showGrid(x=True, y=True, alpha=0.3)
        self.val_plot.addLegend(**_LEGEND, colCount=2)
        self.val_plot.setXLink(self.loss_plot)
        self.graphics.ci.layout.setColumnStretchFactor(0, 3)
        self.graphics.ci.layout.setColumnStretchFactor(1, 2)

        self.log_scale = QCheckBox("log scale")
        self.log_scale.setChecked(True)
        self.smoothing = QDoubleSpinBox()
        self.smoothing.setRange(0.0, 0.99)
        self.smoothing.setSingleStep(0.05)
        self.smoothing.setValue(0.6)
        self.smoothing.setToolTip("exponential moving average weight (0: raw values)")
        self.save_button = QPushButton("Save CSV…")
        controls = QHBoxLayout()
        controls.addWidget(self.log_scale)
        controls.addWidget(QLabel("smoothing"))
        controls.addWidget(self.smoothing)
        controls.addStretch(1)
        controls.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)
        self.setMinimumHeight(MIN_PLOT_HEIGHT + 34)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(1000 / max(max_redraw_hz, 0.1)))
        self._timer.timeout.connect(self.redraw)
        self.log_scale.toggled.connect(self._apply_log_scale)
        self.smoothing.valueChanged.connect(lambda *_: self.redraw())
        self.save_button.clicked.connect(self._save_dialog)
        self._apply_log_scale(self.log_scale.isChecked())

    # -- data -----------------------------------------------------------------
    def add_step(self, step: int, losses: dict[str, float]) -> None:
        """Record the loss terms of one optimiser step (redraw is scheduled)."""
        for name, value in losses.items():
            self.series.setdefault(name, _Series()).append(step, value)
        self._schedule()

    def add_validation(self, step: int, psnr: float, psnr_input: float | None = None) -> None:
        """Record a validation result (restored and, optionally, input PSNR in dB)."""
        self.validation.setdefault("restored", _Series()).append(step, psnr)
        if psnr_input is not None:
            self.validation.setdefault("input", _Series()).append(step, psnr_input)
        self._schedule()

    def clear(self) -> None:
        """Forget every curve (a new run starts)."""
        self.loss_plot.clear()
        self.val_plot.clear()
        self.series.clear()
        self.validation.clear()
        self._curves.clear()
        self._val_curves.clear()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    # -- drawing --------------------------------------------------------------
    def _curve(self, plot, store: dict, name: str, index: int):
        import pyqtgraph as pg

        if name not in store:
            pen = pg.mkPen(pg.intColor(index, hues=9), width=1.5)
            store[name] = plot.plot([], [], pen=pen, name=name)
        return store[name]

    def redraw(self) -> None:
        """Draw every series now (normally called by the throttling timer)."""
        weight = float(self.smoothing.value())
        log = self.log_scale.isChecked()
        for i, (name, s) in enumerate(sorted(self.series.items())):
            y = smooth_ema(s.y, weight)
            if log:
                y = np.where(y > 0, y, np.nan)
            self._curve(self.loss_plot, self._curves, name, i).setData(s.x, y, connect="finite")
        for name, s in sorted(self.validation.items()):
            if name not in self._val_curves:
                import pyqtgraph as pg

                style = _VALIDATION_STYLE.get(name, {"color": (255, 255, 255)})
                self._val_curves[name] = self.val_plot.plot(
                    [], [], pen=pg.mkPen(**style, width=1.5), name=name
                )
            self._val_curves[name].setData(s.x, s.y, symbol="o", symbolSize=5)
        self.n_redraws += 1

    def _apply_log_scale(self, on: bool) -> None:
        self.loss_plot.setLogMode(x=False, y=bool(on))
        self.redraw()

    # -- export ---------------------------------------------------------------
    def save_csv(self, path: str | Path) -> Path:
        """Write every raw (unsmoothed) value as ``step,series,value`` rows."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "series", "value"])
            for prefix, store in (("", self.series), ("val_psnr_", self.validation)):
                for name, s in sorted(store.items()):
                    for x, y in zip(s.x, s.y):
                        writer.writerow([int(x), prefix + name, repr(float(y))])
        return path

    def _save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Save losses", "losses.csv", "CSV (*.csv)")
        if path:
            self.save_csv(path)
