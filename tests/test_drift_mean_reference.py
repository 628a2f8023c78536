"""``align_stack(reference="mean")``: every frame registered to the mean of the others."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.drift import align_stack, synthetic
from napari_emdenoise.drift.mean_reference import (
    MEAN_PASSES,
    MIN_RELIABLE_FRACTION,
    UNRELIABLE_SIGMA_PX,
    LeaveOneOutMeans,
    fill_unreliable,
    register_to_mean,
)
from napari_emdenoise.drift.pipeline import Prepared, ShiftEstimate, _estimate_prepared

SIZE = (96, 96)


def rms(shifts: np.ndarray, truth: np.ndarray) -> float:
    """RMS error (px) after removing the common offset (the mean is its own gauge)."""
    err = np.asarray(shifts, float) - truth
    err -= err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def particles_movie(n: int, dose: float | None, seed: int, step: float = 1.5):
    frames, truth, _ = synthetic.drifting_movie(
        n, SIZE, np.random.default_rng(seed), content="particles", modality="tem",
        dose=dose, step=step,
    )  # fmt: skip
    return frames.astype(np.float64), truth


def ncc(reference: Prepared, moving: Prepared):
    return _estimate_prepared(reference, moving, "ncc", None, None, None)


def test_fill_unreliable_interpolates_in_time_and_holds_beyond_the_ends():
    shifts = np.array([[9.0, 9.0], [1.0, -1.0], [9.0, 9.0], [3.0, -3.0], [9.0, 9.0]])
    out = fill_unreliable(shifts, np.array([True, False, True, False, True]))
    np.testing.assert_allclose(out, [[1, -1], [1, -1], [2, -2], [3, -3], [3, -3]])
    np.testing.assert_array_equal(fill_unreliable(shifts, np.zeros(5, bool)), shifts)
    np.testing.assert_array_equal(fill_unreliable(shifts, np.ones(5, bool)), np.zeros((5, 2)))
    assert shifts[0, 0] == 9.0  # the input is not modified


def test_leave_one_out_mean_is_the_mean_of_the_other_frames():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 32, 32)).astype(np.float32)
    den = rng.normal(size=(4, 32, 32)).astype(np.float32)
    items = [Prepared(raw[i], den[i]) for i in range(4)]
    means = LeaveOneOutMeans(items.__getitem__, np.zeros((4, 2)), lambda: None)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        got = means.without(i, items[i])
        assert isinstance(got, Prepared)
        np.testing.assert_allclose(got.raw, raw[others].mean(0), atol=1e-5)
        np.testing.assert_allclose(got.den, den[others].mean(0), atol=1e-5)
    # without a denoised copy, and with pixels only the left-out frame reaches
    plain = [Prepared(raw[i]) for i in range(2)]
    shifts = np.array([[0.0, 0.0], [0.0, 8.0]])  # frame 1 leaves its 8 left columns empty
    got = LeaveOneOutMeans(plain.__getitem__, shifts, lambda: None).without(1, plain[1])
    assert got.den is None
    np.testing.assert_allclose(got.raw, raw[0], atol=1e-6)  # frame 0 covers every pixel
    got = LeaveOneOutMeans(plain.__getitem__, shifts, lambda: None).without(0, plain[0])
    covered = np.zeros((32, 32), bool)
    covered[:, 8:] = True
    np.testing.assert_allclose(got.raw[:, :8], got.raw[covered].mean(), atol=1e-5)


def test_a_frame_is_not_pinned_where_the_first_pass_put_it():
    """A frame that starts 12 px off is brought back: its reference is the others' mean."""
    frames, truth = particles_movie(8, 2.0, seed=11)
    items = [Prepared(f) for f in frames]
    start = truth - truth[0]
    start[5] += (12.0, -9.0)
    result = register_to_mean(items.__getitem__, start, ncc, lambda: None)
    assert rms(result.shifts, truth) < 0.5
    err = result.shifts - truth
    err -= np.median(err, axis=0)
    assert np.hypot(*err[5]) < 0.5
    assert 1 <= result.passes <= MEAN_PASSES and not result.unreliable.any()


