"""4D-STEM dock widget: virtual detectors, per-pattern preview and denoising of a scan region.

A thin layer over :func:`napari_emdenoise.engine.stack4d.restore_4dstem` (the
Pix2Pix pattern denoiser of Cao, Demortière, Folastre, Oney, Das and
Nicolopoulos, "Denoising of 4D-STEM Dataset using Pix2Pix GAN Algorithm and
Artifact Reduction Strategy", 2024) and :mod:`napari_emdenoise.engine.virtual_detectors`:

* the input is any 4-D ``(scan_y, scan_x, det_y, det_x)`` image layer — e.g.
  one opened with *Open 4D-STEM file…* (napari's reader keeps large files lazy:
  dask arrays are never loaded into memory here);
* the central disk is found on the mean pattern and the virtual bright-field
  (cyan) and annular dark-field (orange) detectors are drawn as ellipses on the
  patterns (layer ``"<name> detectors"``); move or resize them and the virtual
  image in the dock follows;
* clicking the virtual image previews that scan position: its raw and
  denoised patterns side by side (layers ``"<name> pattern raw"`` /
  ``"<name> pattern denoised"``), before anything is committed;
* *Denoise* runs on the whole scan or the region drawn on the virtual image,
  in a worker thread (progress, Cancel), and adds new layers only:
  ``"<name> denoised"`` (the stack) and, per detector, ``"<name> virtual BF"``,
  ``"<name> denoised virtual BF"`` and ``"<name> virtual BF residual"`` —
  the residual ``(denoised − raw) / sqrt(max(denoised, 1))`` in Poisson
  standard deviations, structure-free when nothing was invented.

Results keep the input's scale, units and metadata; a region's results are
translated to where the region lies in the scan. The input is never modified.
"""

from __future__ import annotations

import tempfile
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtCore import QTimer

