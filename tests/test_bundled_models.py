"""The bundled default models: present, loadable, documented, better than the raw input,
and faithful on images our generator did not make (lattice probe, unit invariance, no
checkerboard)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from napari_emdenoise.evaluation import lattice_probe
from napari_emdenoise.metrics import psnr
from napari_emdenoise.models.registry import bundled_weights_dir, list_models, load_model
from napari_emdenoise.training.datasets import PairConfig, make_training_pair

BUNDLED = ("hrstem", "hrtem", "lrstem", "lrtem", "hrsem", "lrsem")


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


@pytest.fixture(scope="module")
def probe():
    """Lag-free lattice of Gaussian columns with Poisson noise, 50 counts/pixel."""
    from napari_emdenoise.evaluation import lattice_probe

    return lattice_probe(np.random.default_rng(0), size=192, dose=50.0)


@pytest.mark.parametrize("name", BUNDLED)
def test_lattice_probe_columns_stay_in_place(name, probe):
    """No learned shift: columns of a lag-free image do not move; the image gets better."""
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import column_errors

    out = restore(probe.noisy, model=name, device="cpu")
    errors = column_errors(out, probe.clean, probe.positions)
    assert errors["bias_px"] < 0.1, errors
    assert psnr(out, probe.clean) >= psnr(probe.noisy, probe.clean), name


@pytest.mark.parametrize("name", BUNDLED)
def test_restore_is_unit_invariant(name, probe):
    """restore(a·x + b) = a·restore(x) + b: counts, electrons and [0, 1] give one result."""
    from napari_emdenoise.engine.predictor import restore

    x = probe.noisy[:128, :128]
    ref = restore(x, model=name, device="cpu").astype(np.float64)
    span = float(ref.max() - ref.min())
    for a, b in ((1e-3, 0.0), (37.0, -5.0), (1.0, 1000.0)):
        out = restore((a * x.astype(np.float64) + b).astype(np.float32), model=name, device="cpu")
        err = np.abs((out.astype(np.float64) - b) / a - ref).max() / span
        assert err < 1e-3, (name, a, b, err)


@pytest.mark.parametrize("a", [1e-20, 1e20])
def test_restore_is_unit_invariant_at_extreme_units(a, probe):
    """Data stored in coulombs per pixel (~1e-18) or in counts × 1e20 restore like counts."""
    from napari_emdenoise.engine.predictor import restore

    x = probe.noisy[:96, :96].astype(np.float64)
    ref = restore(x, model="hrstem", device="cpu").astype(np.float64)
    out = restore(x * a, model="hrstem", device="cpu").astype(np.float64) / a
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() / float(ref.max() - ref.min()) < 1e-3


def _smooth_noisy_images() -> list[np.ndarray]:
    """Ten smooth images (12-px Gaussian texture) with Poisson noise at 20 and 200 counts/px."""
    from scipy.ndimage import gaussian_filter

    images = []
    for seed in range(5):
        for level in (20.0, 200.0):
            rng = np.random.default_rng(seed)
            smooth = gaussian_filter(rng.random((256, 256)), 12.0)
            smooth = level * (0.5 + (smooth - smooth.min()) / np.ptp(smooth))
            images.append(rng.poisson(smooth).astype(np.float32))
    return images


@functools.cache
def _smooth_restorations(name: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``(input, output)`` of ``name`` on each smooth noisy image (shared by two tests)."""
    from napari_emdenoise.engine.predictor import restore

    return tuple((x, restore(x, model=name, device="cpu")) for x in _smooth_noisy_images())


def _nyquist_excesses(name: str) -> list[float]:
    from napari_emdenoise.evaluation import nyquist_excess

    return [nyquist_excess(out, x) for x, out in _smooth_restorations(name)]


def _smooth_case_range(index: int) -> float:
    """Range of the clean image behind ``_smooth_noisy_images()[index]`` (0.5–1.5 × level)."""
    return (20.0, 200.0)[index % 2]


