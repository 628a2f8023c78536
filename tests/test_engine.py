"""Inference engine: device choice, tiling exactness, batching, OOM fallback, restore()."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from napari_emdenoise.engine import (
    Cancelled,
    TiledPredictor,
    TileGrid,
    assemble,
    autocast_context,
    blend_window,
    is_oom_error,
    resolve_device,
    restore,
    restore_dask,
)
from napari_emdenoise.engine.device import available_devices
from napari_emdenoise.engine.predictor import infer_size_multiple
from napari_emdenoise.models._normalization import NORM_REL_FLOOR, normalize_per_image

# ----------------------------------------------------------------------------- stand-in models


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return module.eval()


class Pointwise(nn.Module):
    """Nonlinear but pixel-independent: any positive blending weights are exact."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scale * x) + 0.1 * x**2


def small_conv(seed: int = 0) -> nn.Module:
    """Three 3×3 convolutions: receptive-field radius 3 pixels, zero 'same' padding."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 1, 3, padding=1),
    )
    return _seeded(net, seed)


class Strided(nn.Module):
    """Stride-2 down/up sampling: translation equivariant only for even shifts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 4, 4, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x))) + x


class SelfNormalizing(nn.Module):
    """Like the CGRDN: per-image (x − mean)/scale inside forward when ``normalize``."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = True
        self.std_floor = NORM_REL_FLOOR
        self.body = small_conv(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            xn, mean, scale = normalize_per_image(x, self.std_floor)
            return self.body(xn) * scale + mean
        return self.body(x)


def _reference(model: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(image.astype(np.float32))[None, None])[0, 0].numpy()


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:160]
    return (np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.3 * rng.standard_normal((96, 160))).astype(
        np.float32
    )


# ----------------------------------------------------------------------------- device


def test_resolve_device_auto_and_explicit() -> None:
    auto = resolve_device(None)
    assert auto == resolve_device("auto")
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_available_devices_resolve() -> None:
    names = available_devices()
    assert names[-1] == "cpu" and "auto" not in names
    for name in names:
        assert resolve_device(name).type == name.split(":")[0]


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", "xla", "meta", 3])
def test_resolve_device_rejects_unknown(bad: object) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(bad)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_resolve_device_cuda_unavailable_is_clear() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_autocast_is_noop_on_cpu() -> None:
    a = torch.randn(8, 8)
    with autocast_context(torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_is_oom_error() -> None:
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom_error(RuntimeError("MPS backend out of memory"))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))


# ----------------------------------------------------------------------------- tiling


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    tile=st.integers(8, 96),
    overlap_frac=st.floats(0.0, 0.9),
)
def test_tile_grid_covers_any_image(
    height: int, width: int, tile: int, overlap_frac: float
) -> None:
    overlap = int(overlap_frac * (tile - 1))
    grid = TileGrid((height, width), tile, overlap)
    th, tw = grid.tile_shape
    assert th == min(tile, height) and tw == min(tile, width)
    for starts, length, size in ((grid.starts_y, height, th), (grid.starts_x, width, tw)):
        assert starts[0] == 0 and starts[-1] + size == length  # last tile snapped to the border
        steps = np.diff(starts)
        assert np.all(steps >= 1) and np.all(steps <= size - overlap)
    covered = np.zeros((height, width), dtype=int)
    for t in grid:
        covered[t.slices] += 1
    assert covered.min() >= 1
    # pointwise "model" (the identity): blending reproduces the image exactly
    img = np.random.default_rng(height * 1000 + width).standard_normal((height, width))
    out = assemble((img[t.slices] for t in grid), grid)
    np.testing.assert_allclose(out, img, rtol=1e-6, atol=1e-6)


def test_blend_window_ramps_only_toward_neighbours() -> None:
    w = blend_window((64, 64), 16, neighbours=(False, True, False, True))  # top-left tile
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert np.all(w[:48, :48] == 1.0)  # interior and image borders keep full weight
    assert np.all(w[0, :48] == 1.0) and np.all(w[:48, 0] == 1.0)
    assert np.all(w[-4:, :] == 0.0) and np.all(w[:, -4:] == 0.0)  # default margin 16 // 4
    ramp = w[0, 52:60]
    assert np.all(np.diff(ramp) < 0) and ramp.min() > 0 and ramp.max() < 1
    with pytest.raises(ValueError):
        w[0, 0] = 2.0  # cached windows are read-only


def test_blend_ramps_of_neighbours_sum_to_one() -> None:
    """Two tiles sharing ``overlap`` pixels cross-fade to exactly 1 (no seam)."""
    grid = TileGrid((1, 112), (1, 64), 16)
    total = np.zeros(112)
    for t in grid:
        total[t.slices[1]] += grid.window(t)[0]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(overlap=-1), dict(overlap=64), dict(overlap=8, margin=4), dict(overlap=0, margin=1)],
)
def test_tile_grid_rejects_bad_geometry(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TileGrid((200, 200), 64, **kwargs)


# ----------------------------------------------------------------------------- predictor


def test_tiled_equals_untiled_for_pointwise_model(image: np.ndarray) -> None:
    model = Pointwise()
    out = TiledPredictor(model, tile_size=40, overlap=12, batch_size=3).predict(image)
    np.testing.assert_allclose(out, _reference(model, image), rtol=1e-5, atol=1e-6)


def test_tiled_equals_untiled_for_conv_model(image: np.ndarray) -> None:
    model = small_conv()
    ref = _reference(model, image)
    predictor = TiledPredictor(model, tile_size=48, overlap=16, batch_size=4)
    assert predictor.count_tiles(image.shape) > 6
    assert _rel_err(predictor.predict(image), ref) < 1e-4
    # the margin matters: with too small an overlap the tiles' border errors show
    naive = TiledPredictor(model, tile_size=48, overlap=4).predict(image)
    assert _rel_err(naive, ref) > 1e-3


def test_tiles_respect_the_stride_of_downsampling_models() -> None:
    model = _seeded(Strided(), 1)
    assert infer_size_multiple(model) == 2
    img = np.random.default_rng(2).standard_normal((90, 126)).astype(np.float32)
    ref = _reference(model, img)
    out = TiledPredictor(model, tile_size=37, overlap=15).predict(img)  # odd sizes are rounded
    assert _rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("shape", [(37, 53), (2, 2), (5, 200), (129, 3)])
def test_output_shape_matches_odd_inputs(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    out = restore(img, model=_seeded(Strided(), 1), tile_size=32, overlap=8)
    assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_model_output_of_wrong_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="input's shape"):
        TiledPredictor(nn.Conv2d(1, 1, 3)).predict(np.zeros((20, 20)))


def test_whole_image_normalisation_not_per_tile() -> None:
    """Tiles see the statistics of the whole image, as the untiled network does."""
    model = SelfNormalizing()
    yy, xx = np.mgrid[0:80, 0:120]
    rng = np.random.default_rng(4)
    img = (50 + 3 * xx + rng.poisson(20, (80, 120))).astype(np.float32)  # strong ramp
    ref = _reference(model, img)  # normalize=True on the whole image
    out = restore(img, refine=False, model=model, tile_size=40, overlap=16)
    assert _rel_err(out, ref) < 1e-4
    assert model.normalize is True and model.training is True  # state as before the call
    # per-tile normalisation (what happens without the engine's care) is visibly off
    grid = TileGrid(img.shape, 40, 16)
    per_tile = assemble((_reference(model, img[t.slices]) for t in grid), grid)
    assert _rel_err(per_tile, ref) > 1e-3


def test_model_state_is_restored_even_on_cancel() -> None:
    model = SelfNormalizing().train()
    with pytest.raises(Cancelled):
        restore(np.ones((64, 64)), model=model, tile_size=32, overlap=8, cancel=lambda: True)
    assert model.normalize is True and model.training is True


def test_cancel_stops_between_batches(image: np.ndarray) -> None:
    calls: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        restore(
            image,
            model=small_conv(),
            tile_size=32,
            overlap=8,
            progress=lambda d, t: calls.append((d, t)),
            cancel=lambda: len(calls) >= 2,
        )
    total = calls[-1][1]
    assert 0 < calls[-1][0] < total  # stopped part-way


def test_stack_progress_is_monotone_and_complete() -> None:
    rng = np.random.default_rng(5)
    stack = rng.integers(0, 4000, size=(3, 70, 90)).astype(np.int16)
    calls: list[tuple[int, int]] = []
    model = small_conv()
    out = restore(
        stack,
        refine=False,
        model=model,
        tile_size=32,
        overlap=16,
        batch_size=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert out.shape == stack.shape and out.dtype == np.float32
    per_frame = TiledPredictor(model, tile_size=32, overlap=16).count_tiles((70, 90))
    done = [d for d, _ in calls]
    assert all(t == 3 * per_frame for _, t in calls)
    assert done == sorted(done) and done[0] == 0 and done[-1] == 3 * per_frame
    for i in range(3):  # frames are independent
        ref = _reference(model, stack[i].astype(np.float32))
        assert _rel_err(out[i], ref) < 1e-4


def test_int16_input_and_input_not_modified() -> None:
    img = np.random.default_rng(6).integers(-300, 300, size=(40, 50)).astype(np.int16)
    before = img.copy()
    out = restore(img, refine=False, model=Pointwise())
    np.testing.assert_array_equal(img, before)
    np.testing.assert_allclose(out, _reference(Pointwise(), img), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((16, 16), np.nan), "NaN"),
        (np.zeros(16), "2-D"),
        (np.zeros((2, 2, 8, 8)), "4-D STEM"),
        (np.zeros((1, 30)), "too small"),
        (np.zeros((0, 30)), "empty|too small"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
def test_bad_input_raises_clear_value_error(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        restore(bad, model=Pointwise())


def test_bad_parameters_raise_value_error() -> None:
    with pytest.raises(ValueError, match="model"):
        restore(np.zeros((8, 8)), model=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overlap"):
        TiledPredictor(Pointwise(), tile_size=32, overlap=32)
    with pytest.raises(ValueError, match="batch_size"):
        TiledPredictor(Pointwise(), batch_size=0)


class FlakyMemory(nn.Module):
    """Raises an out-of-memory error for batches > 1 or tiles larger than 32 px."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_conv()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        if x.shape[0] > 1 or max(x.shape[-2:]) > 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.inner(x)


