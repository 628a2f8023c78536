"""Tests of the CGRDN GAN losses against direct numpy computations (seed 001, eqs 2–15)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from napari_emdenoise import losses as L

RNG_SEED = 20240601


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth with per-image contrasts above and below σ_min, and a prediction."""
    rng = np.random.default_rng(RNG_SEED)
    y = rng.random((3, 2, 20, 24))
    y[1] *= 0.01  # low-contrast image: std ≈ 0.003 < σ_min
    y[2] = 5.0 * y[2] + 2.0
    y_g = y + 0.1 * rng.standard_normal(y.shape)
    return y_g, y


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _np_weight(y: np.ndarray, sigma_min: float) -> np.ndarray:
    std = y.reshape(len(y), -1).std(axis=1)
    return 1.0 / np.maximum(sigma_min, std)


# ---------------------------------------------------------------------- eqs 4–6
@pytest.mark.parametrize("sigma_min", [0.01, 0.5])
def test_contrast_weighted_l1_and_l2_match_numpy(pair, sigma_min):
    y_g, y = pair
    w = _np_weight(y, sigma_min)
    l1 = np.mean(w * np.abs(y - y_g).reshape(len(y), -1).mean(axis=1))
    l2 = np.mean(w * ((y - y_g) ** 2).reshape(len(y), -1).mean(axis=1))
    assert float(L.contrast_weighted_l1(_t(y_g), _t(y), sigma_min)) == pytest.approx(l1, rel=1e-12)
    assert float(L.contrast_weighted_l2(_t(y_g), _t(y), sigma_min)) == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(L.contrast_weight(_t(y), sigma_min).numpy(), w, rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(a=st.floats(0.5, 200.0))
def test_contrast_weighted_l1_is_contrast_invariant(a):
    # The weight makes eq 4 independent of the image's intensity scale.
    rng = np.random.default_rng(1)
    y = rng.random((2, 1, 16, 16))
    y_g = y + 0.05 * rng.standard_normal(y.shape)
    base = float(L.contrast_weighted_l1(_t(y_g), _t(y)))
    assert float(L.contrast_weighted_l1(_t(a * y_g), _t(a * y))) == pytest.approx(base, rel=1e-10)


# ---------------------------------------------------------------------- eqs 7–8
def _np_whitening(y: np.ndarray, s: int, sigma_min: float) -> np.ndarray:
    before, after = (s - 1) // 2, s // 2
    padded = np.pad(y, ((0, 0), (0, 0), (before, after), (before, after)), mode="reflect")
    windows = sliding_window_view(padded, (s, s), axis=(2, 3))
    mean = windows.mean(axis=(-2, -1))
    std = windows.std(axis=(-2, -1))
    return (y - mean) / np.maximum(sigma_min, std)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 8, 16])
def test_local_whitening_matches_numpy(pair, window):
    _, y = pair
    got = L.local_whitening(_t(y), window, sigma_min=0.01).numpy()
    np.testing.assert_allclose(got, _np_whitening(y, window, 0.01), rtol=1e-8, atol=1e-8)


def test_local_whitening_window_position_for_even_size():
    # For S = 2 the window of pixel (i, j) covers rows/cols i..i+1: a single
    # bright pixel at (5, 5) shifts the local mean of (4, 4), (4, 5), (5, 4), (5, 5).
    y = np.zeros((1, 1, 10, 10))
    y[0, 0, 5, 5] = 4.0
    out = L.local_whitening(_t(y), 2, sigma_min=1e-3).numpy()[0, 0]
    changed = np.argwhere(np.abs(out) > 0)
    assert {tuple(p) for p in changed} == {(4, 4), (4, 5), (5, 4), (5, 5)}


def test_mlwt_loss_matches_numpy(pair):
    y_g, y = pair
    expected = np.mean(
        [
            np.abs(_np_whitening(y, s, 0.01) - _np_whitening(y_g, s, 0.01)).mean()
            for s in (2, 4, 8, 16)
        ]
    )
    got = float(L.mlwt_loss(_t(y_g), _t(y)))
    assert got == pytest.approx(expected, rel=1e-9)


def test_mlwt_is_invariant_to_intensity_offset_and_gain():
    rng = np.random.default_rng(2)
    y = rng.random((2, 1, 32, 32))
    y_g = y + 0.1 * rng.standard_normal(y.shape)
    base = float(L.mlwt_loss(_t(y_g), _t(y), sigma_min=1e-6))
    moved = float(L.mlwt_loss(_t(3 * y_g + 7), _t(3 * y + 7), sigma_min=1e-6))
    assert moved == pytest.approx(base, rel=1e-6)


def test_mlwt_rejects_too_small_images():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="too small"):
        L.mlwt_loss(x, x)  # 16×16 window needs > 8 pixels
    assert float(L.mlwt_loss(x, x, windows=(2, 4))) == 0.0
    with pytest.raises(ValueError):
        L.mlwt_loss(x, x, windows=())


