"""ONNX Runtime back end of the engine: same results as torch, cache, progress, cancel, fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_emdenoise.engine import onnx_backend  # noqa: E402
from napari_emdenoise.engine.predictor import Cancelled, TiledPredictor, restore  # noqa: E402
from napari_emdenoise.models.registry import build_model  # noqa: E402

needs_ort = pytest.mark.skipif(
    not onnx_backend.onnxruntime_available(), reason="onnx, onnxscript or onnxruntime missing"
)

#: Largest accepted difference between the back ends, relative to the output range.
TOL = 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder for the module's exports."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(onnx_backend.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def tiny(cache):
    """A tiny random CGRDN (in-network normalisation on), exported once for the module."""
    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny").eval()
    assert model.normalize
    onnx_backend.session_for(model, threads=1)
    return model


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    # a large offset and a small signal: the whole-frame normalisation must match exactly
    return (1000.0 + 40.0 * rng.random(shape)).astype(np.float32)


def _rel_diff(a, b):
    return float(np.max(np.abs(a - b)) / max(np.ptp(b), 1e-12))


@needs_ort
def test_export_is_cached_per_weights(tiny, cache):
    path = onnx_backend.cached_path(tiny)
    assert path.parent == cache and path.is_file()
    assert not list(cache.glob("*.tmp")), "temporary export files must not be left behind"
    other = build_model("cgrdn", "tiny")
    assert onnx_backend.model_key(other) != onnx_backend.model_key(tiny)
    assert onnx_backend.model_key(tiny) == onnx_backend.model_key(tiny)
    assert onnx_backend.is_cached(tiny) and not onnx_backend.is_cached(other)
    # the network's normalisation attribute is left as it was
    assert tiny.normalize is True and not tiny.training


@needs_ort
def test_cached_file_is_reused_without_export(tiny, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "_export", boom)
    monkeypatch.setattr(onnx_backend, "_SESSIONS", {})  # as in a new process
    assert onnx_backend.export_cached(tiny) == onnx_backend.cached_path(tiny)
    assert onnx_backend.session_for(tiny, threads=1) is not None


@needs_ort
@pytest.mark.parametrize(
    ("shape", "tile_size"),
    [
        ((96, 128), None),  # even, whole frame
        ((75, 53), None),  # odd, whole frame, padded to the stride
        ((3, 41, 66), None),  # stack
        ((65, 64), 64),  # 1 px more than a tile
        ((63, 64), 64),  # 1 px less than a tile
        ((129, 97), 64),  # several tiles, odd
    ],
)
def test_onnxruntime_matches_torch(tiny, shape, tile_size):
    image = _image(shape)
    ref = restore(image, refine=False, model=tiny, tile_size=tile_size, backend="torch")
    got = restore(image, refine=False, model=tiny, tile_size=tile_size, backend="onnxruntime")
    assert got.shape == image.shape and got.dtype == np.float32
    assert _rel_diff(got, ref) <= TOL
    # the network changes the image: the comparison is not trivially equal inputs
    assert _rel_diff(ref, image) > 10 * TOL


@needs_ort
def test_onnxruntime_matches_torch_with_batches_and_safeguard(tiny):
    image = _image((140, 150), seed=3)
    kwargs = {"model": tiny, "tile_size": 64, "batch_size": 3, "safeguard": True}
    ref = restore(image, backend="torch", **kwargs)
    got = restore(image, backend="onnxruntime", **kwargs)
    assert _rel_diff(got, ref) <= TOL


@needs_ort
def test_progress_and_cancel_in_onnxruntime(tiny):
    image = _image((2, 129, 97))
    calls = []
    restore(
        image,
        model=tiny,
        tile_size=64,
        backend="onnxruntime",
        progress=lambda d, t: calls.append((d, t)),
    )
    per_frame = TiledPredictor(tiny, tile_size=64, overlap=31).count_tiles((129, 97))
    assert per_frame > 1
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] == 2 * per_frame
    assert {t for _, t in calls} == {2 * per_frame}
    assert len(calls) == 1 + 2 * per_frame
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:], strict=False))

    polls = []

    def cancel():
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        restore(image, model=tiny, tile_size=64, backend="onnxruntime", cancel=cancel)
    assert len(polls) == 3
    assert tiny.normalize is True and not tiny.training  # state restored after the abort


@needs_ort
def test_auto_uses_onnxruntime_for_a_cached_model(tiny, monkeypatch):
    used = []
    original = onnx_backend.OnnxPredictor._forward

    def spy(self, batch):
        used.append(batch.shape)
        return original(self, batch)

    monkeypatch.setattr(onnx_backend.OnnxPredictor, "_forward", spy)
    image = _image((40, 50))
    out = restore(image, model=tiny)  # small, but the export is cached
    assert used, "auto did not use ONNX Runtime on the CPU"
    assert _rel_diff(out, restore(image, model=tiny, backend="torch")) <= TOL


def test_auto_small_call_with_uncached_model_stays_in_torch(monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path))
    created = []
    monkeypatch.setattr(onnx_backend, "OnnxPredictor", lambda *a, **k: created.append(1))
    model = build_model("cgrdn", "tiny")
    out = restore(_image((40, 50)), model=model)
    assert out.shape == (40, 50) and not created and not list(tmp_path.iterdir())


def test_fallback_to_torch_without_onnxruntime(monkeypatch, tmp_path, recwarn):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    monkeypatch.setattr(onnx_backend, "_SESSIONS", {})
    assert not onnx_backend.onnxruntime_available()
    torch.manual_seed(1)
    model = build_model("cgrdn", "tiny")
    image = _image((520, 512))  # big enough for auto to want ONNX Runtime
    auto = restore(image, model=model, tile_size=256)
    ref = restore(image, model=model, tile_size=256, backend="torch")
    np.testing.assert_array_equal(auto, ref)
    assert not list(tmp_path.iterdir())
    assert not [w for w in recwarn if "onnx" in str(w.message).lower()]
    with pytest.raises(ImportError, match="onnxruntime"):
        restore(image[:64, :64], model=model, backend="onnxruntime")


def test_auto_falls_back_when_the_export_fails(monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(onnx_backend, "onnxruntime_available", lambda: True)

    def fail(model, target, opset):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_backend, "_export", fail)
    model = build_model("cgrdn", "tiny")
    image = _image((512, 512))
    out = restore(image, model=model, tile_size=256)
    np.testing.assert_array_equal(out, restore(image, model=model, tile_size=256, backend="torch"))
    with pytest.raises(RuntimeError, match="unsupported operator"):
        restore(image[:64, :64], model=model, backend="onnxruntime")


def test_backend_argument_is_checked():
    model = build_model("cgrdn", "tiny")
    with pytest.raises(ValueError, match="backend"):
        restore(np.zeros((8, 8), np.float32), model=model, backend="tensorrt")


@needs_ort
def test_onnx_predictor_is_a_tiled_predictor(tiny):
    predictor = onnx_backend.OnnxPredictor(tiny, tile_size=64, overlap=16, threads=1)
    assert isinstance(predictor, TiledPredictor)
    image = _image((100, 90))
    ref = TiledPredictor(tiny, device="cpu", tile_size=64, overlap=16).predict(image)
    assert _rel_diff(predictor.predict(image), ref) <= TOL


@needs_ort
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_automatic_tiling_matches_the_whole_frame(tiny, monkeypatch, backend):
    from napari_emdenoise.engine import predictor

    # scaled-down budget and tiles, so that a small frame takes the tiled path
    monkeypatch.setitem(predictor._WHOLE_IMAGE_BUDGET, "cpu", 128 * 128)
    monkeypatch.setattr(predictor, "_AUTO_TILE", 160)
    monkeypatch.setattr(predictor, "_AUTO_OVERLAP", 64)
    image = _image((301, 290), seed=5)
    calls = []
    tiled = restore(image, model=tiny, backend=backend, progress=lambda d, t: calls.append(t))
    assert calls[-1] > 1, "the frame was not tiled"
    whole = restore(image, model=tiny, tile_size=image.shape, backend=backend)
    assert _rel_diff(tiled, whole) <= 1e-3


# --- export in a child process (what the Restore widget does before backend="auto") ---
@pytest.fixture(scope="module")
def saved_tiny(cache, tmp_path_factory):
    """A tiny CGRDN saved as a user model file (a child process can load it by path)."""
    from napari_emdenoise.models.registry import ModelCard, save_model

    torch.manual_seed(1)
    model = build_model("cgrdn", "tiny").eval()
    card = ModelCard(
        name="tiny-child", arch="cgrdn", config=model.config.to_dict(), modality="stem", kind="hr"
    )
    path = save_model(model, card, tmp_path_factory.mktemp("models"))
    return model, path


@needs_ort
def test_export_in_subprocess_fills_this_process_cache(saved_tiny):
    model, path = saved_tiny
    assert not onnx_backend.is_cached(model)
    exported = onnx_backend.export_in_subprocess(path)
    assert exported == onnx_backend.cached_path(model)
    assert onnx_backend.is_cached(model)
    assert onnx_backend.prepare_backend(path, "cpu", 4096 * 4096) == "auto"


@needs_ort
def test_export_in_subprocess_cancel_kills_the_child(saved_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_backend.CACHE_ENV, str(tmp_path))
    with pytest.raises(Cancelled):
        onnx_backend.export_in_subprocess(saved_tiny[1], cancel=lambda: True)
    assert not list(tmp_path.glob("*.onnx"))


@needs_ort
def test_prepare_backend_falls_back_to_torch_when_the_child_fails(tmp_path):
    # an unknown model: the child fails, so restore must not try the export again in-process
    assert onnx_backend.prepare_backend(tmp_path / "missing.safetensors", "cpu", 4096**2) == "torch"
    with pytest.raises(RuntimeError, match="ONNX export failed"):
        onnx_backend.export_in_subprocess(tmp_path / "missing.safetensors")


def test_prepare_backend_leaves_small_calls_to_auto(tmp_path):
    # below the export threshold "auto" never exports, so no child is started
    assert onnx_backend.prepare_backend(tmp_path / "missing.safetensors", "cpu", 64 * 64) == "auto"
