"""Closing the viewer while a dock widget computes: the workers stop, the process exits cleanly.

A worker thread still running when Python shuts down emits into deleted Qt objects
(``RuntimeError: wrapped C/C++ object of type WorkerBaseSignals has been deleted``)
and the process aborts; these tests run the user's steps in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

PLAYGROUND_THEN_CLOSE = """
import napari
v = napari.Viewer(show=False)
_, w = v.window.add_plugin_dock_widget("napari-emdenoise", "Noise-model playground")
assert w.host.busy  # its first computation is running
v.close()
assert not w.host.busy
print("closed cleanly", flush=True)
"""

RESTORE_THEN_CLOSE = """
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
v = napari.Viewer(show=False)
v.add_image(np.random.default_rng(0).random((1536, 1536), dtype=np.float32), name="big")
_, w = v.window.add_plugin_dock_widget("napari-emdenoise", "Restore")
w.tile_size.value = 256
w.start()
app = QApplication.instance()
while w.progress.value < 1:  # wait until the restoration is well under way
    app.processEvents()
v.close()
assert not w.host.busy
print("closed cleanly", flush=True)
"""


def _run(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_closing_the_viewer_during_the_playgrounds_first_computation(make_napari_viewer):
    # make_napari_viewer: only so that the test is skipped without a display
    res = _run(PLAYGROUND_THEN_CLOSE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "closed cleanly" in res.stdout
    assert "has been deleted" not in res.stderr, res.stderr[-3000:]


def test_closing_the_viewer_during_a_restoration(make_napari_viewer):
    res = _run(RESTORE_THEN_CLOSE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "closed cleanly" in res.stdout
    assert "has been deleted" not in res.stderr, res.stderr[-3000:]


def test_close_in_process_waits_and_adds_no_layer(make_napari_viewer, open_dock, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((1024, 1024), dtype=np.float32), name="im")
    playground = open_dock(viewer, "Noise-model playground")
    restore = open_dock(viewer, "Restore")
    restore.tile_size.value = 256
    restore.start()
    qtbot.waitUntil(lambda: restore.progress.value >= 1, timeout=120_000)
    viewer.close()
    assert playground.host.closing and restore.host.closing
    assert not playground.host.busy and not restore.host.busy
    qtbot.wait(200)  # queued results arriving after the close are ignored
    assert restore.outputs == []