# ---------------------------------------------------------------------------- eq 9
@pytest.mark.parametrize("gamma", [0.125, 0.5, 1.0])
def test_fourier_loss_matches_numpy_fft(pair, gamma):
    y_g, y = pair
    expected = np.mean(np.abs(np.fft.fft2(y - y_g, norm="ortho")) ** gamma)
    got = float(L.fourier_loss(_t(y_g), _t(y), gamma))
    assert got == pytest.approx(expected, rel=1e-8)


def test_fourier_loss_unnormalised_fft_option(pair):
    y_g, y = pair
    expected = np.mean(np.abs(np.fft.fft2(y - y_g)) ** 0.125)
    got = float(L.fourier_loss(_t(y_g), _t(y), norm="backward"))
    assert got == pytest.approx(expected, rel=1e-8)


def test_fourier_loss_has_finite_gradient_for_identical_images(pair):
    _, y = pair
    y_g = _t(y, grad=True)
    loss = L.fourier_loss(y_g, _t(y))
    loss.backward()
    assert torch.isfinite(y_g.grad).all()
    assert float(y_g.grad.abs().max()) == 0.0
    assert float(loss.detach()) == pytest.approx(L.FOURIER_EPS ** (0.125 / 2), rel=1e-9)


def test_fourier_loss_rejects_bad_gamma(pair):
    y_g, y = pair
    for gamma in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError):
            L.fourier_loss(_t(y_g), _t(y), gamma)


# ----------------------------------------------------------------------- eqs 10–11
def test_mean_and_std_losses_match_numpy(pair):
    y_g, y = pair
    flat, flat_g = y.reshape(len(y), -1), y_g.reshape(len(y), -1)
    mean_ref = np.mean(np.abs(flat.mean(1) - flat_g.mean(1)))
    std_ref = np.mean(np.abs(flat.std(1) - flat_g.std(1)))
    assert float(L.mean_loss(_t(y_g), _t(y))) == pytest.approx(mean_ref, rel=1e-12)
    assert float(L.std_loss(_t(y_g), _t(y))) == pytest.approx(std_ref, rel=1e-6, abs=1e-9)


def test_std_loss_gradient_finite_for_constant_prediction():
    y = _t(np.random.default_rng(3).random((2, 1, 8, 8)))
    y_g = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64, requires_grad=True)
    L.std_loss(y_g, y).backward()
    assert torch.isfinite(y_g.grad).all()


# ------------------------------------------------------------------ eqs 2, 3, 12, 15
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture
def logits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return rng.normal(0.5, 1.5, (4, 1, 6, 6)), rng.normal(-0.3, 1.0, (4, 1, 6, 6))


def test_relativistic_losses_match_numpy_formula(logits):
    c_real, c_fake = logits
    d_real = _sigmoid(c_real - c_fake.mean())  # eq 2
    d_fake = _sigmoid(c_fake - c_real.mean())  # eq 3
    adv = -np.mean(np.log(1 - d_real)) - np.mean(np.log(d_fake))  # eq 12
    disc = -np.mean(np.log(d_real)) - np.mean(np.log(1 - d_fake))  # eq 15
    got_adv = float(L.relativistic_adversarial_loss(_t(c_real), _t(c_fake)))
    got_disc = float(L.relativistic_discriminator_loss(_t(c_real), _t(c_fake)))
    assert got_adv == pytest.approx(adv, rel=1e-12)
    assert got_disc == pytest.approx(disc, rel=1e-12)


def test_relativistic_losses_stable_for_extreme_logits():
    c_real = torch.full((2, 1, 4, 4), 200.0, dtype=torch.float64, requires_grad=True)
    c_fake = torch.full((2, 1, 4, 4), -200.0, dtype=torch.float64, requires_grad=True)
    adv = L.relativistic_adversarial_loss(c_real, c_fake)
    adv.backward()
    assert float(adv.detach()) == pytest.approx(800.0, rel=1e-9)  # 2 × 400 nats, no inf
    assert torch.isfinite(c_real.grad).all() and torch.isfinite(c_fake.grad).all()
    assert float(L.relativistic_discriminator_loss(c_real.detach(), c_fake.detach())) < 1e-12


def test_relativistic_losses_average_over_scales(logits):
    c_real, c_fake = logits
    small_r, small_f = c_real[..., :3, :3] * 2, c_fake[..., :3, :3] - 1
    per_scale = [
        float(L.relativistic_discriminator_loss(_t(r), _t(f)))
        for r, f in ((c_real, c_fake), (small_r, small_f))
    ]
    both = L.relativistic_discriminator_loss([_t(c_real), _t(small_r)], [_t(c_fake), _t(small_f)])
    assert float(both) == pytest.approx(np.mean(per_scale), rel=1e-12)
    with pytest.raises(ValueError):
        L.relativistic_discriminator_loss([_t(c_real)], [_t(c_fake), _t(small_f)])
    with pytest.raises(ValueError):
        L.relativistic_adversarial_loss(_t(c_real), _t(small_f))


