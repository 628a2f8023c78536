"""Shared test configuration."""

from __future__ import annotations

import os

import pytest


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config, items):
    """Widget tests need a real viewer (OpenGL): run them under ``xvfb-run``."""
    if _has_display():
        return
    skip = pytest.mark.skip(reason="needs a display: run the tests under xvfb-run (see README)")
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_configure(config):
    """Keep the user's own trained models out of the tests (an empty user-model folder)."""
    import tempfile

    os.environ["EMDENOISE_MODELS_DIR"] = tempfile.mkdtemp(prefix="emdenoise-test-models-")