def test_mean_reference_beats_no_correction_on_a_low_dose_movie():
    frames, truth = particles_movie(10, 1.0, seed=3)
    _, shifts, info = align_stack(frames, reference="mean", denoise="hrtem", return_info=True)
    assert rms(shifts, truth) < 0.5 * rms(np.zeros_like(truth), truth)
    assert info.extra["passes"] <= MEAN_PASSES
    assert info.extra["first_pass"].shape == (10, 2)


def test_a_frame_that_cannot_be_registered_is_interpolated_and_flagged():
    frames, truth = particles_movie(9, 50.0, seed=5)
    broken = frames.copy()
    broken[4] = np.random.default_rng(1).poisson(frames[4].mean(), size=SIZE)  # a blank frame
    _, shifts, info = align_stack(
        broken, reference="mean", method="cnn", denoise=False, return_info=True
    )
    assert info.outlier[4] and not info.outlier[np.arange(9) != 4].any()
    assert np.max(info.sigma[4]) > UNRELIABLE_SIGMA_PX
    np.testing.assert_allclose(shifts[4], (shifts[3] + shifts[5]) / 2, atol=1e-9)
    good = np.arange(9) != 4
    assert rms(shifts[good], truth[good]) < 0.3
    assert "1 of 9 frames" in info.advice()


@pytest.mark.parametrize("confident", [2, 4])
def test_too_few_usable_frames_give_no_correction(confident):
    """With fewer than half of the frames usable, even the usable ones are not trusted."""
    rng = np.random.default_rng(4)
    items = [Prepared(rng.normal(size=(32, 32)).astype(np.float32)) for _ in range(6)]
    measured = np.array([[3.0 + i, -1.0 - i] for i in range(6)])

    def estimate(_reference, moving):
        i = next(k for k, item in enumerate(items) if item is moving)
        s = 0.3 if i < confident else 4.0
        return ShiftEstimate(*measured[i], (s, s), 0.5, False, "cnn")

    result = register_to_mean(items.__getitem__, np.zeros((6, 2)), estimate, lambda: None)
    if confident < MIN_RELIABLE_FRACTION * 6:
        assert result.unreliable.all()
        np.testing.assert_array_equal(result.shifts, np.zeros((6, 2)))
    else:
        assert (result.unreliable == (np.arange(6) >= confident)).all()
        np.testing.assert_allclose(result.shifts[:confident], measured[:confident])
        np.testing.assert_allclose(result.shifts[confident:], [measured[confident - 1]] * 2)


def test_no_correction_when_no_frame_registers():
    """Frames of pure counting noise: the CNN on denoised frames finds every peak uncertain."""
    noise = np.random.default_rng(2).poisson(0.5, size=(6, *SIZE)).astype(np.float64)
    aligned, shifts, info = align_stack(noise, reference="mean", denoise="hrtem", return_info=True)
    assert info.outlier.all() and (np.max(info.sigma, axis=1) > UNRELIABLE_SIGMA_PX).all()
    assert np.abs(info.extra["first_pass"]).max() > 10  # the first pass landed on noise peaks
    np.testing.assert_array_equal(shifts, np.zeros((6, 2)))
    np.testing.assert_array_equal(aligned, noise.astype(np.float32))
    assert "fewer than half of the frames" in info.advice()


@pytest.mark.parametrize("group", [1, 2])
def test_progress_of_the_mean_reference_ends_at_its_total(group):
    frames, _ = particles_movie(6, None, seed=7)
    seen: list[tuple[int, int]] = []
    align_stack(
        frames, reference="mean", method="ncc", denoise=False, group=group,
        progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    n = 6 // group
    assert seen[0] == (0, (MEAN_PASSES + 1) * n - 1)
    assert seen[-1][0] == seen[-1][1]
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