# ------------------------------------------------------------------------ eqs 13–14
def test_generator_loss_is_weighted_sum_of_terms(pair, logits):
    y_g, y = pair
    c_real, c_fake = logits
    w = L.LossWeights(
        l1=2.0,
        l2=3.0,
        mlwt=0.5,
        fourier=0.25,
        mean=4.0,
        std=5.0,
        adversarial=0.1,
        sigma_min=0.02,
        fourier_gamma=0.5,
        mlwt_windows=(2, 4),
    )
    total, terms = L.generator_loss(_t(y_g), _t(y), w, _t(c_real), _t(c_fake))
    expected_terms = {
        "l1": L.contrast_weighted_l1(_t(y_g), _t(y), 0.02),
        "l2": L.contrast_weighted_l2(_t(y_g), _t(y), 0.02),
        "mlwt": L.mlwt_loss(_t(y_g), _t(y), (2, 4), 0.02),
        "fourier": L.fourier_loss(_t(y_g), _t(y), 0.5),
        "mean": L.mean_loss(_t(y_g), _t(y)),
        "std": L.std_loss(_t(y_g), _t(y)),
        "adversarial": L.relativistic_adversarial_loss(_t(c_real), _t(c_fake)),
    }
    assert set(terms) == set(expected_terms)
    for name, value in expected_terms.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-12), name
    weighted = sum(getattr(w, n) * float(v) for n, v in expected_terms.items())
    assert float(total) == pytest.approx(weighted, rel=1e-12)


def test_generator_loss_defaults_are_authors_config(pair, logits):
    y_g, y = pair
    w = L.LossWeights()
    assert (w.l1, w.adversarial) == (10.0, 5e-4)
    total, terms = L.generator_loss(_t(y_g), _t(y))  # no logits → no adversarial term
    assert set(terms) == {"l1"}
    assert float(total) == pytest.approx(10.0 * float(terms["l1"]))
    _, terms = L.generator_loss(_t(y_g), _t(y), w, *map(_t, logits))
    assert set(terms) == {"l1", "adversarial"}


def test_generator_loss_gradients_finite_for_identical_inputs(pair):
    _, y = pair
    y_g = _t(y, grad=True)
    total, terms = L.generator_loss(y_g, _t(y), L.LossWeights.all_terms())
    total.backward()
    assert torch.isfinite(y_g.grad).all()
    assert not any(t.requires_grad for t in terms.values())


def test_generator_loss_gradient_descent_reduces_error():
    rng = np.random.default_rng(5)
    y = _t(rng.random((2, 1, 32, 32)))
    y_g = (y + 0.2 * _t(rng.standard_normal((2, 1, 32, 32)))).requires_grad_()
    opt = torch.optim.Adam([y_g], lr=0.02)
    start = float((y_g - y).detach().abs().mean())
    for _ in range(25):
        opt.zero_grad()
        L.generator_loss(y_g, y, L.LossWeights.all_terms())[0].backward()
        opt.step()
    assert float((y_g - y).detach().abs().mean()) < 0.5 * start


def test_loss_weights_validation_and_round_trip():
    w = L.LossWeights.all_terms()
    assert L.LossWeights.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert L.LossWeights.pixelwise_only().adversarial == 0.0
    for bad in (
        {"l1": -1.0},
        {"mlwt": float("nan")},
        {"sigma_min": 0.0},
        {"fourier_gamma": 2.0},
        {"mlwt_windows": (2, 0)},
    ):
        with pytest.raises(ValueError):
            L.LossWeights(**bad)
    with pytest.raises(ValueError, match="unknown"):
        L.LossWeights.from_dict({"l3": 1.0})
    zero = L.LossWeights(l1=0.0, adversarial=0.0)
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="nothing to optimise"):
        L.generator_loss(x, x, zero)


@pytest.mark.parametrize(
    "func",
    [
        L.contrast_weighted_l1,
        L.contrast_weighted_l2,
        L.mlwt_loss,
        L.fourier_loss,
        L.mean_loss,
        L.std_loss,
        L.generator_loss,
    ],
)
def test_losses_reject_bad_input(func):
    good = torch.zeros(1, 1, 20, 20)
    with pytest.raises(ValueError):
        func(good, torch.zeros(1, 1, 20, 21))  # shape mismatch
    with pytest.raises(ValueError):
        func(torch.zeros(20, 20), torch.zeros(20, 20))  # not (B, C, H, W)
    with pytest.raises(ValueError):
        func(good.long(), good.long())  # integer dtype
    with pytest.raises(ValueError):
        func(np.zeros((1, 1, 20, 20)), good)  # not a tensor


def test_losses_do_not_modify_inputs(pair):
    y_g, y = map(_t, pair)
    y_g0, y0 = y_g.clone(), y.clone()
    L.generator_loss(y_g, y, L.LossWeights.all_terms())
    assert torch.equal(y_g, y_g0) and torch.equal(y, y0)
