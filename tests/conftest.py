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
    """Keep the user's own trained models out of the tests (an empty user-model folder);
    make property-based tests reproducible (hypothesis draws from a fixed seed)."""
    import tempfile

    from hypothesis import settings

    settings.register_profile("reproducible", derandomize=True, print_blob=True)
    settings.load_profile("reproducible")

    os.environ["EMDENOISE_MODELS_DIR"] = tempfile.mkdtemp(prefix="emdenoise-test-models-")


@pytest.fixture
def tiny_user_model(tmp_path, monkeypatch):
    """A tiny random CGRDN saved as a user model (listed next to the bundled ones); its name."""
    import torch

    from napari_emdenoise.models.registry import ModelCard, build_model, save_model

    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny")
    card = ModelCard(
        name="tinytest",
        arch="cgrdn",
        config=model.config.to_dict(),
        modality="stem",
        kind="hr",
        training={"steps": 0},
        metrics={},
        created="2026-11-22T00:00:00+00:00",
        notes="test",
    )
    folder = tmp_path / "user_models"
    save_model(model, card, folder)
    monkeypatch.setenv("EMDENOISE_MODELS_DIR", str(folder))
    return "tinytest"


@pytest.fixture
def playground(make_napari_viewer, qtbot):
    """A docked noise-model playground on a small synthetic image, first update shown."""
    from napari_emdenoise._widgets.playground import PlaygroundWidget

    viewer = make_napari_viewer()
    widget = PlaygroundWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.size.value = 64  # small and fast
    qtbot.waitUntil(lambda: widget.n_updates >= 1 and widget._worker is None, timeout=60000)
    return viewer, widget, qtbot
