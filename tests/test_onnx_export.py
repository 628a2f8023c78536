"""ONNX export of registered models: graph contract, agreement with torch and the engine, CLI."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from napari_emdenoise.cli import main  # noqa: E402
from napari_emdenoise.engine.predictor import restore  # noqa: E402
from napari_emdenoise.models import onnx_export as ox  # noqa: E402
from napari_emdenoise.models.registry import (  # noqa: E402
    ModelCard,
    build_model,
    load_model,
    save_model,
)

TOL = 1e-3  # |onnx - reference| in input intensity units


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, batch: np.ndarray) -> np.ndarray:
    return session.run(["restored"], {"image": batch.astype(np.float32)})[0]


def _torch(model, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch.astype(np.float32))).numpy()


def _save_tiny_dncnn(folder, name="tinydncnn"):
    """A tiny DnCNN with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(1)
    model = build_model("dncnn", "tiny")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.2, 0.2)
    card = ModelCard(
        name=name,
        arch="dncnn",
        config=model.config,
        modality="tem",
        kind="lr",
        created="2026-11-22T00:00:00+00:00",
    )
    return save_model(model, card, folder)


@pytest.fixture(scope="module")
def hrstem_onnx(tmp_path_factory):
    path = ox.export_onnx("hrstem", tmp_path_factory.mktemp("onnx") / "hrstem.onnx")
    return path


@pytest.fixture(scope="module")
def dncnn_onnx(tmp_path_factory):
    """(onnx path, weights path): a user DnCNN exported by its name."""
    folder = tmp_path_factory.mktemp("user_models")
    weights = _save_tiny_dncnn(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMDENOISE_MODELS_DIR", str(folder))
        path = ox.export_onnx("tinydncnn", tmp_path_factory.mktemp("onnx") / "dn.onnx")
    return path, weights


def test_hrstem_graph_matches_torch_and_engine_at_two_sizes(hrstem_onnx):
    session = _session(hrstem_onnx)
    model, _ = load_model("hrstem")
    rng = np.random.default_rng(3)
    # an even size with one image, an odd size with a batch of three (counts, not [0, 1])
    for shape, scale in (((1, 1, 128, 200), 1.0), ((3, 1, 67, 45), 40.0)):
        batch = (rng.poisson(scale * 2.0, size=shape) / scale).astype(np.float32)
        got = _run(session, batch)
        assert got.shape == shape and got.dtype == np.float32
        # tile_size above the frame size: one pass (by default the engine tiles odd frames,
        # whose padded size exceeds the frame-sized tile, which moves values by ~5e-3)
        engine = restore(batch[:, 0], refine=False, model="hrstem", device="cpu", tile_size=256)
        np.testing.assert_allclose(got[:, 0], engine, rtol=0, atol=TOL)
        np.testing.assert_allclose(got, _torch(model, batch), rtol=0, atol=TOL)
        assert np.abs(got - batch).max() > 0.05  # it did restore something
    smallest = rng.random((1, 1, 3, 2), dtype=np.float32)  # 2 px: the documented minimum
    np.testing.assert_allclose(_run(session, smallest), _torch(model, smallest), atol=TOL)


def test_hrstem_card_and_graph_declare_the_contract(hrstem_onnx):
    card = json.loads(ox.onnx_card_path(hrstem_onnx).read_text())
    assert ModelCard.from_json(json.dumps(card)).name == "hrstem"  # still a valid model card
    info = card["onnx"]
    assert info["file"] == "hrstem.onnx"
    assert info["exported_with"] == torch.__version__
    assert info["input"]["name"] == "image" and info["output"]["name"] == "restored"
    assert info["input"]["min_size_px"] == 2 and info["padding"]["size_multiple"] == 2
    assert info["normalization"]["in_graph"] is True and info["normalization"]["std_floor"] == 1e-6
    assert 0 <= info["max_abs_diff_vs_torch"] <= ox.CHECK_TOLERANCE
    proto = onnx.load(str(hrstem_onnx))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert info["opset"] == opset >= ox.MIN_OPSET
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["napari_emdenoise_card"])["name"] == "hrstem"