from ..engine.stack4d import LOCAL_COUNTS_PASSES, LOCAL_COUNTS_SIGMA
from ._common import (
    StatefulRun,
    WorkerHost,
    caught,
    disconnect_quietly,
    find_layer,
    is_grey_image,
    scrolling_with_view,
    topmost_name,
    unexpected_error_text,
    wrap_labels,
)
from ._layers import OwnedLayers
from ._run_state import RunState
from ._stem4d_geometry import (
    DETECTOR_COLORS,
    default_detectors,
    detector_ellipses,
    detectors_from_ellipses,
    format_region,
    parse_region,
    scan_geometry,
    split_geometry,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["Stem4DWidget", "diffraction_models"]

NO_MODEL = ""
#: Detectors offered, in order.
DETECTORS = ("BF", "ADF")
#: Above this many bytes the denoised stack goes to a temporary zarr store, not memory.
IN_MEMORY_BYTES = 512 * 2**20
#: Gap between the raw and the denoised preview pattern, detector pixels.
PREVIEW_GAP = 4


def diffraction_models() -> list[str]:
    """Names of the installed models whose card says modality ``"diffraction"``."""
    from ..models.registry import list_models

    return sorted(name for name, card in list_models().items() if card.modality == "diffraction")


def _denoise(data: Any, model: Any, region: tuple[slice, slice] | None, **kwargs: Any) -> Any:
    from ..engine.stack4d import restore_4dstem

    return restore_4dstem(data, model=model, region=region, **kwargs)


def _preview(
    data: Any,
    model: Any,
    iy: int,
    ix: int,
    local_counts_sigma: float | None,
    local_counts_passes: int = LOCAL_COUNTS_PASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw and denoised pattern at one scan position (the model on that one pattern)."""
    raw = np.asarray(data[iy, ix], dtype=np.float32)
    if not np.isfinite(raw).all():
        raise ValueError(f"the pattern at scan position ({iy}, {ix}) contains NaN or inf")
    region = (slice(iy, iy + 1), slice(ix, ix + 1))
    denoised = _denoise(
        data,
        model,
        region,
        local_counts_sigma=local_counts_sigma,
        local_counts_passes=local_counts_passes,
    )
    return raw, np.asarray(denoised[0, 0], dtype=np.float32)


def _caught(func: Any, *args: Any) -> tuple[str, Any]:
    """``("ok", func(*args))``, or ``("error", message)`` for the errors a user can cause."""
    return caught(func, *args)


def _check_finite(total: np.ndarray) -> None:
    """ValueError naming the scan positions whose pattern holds NaN or inf."""
    bad = ~np.isfinite(total)
    if bad.any():
        iy, ix = np.argwhere(bad)[0]
        raise ValueError(
            f"the data contain NaN or infinite values at {int(bad.sum())} scan position(s), "
            f"first at ({iy}, {ix}): clean or crop them first"
        )


def _virtual(data: Any, masks: np.ndarray) -> np.ndarray:
    from ..engine.virtual_detectors import apply_mask

    images = apply_mask(data, masks)
    return np.asarray(images.compute() if hasattr(images, "compute") else images)


def _survey(data: Any, detectors: dict | None) -> dict[str, Any]:
    """Mean pattern, central disk, detectors and virtual images (+ total counts) of a stack."""
    from ..engine import virtual_detectors as vd

    shape = vd.check_4d(data, "the layer")
    ones = np.ones(shape[2:], np.float32)
    found = None
    if detectors is None:
        pattern = vd.mean_pattern(data)
        if not np.isfinite(pattern).all():
            _check_finite(_virtual(data, ones))
        found = vd.find_central_disk(pattern)
        detectors = default_detectors(found, shape[2:])
    masks = np.stack([detectors[d].mask(shape[2:]) for d in DETECTORS] + [ones])
    images = _virtual(data, masks)
    _check_finite(images[-1])
    return {
        "detectors": detectors,
        "disk": found,
        "images": {d: images[i] for i, d in enumerate(DETECTORS)},
        "total": images[-1],
    }


def _run(
    data: Any,
    model: Any,
    region: tuple[slice, slice] | None,
    detectors: dict,
    out: Any,
    progress: Any,
    cancel: Any,
    local_counts_sigma: float | None = None,
    local_counts_passes: int = LOCAL_COUNTS_PASSES,
    neighbour_residuals: bool = True,
) -> dict[str, Any]:
    """Denoise the region, then the raw/denoised virtual images and their Poisson residuals."""
    from ..engine import virtual_detectors as vd

    pooled: list[Any] = []
    denoised = _denoise(
        data,
        model,
        region,
        out=out,
        progress=progress,
        cancel=cancel,
        local_counts_sigma=local_counts_sigma,
        local_counts_passes=local_counts_passes,
        neighbour_residuals=neighbour_residuals,
        report=pooled.append,
    )
    raw = data if region is None else data[region]
    shape = vd.check_4d(data)
    masks = np.stack([detectors[d].mask(shape[2:]) for d in DETECTORS])
    before = vd.apply_mask(raw, masks, cancel=cancel)
    if hasattr(before, "compute"):
        before = before.compute()
    after = vd.apply_mask(denoised, masks, cancel=cancel)
    virtual = {}
    for i, d in enumerate(DETECTORS):
        virtual[d] = (before[i], after[i], vd.poisson_residual(before[i], after[i]))
    if not neighbour_residuals:
        pooling = "each pattern on its own"
    elif pooled and pooled[0] is not None:
        pooling = pooled[0].describe()
    else:
        pooling = "neighbour residuals: no window estimated to help, none added"
    return {"denoised": denoised, "virtual": virtual, "pooling": pooling}


class Stem4DWidget(StatefulRun, mw.Container):
    """Dock widget for 4D-STEM: virtual images, pattern preview, region denoising.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its ``PublicOnlyProxy`` when the widget is
        opened from the Plugins menu).
    """

    cancelled_text = "cancelled: no layer added, the input is unchanged"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        from ._stem4d_view import ScanView

        self.viewer = viewer
        self._worker: Any = None  # the denoising run
        self._cancel = threading.Event()
        #: Where the denoising run stands, as the dock shows it (see :meth:`_enter`);
        #: the survey and the previews are not runs and leave it alone.
        self.state = RunState.IDLE
        self._survey_worker: Any = None
        self._survey_pending = False
        self._preview_worker: Any = None
        self._preview_pending: tuple[int, int] | None = None
        self._produced: set[Any] = set()
        self._shapes_id: Any = None
        self._syncing = False
        self.layers = OwnedLayers(viewer, "4D-STEM")
        #: The attached input: name, unique_id, data, geometry (None when unusable).
        self.source: dict[str, Any] | None = None
        #: Why the selected layer cannot be used ("" when it can).
        self.problem = ""
        #: Current virtual detectors (detector pixels) and the last survey/preview/run.
        self.detectors: dict[str, Any] | None = None
        self.virtual: dict[str, np.ndarray] = {}
        self.preview: dict[str, Any] = {}
        self.outputs: list[Any] = []
        #: Last run: the ``denoised`` stack, ``virtual[det] = (raw, denoised, residual)``.
        self.results: dict[str, Any] = {}
        self.last_error = ""
        #: A torch module to use instead of the drop-down's model (scripts, tests).
        self.model_override: Any = None

        self.layer = mw.ComboBox(label="4D-STEM layer", choices=self._layer_choices)
        self.open_button = mw.PushButton(text="Open 4D-STEM file…")
        self.model = mw.ComboBox(label="model", choices=self._model_choices)
        self.shown = mw.ComboBox(label="virtual image", choices=list(DETECTORS), value="BF")
        self.find_button = mw.PushButton(text="find central disk (reset detectors)")
        self.detector_info = mw.Label(value="")
        self.local_counts = mw.FloatSpinBox(
            label="raw counts above [px]", value=LOCAL_COUNTS_SIGMA, min=0.0, max=16.0, step=0.5
        )
        self.local_counts.tooltip = (
            "Put the measured counts back at scales above this many detector pixels, so Bragg-"
            "disk and virtual-detector intensities stay unbiased (the network alone dims weak "
            "disks). 0: the network's output as it is (smoother, biased intensities)."
        )
        self.local_passes = mw.SpinBox(
            label="in passes", value=LOCAL_COUNTS_PASSES, min=1, max=16, step=1
        )
        self.local_passes.tooltip = (
            "How many times the counts are put back: more passes cut more sharply between the "
            "network's fine detail and the measured coarse counts, so less of a dimmed disk's "
            f"deficit leaks past its edge (default {LOCAL_COUNTS_PASSES} passes of "
            f"{LOCAL_COUNTS_SIGMA:g} px; the release before used 1 pass of 1 px)."
        )
        self.neighbours = mw.CheckBox(text="pool neighbouring positions' residuals", value=True)
        self.neighbours.tooltip = (
            "After every pattern is denoised, put back what the network got wrong alike at "
            "neighbouring scan positions (a 3×3 or 5×5 window, or the whole scan: chosen, per "
            "detector pixel, by an unbiased estimate of the error it removes). Helps most on "
            "nano-beam patterns of one crystal; leaves patterns that differ from their "
            "neighbours nearly alone. The one-pattern preview cannot show it."
        )
        self.whole_scan = mw.CheckBox(text="whole scan", value=True)
        self.region = mw.LineEdit(label="scan region y0:y1,x0:x1", value="", enabled=False)
        self._make_run_controls("Denoise")
        wrap_labels(self.detector_info, self.status)
        self.model.tooltip = "Installed models whose card says modality 'diffraction'."
        self.region.tooltip = (
            "Scan pixels, end excluded (numpy slicing), e.g. 0:12,4:20. Or drag the yellow box "
            "on the virtual image."
        )
        form = mw.Container(
            widgets=[
                self.layer,
                self.open_button,
                self.model,
                self.shown,
                self.find_button,
                self.detector_info,
                self.local_counts,
                self.local_passes,
                self.neighbours,
                self.whole_scan,
                self.region,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ],
            labels=True,
        )
        self._form = form
        self.view = ScanView(self.preview_at, self._region_from_box)
        self.native.layout().addWidget(scrolling_with_view(form, self.view))

        self._detector_timer = QTimer()
        self._detector_timer.setSingleShot(True)
        self._detector_timer.setInterval(150)
        self._detector_timer.timeout.connect(self._detectors_edited)

        self.layer.changed.connect(lambda *_: self.attach())
        self.open_button.changed.connect(lambda *_: self._open_dialog())
        self.shown.changed.connect(lambda *_: (self._show_live(), self._show_results()))
        self.find_button.changed.connect(lambda *_: self.attach(reset=True))
        self.whole_scan.changed.connect(self._sync_region)
        self.local_counts.changed.connect(
            lambda value: setattr(self.local_passes, "enabled", bool(value))
        )
        self.region.changed.connect(self._region_typed)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        from ..models.registry import on_models_changed

        self._unsubscribe = on_models_changed(self._refresh_models)
        self.host = WorkerHost(self.native, self._on_close)
        self.layer.reset_choices()
        pick = self._default_layer()
        if pick is not None and pick != self.layer.value:
            self.layer.value = pick  # → attach()
        else:
            self.attach()

    # -- lifecycle ----------------------------------------------------------------------------
    def _on_close(self) -> None:
        """The viewer is closing or the dock was removed: cancel, let go of the viewer."""
        self._enter(RunState.CLOSED)
        self._cancel.set()
        self._detector_timer.stop()
        for worker in (self._worker, self._survey_worker, self._preview_worker):
            if worker is not None:
                worker.quit()
        self._unsubscribe()
        disconnect_quietly(
            (self.viewer.layers.events.inserted, self._refresh_layers),
            (self.viewer.layers.events.removed, self._refresh_layers),
        )

    @property
    def busy(self) -> bool:
        """True while a survey, a preview or a run is in progress."""
        return any(w is not None for w in (self._worker, self._survey_worker, self._preview_worker))

    # -- choices ------------------------------------------------------------------------------
    def _mine(self, layer: Any) -> bool:
        return (
            layer.unique_id in self._produced
            or self.layers.owns(layer)
            or (layer.unique_id == self._shapes_id)
        )

    def _layer_choices(self, *_: object) -> list[str]:
        """Image layers (4-D ones are the usable kind; others are refused with a message)."""
        from napari.layers import Image

        return [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image) and not self._mine(layer)
        ]

    def _model_choices(self, *_: object) -> list[str]:
        return diffraction_models() or [NO_MODEL]

    def _refresh_models(self) -> None:
        if not self.host.closing:
            self.model.reset_choices()

    def _default_layer(self) -> str | None:
        """The selected 4-D layer, else the topmost visible 4-D one, else any image layer."""
        choices = list(self.layer.choices)
        active = self.viewer.layers.selection.active
        if active is not None and active.name in choices and is_grey_image(active, (4,)):
            return active.name
        layers = [self.viewer.layers[name] for name in choices]
        four_d = [layer for layer in layers if is_grey_image(layer, (4,))]
        return topmost_name([layer for layer in four_d if layer.visible], four_d, layers)

    def _refresh_layers(self, *_: object) -> None:
        if self.host.closing:
            return
        current = self.layer.value
        self.layer.reset_choices()
        if current in self.layer.choices:
            if self.source is not None and find_layer(self.viewer, self.source["id"]) is None:
                self.attach()  # the attached layer was replaced by another of that name
            return
        pick = self._default_layer()
        if pick is not None and pick != self.layer.value:
            self.layer.value = pick  # → attach()
        else:
            self.attach()

    # -- attaching a data set -----------------------------------------------------------------
    def _set_problem(self, message: str) -> None:
        self.problem = message
        self.source = None
        self.virtual = {}
        self.view.clear()
        self.status.value = f"⚠ {message}" if message else ""

    def attach(self, reset: bool = False) -> None:
        """Use the selected layer: check it, find the central disk, draw the detectors.

        ``reset`` forgets detectors edited by the user.
        """
        if self.host.closing:
            return
        name = self.layer.value
        layer = None if not name else self.viewer.layers[name]
        if layer is None:
            self._set_problem(
                "no image layer: open a 4D-STEM data set (File ▸ Open, 'Open 4D-STEM file…' "
                "or File ▸ Open Sample ▸ EM Denoise)"
            )
            return
        if getattr(layer, "rgb", False) or getattr(layer, "multiscale", False):
            self._set_problem(f"{name!r} is an RGB or multiscale image, not a 4D-STEM data set")
            return
        if layer.ndim != 4:
            self._set_problem(
                f"{name!r} has {layer.ndim} dimensions {tuple(layer.data.shape)}; the 4D-STEM "
                "widget needs four: (scan_y, scan_x, det_y, det_x) — one diffraction pattern "
                "per scan position"
            )
            return
        same = self.source is not None and self.source["id"] == layer.unique_id
        self.problem = ""
        self.source = {
            "name": layer.name,
            "id": layer.unique_id,
            "data": layer.data,  # kept as it is: dask/zarr stay lazy
            "shape": tuple(int(s) for s in layer.data.shape),
            "geometry": split_geometry(layer),
            "metadata": dict(layer.metadata),
        }
        if reset or not same:
            self.detectors = None
            self.preview = {}
            self.view.clear()
            self._sync_region()
        self._survey()

    def _survey(self) -> None:
        """(Re)compute the virtual images in a worker (and find the disk if needed)."""
        from napari.qt.threading import create_worker

        if self.source is None or self.host.closing:
            return
        if self._survey_worker is not None:
            self._survey_pending = True
            return
        source, detectors = self.source, self.detectors
        self.status.value = f"virtual images of {source['name']}…"
        worker = create_worker(_caught, _survey, source["data"], detectors, _start_thread=False)
        worker.returned.connect(lambda outcome: self._on_survey(source, outcome))
        worker.errored.connect(
            lambda exc: self._on_survey(source, ("error", unexpected_error_text(exc)))
        )
        worker.finished.connect(lambda: self._on_survey_finished(worker))
        self._survey_worker = worker
        self.host.start(worker)

    def _on_survey_finished(self, worker: Any) -> None:
        """The survey's thread ended; if it was quit (no outcome came back), free the dock.

        napari's cancel (its activity dock, ``worker.quit()``) makes a worker end
        without ``returned``: the virtual images are then not updated, detector
        edits made meanwhile are dropped, and the next survey may start.
        """
        if self._survey_worker is not worker:
            return  # the outcome was handled (and may have started the next survey)
        self._survey_worker = None
        self._survey_pending = False
        if self.host.closing:
            return
        self.status.value = (
            "virtual images cancelled: move a detector or press 'find central disk' to compute them"
        )

    def _on_survey(self, source: dict, outcome: tuple[str, Any]) -> None:
        self._survey_worker = None
        if self.host.closing:
            return
        if self.source is not source:  # another layer was attached meanwhile
            self._survey()
            return
        status, result = outcome
        if status == "error":
            self._set_problem(f"{source['name']!r}: {result}")
            return
        if self._survey_pending:
            self._survey_pending = False
            if self.detectors is not None and self.detectors is not result["detectors"]:
                self._survey()  # detectors moved while this ran
                return
        self.detectors = result["detectors"]
        self.virtual = result["images"]
        if result["disk"] is not None:
            self._draw_detectors()
        self._describe_detectors()
        self._show_live()
        if self.status.value.startswith("virtual images"):
            self.status.value = "click the virtual image to preview a pattern"

    def _show_live(self) -> None:
        if self.source is None or not self.virtual:
            return
        name = self.shown.value
        self.view.show_live(self.virtual[name], f"virtual {name} of {self.source['name']}")
        self._sync_region()

    def _describe_detectors(self) -> None:
        if not self.detectors:
            self.detector_info.value = ""
            return
        step = self.source["geometry"]["detector"]["scale"][-1] if self.source else 1.0
        units = (
            (self.source["geometry"]["detector"].get("units") or ("",))[-1] if self.source else ""
        )
        unit = format(units, "~") if hasattr(units, "dimensionality") else str(units or "")
        unit = "" if unit in ("pixel", "px") else unit
        bf, adf = self.detectors["BF"], self.detectors["ADF"]

        def size(px: float) -> str:
            return f"{px:.1f} px" + (f" = {px * step:.3g} {unit}" if unit else "")

        self.detector_info.value = (
            f"BF: radius {size(bf.outer)} at ({bf.center[0]:.1f}, {bf.center[1]:.1f}); "
            f"ADF: {size(adf.inner)} – {size(adf.outer)}"
        )

    # -- detector shapes ----------------------------------------------------------------------
    def _shapes_layer(self) -> Any:
        return None if self._shapes_id is None else find_layer(self.viewer, self._shapes_id)

    def _draw_detectors(self) -> None:
        from napari.layers import Shapes

        shapes, roles = detector_ellipses(self.detectors)
        colors = [DETECTOR_COLORS[r] for r in roles]
        geometry = self.source["geometry"]["detector"]
        layer = self._shapes_layer()
        self._syncing = True
        try:
            if layer is None:
                name = f"{self.source['name']} detectors"
                if name in self.viewer.layers:
                    name = f"{name} (4D-STEM)"
                layer = Shapes(
                    shapes,
                    shape_type="ellipse",
                    edge_color=colors,
                    face_color="transparent",
                    edge_width=0.6,
                    features={"role": roles},
                    name=name,
                    **geometry,
                )
                self._shapes_id = layer.unique_id
                self.viewer.add_layer(layer)
                layer = self._shapes_layer()
                layer.events.data.connect(self._shapes_changed)
            else:
                layer.data = []
                layer.features = {"role": []}
                layer.add_ellipses(shapes, edge_color=colors, face_color="transparent")
                layer.features = {"role": roles}
                for key, value in geometry.items():
                    setattr(layer, key, value)
                wanted = f"{self.source['name']} detectors"
                if layer.name != wanted and wanted not in self.viewer.layers:
                    layer.name = wanted
        finally:
            self._syncing = False

    def _raise_detectors(self) -> None:
        """Keep the detector ellipses above the pattern layers added after them."""
        layer = self._shapes_layer()
        if layer is None:
            return
        layers = self.viewer.layers
        index = layers.index(layer)
        if index != len(layers) - 1:
            layers.move(index, len(layers))

    def _shapes_changed(self, *_: object) -> None:
        if not self._syncing and not self.host.closing:
            self._detector_timer.start()

    def _detectors_edited(self) -> None:
        layer = self._shapes_layer()
        if layer is None or self.source is None or self.host.closing:
            return
        roles = list(layer.features["role"]) if "role" in layer.features else []
        try:
            detectors = detectors_from_ellipses(list(layer.data), roles)
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return
        self.detectors = detectors
        self._describe_detectors()
        self._survey()

    def set_detectors(self, detectors: dict[str, Any]) -> None:
        """Use these detectors (``{"BF": …, "ADF": …}``), redraw them, update the images."""
        self.detectors = dict(detectors)
        self._draw_detectors()
        self._describe_detectors()
        self._survey()

    # -- region -------------------------------------------------------------------------------
    def _sync_region(self, *_: object) -> None:
        whole = bool(self.whole_scan.value)
        self.region.enabled = not whole
        if whole or self.source is None:
            self.view.show_region(None)
            return
        sy, sx = self.source["shape"][:2]
        try:
            region = parse_region(self.region.value, (sy, sx))
        except ValueError:
            region = None
        if region is None:  # start from the central half of the scan
            region = (
                slice(sy // 4, max(sy - sy // 4, sy // 4 + 1)),
                slice(sx // 4, max(sx - sx // 4, sx // 4 + 1)),
            )
            self.region.value = format_region(region)
        ys, xs = region
        self.view.show_region((ys.start, ys.stop, xs.start, xs.stop))

    def _region_typed(self, *_: object) -> None:
        if self.whole_scan.value or self.source is None:
            return
        try:
            region = parse_region(self.region.value, self.source["shape"][:2])
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return
        if region is not None:
            ys, xs = region
            self.view.show_region((ys.start, ys.stop, xs.start, xs.stop))

    def _region_from_box(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self.region.value = f"{y0}:{y1},{x0}:{x1}"

    def selected_region(self) -> tuple[slice, slice] | None:
        """The scan region to denoise (None: the whole scan); ValueError when malformed."""
        if self.whole_scan.value or self.source is None:
            return None
        return parse_region(self.region.value, self.source["shape"][:2])

    # -- model --------------------------------------------------------------------------------
    def _model(self) -> Any:
        if self.model_override is not None:
            return self.model_override
        if not self.model.value:
            raise ValueError(
                "no diffraction model installed (a model card with modality 'diffraction', "
                "e.g. the bundled pix2pix-4dstem): train or install one first"
            )
        return self.model.value

    def _model_label(self, model: Any) -> str:
        return model if isinstance(model, str) else type(model).__name__

    # -- preview ------------------------------------------------------------------------------
    def preview_at(self, iy: int, ix: int) -> None:
        """Show the raw and the denoised pattern at scan position ``(iy, ix)`` (in a worker)."""
        from napari.qt.threading import create_worker

        if self.source is None or self.host.closing:
            if self.problem:
                self.status.value = f"⚠ {self.problem}"
            return
        sy, sx = self.source["shape"][:2]
        if not (0 <= iy < sy and 0 <= ix < sx):
            return
        try:
            model = self._model()
        except ValueError as exc:
            self.last_error = str(exc)
            self.status.value = f"⚠ {exc}"
            return
        if self._preview_worker is not None:
            self._preview_pending = (iy, ix)
            return
        self.view.mark(iy, ix)
        self._follow_position(iy, ix)
        self.status.value = f"denoising the pattern at ({iy}, {ix})…"
        source = self.source
        worker = create_worker(
            _caught,
            _preview,
            source["data"],
            model,
            iy,
            ix,
            self._local_counts_sigma(),
            int(self.local_passes.value),
            _start_thread=False,
        )
        worker.returned.connect(lambda outcome: self._on_preview(source, (iy, ix), outcome))
        worker.errored.connect(
            lambda exc: self._on_preview(source, (iy, ix), ("error", unexpected_error_text(exc)))
        )
        worker.finished.connect(lambda: self._on_preview_finished(worker, (iy, ix)))
        self._preview_worker = worker
        self.host.start(worker)

    def _on_preview_finished(self, worker: Any, position: tuple[int, int]) -> None:
        """The preview's thread ended; if it was quit (no outcome came back), free the dock.

        A click waiting for this preview is dropped too: the next click previews.
        """
        if self._preview_worker is not worker:
            return  # the outcome was handled (and may have started the next preview)
        self._preview_worker = None
        self._preview_pending = None
        if self.host.closing:
            return
        self.status.value = (
            f"preview at {position} cancelled: click the virtual image to preview a pattern"
        )

    def _follow_position(self, iy: int, ix: int) -> None:
        """Move napari's scan sliders so the 4-D layer shows the previewed pattern too."""
        dims = self.viewer.dims
        if dims.ndim < 4:
            return
        geometry = self.source["geometry"]["scan"]
        offset = dims.ndim - 4
        for axis, index in enumerate((iy, ix)):
            world = geometry["translate"][axis] + index * geometry["scale"][axis]
            try:
                dims.set_point(offset + axis, world)
            except (AttributeError, TypeError, ValueError):  # pragma: no cover - old napari
                pass

    def _on_preview(
        self, source: dict, position: tuple[int, int], outcome: tuple[str, Any]
    ) -> None:
        self._preview_worker = None
        if self.host.closing:
            return
        pending, self._preview_pending = self._preview_pending, None
        status, result = outcome
        if status == "error":
            self.last_error = f"preview at {position}: {result}"
            self.status.value = f"⚠ {self.last_error}"
        elif self.source is source:
            raw, denoised = result
            name = source["name"]
            det = dict(source["geometry"]["detector"])
            right = dict(det)
            translate = list(det["translate"])
            translate[-1] += (raw.shape[-1] + PREVIEW_GAP) * det["scale"][-1]
            right["translate"] = tuple(translate)
            meta = {**source["metadata"], "scan_position_px": list(position)}
            raw_layer = self.layers.set(f"{name} pattern raw", raw, det, metadata=meta)
            den_layer = self.layers.set(f"{name} pattern denoised", denoised, right, metadata=meta)
            self._raise_detectors()
            self.preview = {
                "position": position,
                "raw": raw,
                "denoised": denoised,
                "layers": (raw_layer, den_layer),
            }
            self.status.value = (
                f"pattern ({position[0]}, {position[1]}): raw {raw.sum():.0f} counts, denoised "
                f"{denoised.sum():.0f} counts (right); Denoise to commit"
            )
        if pending is not None and pending != position:
            self.preview_at(*pending)

    # -- run ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Denoise the whole scan or the chosen region in a worker thread."""
        from .restore import run_with_progress

        if self._worker is not None or self.host.closing:
            return
        if self.source is None:
            self._error(self.problem or "no 4D-STEM layer selected")
            return
        if self._survey_worker is not None:
            self._error("still computing the virtual images: try again in a moment")
            return
        if self.detectors is None:
            self._error("no virtual detectors yet: press 'find central disk'")
            return
        try:
            model = self._model()
            region = self.selected_region()
        except ValueError as exc:
            self._error(str(exc))
            return
        source = self.source
        sy, sx, dy, dx = source["shape"]
        ry, rx = (
            (sy, sx)
            if region is None
            else (region[0].stop - region[0].start, region[1].stop - region[1].start)
        )
        out = None
        if ry * rx * dy * dx * 4 > IN_MEMORY_BYTES:
            out = tempfile.mkdtemp(prefix="emdenoise-4dstem-") + "/denoised.zarr"
        request = {
            "source": source,
            "region": region,
            "detectors": dict(self.detectors),
            "model": self._model_label(model),
            "out": out,
            "local_counts_sigma": self._local_counts_sigma(),
            "local_counts_passes": int(self.local_passes.value),
            "neighbour_residuals": bool(self.neighbours.value),
        }
        where = "the whole scan" if region is None else f"region {format_region(region)}"
        then = ", then pooling neighbouring residuals" if request["neighbour_residuals"] else ""
        self._begin(f"denoising {ry * rx} patterns of {source['name']} ({where}){then}…")
        self._launch(
            lambda result: self._on_result(request, result),
            run_with_progress,
            _run,
            source["data"],
            model,
            region,
            request["detectors"],
            out,
            cancel=self._cancel.is_set,
            local_counts_sigma=request["local_counts_sigma"],
            local_counts_passes=request["local_counts_passes"],
            neighbour_residuals=request["neighbour_residuals"],
        )

    def _local_counts_sigma(self) -> float | None:
        return float(self.local_counts.value) or None

    def _on_result(self, request: dict, result: dict[str, Any]) -> None:
        source, region = request["source"], request["region"]
        name = source["name"]
        offset = (0, 0) if region is None else (region[0].start, region[1].start)
        stack = scan_geometry(source["geometry"]["stack"], offset, 4)
        scan = scan_geometry(source["geometry"]["scan"], offset, 2)
        record = {
            "emdenoise_model": request["model"],
            "emdenoise_local_counts_sigma_px": request["local_counts_sigma"],
            "emdenoise_local_counts_passes": request["local_counts_passes"]
            if request["local_counts_sigma"]
            else None,
            "emdenoise_neighbour_residuals": request["neighbour_residuals"],
            "emdenoise_pooling": result["pooling"],
            "emdenoise_region": None
            if region is None
            else [[region[0].start, region[0].stop], [region[1].start, region[1].stop]],
            "virtual_detectors_px": {k: d.to_dict() for k, d in request["detectors"].items()},
        }
        meta = {**source["metadata"], **record}
        outputs = [
            self.viewer.add_image(
                result["denoised"], name=f"{name} denoised", metadata=meta, **stack
            )
        ]
        residual_note = "(denoised - raw) / sqrt(max(denoised, 1)), Poisson standard deviations"
        for det in DETECTORS:
            raw, den, res = result["virtual"][det]
            outputs.append(
                self.viewer.add_image(
                    raw, name=f"{name} virtual {det}", metadata=meta, visible=False, **scan
                )
            )
            outputs.append(
                self.viewer.add_image(
                    den, name=f"{name} denoised virtual {det}", metadata=meta, visible=False, **scan
                )
            )
            outputs.append(
                self.viewer.add_image(
                    res,
                    name=f"{name} virtual {det} residual",
                    metadata={**meta, "residual": residual_note},
                    colormap="twilight_shifted",
                    contrast_limits=(-5.0, 5.0),
                    visible=False,
                    **scan,
                )
            )
        self.outputs = outputs
        self._raise_detectors()
        self._produced.update(layer.unique_id for layer in outputs)
        self._refresh_layers()
        self.results = result
        self._show_results()
        res = result["virtual"]["BF"][2]
        self.status.value = (
            f"{name} denoised with {request['model']}; virtual BF residual "
            f"{float(np.mean(res)):+.2f} ± {float(np.std(res)):.2f} σ (0 ± ~1 when only noise "
            f"was removed); {result['pooling']}"
        )
        self.progress.value = self.progress.max
        self._finish()

    def _show_results(self) -> None:
        result = self.results
        if not result:
            return
        det = self.shown.value
        raw, den, res = result["virtual"][det]
        self.view.show_results(raw, den, res, det)

    # -- opening files ------------------------------------------------------------------------
    def _open_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native,
            "Open a 4D-STEM data set",
            "",
            "4D-STEM (*.zarr *.hspy *.emd *.mib *.blo *.dm4 *.npy *.h5);;All files (*)",
        )
        if path:
            self.open_file(path)

    def open_file(self, path: str) -> list[Any]:
        """Open ``path`` with this plugin's reader (lazily for large files) and use it."""
        layers = self.viewer.open(path, plugin="napari-emdenoise")
        four_d = [layer for layer in layers if getattr(layer, "ndim", 0) == 4]
        if four_d:
            self.layer.value = four_d[-1].name
        elif layers:
            self.layer.value = layers[-1].name
        return layers
