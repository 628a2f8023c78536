"""Pix2Pix generator for 4D-STEM patterns: contract, registry, trainer branch, bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdenoise.models.pix2pix import (
    PIX2PIX_CONFIGS,
    Pix2PixConfig,
    Pix2PixGenerator,
    depth_for_size,
    loss_domain,
)
from napari_emdenoise.models.registry import (
    ModelCard,
    build_model,
    list_models,
    load_model,
    named_configs,
    save_model,
)


def _counts(shape, rate=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(shape, generator=g) * rate)


def test_named_configs_and_sizes():
    assert set(named_configs("pix2pix")) >= {"tiny", "small", "full"}
    tiny = build_model("pix2pix", "tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 50_000
    assert tiny.size_multiple == 32 and isinstance(tiny.size_multiple, int)
    with torch.device("meta"):
        full = build_model("pix2pix", "full")
    # the pix2pix reference U-Net for 256² (ngf 64, eight 4×4 stride-2 stages)
    assert full.size_multiple == 256 and PIX2PIX_CONFIGS["full"].ngf == 64
    assert sum(p.numel() for p in full.parameters()) == 54_409_409
    assert build_model("pix2pix", "small").size_multiple == 64
    assert depth_for_size(64) == 6 and depth_for_size(48) == 6


def test_forward_keeps_total_counts_and_is_non_negative():
    model = build_model("pix2pix", "tiny").eval()
    x = _counts((3, 1, 64, 96), rate=0.5)
    x[1] *= 100  # another dose
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum((2, 3)), x.sum((2, 3)), rtol=1e-4, atol=1e-3)


def test_untrained_model_with_prior_returns_the_smoothed_pattern():
    """prior_sigma > 0: untrained, the output is the Gaussian-smoothed pattern (+ 1 % floor)."""
    from scipy import ndimage

    cfg = {**PIX2PIX_CONFIGS["tiny"].to_dict(), "prior_sigma": 1.5}
    model = build_model("pix2pix", cfg).eval()
    x = _counts((1, 1, 32, 32), rate=20.0, seed=3)
    with torch.inference_mode():
        y = model(x)[0, 0].numpy()
    u = x[0, 0].numpy() / x.numpy().mean()
    smooth = ndimage.gaussian_filter(u, 1.5, mode="nearest", truncate=3.0) + 0.01
    expected = smooth / smooth.sum() * x.numpy().sum()
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_forward_handles_empty_and_negative_patterns():
    model = build_model("pix2pix", "tiny").eval()
    x = torch.zeros(2, 1, 32, 32)
    x[1] = torch.randn(32, 32) * 0.3  # read noise only, total may be negative
    with torch.inference_mode():
        y = model(x)
    assert torch.isfinite(y).all() and (y >= 0).all()
    assert float(y[0].sum()) == 0.0
    assert float(y[1].sum()) == pytest.approx(max(float(x[1].sum()), 0.0), abs=1e-4)


def test_forward_rejects_sizes_that_are_not_multiples():
    model = build_model("pix2pix", "tiny")
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.ones(1, 1, 48, 32))
    with pytest.raises(ValueError, match="channel"):
        model(torch.ones(1, 2, 32, 32))


def test_config_validation():
    with pytest.raises(ValueError, match="upsampling"):
        Pix2PixConfig(upsampling="nearest")
    with pytest.raises(ValueError, match="pattern_size"):
        Pix2PixConfig(pattern_size=2)
    with pytest.raises(ValueError, match="unknown"):
        build_model("pix2pix", {"ngf": 4, "pattern_size": 32, "width": 3})


def test_loss_domain_is_dose_invariant():
    x = _counts((2, 1, 32, 32), rate=5.0) + 1.0
    torch.testing.assert_close(loss_domain(x), loss_domain(7.0 * x))


def test_losses_vanish_at_the_target_and_see_a_dimmed_disk():
    from napari_emdenoise.models.pix2pix import anscombe_l1, local_count_mse

    y = torch.full((1, 1, 32, 32), 0.5)
    y[..., 10:14, 10:14] = 40.0  # a Bragg disk
    assert float(anscombe_l1(y, y)) == 0.0 and float(local_count_mse(y, y)) == 0.0
    dimmed = y.clone()
    dimmed[..., 10:14, 10:14] = 20.0
    dimmed *= y.sum() / dimmed.sum()  # same total counts, disk intensity moved elsewhere
    assert float(anscombe_l1(dimmed, y)) > 0.01
    assert float(local_count_mse(dimmed, y)) > 0.1


def test_save_and_load_through_registry(tmp_path):
    model = build_model("pix2pix", "tiny")
    card = ModelCard(
        name="p2p_tiny",
        arch="pix2pix",
        config=PIX2PIX_CONFIGS["tiny"].to_dict(),
        modality="diffraction",
        kind="hr",
    )
    path = save_model(model, card, tmp_path)
    loaded, loaded_card = load_model(path)
    assert isinstance(loaded, Pix2PixGenerator) and loaded_card.modality == "diffraction"
    x = _counts((1, 1, 32, 32))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_trainer_pix2pix_gan_branch(tmp_path):
    """Three GAN + 100·L1 steps with the two-scale PatchGAN, exported with a diffraction card."""
    from napari_emdenoise.training.datasets import PairConfig
    from napari_emdenoise.training.trainer import DoneEvent, StepEvent, TrainConfig, Trainer

    cfg = TrainConfig(
        name="p2p",
        arch="pix2pix",
        model_config="tiny",
        pairs=PairConfig(modality="diffraction", patch_size=32, seed=1),
        steps=3,
        batch_size=2,
        val_size=2,
        val_every=3,
        checkpoint_every=3,
        num_workers=0,
        disc_channels=8,
        out_dir=str(tmp_path),
    )
    trainer = Trainer(cfg, resume=False)
    events = list(trainer.run())
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 3
    losses = steps[0].losses
    assert {"l1", "local_count_mse", "adversarial", "discriminator"} <= set(losses)
    assert losses["total"] == pytest.approx(
        100.0 * losses["l1"] + 2.0 * losses["local_count_mse"] + losses["adversarial"], rel=1e-5
    )
    from napari_emdenoise.models.discriminators import MultiScalePatchDiscriminator

    assert isinstance(trainer.disc, MultiScalePatchDiscriminator)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.model_path is not None
    model, card = load_model(done.model_path)
    assert card.arch == "pix2pix" and card.modality == "diffraction"
    assert card.training["loss_weights"]["l1"] == 100.0
    assert np.isfinite(card.metrics["val_psnr"])


def test_trainer_refuses_patch_not_multiple(tmp_path):
    from napari_emdenoise.training.datasets import PairConfig
    from napari_emdenoise.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        arch="pix2pix",
        model_config="tiny",
        pairs=PairConfig(modality="diffraction", patch_size=48),
        steps=1,
        num_workers=0,
        out_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="multiple of 32"):
        next(Trainer(cfg, resume=False).run())


# ---------------------------------------------------------------- bundled model
BUNDLED = "pix2pix-4dstem"
needs_bundled = pytest.mark.skipif(
    BUNDLED not in list_models(), reason="the bundled pix2pix-4dstem model is not installed"
)


def _anscombe(x):
    return 2.0 * np.sqrt(np.clip(x, 0, None) + 0.375)


@needs_bundled
def test_bundled_model_card_and_contract():
    model, card = load_model(BUNDLED)
    assert card.arch == "pix2pix" and card.modality == "diffraction"
    assert card.training["steps"] > 0 and "val_psnr" in card.metrics
    assert card.weights_path.stat().st_size < 10 * 2**20
    assert isinstance(model.size_multiple, int) and model.size_multiple >= 1


@needs_bundled
def test_bundled_model_denoises_held_out_patterns_and_keeps_counts():
    """Held-out synthetic patterns at 1000 counts: better than raw, totals kept."""
    from napari_emdenoise.metrics import psnr
    from napari_emdenoise.synth.diffraction import make_diffraction_pair

    model, _ = load_model(BUNDLED)
    pairs = [make_diffraction_pair((64, 64), 1000.0, rng=10_000 + i) for i in range(8)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
    with torch.inference_mode():
        out = model(x).numpy()[:, 0]
    gains = [
        psnr(_anscombe(o), _anscombe(c)) - psnr(_anscombe(n), _anscombe(c))
        for o, (n, c) in zip(out, pairs)
    ]
    assert np.mean(gains) > 3.0, gains
    # the total of the input (read-noise negatives included) is kept
    np.testing.assert_allclose(out.sum((1, 2)), x.numpy().sum((1, 2, 3)).clip(0), rtol=1e-3)


@pytest.mark.gui
def test_train_widget_offers_pix2pix_for_diffraction(make_napari_viewer, open_dock):
    """Choosing Pix2Pix in the Train dock selects diffraction pairs and GAN + 100·L1."""
    widget = open_dock(make_napari_viewer(), "Train")
    assert "pix2pix" in widget.arch.choices
    widget.arch.value = "pix2pix"
    assert list(widget.model_config.choices) == ["tiny", "small", "full"]
    assert widget.modality.value == "diffraction" and widget.patch_size.value == 64
    cfg = widget.config()
    assert cfg.arch == "pix2pix" and cfg.pairs.modality == "diffraction"
    assert cfg.loss_weights["l1"] == 100.0 and cfg.loss_weights["adversarial"] == 1.0