@pytest.mark.parametrize("name", BUNDLED)
def test_no_checkerboard_on_smooth_noisy_images(name):
    """On every one of ten smooth noisy images the output's 2-px pattern is below
    10⁻⁴ of the image's range (measured ≤ 4.1·10⁻⁵ for every bundled model; the
    transposed-convolution models of version 0.2 printed 3–6·10⁻⁴, and the input's
    own noise puts up to 1.2·10⁻³ into the Nyquist bins)."""
    from napari_emdenoise.evaluation.spectra import nyquist_amplitude

    for i, (_, out) in enumerate(_smooth_restorations(name)):
        assert nyquist_amplitude(out) <= 1e-4 * _smooth_case_range(i), (name, i)


#: Issue 8 also asks that the output's Nyquist spike, *relative to its
#: neighbourhood*, stay within 3× the input's on every image. The networks alone
#: reached 4–17× on some of the ten images above although their 2-px amplitude is
#: at most 4.1·10⁻⁵ of the range: a good denoiser empties the neighbourhood, so the
#: ratio grows while the pattern does not (docs/restoration_fidelity.md, sections 6
#: and 17). The refinement's 2-pixel pattern step (engine/grid_pattern.py) gives the
#: three Nyquist bands the raw frame's content filtered like their neighbourhood;
#: measured: at most 0.31× the input's for every bundled model's default output.
@pytest.mark.parametrize("name", BUNDLED)
def test_no_checkerboard_on_any_smooth_noisy_image(name):
    excess = _nyquist_excesses(name)
    assert max(excess) <= 3.0, (name, np.round(excess, 2))


#: A lattice of sharp columns (σ 1.0–1.2 px) every 6–8 px is how a multislice
#: HAADF image of Au [001] looks at 0.3 Å/px. At 200 counts/px the HR models
#: alone erased it (12–25 dB against the input's 34–35 dB). Retrained with
#: fine-lattice pairs and a full-resolution block they keep it (35.7–35.8 dB
#: against the input's 35.4; `hrtem` after 4,500 steps of that stage: 32.9).
@pytest.mark.parametrize("name", [n for n in BUNDLED if n.startswith("hr")])
def test_a_fine_high_dose_lattice_survives_the_model(name):
    from napari_emdenoise.engine.predictor import restore

    p = lattice_probe(np.random.default_rng(0), size=256, spacing=8.0, width=1.2, dose=200.0)
    out = restore(p.noisy, model=name, device="cpu")
    assert psnr(out, p.clean) >= psnr(p.noisy, p.clean) - 1.0


@pytest.mark.parametrize("name", ["hrstem", "hrtem", "hrsem"])
@pytest.mark.parametrize("period", [8.0, 10.0, 16.0])
def test_the_hr_models_keep_lattices_of_8_pixels_and_more(name, period):
    """Fraction of a noisy lattice's amplitude kept (``evaluation.lattice_gain``)."""
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import lattice_gain

    for dose in (20.0, 200.0):
        rng = np.random.default_rng([int(period), int(dose)])
        gain = lattice_gain(lambda x: restore(x, model=name, device="cpu"), period, dose, rng)
        assert 0.85 <= gain <= 1.15, (name, period, dose, gain)


@pytest.mark.parametrize("name", ["hrstem", "hrtem"])
def test_the_hr_restorations_keep_a_6_pixel_lattice(name):
    """What `restore` gives by default: the lattice pass brings back the fringes the
    network erased (docs/restoration_fidelity.md, section 12)."""
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import lattice_gain

    rng = np.random.default_rng(6)
    gain = lattice_gain(lambda x: restore(x, model=name, device="cpu"), 6.0, 200.0, rng)
    assert gain >= 0.85, (name, gain)


