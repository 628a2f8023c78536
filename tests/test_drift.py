"""Drift correction (headless): shift estimation, stack alignment, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_emdenoise.drift import (
    AlignmentInfo,
    ShiftEstimate,
    align_stack,
    apply_shift,
    chain_shifts,
    estimate_shift,
    synthetic,
)
from napari_emdenoise.drift.correlation import (
    NEAR_EQUAL,
    NCCMap,
    bandpass,
    clip_outliers,
    ncc_map,
    parabolic_peak,
)

SIZE = (96, 96)


def make_pair(content: str, shift, dose, seed: int, modality: str = "tem"):
    """A pair of ``content`` with a given registration shift (``dose=None``: clean), atomic
    content at a typical 0.1 Å/pixel (columns 5–10 pixels wide)."""
    rng = np.random.default_rng(seed)
    pad = int(math.ceil(max(abs(s) for s in shift))) + 10
    shape = (SIZE[0] + 2 * pad, SIZE[1] + 2 * pad)
    canvas, info = synthetic.clean_canvas(content, shape, rng, pixel_size=0.1)
    return synthetic.shifted_pair(
        canvas, SIZE, shift, modality=modality, dose=dose, rng=rng, info=info
    )


def err(estimate, truth) -> float:
    return float(np.hypot(*(np.asarray(estimate, float) - np.asarray(truth, float))))


# --------------------------------------------------------------------------- convention


def test_sign_convention_is_skimage_phase_cross_correlation():
    from skimage.registration import phase_cross_correlation

    pair = make_pair("particles", (5.25, -11.5), None, seed=1)
    reference = phase_cross_correlation(pair.reference, pair.moving, upsample_factor=100)[0]
    assert err(reference, pair.shift) < 0.1  # the synthetic pair obeys skimage's convention
    for method in ("ncc", "phase", "cnn"):  # the sign; accuracy is tested below
        estimate = estimate_shift(pair.reference, pair.moving, method=method, denoise=False)
        assert err(estimate, reference) < 0.3, method
    # and shifting moving by the estimate registers it onto the reference
    estimate = estimate_shift(pair.reference, pair.moving, method="cnn", denoise=False)
    aligned = apply_shift(pair.moving, estimate)
    inner = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(aligned[inner].ravel(), pair.reference[inner].ravel())[0, 1] > 0.99


def test_estimate_unpacks_like_a_pair_and_carries_its_uncertainty():
    pair = make_pair("amorphous", (1.5, 2.25), 100.0, seed=2)
    est = estimate_shift(pair.reference, pair.moving, method="cnn", denoise=False)
    assert isinstance(est, ShiftEstimate) and isinstance(est, tuple)
    dy, dx = est
    assert np.asarray(est).shape == (2,) and (dy, dx) == (est[0], est[1])
    assert all(0 < s < 5 for s in est.sigma)
    assert -1 <= est.peak <= 1 and est.method == "cnn"


# --------------------------------------------------------------------------- accuracy


CASES = [
    # content, shift (an integer and a sub-pixel one per content type)
    ("lattice", (2.0, -1.0)),
    ("lattice", (-0.7, 1.3)),
    ("amorphous", (7.0, 12.0)),
    ("amorphous", (-9.35, 4.6)),
    ("particles", (-15.0, 3.0)),
    ("particles", (11.25, -20.8)),
    ("mixed", (4.0, 21.0)),
    ("mixed", (-6.4, -13.55)),
]


@pytest.mark.parametrize("content,shift", CASES)
@pytest.mark.parametrize("method", ["cnn", "ncc"])
def test_known_shifts_are_recovered_on_clean_frames(content, shift, method):
    pair = make_pair(content, shift, None, seed=10)
    if pair.period_px is not None:
        assert np.hypot(*shift) < 0.45 * pair.period_px  # keep lattice shifts unambiguous
    est = estimate_shift(pair.reference, pair.moving, method=method, denoise=False)
    assert err(est, shift) < 0.15


@pytest.mark.parametrize("content,shift", CASES[1::2])
@pytest.mark.parametrize("denoise", [False, True])
def test_known_shifts_are_recovered_on_noisy_frames(content, shift, denoise):
    pair = make_pair(content, shift, 200.0, seed=11)
    denoiser = pair.denoiser if denoise else False
    est = estimate_shift(pair.reference, pair.moving, method="cnn", denoise=denoiser)
    assert err(est, shift) < 0.5
    assert max(est.sigma) < 1.0
    assert np.all(np.abs(np.subtract(est, shift)) < 3 * np.asarray(est.sigma))  # honest σ


@pytest.mark.parametrize("method", ["cnn", "ncc", "phase"])
@pytest.mark.parametrize("unit", [1e-20, 1e20])
def test_the_shift_does_not_depend_on_the_intensity_unit(method, unit):
    """Frames in coulombs per pixel (about 1e-18) or scaled by 1e20 register like counts."""
    pair = make_pair("amorphous", (-9.35, 4.6), 20.0, seed=13)
    ref = pair.reference.astype(np.float64)
    mov = pair.moving.astype(np.float64)
    denoise = pair.denoiser if method == "cnn" else False
    expected = estimate_shift(ref, mov, method=method, denoise=denoise)
    scaled = estimate_shift(unit * ref, unit * mov, method=method, denoise=denoise)
    assert err(scaled, expected) < 1e-3
    assert np.allclose(scaled.sigma, expected.sigma, rtol=1e-3)
    assert err(expected, pair.shift) < (1.5 if method == "phase" else 0.5)  # a sound estimate


@pytest.mark.parametrize("method,tolerance", [("cnn", 0.4), ("ncc", 0.4), ("phase", 1.0)])
def test_shift_of_a_third_of_the_frame_is_found(method, tolerance):
    shift = (32.4, -31.7)  # a third of the 96-pixel frame along both axes
    pair = make_pair("particles", shift, 100.0, seed=12)
    est = estimate_shift(pair.reference, pair.moving, method=method, denoise=False)
    assert err(est, shift) < tolerance


def test_no_pull_towards_zero_shift():
    """Opposite shifts give opposite estimates; the mean error along the shift is ~0."""
    along = []
    for k, shift in enumerate([(6.3, 0.0), (0.0, -6.3), (4.45, 4.45), (-17.8, 9.2)]):
        for sign in (1, -1):
            s = (sign * shift[0], sign * shift[1])
            pair = make_pair("amorphous", s, None, seed=20 + k)
            est = np.asarray(estimate_shift(pair.reference, pair.moving, "cnn", denoise=False))
            unit = np.asarray(s) / np.hypot(*s)
            along.append(float(np.dot(est - s, unit)))
    assert abs(np.mean(along)) < 0.03
    assert max(abs(a) for a in along) < 0.15


def test_uncertainty_grows_as_the_dose_falls():
    for content in ("particles", "amorphous"):
        sigmas = []
        for dose in (2000.0, 2.0, 0.5):
            pair = make_pair(content, (3.3, -2.6), dose, seed=30)
            est = estimate_shift(pair.reference, pair.moving, "cnn", denoise=False)
            sigmas.append(float(np.hypot(*est.sigma)))
        assert sigmas[0] < sigmas[1] < sigmas[2], content
        assert sigmas[2] > 1.5 * sigmas[0], content


def test_ncc_map_peak_is_where_the_frames_overlap_best():
    rng = np.random.default_rng(0)
    ref = ndimage.gaussian_filter(rng.random((64, 80)), 1.5)
    mov = np.roll(ref, (-5, 9), axis=(0, 1))  # mov(y, x) = ref(y + 5, x - 9): shift (5, -9)
    ncc = ncc_map(bandpass(ref, 0), bandpass(mov, 0))
    assert ncc.peak() == (5, -9)
    assert ncc.value((5, -9)) == pytest.approx(1.0, abs=1e-9)  # overlap has no wrapped pixels
    assert parabolic_peak(ncc, (5, -9)) == pytest.approx((5, -9), abs=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zingers_do_not_decide_the_shift(seed):
    # Three 3×3 zingers at 20× the frame maximum, at random places in each frame: the
    # correlation of the frames as they are peaks where one zinger lands on another.
    pair = make_pair("particles", (6.0, -9.0), 5.0, seed, modality="stem")
    rng = np.random.default_rng(100 + seed)
    frames = []
    for frame in (pair.reference, pair.moving):
        frame = frame.astype(np.float64)
        for y, x in rng.integers(2, SIZE[0] - 2, size=(3, 2)):
            frame[y - 1 : y + 2, x - 1 : x + 2] = 20 * frame.max()
        frames.append(frame)
    unclipped = ncc_map(bandpass(frames[0], 1.5), bandpass(frames[1], 1.5)).peak()
    assert err(unclipped, pair.shift) > 10  # the failure the clipping prevents
    assert err(estimate_shift(*frames, method="ncc", denoise=False), pair.shift) < 0.5


def test_clip_outliers_changes_only_the_brightest_pixels():
    image = np.arange(1000, dtype=np.float64).reshape(25, 40)
    clipped = clip_outliers(image, 0.99)
    changed = clipped != image
    assert changed.sum() == 10  # 990…999, above the 99th percentile (989.01)
    assert clipped.max() == pytest.approx(np.quantile(image, 0.99))
    assert np.array_equal(clip_outliers(image, 1.0), image)
    with pytest.raises(ValueError, match="quantile"):
        clip_outliers(image, 0.0)


def _two_peak_map(near_rho: float, far_rho: float) -> NCCMap:
    """An NCC map of two 128² frames with a peak at (2, 1) and one at (20, -15)."""
    k = 48
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1].astype(float)
    values = near_rho * np.exp(-((yy - 2) ** 2 + (xx - 1) ** 2) / 4.0)
    values = np.maximum(values, far_rho * np.exp(-((yy - 20) ** 2 + (xx + 15) ** 2) / 4.0))
    overlap = (128 - np.abs(yy)) * (128 - np.abs(xx))
    return NCCMap(values, (k, k), (k, k), overlap)


def test_the_smallest_of_nearly_equally_significant_peaks_is_taken():
    # The far peak correlates better and scores higher (0.633·√12204 vs 0.549·√16002), but
    # the near one reaches more than NEAR_EQUAL of its score: as for the translations of a
    # lattice, the smallest shift explaining the frames is taken.
    ncc = _two_peak_map(0.50, 0.56)
    score = ncc.score()
    assert score[48 + 20, 48 - 15] > score[48 + 2, 48 + 1] >= NEAR_EQUAL * score.max()
    assert ncc.peak() == (2, 1)
    ratio, distance = ncc.second_peak(exclude=3.0)
    assert ratio >= NEAR_EQUAL  # and the estimate is reported as ambiguous
    assert distance == pytest.approx(np.hypot(18, 16))
    # A clearly more significant far peak still wins.
    assert _two_peak_map(0.30, 0.56).peak() == (20, -15)


# --------------------------------------------------------------------------- stacks


@pytest.fixture(scope="module")
def movie():
    frames, shifts, _info = synthetic.drifting_movie(
        10,
        SIZE,
        np.random.default_rng(5),
        content="particles",
        modality="tem",
        dose=50.0,
        step=2.0,
    )
    return frames, shifts


@pytest.mark.parametrize("reference", ["first", "previous", "mean"])
def test_align_stack_recovers_a_random_walk(movie, reference):
    frames, truth = movie
    aligned, shifts, info = align_stack(
        frames, reference=reference, method="ncc", denoise=False, return_info=True
    )
    assert shifts.shape == (10, 2) and isinstance(info, AlignmentInfo)
    offset = shifts[0] if reference == "mean" else np.zeros(2)  # mean: shifts onto the mean
    rms = np.sqrt(np.mean(np.sum((shifts - offset - truth) ** 2, axis=1)))
    assert rms < 0.3
    assert aligned.shape == frames.shape and aligned.dtype == np.float32
    inner = (slice(24, -24), slice(24, -24))
    for i in (3, 9):
        r = np.corrcoef(aligned[i][inner].ravel(), aligned[0][inner].ravel())[0, 1]
        raw = np.corrcoef(frames[i][inner].ravel(), frames[0][inner].ravel())[0, 1]
        assert r > raw


@pytest.mark.parametrize("reference", ["first", "previous", "mean"])
def test_grouped_frames_follow_a_steady_drift(reference):
    """Groups of 3 frames of a steady drift (0.7, -1.1 px per frame): the per-frame shifts
    interpolated between the groups' centres, and extended beyond them, are the drift."""
    rng = np.random.default_rng(21)
    canvas, info = synthetic.clean_canvas("particles", (160, 160), rng, pixel_size=0.1)
    truth = np.outer(np.arange(11), (0.7, -1.1))
    frames = np.stack(
        [synthetic.shifted_pair(canvas, SIZE, tuple(s), info=info).clean_moving for s in truth]
    )
    _, shifts, info = align_stack(
        frames, reference=reference, method="ncc", denoise=False, group=3, return_info=True
    )
    offset = shifts[0] if reference == "mean" else np.zeros(2)
    assert reference == "mean" or np.all(shifts[0] == 0)
    assert np.abs(shifts - offset - truth).max() < 0.25
    assert info.extra["group"] == 3 and info.extra["group_shifts"].shape == (4, 2)
    np.testing.assert_allclose(info.extra["group_centres"], [1, 4, 7, 9.5])
    assert info.sigma.shape == (11, 2) and info.peak.shape == (11,)


