"""Tests of ``emdenoise restore-4d`` and of the EMPAD 4D-STEM reader it uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_emdenoise import restore_4dstem
from napari_emdenoise.cli import main
from napari_emdenoise.engine._stack4d_store import RECORD_KEY
from napari_emdenoise.io.readers import napari_get_reader, read_em

zarr = pytest.importorskip("zarr")
pytest.importorskip("dask")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Pix2Pix saved as a diffraction model (weights + card)."""
    import torch

    from napari_emdenoise.models.registry import ModelCard, build_model, save_model

    torch.manual_seed(0)
    model = build_model("pix2pix", "tiny")
    from napari_emdenoise.models.registry import named_configs

    card = ModelCard(
        name="tiny-4dstem",
        arch="pix2pix",
        config=named_configs("pix2pix")["tiny"],
        modality="diffraction",
        kind="hr",
    )
    return save_model(model, card, tmp_path_factory.mktemp("models"))


def _load(path: Path):
    from napari_emdenoise.models.registry import load_model

    return load_model(path)[0]


def test_restore_4d_npy_resumes_and_matches_the_engine(tmp_path, tiny_model, capsys):
    rng = np.random.default_rng(0)
    data = rng.poisson(3.0, (3, 4, 32, 32)).astype(np.uint16)
    src = tmp_path / "scan.npy"
    np.save(src, data)
    dst = tmp_path / "out.zarr"
    argv = ["restore-4d", str(src), "-o", str(dst), "--model", str(tiny_model), "--batch-size", "5"]
    assert main([*argv, "--workers", "0"]) == 0
    stored = zarr.open_array(str(dst), mode="r")
    want = restore_4dstem(data, model=_load(tiny_model))
    np.testing.assert_allclose(stored[...], want, rtol=1e-5, atol=1e-4)
    assert stored.attrs[RECORD_KEY]["complete"] is True
    assert "restored" in capsys.readouterr().out
    # same command again: every block is done, nothing to compute, same store
    assert main([*argv, "--workers", "0"]) == 0
    # on a local dask cluster (threads), with a region
    dst2 = tmp_path / "region.zarr"
    argv2 = ["restore-4d", str(src), "-o", str(dst2), "--model", str(tiny_model)]
    assert main([*argv2, "--workers", "2", "--region", "1:3,0:2"]) == 0
    want2 = restore_4dstem(data, model=_load(tiny_model), region="1:3,0:2")
    np.testing.assert_allclose(zarr.open_array(str(dst2))[...], want2, atol=1e-4)


def test_restore_4d_reports_bad_input_without_traceback(tmp_path, tiny_model, capsys):
    image = tmp_path / "image.npy"
    np.save(image, np.ones((16, 16, 16), np.float32))
    code = main(["restore-4d", str(image), "-o", str(tmp_path / "o.zarr"), "--model",
                 str(tiny_model), "--workers", "0"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "4D-STEM" in err and "Traceback" not in err
    assert main(["restore-4d", str(image), "-o", str(tmp_path / "o.tif")]) == 2
    assert ".zarr" in capsys.readouterr().err
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    scan = tmp_path / "scan.npy"
    np.save(scan, np.ones((2, 2, 16, 16), np.float32))
    assert main(["restore-4d", str(scan), "-o", str(foreign), "--model", str(tiny_model),
                 "--workers", "0"]) == 2  # fmt: skip
    assert (foreign / "notes.txt").read_text() == "mine"


def test_restore_4d_count_correction_options_reach_the_engine(tmp_path, tiny_model, capsys):
    data = np.random.default_rng(1).poisson(3.0, (2, 3, 32, 32)).astype(np.uint16)
    src = tmp_path / "scan.npy"
    np.save(src, data)
    dst = tmp_path / "out.zarr"
    argv = ["restore-4d", str(src), "-o", str(dst), "--model", str(tiny_model), "--workers", "0"]
    assert main([*argv, "--local-counts-sigma", "1", "--local-counts-passes", "2"]) == 0
    want = restore_4dstem(data, model=_load(tiny_model), local_counts_sigma=1.0,
                          local_counts_passes=2)  # fmt: skip
    np.testing.assert_allclose(zarr.open_array(str(dst))[...], want, rtol=1e-5, atol=1e-4)
    default = restore_4dstem(data, model=_load(tiny_model))
    assert np.abs(want - default).max() > 1e-3  # the options changed something
    for bad in ("0", "17", "two"):
        assert main([*argv, "--overwrite", "--local-counts-passes", bad]) == 2
        assert "--local-counts-passes" in capsys.readouterr().err


def _write_empad(folder: Path, scan: tuple[int, int]) -> tuple[Path, np.ndarray]:
    """A small EMPAD acquisition: (scan_y·scan_x) frames of 130×128 float32 (2 footer rows)."""
    rng = np.random.default_rng(2)
    frames = np.zeros((scan[0] * scan[1], 130, 128), "<f4")
    frames[:, :128] = rng.poisson(1.0, (scan[0] * scan[1], 128, 128))
    frames[:, 128:] = -1.0  # footer, must not appear in the data
    frames.tofile(folder / "scan_x3_y2.raw")
    xml = folder / "acquisition.xml"
    xml.write_text(
        '<root><raw_file filename="scan_x3_y2.raw"/>'
        f"<pix_x>{scan[1]}</pix_x><pix_y>{scan[0]}</pix_y><type>scan</type></root>"
    )
    return xml, frames[:, :128].reshape(*scan, 128, 128)


def test_empad_reads_lazily_from_xml_or_raw(tmp_path):
    xml, want = _write_empad(tmp_path, (2, 3))
    for path in (xml, tmp_path / "scan_x3_y2.raw"):
        [(data, meta)] = read_em(path, lazy=True)
        assert hasattr(data, "dask") and data.shape == (2, 3, 128, 128)
        np.testing.assert_array_equal(np.asarray(data), want)
        assert meta["format"] == "EMPAD"
        assert meta["axis_names"][2:] == ("det_y", "det_x")
    assert napari_get_reader(str(xml)) is not None
    other = tmp_path / "settings.xml"
    other.write_text("<config><a>1</a></config>")
    assert napari_get_reader(str(other)) is None
    with pytest.raises(ValueError, match="not an EMPAD"):
        read_em(other)
    lonely = tmp_path / "sub"
    lonely.mkdir()
    (lonely / "x.raw").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="no .xml"):
        read_em(lonely / "x.raw")


def test_restore_4d_empad_to_calibrated_store(tmp_path, tiny_model):
    xml, want = _write_empad(tmp_path, (2, 3))
    dst = tmp_path / "out.zarr"
    code = main(["restore-4d", str(xml), "-o", str(dst), "--model", str(tiny_model),
                 "--workers", "0", "--region", "0:1,1:3"])  # fmt: skip
    assert code == 0
    [(data, meta)] = read_em(dst)
    assert data.shape == (1, 2, 128, 128) and data.dtype == np.float32
    np.testing.assert_allclose(
        data, restore_4dstem(want[0:1, 1:3], model=_load(tiny_model)), rtol=1e-5, atol=1e-4
    )
    assert meta["axis_names"] == ("scan_y", "scan_x", "det_y", "det_x")
    assert len(meta["scale"]) == 4 and meta["translate"][1] == pytest.approx(meta["scale"][1])
