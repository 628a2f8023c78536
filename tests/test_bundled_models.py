"""The bundled default models: present, loadable, documented, and better than the raw input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.metrics import psnr
from napari_emdenoise.models.registry import bundled_weights_dir, list_models, load_model
from napari_emdenoise.training.datasets import PairConfig, make_training_pair

BUNDLED = ("hrstem", "hrtem")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_has_card_and_loads(name):
    cards = list_models()
    assert name in cards
    card = cards[name]
    assert card.weights_path.parent == bundled_weights_dir()
    assert card.training["steps"] > 0 and "val_psnr" in card.metrics
    model, loaded = load_model(name, device="cpu")
    assert loaded.name == name and not model.training
    assert card.weights_path.stat().st_size < 10 * 2**20  # small enough for git


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_improves_held_out_images(name):
    """On held-out test pairs (never used in training) restoration beats the raw input."""
    from napari_emdenoise.engine.predictor import restore

    card = list_models()[name]
    cfg = PairConfig(modality=card.modality, kind=card.kind, patch_size=128, seed=0)
    gains = []
    for i in range(6):
        x, y = make_training_pair(cfg, i, "test")
        out = restore(x, model=name, device="cpu")
        assert out.shape == x.shape and np.isfinite(out).all()
        gains.append(psnr(out, y) - psnr(x, y))
    assert np.mean(gains) > 3.0, gains