def test_advice_suggests_the_mean_reference_only_for_movies_too_noisy_to_register(movie):
    frames, _ = movie  # 50 counts/pixel
    _, _, info = align_stack(frames[:5], denoise="lrtem", return_info=True)
    assert info.advice() == ""
    noisy, _, _ = synthetic.drifting_movie(
        8, (128, 128), np.random.default_rng(43), content="amorphous", modality="tem", dose=1.0
    )
    for reference in ("first", "previous"):
        _, _, info = align_stack(noisy, reference=reference, return_info=True)
        assert "try the mean reference" in info.advice(), reference
    _, _, info = align_stack(noisy, reference="mean", return_info=True)
    assert "try the mean reference" not in info.advice()  # already the mean


def test_align_stack_cnn_with_denoising_applies_shifts_to_the_raw_frames(movie):
    frames, truth = movie
    aligned, shifts = align_stack(frames[:5], method="cnn", denoise="lrtem")
    assert np.sqrt(np.mean(np.sum((shifts - truth[:5]) ** 2, axis=1))) < 0.3
    for i in range(5):  # the raw frames are shifted, not the denoised copies
        np.testing.assert_array_equal(aligned[i], apply_shift(frames[i], shifts[i]))


def test_previous_flags_a_frame_that_breaks_transitivity(movie):
    frames, _truth = movie
    broken = frames.copy()
    broken[6] = np.random.default_rng(1).permutation(broken[6].ravel()).reshape(SIZE)
    _, shifts, info = align_stack(
        broken, reference="previous", method="ncc", denoise=False, return_info=True
    )
    assert info.outlier[6] or info.outlier[7]
    assert not info.outlier[[2, 3, 4, 9]].any()
    good = [0, 1, 2, 3, 4, 5, 7, 8, 9]  # the chain goes around the broken frame
    assert np.sqrt(np.mean(np.sum((shifts[good] - _truth[good]) ** 2, axis=1))) < 0.5
    assert np.isfinite(info.closure[2:]).all() and np.isnan(info.closure[:2]).all()


