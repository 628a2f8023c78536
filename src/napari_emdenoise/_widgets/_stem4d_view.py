"""The 4D-STEM dock's scan-space pictures (pyqtgraph): the live virtual image and the results.

napari's canvas shows the diffraction patterns (the 4-D layer, the detector
shapes, the previews); images in *scan* coordinates are drawn here, in the
dock, so they do not cover the patterns:

* the live virtual image of the chosen detector — click a scan position to
  preview its pattern; a box marks the scan region of a region run;
* after a run, the virtual images of the raw and the denoised data and their
  Poisson residual side by side (same colour scale for raw and denoised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["ScanView"]

#: Residual colour range, ± Poisson standard deviations.
RESIDUAL_SIGMA = 5.0


def _levels(image: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(image, float)[np.isfinite(image)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return (float(lo), float(hi if hi > lo else lo + 1.0))


class ScanView(QWidget):
    """Live virtual image (clickable, with a region box) over raw | denoised | residual.

    Parameters
    ----------
    on_click : callable
        ``on_click(iy, ix)`` with the clicked scan position (pixels).
    on_region : callable
        ``on_region(y0, y1, x0, x1)`` when the region box was moved or resized.
    """

    def __init__(
        self,
        on_click: Callable[[int, int], None],
        on_region: Callable[[int, int, int, int], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self._on_click = on_click
        self._on_region = on_region
        self._shape: tuple[int, int] = (1, 1)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumHeight(320)
        self.graphics.ci.setContentsMargins(2, 2, 2, 2)

        self.title = self.graphics.addLabel("virtual image", row=0, col=0, colspan=3, size="9pt")
        self.live_box = self.graphics.addViewBox(row=1, col=0, colspan=3, lockAspect=True)
        self.live_box.invertY(True)
        self.live = pg.ImageItem(axisOrder="row-major")
        self.live.mouseClickEvent = self._clicked  # type: ignore[method-assign]
        self.live_box.addItem(self.live)
        self.marker = pg.ScatterPlotItem(
            size=11, symbol="+", pen=pg.mkPen((255, 60, 60), width=2), brush=None
        )
        self.live_box.addItem(self.marker)
        self.roi = pg.RectROI([0, 0], [1, 1], pen=pg.mkPen((255, 200, 0), width=2), snapSize=1.0)
        self.roi.translateSnap = self.roi.scaleSnap = True
        self.roi.setVisible(False)
        self.roi.sigRegionChangeFinished.connect(self._roi_moved)
        self.live_box.addItem(self.roi)

        self.result_titles: dict[str, Any] = {}
        self.result_boxes: dict[str, Any] = {}
        #: Result images by panel ("raw", "denoised", "residual"); tests read them.
        self.results: dict[str, Any] = {}
        for col, key in enumerate(("raw", "denoised", "residual")):
            self.result_titles[key] = self.graphics.addLabel(key, row=2, col=col, size="8pt")
            box = self.graphics.addViewBox(row=3, col=col, lockAspect=True)
            box.invertY(True)
            item = pg.ImageItem(axisOrder="row-major")
            if key == "residual":
                try:  # diverging: white at 0, blue/red for removed/added counts
                    item.setColorMap(pg.colormap.get("CET-D1"))
                except Exception:  # pragma: no cover - colour maps not shipped
                    pass
            box.addItem(item)
            self.result_boxes[key] = box
            self.results[key] = item
        self.graphics.ci.layout.setRowStretchFactor(1, 3)
        self.graphics.ci.layout.setRowStretchFactor(3, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)

    # -- live image ---------------------------------------------------------------------------
    def show_live(self, image: np.ndarray, title: str) -> None:
        """Show the virtual image of the live detector (scan pixels)."""
        first = self.live.image is None or tuple(image.shape) != self._shape
        self._shape = tuple(int(s) for s in image.shape)  # type: ignore[assignment]
        self.live.setImage(np.asarray(image, np.float32), levels=_levels(image))
        self.title.setText(title)
        if first:
            self.live_box.autoRange(padding=0.02)

    def clear(self) -> None:
        """Forget the pictures (no data set attached)."""
        self.live.clear()
        self.marker.clear()
        self.roi.setVisible(False)
        for item in self.results.values():
            item.clear()
        self.title.setText("virtual image")

    def mark(self, iy: int, ix: int) -> None:
        """Mark the scan position whose pattern is previewed."""
        self.marker.setData([ix + 0.5], [iy + 0.5])

    def _clicked(self, event: Any) -> None:
        pos = event.pos()  # image pixel coordinates (x, y)
        iy, ix = int(np.floor(pos.y())), int(np.floor(pos.x()))
        if 0 <= iy < self._shape[0] and 0 <= ix < self._shape[1]:
            event.accept()
            self._on_click(iy, ix)

    # -- region box ---------------------------------------------------------------------------
    def show_region(self, region: tuple[int, int, int, int] | None) -> None:
        """Draw the region box ``(y0, y1, x0, x1)`` (None: hide it)."""
        if region is None:
            self.roi.setVisible(False)
            return
        y0, y1, x0, x1 = region
        self.roi.blockSignals(True)
        self.roi.setPos([x0, y0], update=False)
        self.roi.setSize([x1 - x0, y1 - y0])
        self.roi.blockSignals(False)
        self.roi.setVisible(True)

    def _roi_moved(self, *_: Any) -> None:
        x0, y0 = (int(round(v)) for v in self.roi.pos())
        w, h = (int(round(v)) for v in self.roi.size())
        sy, sx = self._shape
        y0, x0 = min(max(y0, 0), sy - 1), min(max(x0, 0), sx - 1)
        y1, x1 = min(max(y0 + max(h, 1), y0 + 1), sy), min(max(x0 + max(w, 1), x0 + 1), sx)
        self._on_region(y0, y1, x0, x1)

    # -- results ------------------------------------------------------------------------------
    def show_results(self, raw: np.ndarray, denoised: np.ndarray, residual: np.ndarray, name: str):
        """Raw and denoised virtual images (one colour scale) and the residual (±5 σ)."""
        levels = _levels(np.concatenate([np.ravel(raw), np.ravel(denoised)]))
        self.results["raw"].setImage(np.asarray(raw, np.float32), levels=levels)
        self.results["denoised"].setImage(np.asarray(denoised, np.float32), levels=levels)
        self.results["residual"].setImage(
            np.asarray(residual, np.float32), levels=(-RESIDUAL_SIGMA, RESIDUAL_SIGMA)
        )
        self.result_titles["raw"].setText(f"raw {name}")
        self.result_titles["denoised"].setText(f"denoised {name}")
        self.result_titles["residual"].setText(f"residual (±{RESIDUAL_SIGMA:g} σ)")
        for box in self.result_boxes.values():
            box.autoRange(padding=0.02)