def test_user_dncnn_by_name_matches_engine_and_normalises_each_image(dncnn_onnx):
    path, weights = dncnn_onnx
    session = _session(path)
    model, _ = load_model(weights)
    rng = np.random.default_rng(4)
    x = rng.random((1, 1, 41, 70), dtype=np.float32)
    y = _run(session, x)
    np.testing.assert_allclose(
        y[0, 0], restore(x[0, 0], refine=False, model=model, device="cpu"), atol=TOL
    )
    np.testing.assert_allclose(y, _torch(model, x), rtol=0, atol=TOL)
    # per-image normalisation inside the graph: f(a x + b) = a f(x) + b, image by image
    a, b = 50.0, 7.0
    pair = _run(session, np.concatenate([x, a * x + b]))
    np.testing.assert_allclose(pair[0], y[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(pair[1], a * y[0] + b, rtol=0, atol=a * TOL)
    assert json.loads(ox.onnx_card_path(path).read_text())["onnx"]["padding"]["size_multiple"] == 1


def test_check_falls_back_to_onnx_checker_without_onnxruntime(tmp_path, monkeypatch):
    weights = _save_tiny_dncnn(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    path = ox.export_onnx(weights, tmp_path / "out" / "dn.onnx")
    info = json.loads(ox.onnx_card_path(path).read_text())["onnx"]
    assert info["max_abs_diff_vs_torch"] is None and info["check"] == "onnx.checker"
    onnx.checker.check_model(str(path))


def test_a_graph_that_disagrees_with_torch_is_not_written(tmp_path, monkeypatch):
    weights = _save_tiny_dncnn(tmp_path / "m")
    real = ox._torch_reference
    monkeypatch.setattr(ox, "_torch_reference", lambda m, x: real(m, x) + 0.01)
    out = tmp_path / "dn.onnx"
    with pytest.raises(ox.OnnxExportError, match=r"differs from the PyTorch model by up to 0\.01"):
        ox.export_onnx(weights, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no file, no temp, no card


def test_cli_export_onnx_refuses_then_overwrites(tmp_path, capsys):
    weights = _save_tiny_dncnn(tmp_path / "m")
    out = tmp_path / "exported.onnx"
    out.write_bytes(b"old")
    assert main(["export-onnx", str(weights), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert (
        main(["export-onnx", str(weights), "--out", str(out), "--overwrite", "--opset", "18"]) == 0
    )
    printed = capsys.readouterr().out
    assert "max |onnx - torch|" in printed and "exported.json" in printed
    assert json.loads((tmp_path / "exported.json").read_text())["onnx"]["opset"] == 18
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    x = np.random.default_rng(5).random((2, 1, 33, 20), dtype=np.float32)
    np.testing.assert_allclose(
        _run(_session(out), x), _torch(load_model(weights)[0], x), rtol=0, atol=TOL
    )
    assert main(["export-onnx", "no-such-model", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_missing_exporter_packages_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails
    with pytest.raises(ImportError, match=r"napari-emdenoise\[onnx\]"):
        ox.export_onnx("hrstem", tmp_path / "m.onnx")
    assert main(["export-onnx", "hrstem", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "onnxscript" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "no-such-model"}, ValueError, "unknown model"),
        ({"model": "weights.pt"}, ValueError, "pickle"),
        ({"out": "model.onx"}, ValueError, r"must end in \.onnx"),
        ({"out": "afile.txt/model.onnx"}, ValueError, "not a folder"),
        ({"out": "adir.onnx"}, ValueError, "is a folder"),
        ({"out": "existing.onnx"}, FileExistsError, "overwrite"),
        ({"out": "existing_card.onnx"}, FileExistsError, "existing_card.json exists"),
        ({"opset": 13}, ValueError, "opset must be between 18"),
        ({"opset": "20"}, ValueError, "opset must be an int"),
        ({"check": "yes"}, ValueError, "check must be True or False"),
    ],
)
def test_bad_requests_are_refused_before_exporting(tmp_path, kwargs, error, match):
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "adir.onnx").mkdir()
    (tmp_path / "existing.onnx").write_bytes(b"x")
    (tmp_path / "existing_card.json").write_text("{}")
    args = {"model": "hrstem", "out": "fine.onnx", **kwargs}
    model = args.pop("model")
    model = str(tmp_path / model) if model.endswith(".pt") else model
    out = tmp_path / args.pop("out")
    with pytest.raises(error, match=match):
        ox.export_onnx(model, out, **args)
    assert not (tmp_path / "fine.onnx").exists()


def test_refuses_to_replace_the_source_model_card(tmp_path):
    weights = _save_tiny_dncnn(tmp_path)
    card_before = weights.with_suffix(".json").read_text()
    with pytest.raises(ValueError, match="would replace the model card"):
        ox.export_onnx(weights, weights.with_suffix(".onnx"), overwrite=True)
    assert weights.with_suffix(".json").read_text() == card_before
    assert not weights.with_suffix(".onnx").exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_unwritable_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            ox.export_onnx("hrstem", folder / "m.onnx")
    finally:
        folder.chmod(0o700)