def test_chain_shifts_uses_the_path_that_avoids_a_failed_pair():
    steps = np.array([[0, 0], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]])
    truth = np.cumsum(steps, axis=0)
    pairwise = steps.copy()
    pairwise[3] = [9.0, -7.0]  # a failed estimate between frames 2 and 3
    skip = np.full_like(steps, np.nan)
    skip[2:] = truth[2:] - truth[:-2]
    sigma = np.full_like(steps, 0.05)
    pair_peak = np.ones(5)
    pair_peak[3] = 0.2  # the failed pair correlates poorly
    skip_peak = np.ones(5)
    shifts, sig, outlier, closure = chain_shifts(pairwise, sigma, skip, sigma, pair_peak, skip_peak)
    np.testing.assert_allclose(shifts, truth, atol=1e-9)
    assert outlier.tolist() == [False, False, False, True, True]
    assert closure[3] > 10 and closure[2] < 1e-9
    assert (sig[0] == 0).all() and (sig[1:] > 0).all()
    # frame 3 was reached through the skip 1 → 3: σ² = σ1² + σ_skip² (chained, accumulates)
    np.testing.assert_allclose(sig[3] ** 2, sig[1] ** 2 + 0.05**2)


def test_chain_shifts_avoids_a_frame_that_correlates_with_nothing():
    # Frame 3 is blank noise: its estimates against frames 2, 4 (pairs) and 1, 5 (skips)
    # are spurious, and those through it still close the loop 2 → 3 → 4 against 2 → 4
    # within the 1-px tolerance (both carry the same spurious offset, give or take
    # 0.4 px). Their weak peaks keep them out of the chain.
    steps = np.array([[0, 0], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]])
    truth = np.cumsum(steps, axis=0)
    pairwise, skip = steps.copy(), np.full_like(steps, np.nan)
    skip[2:] = truth[2:] - truth[:-2]
    junk = np.array([7.0, -11.0])
    pairwise[3], pairwise[4] = junk, skip[4] - junk + [0.3, -0.3]  # p3 + p4 ≈ q4
    skip[3], skip[5] = [-13.0, 4.0], [6.0, 9.0]
    pair_peak, skip_peak = np.full(6, 0.8), np.full(6, 0.8)
    pair_peak[[3, 4]] = skip_peak[[3, 5]] = 0.1
    sigma = np.full_like(steps, 0.05)
    shifts, _sig, outlier, _closure = chain_shifts(
        pairwise, sigma, skip, sigma, pair_peak, skip_peak
    )
    good = [0, 1, 2, 4, 5]
    np.testing.assert_allclose(shifts[good], truth[good], atol=1e-9)
    assert outlier[3]  # both of its own paths are spurious and disagree
    # without the peaks (all equal) the spurious path is averaged into frames 4 and 5
    averaged, *_ = chain_shifts(pairwise, sigma, skip, sigma)
    assert np.hypot(*(averaged[4] - truth[4])) > 0.1


