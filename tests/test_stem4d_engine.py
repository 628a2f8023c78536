"""Tests of the 4D-STEM engine (restore_4dstem): executors, chunking, zarr resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_emdenoise import restore_4dstem
from napari_emdenoise.engine import _stack4d_block
from napari_emdenoise.engine._stack4d_store import RECORD_KEY
from napari_emdenoise.engine.neighbour_residuals import correct_in_memory
from napari_emdenoise.engine.predictor import Cancelled
from napari_emdenoise.engine.stack4d import LOCAL_COUNTS_PASSES, LOCAL_COUNTS_SIGMA, plan_blocks

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


class CountBlur(torch.nn.Module):
    """Stand-in for the Pix2Pix model: a 3×3 blur that keeps each pattern's total counts.

    Refuses sizes that are not multiples of ``size_multiple`` (as a downsampling
    U-Net would), so the tests see whether the engine pads.
    """

    size_multiple = 4

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        self.weight = torch.nn.Parameter(kernel[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise RuntimeError(f"size {tuple(x.shape[-2:])} is not a multiple of 4")
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        y = torch.nn.functional.conv2d(padded, self.weight)
        total_in = x.sum(dim=(-2, -1), keepdim=True)
        total_out = y.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
        return y * (total_in / total_out)


def reference(
    data: np.ndarray,
    model: torch.nn.Module,
    sigma: float | None = LOCAL_COUNTS_SIGMA,
    neighbours: bool = True,
    passes: int = LOCAL_COUNTS_PASSES,
) -> np.ndarray:
    """Pattern by pattern, without the engine: reflect-pad bottom/right to 4, run, crop.

    Then (the default ``local_counts_sigma``) the raw counts above ``sigma`` px are put
    back: ``passes`` times ``y ← y + G_σ*(raw − y)``, then clipped at 0 and scaled to
    the raw total; then (the
    default ``neighbour_residuals``) the whole scan goes through
    :func:`~napari_emdenoise.engine.neighbour_residuals.correct_in_memory` at once.
    """
    from scipy import ndimage

    sy, sx, dy, dx = data.shape
    py, px = -dy % 4, -dx % 4
    out = np.empty(data.shape, np.float32)
    with torch.no_grad():
        for i in range(sy):
            for j in range(sx):
                raw = data[i, j].astype(np.float32)
                pattern = np.pad(raw, ((0, py), (0, px)), mode="reflect")
                y = model(torch.from_numpy(pattern)[None, None])[0, 0].numpy()[:dy, :dx]
                if sigma:
                    for _ in range(passes):
                        y = y + ndimage.gaussian_filter(raw - y, sigma, mode="constant")
                    y = np.maximum(y, 0)
                    y = y * (raw.sum(dtype=np.float64) / y.sum(dtype=np.float64))
                out[i, j] = y
    if neighbours:
        out = correct_in_memory(data, out)[0]
    return out


@pytest.fixture
def model() -> CountBlur:
    return CountBlur()


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(4.0, (6, 5, 30, 34)).astype(np.uint16)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of every block handed to process_block (instrumentation)."""
    seen: list[tuple[int, ...]] = []
    original = _stack4d_block.process_block

    def counting(block, *args, **kwargs):
        seen.append((block.shape, block.nbytes))
        return original(block, *args, **kwargs)

    monkeypatch.setattr(_stack4d_block, "process_block", counting)
    return seen


PATTERN_BYTES = 4 * 30 * 34


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("executor", ["inline", "threads", "dask"])
def test_executors_and_chunking_match_the_reference(data, model, executor):
    want = reference(data, model)
    got = restore_4dstem(data, model=model, executor=executor, max_block_bytes=7 * PATTERN_BYTES)
    assert got.shape == data.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(got - data).max() > 0.5  # the blur really changed the patterns


def test_dask_input_and_zarr_output_equal_in_memory(data, model, tmp_path):
    want = restore_4dstem(data, model=model)
    lazy = da.from_array(data, chunks=(2, 5, 30, 34))
    out = restore_4dstem(
        lazy, model=model, out=tmp_path / "r.zarr", max_block_bytes=PATTERN_BYTES * 10
    )
    assert isinstance(out, zarr.Array)
    np.testing.assert_array_equal(out[...], want)
    assert out.attrs[RECORD_KEY]["complete"] is True
    assert out.attrs[RECORD_KEY]["done"] == list(range(3))  # 2 rows × 5 columns per block


