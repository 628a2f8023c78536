"""The statistics the drift benchmark reports beside its RMS table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "drift_accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("drift_accuracy", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_interval_of_identical_errors_is_one(bench):
    e = np.random.default_rng(0).normal(size=(40, 2))
    lo, hi = bench.rms_ratio_interval(e, e, np.random.default_rng(1))
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_ratio_interval_contains_the_ratio_and_widens_with_one_outlier(bench):
    rng = np.random.default_rng(2)
    base = rng.normal(scale=4.0, size=(48, 2))
    ours = rng.normal(scale=1.0, size=(48, 2))
    point = np.sqrt(np.mean(np.sum(ours**2, 1)) / np.mean(np.sum(base**2, 1)))
    lo, hi = bench.rms_ratio_interval(ours, base, np.random.default_rng(3))
    assert lo < point < hi
    spoiled = ours.copy()
    spoiled[0] = (60.0, 40.0)  # one wrong correlation peak
    lo2, hi2 = bench.rms_ratio_interval(spoiled, base, np.random.default_rng(3))
    assert hi2 - lo2 > 3 * (hi - lo)
    assert bench.worst_pair_share(spoiled) > 0.8 > bench.worst_pair_share(ours)
