"""Train dock widget: train a restoration network for *your* microscope inside napari.

The widget collects its editors' plain values into a
:class:`~napari_emdenoise.training.config_builder.TrainForm`, which
:func:`~napari_emdenoise.training.config_builder.build_train_config` turns into a
:class:`~napari_emdenoise.training.trainer.TrainConfig` (no Qt there). It runs
:meth:`Trainer.run` in a napari generator worker and turns every yielded event into
main-thread updates: the live :class:`LossPlot`, a progress bar with
pairs/s and ETA, and preview layers of the current network's output on a fixed
validation pair (and, optionally, on one of the user's image layers). Stop,
pause/resume and "save checkpoint now" act on the trainer between steps; napari's
own cancel of the worker (its activity dock, ``worker.quit()``) is the Stop button;
closing the widget or the viewer stops the run and keeps the last checkpoint. One
:class:`~._run_state.RunState` says where the run stands and sets the buttons.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtCore import QTimer

from ..losses import LossWeights
from ..noise.pipeline import MODALITIES, NoiseParams
from ..training.config_builder import (
    TrainForm,
    build_train_config,
    default_runs_dir,
    in_process_reason,
    resolve_noise,
)
from ._common import (
    USER_ERRORS,
    GracefulStopWorker,
    WorkerHost,
    grey_image_layers,
    scrolling,
    section,
    unexpected_error_text,
    wrap_labels,
)
from ._layers import OwnedLayers
from ._run_state import RunState, RunStateHolder
from ._spawn import unguarded_main_script

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..training.trainer import TrainConfig, Trainer

__all__ = ["TrainWidget", "default_runs_dir"]

RANDOM_NOISE = "random (paper ranges)"
PLAYGROUND_NOISE = "playground (live settings)"
FILE_NOISE = "settings file (JSON)"
#: The noise-source choices and the keys :class:`TrainForm` takes.
_NOISE_KEYS = {RANDOM_NOISE: "random", PLAYGROUND_NOISE: "playground", FILE_NOISE: "file"}
SCRATCH = "scratch"
NO_PREVIEW = "none"
#: Loss-weight fields shown as editors (every term of Lobato et al. 2023, eqs 4–15).
_WEIGHT_FIELDS = ("l1", "l2", "mlwt", "fourier", "mean", "std", "adversarial", "sigma_min")
#: Most progress/plot refreshes per second, whatever the step rate.
UI_REFRESH_HZ = 2.0
#: How long closing the widget waits for the run to write its checkpoint, in seconds.
CLOSE_TIMEOUT_S = 120.0
#: Without a first step after this many seconds, the status says what may be wrong.
STARTUP_WARNING_S = 60.0
#: Model sizes in the order offered (smallest first); others follow alphabetically.
_SIZE_ORDER = ("tiny", "small", "full")
#: The editors' first values: those of :class:`TrainForm` (the runs folder is set apart).
_FIRST = TrainForm(out_dir="")
#: First settings: CGRDN "small" (181 k parameters) on 96² patches, batch 8, for 1000
#: steps trains in about 10 minutes on two CPU cores (the bundled models were trained so,
#: for 3000–5000 steps); "full" (7 M parameters) is meant for a GPU.
DEFAULT_SIZE = _FIRST.model_config
DEFAULT_PATCH = _FIRST.patch_size
DEFAULT_STEPS = _FIRST.steps
#: Buttons per run state: (Start, Pause, Stop, Checkpoint) enabled, and the Pause button's text.
_BUTTONS: dict[RunState, tuple[bool, bool, bool, bool, str]] = {
    RunState.IDLE: (True, False, False, False, "Pause"),
    RunState.RUNNING: (False, True, True, True, "Pause"),
    RunState.PAUSED: (False, True, True, True, "Resume"),
    RunState.STOPPING: (False, False, False, False, "Pause"),
    RunState.DONE: (True, False, False, False, "Pause"),
}


#: Layer showing input | target | restored of the fixed validation pair.
PREVIEW_LAYER = "training preview (input | target | restored)"
#: Layer showing the current network's output on the user's chosen image.
USER_PREVIEW_LAYER = "training preview on your image"


def preview_montage(*panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """Place equally tall 2-D panels side by side, ``gap`` columns apart.

    The separating columns take the panels' minimum: a dark line at any contrast.
    """
    panels = tuple(np.asarray(p, dtype=np.float32) for p in panels)
    low = min(float(p.min()) for p in panels)
    sep = np.full((panels[0].shape[0], gap), low, np.float32)
    parts: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        parts.extend([sep, panel] if i else [panel])
    return np.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class RunFailed:
    """Last event of a run stopped by an error the user can cause (bad data, disk full)."""

    message: str


#: Errors of a training run reported in the dock only (see ``_common.USER_ERRORS``).
TRAINING_USER_ERRORS = (*USER_ERRORS, OSError)


def _run_trainer(trainer: Trainer, done: threading.Event, go: threading.Event):
    """Generator for the worker: the trainer's events; ``done`` is set when it ends.

    After each event the thread waits while ``go`` is clear (paused); setting it
    resumes the run at once (a pause asked just before is simply cancelled). A
    user error ends the run with a :class:`RunFailed` event; any other exception
    is raised (napari reports it).
    """
    try:
        for event in trainer.run():
            yield event
            go.wait()
    except TRAINING_USER_ERRORS as exc:
        yield RunFailed(str(exc))
    finally:
        done.set()


def _format_eta(seconds: float) -> str:
    if not seconds < float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _weight_editors() -> dict[str, mw.FloatSpinBox]:
    """One editor per loss weight, generated from :class:`LossWeights` (defaults, docs)."""
    defaults = LossWeights()
    docs = {
        "l1": "contrast-weighted L1 (eqs 4–5)",
        "l2": "contrast-weighted L2 (eqs 6–7)",
        "mlwt": "multi-local whitening transform (eq 8)",
        "fourier": "Fourier-space |F(y − y_g)|^γ (eq 9)",
        "mean": "mean constraint (eq 10)",
        "std": "std constraint (eq 11)",
        "adversarial": "relativistic adversarial term (eq 12); > 0 trains the discriminator",
        "sigma_min": "σ_min of eqs 5 and 7 [intensity]",
    }
    fields = {f.name: f for f in dataclasses.fields(LossWeights)}
    editors = {}
    for name in _WEIGHT_FIELDS:
        assert name in fields, name  # the dataclass is the source of truth
        editors[name] = mw.FloatSpinBox(
            label=f"λ {name}" if name != "sigma_min" else "σ_min",
            value=float(getattr(defaults, name)),
            min=0.0 if name != "sigma_min" else 1e-6,
            max=1e4,
            step=1e-4,
            tooltip=docs.get(name, ""),
        )
    return editors


def size_choices(arch: str) -> list[str]:
    """Named sizes of ``arch``, smallest first (never alphabetical: "full" is the largest)."""
    from ..models.registry import named_configs

    names = list(named_configs(arch))
    rank = {name: i for i, name in enumerate(_SIZE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


class TrainWidget(RunStateHolder, mw.Container):
    """Dock widget: configure, start, watch, pause, stop and save a training run.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (napari passes its ``PublicOnlyProxy`` when the widget is
        opened from the Plugins menu).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        from ..engine.device import available_devices
        from ..models.registry import ARCHITECTURES

        self.viewer = viewer
        self.trainer: Trainer | None = None
        self._worker: Any = None
        self._done = threading.Event()  # set by the worker thread when the run has ended
        self._done.set()
        self._go = threading.Event()  # cleared while paused: the worker thread holds
        self._go.set()
        #: Where the run stands, as the widget shows it (see :meth:`_enter`).
        self.state = RunState.IDLE
        self._t_start = 0.0
        self._step_start = 0
        self._rate = 0.0
        self.layers = OwnedLayers(viewer, "training")
        #: Every event received on the main thread, by type name (tests read it).
        self.event_counts: dict[str, int] = {}
        #: The last DoneEvent, or None.
        self.result: Any = None
        self.last_error = ""
        #: Why the data are made in this process although data workers were asked for.
        self.in_process_reason = ""
        #: Scale, units and translate of the user-image preview (it lies on its source crop)
        #: and of the validation montage (beside that image, at its pixel size).
        self._preview_geometry: dict[str, Any] = {}
        self._montage_geometry: dict[str, Any] = {}

        # -- model
        self.model_name = mw.LineEdit(label="model name", value=_FIRST.model_name)
        self.arch = mw.ComboBox(
            label="architecture", choices=sorted(ARCHITECTURES), value=_FIRST.arch
        )
        self.model_config = mw.ComboBox(
            label="size",
            choices=lambda *_: size_choices(self.arch.value),
            tooltip="tiny/small train in minutes on a CPU; full (7 M parameters) needs a GPU",
        )
        if DEFAULT_SIZE in self.model_config.choices:
            self.model_config.value = DEFAULT_SIZE
        self.start_from = mw.ComboBox(label="start from", choices=self._start_choices)
        # -- data
        self.modality = mw.ComboBox(
            label="modality", choices=[*MODALITIES, "diffraction"], value=_FIRST.modality
        )
        self.kind = mw.ComboBox(label="kind", choices=["hr", "lr"], value=_FIRST.kind)
        self.noise_source = mw.ComboBox(
            label="noise", choices=[RANDOM_NOISE, PLAYGROUND_NOISE, FILE_NOISE]
        )
        self.noise_file = mw.FileEdit(label="settings", mode="r", filter="*.json", visible=False)
        self.patch_size = mw.SpinBox(
            label="patch [px]", value=DEFAULT_PATCH, min=32, max=1024, step=16,
            tooltip="side of the training crops; larger sees more context, trains slower",
        )  # fmt: skip
        self.clean_pool = mw.SpinBox(
            label="clean-image pool", value=_FIRST.clean_pool, min=0, max=100_000,
            tooltip="0: a new clean image for every pair (paper); N: reuse N clean images",
        )  # fmt: skip
        self.seed = mw.SpinBox(label="seed", value=_FIRST.seed, min=0, max=2**31 - 1)
        # -- loss
        self.weights = _weight_editors()
        self.disc_channels = mw.SpinBox(
            label="discriminator width", value=_FIRST.disc_channels, min=4, max=128, step=4,
            tooltip="base channels of the 70×70 patch discriminator (paper: 64)",
        )  # fmt: skip
        # -- optimisation
        self.steps = mw.SpinBox(label="steps", value=DEFAULT_STEPS, min=1, max=10_000_000, step=100)
        self.batch_size = mw.SpinBox(label="batch", value=_FIRST.batch_size, min=1, max=1024)
        self.lr = mw.FloatSpinBox(
            label="learning rate", value=_FIRST.lr, min=1e-7, max=1.0, step=1e-5
        )
        self.device = mw.ComboBox(label="device", choices=["auto", *available_devices()])
        self.val_every = mw.SpinBox(
            label="preview every [steps]", value=_FIRST.val_every, min=1, max=1_000_000
        )
        self.checkpoint_every = mw.SpinBox(
            label="checkpoint every [steps]", value=_FIRST.checkpoint_every, min=1, max=1_000_000
        )
        self.workers = mw.SpinBox(
            label="data workers", value=_FIRST.workers, min=0, max=64,
            tooltip="processes that make the synthetic pairs (0: in the napari process)",
        )  # fmt: skip
        self.preview_layer = mw.ComboBox(label="preview on", choices=self._preview_choices)
        self.out_dir = mw.FileEdit(label="runs folder", mode="d", value=str(default_runs_dir()))
        self.resume = mw.CheckBox(text="continue from the run's checkpoint", value=True)
        self.install = mw.CheckBox(text="list the model in Restore when done", value=True)
        # -- controls
        self.start_button = mw.PushButton(text="Start")
        self.pause_button = mw.PushButton(text="Pause")
        self.checkpoint_button = mw.PushButton(
            text="Checkpoint", tooltip="write a checkpoint after the current step"
        )
        self.stop_button = mw.PushButton(text="Stop")
        self.onnx_button = mw.PushButton(text="Export ONNX…")
        self.progress = mw.ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = mw.Label(value="")

        # the settings scroll in collapsible sections (they are taller than a laptop
        # screen); the controls, progress and status stay
        self._boxes = {
            "Model": mw.Container(
                widgets=[self.model_name, self.arch, self.model_config, self.start_from]
            ),
            "Data": mw.Container(
                widgets=[self.modality, self.kind, self.noise_source, self.noise_file,
                         self.patch_size, self.clean_pool, self.seed],
            ),
            "Loss weights (Lobato et al. 2023, eqs 4–15)": mw.Container(
                widgets=[*self.weights.values(), self.disc_channels]
            ),
            "Optimisation": mw.Container(
                widgets=[self.steps, self.batch_size, self.lr, self.device, self.val_every,
                         self.checkpoint_every, self.workers, self.preview_layer,
                         self.out_dir, self.resume, self.install],
            ),
        }  # fmt: skip
        # One scroll area holds everything, controls first: the dock can shrink to a few
        # lines when other docks share its side of the window, and Start stays on top.
        controls = mw.Container(
            widgets=[
                mw.Container(
                    widgets=[self.start_button, self.pause_button, self.stop_button,
                             self.checkpoint_button, self.onnx_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.progress,
                self.status,
            ],
            labels=False,
        )  # fmt: skip
        wrap_labels(self.status)
        settings = mw.Container(widgets=[controls], labels=False)
        for title, fields in self._boxes.items():
            expanded = not title.startswith("Loss")
            settings.native.layout().addWidget(section(title, fields.native, expanded))
        settings.native.layout().addStretch(1)
        self._settings = settings  # keep the magicgui wrappers alive
        self.native.layout().addWidget(scrolling(settings.native, 60), 1)
        self.plot = self._make_plot()
        self._last_step: Any = None
        self._ui_timer = QTimer(self.native)
        self._ui_timer.setSingleShot(True)
        self._ui_timer.setInterval(int(1000 / UI_REFRESH_HZ))
        self._ui_timer.timeout.connect(self._refresh_progress)
        self._startup_timer = QTimer(self.native)
        self._startup_timer.setSingleShot(True)
        self._startup_timer.setInterval(int(1000 * STARTUP_WARNING_S))
        self._startup_timer.timeout.connect(self._warn_slow_start)

        self.arch.changed.connect(self._on_arch)
        self.start_from.changed.connect(self._on_start_from)
        self.noise_source.changed.connect(self._on_noise_source)
        self.weights["adversarial"].changed.connect(self._on_adversarial)
        self.preview_layer.changed.connect(self._on_preview_layer)
        self.start_button.changed.connect(lambda *_: self.start())
        self.pause_button.changed.connect(lambda *_: self.toggle_pause())
        self.stop_button.changed.connect(lambda *_: self.stop())
        self.checkpoint_button.changed.connect(lambda *_: self.save_checkpoint())
        self.onnx_button.changed.connect(lambda *_: self._onnx_dialog())
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        # closing the viewer or removing the dock stops the run and waits for its checkpoint
        self.host = WorkerHost(self.native, self._on_close, timeout=CLOSE_TIMEOUT_S)
        self._on_adversarial()
        self._apply_state(self.state)

    # -- plot dock ------------------------------------------------------------
    def _make_plot(self):
        from .loss_plot import LossPlot

        plot = LossPlot(max_redraw_hz=UI_REFRESH_HZ)
        try:
            self.viewer.window.add_dock_widget(plot, area="bottom", name="Training losses")
        except (AttributeError, RuntimeError):  # a viewer without a window (headless use)
            pass
        return plot

    # -- choices --------------------------------------------------------------
    def _start_choices(self, *_: object) -> list[str]:
        from ..models.registry import list_models

        arch = self.arch.value if hasattr(self, "arch") else "cgrdn"
        return [SCRATCH, *sorted(n for n, c in list_models().items() if c.arch == arch)]

    def _preview_choices(self, *_: object) -> list[str]:
        return [NO_PREVIEW, *grey_image_layers(self.viewer, (2,), exclude=self.layers)]

    def _refresh_layers(self, *_: object) -> None:
        if not self._closed:
            self.preview_layer.reset_choices()

    def _on_arch(self, *_: object) -> None:
        self.model_config.reset_choices()
        self.start_from.reset_choices()
        if self.arch.value == "pix2pix":  # 4D-STEM patterns, GAN + 100·L1 (Cao et al. 2024)
            from ..training.trainer import PIX2PIX_LOSS_WEIGHTS

            self.modality.value, self.patch_size.value = "diffraction", 64
            for key, value in PIX2PIX_LOSS_WEIGHTS.items():
                self.weights[key].value = value

    def _on_start_from(self, *_: object) -> None:
        from ..models.registry import list_models

        fine_tune = self.start_from.value not in (SCRATCH, None)
        self.model_config.enabled = not fine_tune
        if fine_tune:
            card = list_models().get(self.start_from.value)
            if card is not None and card.modality in MODALITIES:
                self.modality.value = card.modality
                self.kind.value = card.kind

    def _on_noise_source(self, *_: object) -> None:
        self.noise_file.visible = self.noise_source.value == FILE_NOISE

    def _on_adversarial(self, *_: object) -> None:
        self.disc_channels.enabled = self.weights["adversarial"].value > 0

    def _on_preview_layer(self, *_: object) -> None:
        if self.trainer is not None and self.running:
            try:
                self.trainer.set_preview_image(self._preview_image())
            except ValueError as exc:
                self._show_error(str(exc))

    # -- configuration --------------------------------------------------------
    def _find_playground(self):
        from .playground import find_playground

        return find_playground(self.viewer)

    def noise_params(self) -> NoiseParams | None:
        """The noise settings chosen: None (random per pair), the playground's, or a file's."""
        form = self._noise_values()
        return resolve_noise(form["noise_source"], form["noise_file"], form["playground_noise"])

    def _noise_values(self) -> dict[str, Any]:
        """The noise source as :class:`TrainForm` takes it (the playground is looked up
        only when it is the source)."""
        source = _NOISE_KEYS[self.noise_source.value]
        playground = self._find_playground() if source == "playground" else None
        return {
            "noise_source": source,
            "noise_file": self.noise_file.value if source == "file" else None,
            "playground_noise": playground.params if playground is not None else None,
        }

    def form(self) -> TrainForm:
        """The editors' values, as plain values (no Qt)."""
        start = self.start_from.value
        return TrainForm(
            model_name=self.model_name.value,
            arch=self.arch.value,
            model_config=self.model_config.value,
            start_from=None if start in (SCRATCH, None) else start,
            modality=self.modality.value,
            kind=self.kind.value,
            **self._noise_values(),
            patch_size=int(self.patch_size.value),
            clean_pool=int(self.clean_pool.value),
            seed=int(self.seed.value),
            loss_weights={k: float(w.value) for k, w in self.weights.items()},
            disc_channels=int(self.disc_channels.value),
            steps=int(self.steps.value),
            batch_size=int(self.batch_size.value),
            lr=float(self.lr.value),
            device=None if self.device.value == "auto" else self.device.value,
            val_every=int(self.val_every.value),
            checkpoint_every=int(self.checkpoint_every.value),
            workers=int(self.workers.value),
            out_dir=Path(self.out_dir.value),
        )

    def config(self) -> TrainConfig:
        """The :class:`TrainConfig` the widget currently describes (raises ValueError).

        Also sets :attr:`in_process_reason` when data workers cannot be used.
        """
        form = self.form()
        script = unguarded_main_script() if form.workers > 0 else None
        self.in_process_reason = ""
        cfg = build_train_config(form, unguarded_script=script)
        self.in_process_reason = in_process_reason(form.workers, script)
        return cfg

    def _preview_image(self):
        name = self.preview_layer.value
        if name in (NO_PREVIEW, None) or name not in self.viewer.layers:
            self._preview_geometry, self._montage_geometry = {}, {}
            return None
        layer = self.viewer.layers[name]
        self._preview_geometry = _crop_geometry(layer)
        self._montage_geometry = _beside_geometry(layer)
        return layer.data

    # -- run control ----------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a training run is in progress."""
        return not self._done.is_set()

    def start(self) -> None:
        """Start (or continue) training in a background worker."""
        if self.running or self.state not in (RunState.IDLE, RunState.DONE):
            return
        from napari.qt.threading import create_worker

        from ..training.trainer import Trainer

        try:
            cfg = self.config()
            trainer = Trainer(cfg, resume=bool(self.resume.value))
            trainer.set_preview_image(self._preview_image())
        except (ValueError, OSError) as exc:
            self._show_error(str(exc))
            return
        self.trainer = trainer
        self.result = None
        self.last_error = ""
        self.plot.clear()
        self._done = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._t_start = time.perf_counter()
        self._step_start = -1
        self._rate = 0.0
        self._last_step = None
        self.progress.max = cfg.steps
        self.progress.value = 0
        self.status.value = f"starting: {cfg.arch} ({cfg.model_config}) → {cfg.out_dir}"
        if self.in_process_reason:
            self.status.value += f" · {self.in_process_reason}"
        self._worker = create_worker(
            _run_trainer,
            trainer,
            self._done,
            self._go,
            _worker_class=GracefulStopWorker,
            _start_thread=False,
        )
        self._worker.on_quit = self.stop  # napari's cancel is the Stop button
        self._worker.yielded.connect(self._on_event)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(self._on_finished)
        self._prepare_preview_layers(cfg, trainer)
        self._enter(RunState.RUNNING)
        self._startup_timer.start()
        self.host.start(self._worker)

    def _prepare_preview_layers(self, cfg: TrainConfig, trainer: Trainer) -> None:
        """Create the preview layers now (click time), not at the first validation.

        Adding an image layer costs the event loop a few hundred ms with software
        OpenGL; during training only the data of existing layers is replaced.
        """
        n = cfg.pairs.patch_size
        blank = np.zeros((n, n), np.float32)
        if self.layers.get(PREVIEW_LAYER) is None:
            montage = preview_montage(blank, blank, blank)
            self.layers.set(PREVIEW_LAYER, montage, self._montage_geometry)
        image = trainer.preview_image
        if image is None:
            self.layers.remove(USER_PREVIEW_LAYER)
        elif self.layers.get(USER_PREVIEW_LAYER) is None:
            self.layers.set(USER_PREVIEW_LAYER, np.zeros_like(image), self._preview_geometry)

    def stop(self) -> None:
        """End the run after the current step; the checkpoint and model are written."""
        if self.trainer is None or not self.running:
            return
        self.trainer.stop()
        self._go.set()  # a paused run goes on to its end
        if self._enter(RunState.STOPPING):
            self.status.value = "stopping after the current step…"

    def toggle_pause(self) -> None:
        """Pause or resume the run (between steps)."""
        if not self.running:
            return
        if self.state is RunState.PAUSED:
            self._go.set()
            if self._enter(RunState.RUNNING):
                self.status.value = "resumed"
        elif self.state is RunState.RUNNING:
            self._go.clear()
            if self._enter(RunState.PAUSED):
                self.status.value = "paused"

    def save_checkpoint(self) -> None:
        """Write a checkpoint after the current step."""
        if self.trainer is not None and self.running:
            self.trainer.request_checkpoint()
            if self.state is RunState.PAUSED:
                self.status.value = "checkpoint will be written when resumed"

    def shutdown(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Stop the run and wait until its checkpoint is written (widget/viewer closing).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the worker thread.

        Returns
        -------
        bool
            True if no run was left running.
        """
        if "host" not in vars(self):  # already torn down by the garbage collector
            return True
        return self.host.close(timeout) and self._done.is_set()

    def _on_close(self) -> None:
        """The viewer is closing or the dock was removed: stop the run, let go of the viewer."""
        self._enter(RunState.CLOSED)
        self._ui_timer.stop()
        self._startup_timer.stop()
        self.stop()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                event.disconnect(self._refresh_layers)
            except (RuntimeError, TypeError, ValueError):  # pragma: no cover - already gone
                pass

    # -- run state ------------------------------------------------------------
    @property
    def _closed(self) -> bool:
        """True once the viewer is closing or the dock was removed."""
        return self.state is RunState.CLOSED

    def _apply_state(self, state: RunState) -> None:
        """Set the buttons for ``state`` (nothing once closed: the Qt objects may be gone)."""
        if state is RunState.CLOSED:
            return
        start, pause, stop, checkpoint, pause_text = _BUTTONS[state]
        self.start_button.enabled = start
        self.pause_button.enabled = pause
        self.pause_button.text = pause_text
        self.stop_button.enabled = stop
        self.checkpoint_button.enabled = checkpoint
        trained = self.result is not None and self.result.model_path is not None
        self.onnx_button.enabled = trained and not state.active

    # -- events (main thread) -------------------------------------------------
    def _on_event(self, event: Any) -> None:
        if self._closed:
            return
        kind = type(event).__name__
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _warn_slow_start(self) -> None:
        if self._closed or not self.running or self._last_step is not None:
            return
        workers = self.trainer.config.num_workers if self.trainer is not None else 0
        hint = (
            f"{workers} data-worker process(es) have not delivered data: if napari was "
            'started from a script, it needs an `if __name__ == "__main__":` guard, or set '
            "data workers to 0"
            if workers
            else "the first step is slow: a smaller size, patch or batch trains faster"
        )
        self._show_error(f"no training step after {STARTUP_WARNING_S:.0f} s · {hint}")

    def _on_StepEvent(self, event: Any) -> None:  # noqa: N802 - named after the event class
        # Only record here: repainting labels at every step costs the event loop (and,
        # with software OpenGL, the training) far more than the numbers are worth.
        self._startup_timer.stop()
        self.plot.add_step(event.step, event.losses)
        now = time.perf_counter()
        if self._step_start < 0:  # the first step includes start-up: do not time it
            self._step_start, self._t_start = event.step, now
        elif event.step > self._step_start:
            self._rate = (event.step - self._step_start) / (now - self._t_start)
        self._last_step = event
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _refresh_progress(self) -> None:
        """Show the latest step (called by a timer at most ``UI_REFRESH_HZ`` times a second)."""
        event = self._last_step
        if event is None or self._closed:
            return
        self.progress.value = min(event.step, self.progress.max)
        eta = (event.total - event.step) / self._rate if self._rate > 0 else float("inf")
        loss = event.losses.get("total", float("nan"))
        self.status.value = (
            f"step {event.step}/{event.total} · {self._rate:.2f} steps/s · ETA "
            f"{_format_eta(eta)} · loss {loss:.4g}"
        )

    def _on_ValidationEvent(self, event: Any) -> None:  # noqa: N802
        self.plot.add_validation(event.step, event.psnr, event.psnr_input)
        # one layer, input | target | restored side by side: one layer to update
        self.layers.set(PREVIEW_LAYER, preview_montage(*event.preview), self._montage_geometry)
        if event.user_preview is not None:
            image, restored_user = event.user_preview
            self.layers.set(USER_PREVIEW_LAYER, restored_user, self._preview_geometry)
        else:
            self.layers.remove(USER_PREVIEW_LAYER)

    def _on_CheckpointEvent(self, event: Any) -> None:  # noqa: N802
        self.status.value = f"checkpoint at step {event.step}: {event.path}"

    def _on_DoneEvent(self, event: Any) -> None:  # noqa: N802
        from ..models.registry import install_model

        self._ui_timer.stop()
        self._refresh_progress()
        self.result = event
        message = (
            f"{'stopped' if event.stopped else 'done'} at step {event.step}: "
            f"validation PSNR {event.metrics['val_psnr']:.2f} dB "
            f"(input {event.metrics['val_psnr_input']:.2f} dB)"
        )
        if event.stopped and event.model_path is not None:
            message += " · saved as a checkpoint (Start continues it)"
        if self.install.value and event.model_path is not None:
            try:
                install_model(event.model_path)
                message += f" · model {event.model_path.stem!r} listed in Restore"
            except (ValueError, OSError) as exc:
                message += f" · could not install the model: {exc}"
        self.status.value = message

    def _on_RunFailed(self, event: RunFailed) -> None:  # noqa: N802
        self._show_error(f"training failed: {event.message}")

    def _on_error(self, exc: BaseException) -> None:
        self._show_error(f"training failed: {unexpected_error_text(exc)}")

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:  # the widget's Qt objects may be gone already
            return
        self._startup_timer.stop()
        self._enter(RunState.DONE)
        self.plot.redraw()

    def _show_error(self, message: str) -> None:
        self.last_error = message
        if not self._closed:
            self.status.value = f"⚠ {message}"

    # -- model management -----------------------------------------------------
    def export_onnx(self, path: str | Path) -> Path:
        """Export the last trained model to ONNX (:mod:`napari_emdenoise.models.onnx_export`)."""
        from ..models.onnx_export import export_onnx

        if self.result is None or self.result.model_path is None:
            raise ValueError("no trained model yet")
        return export_onnx(self.result.model_path, path, overwrite=True)

    def _onnx_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        if self.result is None or self.result.model_path is None:
            return
        default = str(Path(self.result.model_path).with_suffix(".onnx"))
        path, _ = QFileDialog.getSaveFileName(self.native, "Export ONNX", default, "ONNX (*.onnx)")
        if path:
            try:
                self.status.value = f"exported {self.export_onnx(path)}"
            except (ImportError, ValueError, OSError, RuntimeError) as exc:
                self._show_error(f"ONNX export failed: {exc}")


def _crop_geometry(layer: Any) -> dict[str, Any]:
    """Geometry that puts the trainer's centred preview crop of ``layer`` on top of it."""
    from ..training.trainer import PREVIEW_MAX_SIDE

    h, w = np.shape(layer.data)[-2:]
    top, left = max((h - PREVIEW_MAX_SIDE) // 2, 0), max((w - PREVIEW_MAX_SIDE) // 2, 0)
    scale = tuple(float(v) for v in layer.scale[-2:])
    translate = tuple(float(v) for v in layer.translate[-2:])
    geometry: dict[str, Any] = {
        "scale": scale,
        "translate": (translate[0] + top * scale[0], translate[1] + left * scale[1]),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        geometry["units"] = tuple(units)[-2:]
    return geometry


def _beside_geometry(layer: Any) -> dict[str, Any]:
    """Geometry that shows a preview at ``layer``'s pixel size, just right of it."""
    w = np.shape(layer.data)[-1]
    scale = tuple(float(v) for v in layer.scale[-2:])
    translate = tuple(float(v) for v in layer.translate[-2:])
    geometry: dict[str, Any] = {
        "scale": scale,
        "translate": (translate[0], translate[1] + (w + 16) * scale[1]),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        geometry["units"] = tuple(units)[-2:]
    return geometry