@pytest.mark.parametrize("shape", [(2, 3, 30, 34), (2, 2, 68, 68), (1, 2, 130, 130), (2, 1, 8, 9)])
def test_odd_pattern_sizes(model, shape):
    rng = np.random.default_rng(1)
    data = rng.poisson(3.0, shape).astype(np.float32)
    got = restore_4dstem(data, model=model, batch_size=3)
    assert got.shape == shape
    np.testing.assert_allclose(got, reference(data, model), rtol=1e-5, atol=1e-5)


def test_integer_and_float_dtypes_give_float32(data, model):
    a = restore_4dstem(data.astype(np.int32), model=model)
    b = restore_4dstem(data.astype(np.float64), model=model)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_region_processes_only_the_region(data, model, tmp_path):
    full = restore_4dstem(data, model=model, neighbour_residuals=False)
    part = restore_4dstem(
        data, model=model, region=(slice(1, 4), slice(2, None)), neighbour_residuals=False
    )
    np.testing.assert_array_equal(part, full[1:4, 2:])
    # the neighbour stage pools the region's own patterns only
    pooled = restore_4dstem(data, model=model, region="1:4,2:")
    np.testing.assert_allclose(pooled, correct_in_memory(data[1:4, 2:], part)[0], atol=1e-5)


def test_model_left_in_training_mode_if_it_was(data, model):
    model.train()
    restore_4dstem(data[:1, :1], model=model)
    assert model.training


# --------------------------------------------------------------------------- resume


def test_cancelled_zarr_run_resumes_without_recomputing(data, model, tmp_path, calls):
    path = tmp_path / "r.zarr"
    budget = 5 * PATTERN_BYTES  # one scan row per block: 6 blocks
    k = 2
    with pytest.raises(Cancelled):
        restore_4dstem(
            data, model=model, out=path, max_block_bytes=budget, cancel=lambda: len(calls) > k
        )
    record = zarr.open_array(str(path), mode="r").attrs[RECORD_KEY]
    assert record["done"] == [0, 1] and record["complete"] is False
    calls.clear()
    progress = []
    out = restore_4dstem(
        data,
        model=model,
        out=path,
        max_block_bytes=budget,
        progress=lambda d, t: progress.append(d),
    )
    assert len(calls) == 6 - 2  # finished blocks are not recomputed
    assert progress[0] == 2 * 5 and progress[-1] == 30
    np.testing.assert_array_equal(out[...], restore_4dstem(data, model=model))