#: The networks alone still erase lattices of period 6 px or less (0.2 cycles/px along
#: the diagonals; gain ≤ 0.4, BM3D and the authors' models keep ≥ 0.98):
#: docs/restoration_fidelity.md, section 9. Strict, so a fix shows up.
@pytest.mark.xfail(strict=True, reason="the small HR networks erase lattices of period <= 6 px")
@pytest.mark.parametrize("name", ["hrstem", "hrtem"])
def test_the_hr_networks_alone_keep_a_6_pixel_lattice(name):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import lattice_gain

    rng = np.random.default_rng(6)
    gain = lattice_gain(
        lambda x: restore(x, model=name, device="cpu", refine=False), 6.0, 200.0, rng
    )
    assert gain >= 0.85, (name, gain)


@pytest.mark.parametrize("name", [n for n in BUNDLED if n.startswith("hr")])
@pytest.mark.parametrize(
    ("spacing", "width", "dose", "margin"),
    [(6.0, 1.0, 200.0, 1.0), (8.0, 1.2, 20.0, 0.0), (12.0, 1.2, 50.0, 0.0)],
)
def test_safeguard_keeps_a_fine_lattice_the_model_alone_erases(name, spacing, width, dose, margin):
    """Per-band SURE weights give back what the network removed (safeguard=True, on the
    Wiener-refined restoration; `hrtem` + safeguard alone was 1.6 dB below the 6-px input)."""
    from napari_emdenoise.engine.predictor import restore

    p = lattice_probe(np.random.default_rng(0), size=256, spacing=spacing, width=width, dose=dose)
    out = restore(p.noisy, model=name, device="cpu", safeguard=True)
    assert psnr(out, p.clean) >= psnr(p.noisy, p.clean) - margin


#: The defect probe (``evaluation.defect_probe``): 3 % vacancies and 3 % 1.5×
#: substitutions in an 8-px lattice of σ 1-px columns at 5 counts/px, an incoherent
#: (HAADF-like) image. Measured on three draws: the HR S(T)EM network alone keeps
#: 0.97–0.98 of the vacancy and 0.98–1.09 of the substitution contrast, the default
#: (Wiener refinement + lattice pass) 0.83–0.84 and 0.78–0.87. A restoration that
#: averages unit cells (e.g. estimating the lattice first) keeps 0.1–0.4
#: (docs/restoration_fidelity.md, section 13).
@pytest.mark.parametrize("name", ["hrstem", "hrsem"])
def test_the_stem_models_keep_vacancies_and_substitutions(name):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import defect_contrast, defect_probe

    p = defect_probe(np.random.default_rng([0, 0]), spacing=8.0, dose=5.0)
    alone = defect_contrast(restore(p.noisy, model=name, refine=False), p)
    default = defect_contrast(restore(p.noisy, model=name), p)
    assert alone.vacancy >= 0.9 and alone.substitution >= 0.9, (name, alone)
    assert default.vacancy >= 0.75 and default.substitution >= 0.75, (name, default)


#: The LR models (low magnification) are not meant for atomic resolution. On the same
#: probe `lrtem` averages the lattice (0.40 of the vacancy contrast alone, 0.09 by
#: default); `lrstem`, since its texture stage (fine fringes and film speckle in its
#: clean images), keeps it alone (0.93 / 1.06), and 0.66 / 0.68 by default.
#: Strict, so a change shows up.
@pytest.mark.parametrize(
    "name",
    [
        "lrstem",
        pytest.param(
            "lrtem",
            marks=pytest.mark.xfail(strict=True, reason="lrtem erases defects on atomic lattices"),
        ),
    ],
)
def test_the_lr_models_keep_defects_on_atomic_lattices(name):
    from napari_emdenoise.engine.predictor import restore
    from napari_emdenoise.evaluation import defect_contrast, defect_probe

    p = defect_probe(np.random.default_rng([0, 0]), spacing=8.0, dose=5.0)
    alone = defect_contrast(restore(p.noisy, model=name, refine=False), p)
    assert alone.vacancy >= 0.9, (name, alone)