def test_align_stack_is_lazy_for_dask(movie):
    da = pytest.importorskip("dask.array")
    frames, _ = movie
    lazy = da.from_array(frames[:4], chunks=(1, -1, -1))
    aligned, shifts = align_stack(lazy, method="ncc", denoise=False)
    assert isinstance(aligned, da.Array)
    eager, eager_shifts = align_stack(frames[:4], method="ncc", denoise=False)
    np.testing.assert_allclose(shifts, eager_shifts)
    np.testing.assert_allclose(aligned.compute(), eager)


def test_progress_and_cancel(movie):
    from napari_emdenoise.engine import Cancelled

    frames, _ = movie
    seen = []
    align_stack(
        frames[:4],
        reference="previous",
        method="ncc",
        denoise=False,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    with pytest.raises(Cancelled):
        align_stack(frames[:4], method="ncc", denoise=False, cancel=lambda: True)


def test_integer_frames_give_the_same_result_as_float(movie):
    frames, _ = movie
    counts = np.round(frames[:3] * 1000).astype(np.uint16)
    _, s_int = align_stack(counts, method="ncc", denoise=False)
    _, s_float = align_stack(counts.astype(np.float64), method="ncc", denoise=False)
    np.testing.assert_allclose(s_int, s_float)


def test_apply_shift_integer_is_exact_and_fills_the_border():
    frame = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    out = apply_shift(frame, (2, -3), fill_value=-1)
    np.testing.assert_array_equal(out[2:, :-3], frame[:-2, 3:])
    assert (out[:2] == -1).all() and (out[:, -3:] == -1).all()
    sub = apply_shift(frame.astype(float), (0.5, 0.0), fill_value=np.nan)
    assert np.isnan(sub[0]).all() and np.isfinite(sub[1:]).all()


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors():
    rng = np.random.default_rng(0)
    a = rng.random((40, 40))
    with pytest.raises(ValueError, match="same shape"):
        estimate_shift(a, rng.random((40, 41)), method="ncc", denoise=False)
    with pytest.raises(ValueError, match="same shape"):
        align_stack([a, rng.random((41, 40))], method="ncc", denoise=False)
    with pytest.raises(ValueError, match="2-D frame"):
        align_stack(a, method="ncc", denoise=False)
    with pytest.raises(ValueError, match="at least 2 frames"):
        align_stack(a[None], method="ncc", denoise=False)
    with pytest.raises(ValueError, match="3-D"):
        align_stack(a[None, None], method="ncc", denoise=False)
    nan = a.copy()
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_shift(a, nan, method="ncc", denoise=False)
    with pytest.raises(ValueError, match="NaN"):
        align_stack(np.stack([a, nan]), method="ncc", denoise=False)
    with pytest.raises(ValueError, match="too small"):
        estimate_shift(a[:8, :8], a[:8, :8], method="ncc", denoise=False)
    with pytest.raises(ValueError, match="too small"):
        align_stack(np.zeros((3, 8, 8)), method="ncc", denoise=False)
    with pytest.raises(ValueError, match="2-D"):
        estimate_shift(a[None], a[None], method="ncc", denoise=False)
    with pytest.raises(ValueError, match="complex"):
        estimate_shift(a + 1j, a, method="ncc", denoise=False)
    with pytest.raises(ValueError, match="constant"):
        estimate_shift(np.ones((40, 40)), a, method="ncc", denoise=False)
    for bad in (0, 3, True, 1.5, "2"):
        with pytest.raises(ValueError, match="group"):
            align_stack(np.stack([a, a, a]), method="ncc", denoise=False, group=bad)
    with pytest.raises(ValueError, match="remove frame 1 from the stack"):
        align_stack(np.stack([a, np.zeros_like(a), a]), method="ncc", denoise=False)
    with pytest.raises(ValueError, match="method"):
        estimate_shift(a, a, method="sift")
    with pytest.raises(ValueError, match="reference"):
        align_stack(np.stack([a, a]), reference="last")
    with pytest.raises(ValueError, match="denoise"):
        estimate_shift(a, a, denoise=3.5)
    with pytest.raises(ValueError, match="no shift regressor"):
        estimate_shift(a, a, model="/nonexistent/regressor.safetensors", denoise=False)


# --------------------------------------------------------------------------- the model


def test_bundled_regressor_card_and_round_trip(tmp_path):
    from napari_emdenoise.drift.regressor import (
        BUNDLED_REGRESSOR,
        load_regressor,
        predict_offsets,
        save_regressor,
    )

    model, card = load_regressor()
    assert card["arch"] == "shift_regressor" and BUNDLED_REGRESSOR.is_file()
    assert card["metrics"]["val_rms_px"] <= card["metrics"]["val_parabolic_rms_px"]
    x = np.random.default_rng(0).random((3, 4, 15, 15)).astype(np.float32)
    path = save_regressor(model, tmp_path / "copy.safetensors", {"notes": "test"})
    copy, copy_card = load_regressor(path)
    assert copy_card["notes"] == "test"
    np.testing.assert_allclose(predict_offsets(copy, x)[0], predict_offsets(model, x)[0])


def test_regressor_is_flip_equivariant():
    """Flipping the correlation crop flips the predicted offset (no directional bias)."""
    from napari_emdenoise.drift.regressor import load_regressor, predict_offsets

    model, _ = load_regressor()
    x = np.random.default_rng(1).random((4, 4, 15, 15)).astype(np.float32)
    mean, sigma = predict_offsets(model, x)
    mean_f, sigma_f = predict_offsets(model, x[:, :, ::-1, :].copy())
    np.testing.assert_allclose(mean_f, mean * [-1, 1], atol=1e-5)
    np.testing.assert_allclose(sigma_f, sigma, rtol=1e-5)


# --------------------------------------------------------------------------- command line


def test_command_line_writes_the_aligned_stack_and_the_table(movie, tmp_path):
    import csv

    import tifffile

    from napari_emdenoise.drift.__main__ import main

    frames, truth = movie
    source = tmp_path / "movie.tif"
    tifffile.imwrite(source, (frames[:5] * 1000).astype(np.uint16))
    out, table = tmp_path / "aligned.tif", tmp_path / "drift.csv"
    argv = [str(source), "-o", str(out), "--table", str(table), "--method", "ncc", "--no-denoise"]
    assert main(argv) == 0
    aligned = tifffile.imread(out)
    assert aligned.shape == (5, *SIZE) and aligned.dtype == np.float32
    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    shifts = np.array([[float(r["dy_px"]), float(r["dx_px"])] for r in rows])
    assert np.sqrt(np.mean(np.sum((shifts - truth[:5]) ** 2, axis=1))) < 0.3
    assert main(argv) == 2  # outputs exist: refused without --overwrite
    assert main([str(tmp_path / "missing.tif"), "-o", str(tmp_path / "x.tif")]) == 2
    # `emdenoise drift` is the same command
    from napari_emdenoise.cli import main as emdenoise

    first = tifffile.imread(out)
    assert emdenoise(["drift", *argv]) == 2
    assert emdenoise(["drift", *argv, "--overwrite"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), first)


def test_command_line_group_and_max_shift_reach_align_stack(movie, tmp_path):
    import csv

    import tifffile

    from napari_emdenoise.drift.__main__ import main

    frames, _ = movie
    source, table = tmp_path / "movie.tif", tmp_path / "drift.csv"
    tifffile.imwrite(source, frames.astype(np.float32))
    argv = [str(source), "-o", str(tmp_path / "a.tif"), "--table", str(table)]
    options = ["--method", "ncc", "--no-denoise", "--group", "3", "--max-shift", "8"]
    assert main([*argv, *options]) == 0
    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    got = np.array([[float(r["dy_px"]), float(r["dx_px"])] for r in rows])
    _, expected = align_stack(frames, method="ncc", denoise=False, group=3, max_shift=8.0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert main([*argv, "--overwrite", "--group", "10"]) == 2  # a single group: refused
    with pytest.raises(SystemExit):
        main([*argv, "--overwrite", "--max-shift", "0"])


def test_command_line_never_overwrites_the_input_and_checks_outputs_first(
    movie, tmp_path, monkeypatch, capsys
):
    """Neither the aligned stack nor the table may replace the input, not even with
    --overwrite; a bad output is refused before any frame is aligned."""
    import tifffile

    from napari_emdenoise.drift import pipeline
    from napari_emdenoise.drift.__main__ import main

    frames, _ = movie
    source = tmp_path / "movie.tif"
    tifffile.imwrite(source, (frames[:3] * 1000).astype(np.uint16))
    before = source.read_bytes()

    def no_work(*args, **kwargs):
        raise AssertionError("aligned before the outputs were checked")

    monkeypatch.setattr(pipeline, "align_stack", no_work)
    base = [str(source), "--method", "ncc", "--no-denoise", "--overwrite"]
    cases = {
        "must not overwrite the input": ["-o", str(source)],
        "must not overwrite the input ": ["-o", str(tmp_path / "a.tif"), "--table", str(source)],
        "same file": ["-o", str(tmp_path / "a.tif"), "--table", str(tmp_path / "a.tif")],
        "does not exist": ["-o", str(tmp_path / "a.tif"), "--table", str(tmp_path / "no/t.csv")],
        "must end in": ["-o", str(tmp_path / "a.png")],
    }
    for message, extra in cases.items():
        assert main([*base, *extra]) == 2, extra
        assert message.strip() in capsys.readouterr().err
    assert source.read_bytes() == before


def test_fast_scan_axis_y_denoises_transposed_frames_and_keeps_the_frames_axes(movie):
    """Frames scanned along their columns: with ``fast_scan_axis="y"`` the denoiser sees them
    transposed, and the shifts come out in the frames' own axes (NCC is exactly transposable)."""
    frames, _truth = movie
    ref, mov = frames[0], frames[4]
    plain = estimate_shift(ref, mov, method="ncc", denoise="lrstem")
    swapped = estimate_shift(ref.T, mov.T, method="ncc", denoise="lrstem", fast_scan_axis="y")
    assert tuple(swapped) == pytest.approx(tuple(plain)[::-1], abs=1e-6)
    stack = np.ascontiguousarray(np.swapaxes(frames[:4], -1, -2))
    _aligned, shifts = align_stack(stack, method="ncc", denoise="lrstem", fast_scan_axis="y")
    _aligned, expected = align_stack(frames[:4], method="ncc", denoise="lrstem")
    np.testing.assert_allclose(shifts, expected[:, ::-1], atol=1e-6)
    with pytest.raises(ValueError, match="fast_scan_axis"):
        estimate_shift(ref, mov, method="ncc", denoise=False, fast_scan_axis="z")
    with pytest.raises(ValueError, match="fast_scan_axis"):
        align_stack(frames[:3], method="ncc", denoise=False, fast_scan_axis="rows")