def test_failed_block_is_not_marked_done(data, model, tmp_path, monkeypatch):
    path = tmp_path / "r.zarr"
    original = _stack4d_block.process_block
    count = [0]

    def flaky(block, *args, **kwargs):
        count[0] += 1
        result = original(block, *args, **kwargs)
        if count[0] == 4:
            raise RuntimeError("disk full (injected)")
        return result

    monkeypatch.setattr(_stack4d_block, "process_block", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        restore_4dstem(data, model=model, out=path, max_block_bytes=5 * PATTERN_BYTES)
    assert zarr.open_array(str(path), mode="r").attrs[RECORD_KEY]["done"] == [0, 1, 2]
    count[0] = 100
    out = restore_4dstem(data, model=model, out=path, max_block_bytes=5 * PATTERN_BYTES)
    assert count[0] == 103  # blocks 3, 4, 5 only
    np.testing.assert_array_equal(out[...], restore_4dstem(data, model=model))


def test_existing_store_of_another_run_or_foreign_folder_is_refused(data, model, tmp_path):
    path = tmp_path / "r.zarr"
    restore_4dstem(data, model=model, out=path)
    with pytest.raises(ValueError, match="holds a result of shape"):
        restore_4dstem(data, model=model, out=path, region=(slice(0, 2), slice(0, 5)))
    other = CountBlur()
    with torch.no_grad():
        other.weight.mul_(2.0)
    with pytest.raises(ValueError, match="different run"):
        restore_4dstem(data, model=other, out=path)
    again = restore_4dstem(data, model=other, out=path, overwrite=True)
    np.testing.assert_allclose(again[...], restore_4dstem(data, model=other))
    foreign = tmp_path / "mine.zarr"
    zarr.create_array(store=str(foreign), shape=(6, 5, 30, 34), dtype="f4")
    with pytest.raises(ValueError, match="not a store made by restore_4dstem"):
        restore_4dstem(data, model=model, out=foreign)
    src = tmp_path / "in.zarr"
    stored = zarr.create_array(store=str(src), shape=data.shape, dtype=data.dtype)
    stored[...] = data
    with pytest.raises(ValueError, match="input"):
        restore_4dstem(zarr.open_array(str(src), mode="r"), model=model, out=src)


# --------------------------------------------------------------------------- memory


def test_memory_stays_bounded_on_a_stack_larger_than_the_budget(model, calls):
    shape = (16, 12, 32, 32)
    lazy = da.random.default_rng(0).poisson(2.0, shape).astype(np.float32).rechunk((2, 12, 32, 32))
    budget = 24 * 4 * 32 * 32  # 24 patterns
    total = 4 * np.prod(shape)
    assert total >= 8 * budget
    out = restore_4dstem(lazy, model=model, max_block_bytes=budget, executor="threads", workers=2)
    assert out.shape == shape
    assert len(calls) == 8
    assert max(nbytes for _, nbytes in calls) <= budget
    assert sum(int(np.prod(s[:2])) for s, _ in calls) == 16 * 12  # every pattern once


def test_plan_blocks_splits_rows_when_one_row_is_too_large():
    assert plan_blocks((10, 8), (16, 16), 4 * 16 * 16 * 20) == (2, 8)
    assert plan_blocks((10, 8), (16, 16), 4 * 16 * 16 * 3) == (1, 3)
    with pytest.raises(ValueError, match="smaller than one"):
        plan_blocks((10, 8), (16, 16), 100)


# --------------------------------------------------------------------------- calibration


def test_calibration_reaches_the_store_and_reads_back(data, model, tmp_path):
    from napari_emdenoise.io.readers import read_em

    calib = {"scan_step": 2.5, "detector_step": 0.5, "scan_units": "Å", "detector_units": "mrad"}
    path = tmp_path / "r.zarr"
    restore_4dstem(data, model=model, out=path, calibration=calib, region="2:5,1:4")
    [(arr, meta)] = read_em(path, lazy=True)
    assert arr.shape == (3, 3, 30, 34)
    assert meta["units"] == ("nm", "nm", "mrad", "mrad")
    np.testing.assert_allclose(meta["scale"], (0.25, 0.25, 0.5, 0.5))
    np.testing.assert_allclose(meta["translate"], (0.5, 0.25, 0.0, 0.0))
    assert meta["axis_names"] == ("scan_y", "scan_x", "det_y", "det_x")
    assert meta["original_metadata"]["stem4d_calibration.scan_step"] == 2.5


def test_zarr_input_calibration_is_carried_over(data, model, tmp_path):
    from napari_emdenoise.io.readers import read_em

    src = tmp_path / "in.zarr"
    stored = zarr.create_array(store=str(src), shape=data.shape, dtype=data.dtype)
    stored[...] = data
    stored.attrs["napari_emdenoise"] = {
        "scale": [0.3, 0.3, 0.02, 0.02],
        "units": ["nm", "nm", "1/nm", "1/nm"],
        "translate": [0, 0, 0, 0],
        "axis_names": ["y", "x", "ky", "kx"],
        "name": "scan",
    }
    restore_4dstem(zarr.open_array(str(src), mode="r"), model=model, out=tmp_path / "o.zarr")
    [(_, meta)] = read_em(tmp_path / "o.zarr")
    assert meta["units"] == ("nm", "nm", "1/nm", "1/nm")
    np.testing.assert_allclose(meta["scale"], (0.3, 0.3, 0.02, 0.02))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((5, 30, 34), "image stack"),
        ((1, 2, 3, 30, 34), "once per scan"),
        ((2, 2, 6, 30), "at least 8"),
        ((0, 2, 16, 16), "empty"),
    ],
)
def test_bad_shapes_give_clear_errors(model, shape, match):
    with pytest.raises(ValueError, match=match):
        restore_4dstem(np.ones(shape, np.float32), model=model)


