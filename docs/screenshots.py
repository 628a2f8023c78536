"""Regenerate the README's screenshots the way a user works: docks from the Plugins menu.

Every picture comes from a real napari window: the samples are opened with
File ▸ Open Sample, the docks with Plugins ▸ EM Denoise (``add_plugin_dock_widget``,
so each widget gets napari's viewer proxy, as it does for a user), and the
buttons are the widgets' own. Run from the repository root::

    python docs/screenshots.py                 # on a desktop
    xvfb-run -a -s "-screen 0 1280x1024x24" python docs/screenshots.py   # on a server

It writes ``docs/playground.png``, ``docs/restore.png``, ``docs/stem4d.png``,
``docs/drift.png`` and ``docs/training.png`` (1280 × 800 windows). Training uses a throw-away model
folder, never the user's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PLUGIN = "napari-emdenoise"
WINDOW = (1280, 800)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t_end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > t_end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def _settle(seconds: float = 0.5) -> None:
    t_end = time.monotonic() + seconds
    _wait(lambda: time.monotonic() > t_end, seconds + 5, "the window to redraw")


def _viewer():
    import napari

    viewer = napari.Viewer(title="napari-emdenoise")
    viewer.window.resize(*WINDOW)  # a laptop screen: every dock must fit it
    _settle()
    return viewer


def _save(viewer, path: Path) -> Path:
    _settle(1.0)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path}")
    return path


def playground(out: Path) -> Path:
    """The playground on a synthetic HR-STEM image: every stage of the model as a layer."""
    viewer = _viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise-model playground")
    widget.size.value = 256
    _wait(lambda: widget.n_updates >= 1 and widget._worker is None and not widget._pending,
          120, "the playground")  # fmt: skip
    for layer in viewer.layers:
        layer.visible = True
    viewer.grid.enabled = True
    viewer.reset_view()
    path = _save(viewer, out / "playground.png")
    viewer.close()
    return path


def restore(out: Path) -> Path:
    """The HR-STEM grain-boundary sample restored with the bundled ``hrstem`` model."""
    viewer = _viewer()
    viewer.open_sample(PLUGIN, "hrstem_grain_boundary")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Restore")
    widget.model.value = "hrstem"
    widget.run_button.native.click()
    _wait(lambda: widget._worker is None and widget.outputs, 300, "the restoration")
    for layer in viewer.layers:
        layer.visible = True  # restored | distorted | clean reference, side by side
    viewer.grid.shape = (1, 3)
    viewer.grid.enabled = True
    viewer.reset_view()
    path = _save(viewer, out / "restore.png")
    viewer.close()
    return path


def stem4d(out: Path) -> Path:
    """The synthetic 4D-STEM sample: a previewed pattern (raw | denoised) and the scan denoised."""
    viewer = _viewer()
    viewer.open_sample(PLUGIN, "stem4d_stack")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM")
    _wait(lambda: not widget.busy and widget.detectors is not None, 120, "the central disk")
    widget.start()
    _wait(lambda: widget._worker is None, 600, "the 4D-STEM run")
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    widget.preview_at(12, 12)
    _wait(lambda: not widget.busy, 120, "the pattern preview")
    viewer.reset_view()
    path = _save(viewer, out / "stem4d.png")
    viewer.close()
    return path


def training(out: Path, steps: int) -> Path:
    """A short training run with live losses and the network's output on the user's image."""
    viewer = _viewer()
    viewer.open_sample(PLUGIN, "hrstem_grain_boundary")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    widget.model_name.value = "my_microscope"
    widget.patch_size.value = 64
    widget.batch_size.value = 4
    widget.steps.value = steps
    widget.val_every.value = max(steps // 5, 1)
    widget.workers.value = 0
    widget.install.value = False
    widget.out_dir.value = tempfile.mkdtemp(prefix="emdenoise-screenshot-runs-")
    widget.preview_layer.value = "HR-STEM grain boundary distorted"
    widget.start_button.native.click()
    _wait(lambda: not widget.running and widget._worker is None, 1800, "the training run")
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    # the network's output on the centred crop, on top of the noisy image it restores;
    # right of it, input | target | output on a validation pair
    viewer.reset_view()
    path = _save(viewer, out / "training.png")
    viewer.close()
    return path


def drift(out: Path) -> Path:
    """The drifting-movie sample aligned: aligned stack, drift track and the dx/dy plot."""
    viewer = _viewer()
    viewer.open_sample(PLUGIN, "drifting_movie")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Drift correction")
    widget.run_button.native.click()
    _wait(lambda: widget._worker is None and widget.outputs, 600, "the alignment")
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    viewer.dims.set_point(0, viewer.dims.range[0].stop - 1)  # the last frame: the most drift
    viewer.reset_view()
    path = _save(viewer, out / "drift.png")
    viewer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--steps", type=int, default=60, help="training steps for training.png")
    parser.add_argument(
        "--only",
        choices=["playground", "restore", "stem4d", "drift", "training"],
        default=None,
        help="one picture",
    )
    args = parser.parse_args(argv)
    os.environ["EMDENOISE_MODELS_DIR"] = tempfile.mkdtemp(prefix="emdenoise-screenshot-models-")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = {
        "playground": lambda: playground(args.out),
        "restore": lambda: restore(args.out),
        "stem4d": lambda: stem4d(args.out),
        "drift": lambda: drift(args.out),
        "training": lambda: training(args.out, args.steps),
    }
    for name, job in jobs.items():
        if args.only in (None, name):
            job()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