def test_out_of_memory_halves_batch_then_tile(caplog: pytest.LogCaptureFixture) -> None:
    model = FlakyMemory()
    img = np.random.default_rng(7).standard_normal((100, 100)).astype(np.float32)
    predictor = TiledPredictor(model, tile_size=100, overlap=12, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="napari_emdenoise.engine.predictor"):
        out = predictor.predict(img)
    assert predictor.batch_size == 1 and max(predictor.tile_size) <= 32
    assert any("batch_size" in r.message for r in caplog.records)
    assert any("tile_size" in r.message for r in caplog.records)
    assert _rel_err(out, _reference(model.inner, img)) < 1e-4


def test_out_of_memory_with_minimal_tiles_gives_up_clearly() -> None:
    class AlwaysOOM(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(MemoryError, match="even with batch_size=1"):
        TiledPredictor(AlwaysOOM(), tile_size=64, overlap=8).predict(np.zeros((64, 64)))


def test_other_errors_are_not_swallowed() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        restore(np.zeros((16, 16)), model=Broken())


# ----------------------------------------------------------------------------- dask


def test_dask_stack_lazy_and_eager_agree() -> None:
    da = pytest.importorskip("dask.array")
    stack = np.random.default_rng(8).standard_normal((3, 40, 48)).astype(np.float32)
    lazy_in = da.from_array(stack, chunks=(2, 20, 48))
    model = small_conv()
    expected = restore(stack, model=model, tile_size=32, overlap=16)
    np.testing.assert_allclose(restore(lazy_in, model=model, tile_size=32, overlap=16), expected)
    lazy_out = restore_dask(lazy_in, model=copy.deepcopy(model), tile_size=32, overlap=16)
    assert isinstance(lazy_out, da.Array) and lazy_out.chunks[0] == (1, 1, 1)
    np.testing.assert_allclose(lazy_out.compute(), expected, rtol=1e-6, atol=1e-6)


def test_dask_frames_are_checked_when_computed() -> None:
    da = pytest.importorskip("dask.array")
    stack = np.zeros((2, 16, 16), dtype=np.float32)
    stack[1, 3, 3] = np.inf
    with pytest.raises(ValueError, match="frame 1"):
        restore(da.from_array(stack), model=Pointwise())


def test_self_normalising_model_is_safe_under_threaded_dask() -> None:
    """Concurrent frames share one module: its ``normalize`` flag must not race."""
    da = pytest.importorskip("dask.array")
    model = SelfNormalizing()
    rng = np.random.default_rng(9)
    stack = (100 + 10 * rng.standard_normal((6, 48, 48))).astype(np.float32)
    lazy = restore_dask(da.from_array(stack), refine=False, model=model, tile_size=24, overlap=12)
    out = lazy.compute(scheduler="threads", num_workers=3)
    for i in range(6):
        assert _rel_err(out[i], _reference(model, stack[i])) < 1e-4
    assert model.normalize is True


# ----------------------------------------------------------------------------- real networks


def test_cgrdn_tiled_matches_whole_image() -> None:
    cgrdn = pytest.importorskip("napari_emdenoise.models.cgrdn")
    torch.manual_seed(0)
    net = cgrdn.CGRDN(cgrdn.CGRDN_CONFIGS["tiny"])
    rng = np.random.default_rng(10)
    img = rng.poisson(30, size=(101, 75)).astype(np.uint16)
    ref = _reference(net.eval(), img)
    whole = restore(img, refine=False, model=net)
    assert _rel_err(whole, ref) < 1e-4
    tiled = restore(img, refine=False, model=net, tile_size=64, overlap=48)
    assert tiled.shape == img.shape
    assert np.abs(tiled - ref).max() < 0.05 * np.abs(ref - img).max()
    assert net.normalize is True


def test_restore_loads_a_saved_model_by_path(tmp_path: Path) -> None:
    registry = pytest.importorskip("napari_emdenoise.models.registry")
    torch.manual_seed(1)
    net = registry.build_model("cgrdn", "tiny")
    config = registry.named_configs("cgrdn")["tiny"]
    card = registry.ModelCard(name="t", arch="cgrdn", config=config, modality="stem", kind="hr")
    path = registry.save_model(net, card, tmp_path)
    img = np.random.default_rng(11).poisson(20, size=(48, 40)).astype(np.float32)
    by_path = restore(img, refine=False, model=str(path), device="cpu")
    assert _rel_err(by_path, _reference(net.eval(), img)) < 1e-4


def test_dncnn_tiled_equals_whole_image() -> None:
    """Depth-4 DnCNN: receptive-field radius 4 ≤ overlap // 4, so tiling is exact."""
    registry = pytest.importorskip("napari_emdenoise.models.registry")
    torch.manual_seed(2)
    net = registry.build_model("dncnn", "tiny").eval()
    img = (100 + 10 * np.random.default_rng(12).standard_normal((90, 110))).astype(np.float32)
    ref = _reference(net, img)
    tiled = restore(img, refine=False, model=net, tile_size=48, overlap=16)
    assert _rel_err(tiled, ref) < 1e-4 and net.normalize is True


def test_balanced_tile_covers_with_the_fewest_smallest_tiles():
    import math

    from napari_emdenoise.engine.tiling import TileGrid, balanced_tile

    for length in (600, 1000, 2048, 4097):
        t = balanced_tile(length, 512, 32)
        assert t <= 512
        n_max = math.ceil((length - 32) / (512 - 32))
        assert len(TileGrid((length, 64), (t, 64), 32)) == n_max  # no extra tiles
        assert (n_max * (t - 32) + 32) >= length  # covers
    assert balanced_tile(300, 512, 32) == 300


@pytest.mark.parametrize("shape", [(67, 45), (301, 257), (66, 47)])
def test_odd_frames_under_the_budget_run_in_one_pass(shape):
    """Regression: the padded frame used to be split into blended tiles."""
    from napari_emdenoise.engine.predictor import restore

    x = np.random.default_rng(0).random(shape).astype(np.float32)
    calls = []
    one_pass = restore(x, "hrstem", progress=lambda done, total: calls.append(total))
    assert calls and set(calls) == {1}
    np.testing.assert_array_equal(one_pass, restore(x, "hrstem", tile_size=4096, overlap=0))


def test_restore_refuses_rgb_pictures_and_4d_data():
    rgb = np.random.default_rng(0).random((32, 40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="RGB"):
        restore(rgb, model=Strided())
    with pytest.raises(ValueError, match="4-D STEM"):
        restore(np.zeros((2, 2, 8, 8), np.float32), model=Strided())
    # a genuine 3-frame stack is not mistaken for RGB
    stack = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    assert restore(stack, model=Strided()).shape == stack.shape


def test_restore_refuses_a_diffraction_pattern_model():
    from napari_emdenoise.models.registry import build_model

    with pytest.raises(ValueError, match="diffraction patterns"):
        restore(np.ones((64, 64), np.float32), model=build_model("pix2pix", "tiny"))


def test_cpu_fast_path_leaves_the_callers_module_unchanged():
    """The CPU path runs a channels-last copy: same output, the caller's module untouched."""
    from napari_emdenoise.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny").eval()
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    image = np.random.default_rng(0).random((96, 80)).astype(np.float32)
    out = restore(image, refine=False, model=model, device="cpu", backend="torch")
    assert {k: v.stride() for k, v in model.state_dict().items()} == strides
    assert model.normalize and not model.training
    with torch.inference_mode():
        direct = model(torch.from_numpy(image)[None, None])[0, 0].numpy()
    assert np.max(np.abs(out - direct)) <= 1e-4 * np.ptp(direct)