def test_nan_in_memory_is_refused_before_anything_is_written(data, model, tmp_path):
    bad = data.astype(np.float32)
    bad[4, 2, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\(4, 2\)"):
        restore_4dstem(bad, model=model, out=tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def test_nan_in_lazy_data_never_marks_the_bad_block_done(data, model, tmp_path):
    bad = data.astype(np.float32)
    bad[3, 1, 0, 0] = np.inf
    path = tmp_path / "r.zarr"
    lazy = da.from_array(bad, chunks=(1, 5, 30, 34))
    with pytest.raises(ValueError, match="rows 3–3"):
        restore_4dstem(lazy, model=model, out=path, max_block_bytes=5 * PATTERN_BYTES)
    assert zarr.open_array(str(path), mode="r").attrs[RECORD_KEY]["done"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region": (slice(3, 3), slice(None))}, "selects no scan position"),
        ({"region": "1:2"}, "y0:y1,x0:x1"),
        ({"executor": "mpi"}, "executor"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": 3}, "model"),
        ({"model": "no-such-model"}, "unknown model"),
    ],
)
def test_bad_arguments_give_clear_errors(data, model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        restore_4dstem(data, **{"model": model, **kwargs})


# --------------------------------------------------------------------------- distributed


def test_distributed_local_cluster_gives_the_same_result(data, model, tmp_path):
    distributed = pytest.importorskip("distributed")
    want = restore_4dstem(data, model=model)
    with (
        distributed.LocalCluster(
            processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        got = restore_4dstem(
            da.from_array(data, chunks=(1, 5, 30, 34)),
            model=model,
            executor=client,
            out=tmp_path / "r.zarr",
            max_block_bytes=5 * PATTERN_BYTES,
        )
        in_memory = restore_4dstem(data, model=model, executor="dask")  # picks up the client
    np.testing.assert_array_equal(got[...], want)
    np.testing.assert_array_equal(in_memory, want)


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnxruntime_backend_agrees_with_torch(data, model, tmp_path, monkeypatch):
    from napari_emdenoise.engine.onnx_backend import onnxruntime_available

    if not onnxruntime_available():
        pytest.skip("onnxruntime, onnx or onnxscript missing")
    monkeypatch.setenv("EMDENOISE_CACHE_DIR", str(tmp_path / "cache"))
    want = restore_4dstem(data, model=model, backend="torch")
    got = restore_4dstem(data, model=model, backend="onnxruntime", executor="threads")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert len(list((tmp_path / "cache").glob("stack4d-*-32x36.onnx"))) == 1  # padded size
    # "auto" reuses the cached export even for a small call
    auto = restore_4dstem(data, model=model)
    np.testing.assert_allclose(auto, want, rtol=1e-5, atol=1e-4)


def test_padded_patterns_keep_their_input_totals_with_the_bundled_model():
    """A count-keeping network keeps the total of each odd-sized pattern after crop."""
    from napari_emdenoise.models.registry import list_models
    from napari_emdenoise.synth.diffraction import simulate_4dstem

    if "pix2pix-4dstem" not in list_models():
        pytest.skip("bundled pix2pix-4dstem not installed")
    noisy, _clean, _cal = simulate_4dstem(
        (2, 3), (48, 80), counts=1000.0, rng=np.random.default_rng(3)
    )
    out = restore_4dstem(noisy, model="pix2pix-4dstem", device="cpu")
    totals_in = noisy.reshape(6, -1).sum(axis=1)
    totals_out = out.reshape(6, -1).sum(axis=1)
    np.testing.assert_allclose(totals_out, totals_in, rtol=1e-4)


class DiskDimmer(torch.nn.Module):
    """A biased stand-in: moves 30 % of every pixel above the pattern mean into the
    background evenly (total counts kept), as a network that dims Bragg disks does."""

    size_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        bright = x > mean
        taken = (0.3 * x * bright).sum(dim=(-2, -1), keepdim=True)
        n_dark = (~bright).sum(dim=(-2, -1), keepdim=True).clamp_min(1)
        return torch.where(bright, 0.7 * x, x + taken / n_dark)


def _disk_stack(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:48, :48]
    clean = np.full((48, 48), 0.2)
    for cy, cx in [(24, 24), (12, 12), (12, 36), (36, 12), (36, 36)]:
        clean[np.hypot(yy - cy, xx - cx) <= 4] += 40.0
    clean = np.broadcast_to(clean, (3, 3, 48, 48))
    return rng.poisson(clean).astype(np.float32), np.hypot(yy - 12, xx - 12) <= 6


def test_local_count_correction_removes_the_disk_intensity_bias():
    noisy, disk = _disk_stack(np.random.default_rng(1))
    raw_sum = noisy[..., disk].sum()
    alone = {"neighbour_residuals": False}  # this test is about the per-pattern correction
    network_only = restore_4dstem(noisy, model=DiskDimmer(), local_counts_sigma=None, **alone)
    corrected = restore_4dstem(noisy, model=DiskDimmer(), **alone)  # default: 2 px, 3 passes
    assert network_only[..., disk].sum() / raw_sum < 0.8  # the stand-in's bias is seen
    assert abs(corrected[..., disk].sum() / raw_sum - 1) < 0.03
    np.testing.assert_allclose(corrected.sum((2, 3)), noisy.sum((2, 3)), rtol=1e-4)
    assert corrected.min() >= 0


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_more_local_count_passes_leak_less_of_a_dimmed_disk(sigma):
    """One wide pass spreads part of a dimmed disk's deficit past its edge; the
    iterated correction cuts more sharply and puts more of it back in the disk."""
    noisy, disk = _disk_stack(np.random.default_rng(1))
    raw_sum = noisy[..., disk].sum()
    kw = {"model": DiskDimmer(), "neighbour_residuals": False, "local_counts_sigma": sigma}
    one = restore_4dstem(noisy, local_counts_passes=1, **kw)[..., disk].sum() / raw_sum
    three = restore_4dstem(noisy, local_counts_passes=3, **kw)[..., disk].sum() / raw_sum
    assert one < 0.96  # the leak is there with one pass
    assert abs(three - 1) < abs(one - 1) / 2


def test_local_count_correction_off_gives_the_network_output(model, data):
    out = restore_4dstem(data, model=model, local_counts_sigma=None, neighbour_residuals=False)
    want = reference(data, model, sigma=None, neighbours=False)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [-1.0, 100.0, "1", float("nan")])
def test_local_counts_sigma_is_checked(model, data, bad):
    with pytest.raises(ValueError, match="local_counts_sigma"):
        restore_4dstem(data, model=model, local_counts_sigma=bad)


@pytest.mark.parametrize("bad", [0, 17, 1.5, True, "3"])
def test_local_counts_passes_is_checked(model, data, bad):
    with pytest.raises(ValueError, match="local_counts_passes"):
        restore_4dstem(data, model=model, local_counts_passes=bad)


def test_a_store_from_another_number_of_passes_is_refused(model, data, tmp_path):
    store = tmp_path / "out.zarr"
    restore_4dstem(data, model=model, out=store, local_counts_passes=1)
    with pytest.raises(ValueError, match="local_counts_passes"):
        restore_4dstem(data, model=model, out=store)


def test_a_store_from_before_the_passes_setting_resumes_with_one_pass(model, data, tmp_path):
    """Stores written before ``local_counts_passes`` existed record no passes: they ran
    one. Such a store resumes with one pass and is refused, saying why, with three."""
    store = tmp_path / "out.zarr"
    old = {"local_counts_sigma": 1.0, "local_counts_passes": 1}
    first = restore_4dstem(data, model=model, out=store, **old)
    arr = zarr.open_array(str(store), mode="r+")
    record = dict(arr.attrs[RECORD_KEY])
    del record["local_counts_passes"]
    arr.attrs[RECORD_KEY] = record
    again = restore_4dstem(data, model=model, out=store, **old)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    with pytest.raises(ValueError, match="local_counts_passes: 1 in the store, 3 now"):
        restore_4dstem(data, model=model, out=store, local_counts_sigma=1.0)


def test_a_store_from_another_local_counts_setting_is_refused(model, data, tmp_path):
    store = tmp_path / "out.zarr"
    restore_4dstem(data, model=model, out=store, local_counts_sigma=None)
    with pytest.raises(ValueError, match="local_counts_sigma"):
        restore_4dstem(data, model=model, out=store)
