"""Hostile-but-realistic input: nothing the user owns is lost, nothing ends in a traceback.

Every case ends in a ``ValueError``/``OSError`` (subclass) with a message, or a
correct result. A writer that fails leaves the previous file, and any folder,
untouched; no command writes over its input, whatever the path spelling (hard
links, symlinks) and whatever ``--overwrite`` says.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import napari_emdenoise._validation as validation
from napari_emdenoise._validation import TooLargeError, as_float_image, check_fits_in_memory
from napari_emdenoise.cli import main
from napari_emdenoise.engine.predictor import TiledPredictor, restore, restore_dask
from napari_emdenoise.io import napari_get_reader, read_em, write_single_image, write_tif
from napari_emdenoise.io.writers import write_zarr
from napari_emdenoise.models.registry import (
    ModelCard,
    build_model,
    install_model,
    list_models,
    load_model,
    save_model,
)

tifffile = pytest.importorskip("tifffile")

GiB = 1 << 30


# ----------------------------------------------------------------------------- helpers


class Pointwise(nn.Module):
    """Pixel-independent stand-in for a network: tiling cannot change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scale * x)


class ReturnsNaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes), hidden ones included."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((32, 40)).astype(np.float32)


@pytest.fixture
def scan(tmp_path: Path, image: np.ndarray) -> Path:
    """An existing calibrated input file."""
    return Path(
        write_tif(tmp_path / "scan.tif", image, {"scale": (0.1, 0.1), "units": ("nm",) * 2})
    )


# ============================================================================= readers


_EXTENSIONS = ["tif", "npy", "dm3", "dm4", "ser", "mrc", "emd"]


def _needs(ext: str) -> None:
    if ext not in ("tif", "npy"):
        pytest.importorskip("rsciio")
    if ext == "emd":
        pytest.importorskip("h5py")


@pytest.mark.parametrize("ext", _EXTENSIONS)
def test_empty_file_is_a_value_error(tmp_path: Path, ext: str) -> None:
    _needs(ext)
    path = tmp_path / f"empty.{ext}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_em(path)
    assert path.read_bytes() == b""  # never modified


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ext=st.sampled_from(["tif", "npy", "mrc", "dm3"]),
    blob=st.binary(min_size=1, max_size=3000),
)
def test_random_bytes_are_a_value_error(tmp_path: Path, ext: str, blob: bytes) -> None:
    _needs(ext)
    path = tmp_path / f"junk.{ext}"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="junk"):
        read_em(path)
    assert path.read_bytes() == blob


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("ext", ["tif", "npy"])
def test_truncated_files_are_a_value_error(tmp_path: Path, ext: str, keep: float) -> None:
    data = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128)
    full = tmp_path / f"full.{ext}"
    if ext == "tif":
        tifffile.imwrite(full, data)
    else:
        np.save(full, data)
    raw = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ValueError, match="cut"):
        read_em(cut)


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize("lazy", [False, True])
def test_npy_whose_header_claims_a_huge_array(tmp_path: Path, lazy: bool) -> None:
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header((10**6, 10**6)) + b"\0" * 64)
    with pytest.raises(ValueError, match="huge"):
        read_em(path, lazy=lazy)


def test_tif_whose_header_claims_a_huge_image(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.float32))
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        for name in ("ImageWidth", "ImageLength"):
            tag = tags[name]
            fmt = "<I" if tag.dtype == 4 else "<H"
            value = 10**6 if fmt == "<I" else 65535
            struct.pack_into(fmt, raw, tag.valueoffset, value)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="huge"):
        read_em(path)


@pytest.fixture
def huge_zarr(tmp_path: Path) -> Path:
    """A zarr array whose metadata claims 10⁶ × 10⁶ float32 pixels (4 TB), no chunk on disk."""
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask")
    path = tmp_path / "huge.zarr"
    zarr.create_array(store=str(path), shape=(10**6, 10**6), chunks=(1024, 1024), dtype="f4")
    return path


def test_huge_zarr_is_refused_eagerly_and_opened_lazily(huge_zarr: Path) -> None:
    import dask.array as da

    with pytest.raises(TooLargeError, match="lazily") as info:
        read_em(huge_zarr)
    assert isinstance(info.value, ValueError) and "TiB" in str(info.value)
    ((lazy, _),) = read_em(huge_zarr, lazy=True)
    assert isinstance(lazy, da.Array) and lazy.shape == (10**6, 10**6)
    ((data, kwargs, kind),) = napari_get_reader(str(huge_zarr))(str(huge_zarr))
    assert isinstance(data, da.Array) and kind == "image"
    assert float(data[:4, :4].sum().compute()) == 0.0  # readable piecewise


def test_napari_reader_opens_every_zarr_lazily(tmp_path: Path, image: np.ndarray) -> None:
    da = pytest.importorskip("dask.array")
    path = write_zarr(tmp_path / "small.zarr", image)
    ((data, _, _),) = napari_get_reader(path)(path)
    assert isinstance(data, da.Array)
    np.testing.assert_array_equal(data.compute(), image)


def test_napari_reader_opens_large_files_lazily(
    tmp_path: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    da = pytest.importorskip("dask.array")
    import napari_emdenoise.io.readers as readers

    monkeypatch.setattr(readers, "_LAZY_BYTES", 100)  # every file counts as large
    tif = write_tif(tmp_path / "a.tif", np.stack([image, 2 * image]))
    np.save(tmp_path / "a.npy", image)
    for path in (tif, str(tmp_path / "a.npy")):
        ((data, _, _),) = napari_get_reader(path)(path)
        assert isinstance(data, da.Array), path
        expected = np.stack([image, 2 * image]) if path == tif else image
        np.testing.assert_array_equal(data.compute(), expected)


def test_folder_with_a_file_extension_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(ValueError, match="directory"):
        read_em(tmp_path / "folder.tif")


def test_eager_read_of_a_file_larger_than_memory(
    tmp_path: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "available_memory", lambda: 1000)
    for path in (write_tif(tmp_path / "a.tif", image), tmp_path / "a.npy"):
        np.save(tmp_path / "a.npy", image)
        with pytest.raises(TooLargeError, match="memory"):
            read_em(path)
        ((lazy, _),) = read_em(path, lazy=True)  # still opens lazily
        np.testing.assert_array_equal(np.asarray(lazy), image)
        ((data, _, _),) = napari_get_reader(str(path))(str(path))  # napari falls back to lazy
        assert not isinstance(data, np.ndarray) or isinstance(data, np.memmap)
        np.testing.assert_array_equal(np.asarray(data), image)


# ============================================================================= memory checks


def test_check_fits_in_memory_says_how_much() -> None:
    check_fits_in_memory(500, "a small thing", available=1000)
    with pytest.raises(TooLargeError, match=r"15\.0 GiB.*800 bytes.*try less"):
        check_fits_in_memory(15 * GiB, "a big thing", hint="try less", available=1000)
    with pytest.raises(MemoryError):  # also a MemoryError for callers that catch that
        check_fits_in_memory(float("inf"), "infinity", available=1000)


# ============================================================================= writers


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (np.int64, [-5, 0, 2**31 - 1]),  # fits int32
        (np.uint64, [0, 2**32 - 1]),  # fits uint32
        (np.int64, [-(2**40), 2**53]),  # exact in float64
        (np.uint64, [0, 2**52 + 1]),
    ],
)
def test_64_bit_integers_are_written_exactly(tmp_path: Path, dtype: type, values: list) -> None:
    data = np.zeros((6, 7), dtype)
    data.flat[: len(values)] = values
    ((back, _),) = read_em(write_tif(tmp_path / "i.tif", data, {}))
    assert [int(v) for v in np.asarray(back).flat[: len(values)]] == values
    np.testing.assert_array_equal(np.asarray(back).astype(dtype), data)


@pytest.mark.parametrize("hook", [False, True])
def test_failed_write_leaves_the_previous_file(
    tmp_path: Path, image: np.ndarray, hook: bool
) -> None:
    good = Path(write_tif(tmp_path / "good.tif", image))
    before = good.read_bytes()
    data = np.full((4, 4), 2**62, np.int64)  # no TIFF type holds it exactly
    with pytest.raises(ValueError, match="exactly"):
        if hook:
            write_single_image(str(good), data, {})
        else:
            write_tif(good, data, overwrite=True)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tif"]


def test_crash_during_the_write_leaves_the_previous_file(
    tmp_path: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = Path(write_tif(tmp_path / "good.tif", image))
    before = good.read_bytes()

    def half_then_fail(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\0 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_tif(good, image + 1, overwrite=True)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tif"]


_BAD_CALIBRATIONS = [
    {"scale": (0.0, 1.0)},
    {"scale": (1.0, -0.5)},
    {"scale": (float("nan"), 1.0)},
    {"scale": (1.0, float("inf"))},
    {"scale": ("big", 1.0)},
    {"scale": (1.0, 1.0), "translate": (float("nan"), 0.0)},
    {"scale": (1e300, 1.0), "units": ("m", "nm")},  # overflows in nm
]


@pytest.mark.parametrize("meta", _BAD_CALIBRATIONS)
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_bad_calibration_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, image: np.ndarray, meta: dict, suffix: str
) -> None:
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    with pytest.raises(ValueError, match="axis"):
        write_single_image(str(tmp_path / f"out{suffix}"), image, meta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ndim", [6, 7])
def test_more_than_five_axes_is_refused_for_tiff(tmp_path: Path, ndim: int) -> None:
    data = np.zeros((2,) * (ndim - 2) + (4, 4), np.float32)
    with pytest.raises(ValueError, match="zarr"):
        write_tif(tmp_path / "nd.tif", data)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["missing/out.tif", "folder.tif", "out.png", "out.ome", "out"])
def test_bad_targets_are_refused(tmp_path: Path, image: np.ndarray, target: str) -> None:
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises((ValueError, OSError)) as info:
        write_tif(tmp_path / target, image, overwrite=True)
    assert str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.tif"]


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink"])
def test_writer_never_overwrites_the_source_of_the_image(
    tmp_path: Path, scan: Path, how: str
) -> None:
    ((data, meta),) = read_em(scan)
    before = scan.read_bytes()
    target = tmp_path / "other.tif"
    if how == "same":
        target = scan
    elif how == "hardlink":
        os.link(scan, target)
    else:
        target.symlink_to(scan)
    layer_meta = {"scale": meta["scale"], "metadata": meta}  # as napari hands it over
    with pytest.raises(ValueError, match="read from"):
        write_single_image(str(target), data + 1, layer_meta)
    assert scan.read_bytes() == before


# ----------------------------------------------------------------------------- zarr


@pytest.fixture
def zarr_mod():
    pytest.importorskip("dask")
    return pytest.importorskip("zarr")


def test_zarr_writer_never_deletes_a_folder_it_did_not_write(
    tmp_path: Path, image: np.ndarray, zarr_mod
) -> None:
    precious = tmp_path / "precious.zarr"
    (precious / "raw").mkdir(parents=True)
    (precious / "raw" / "data.bin").write_bytes(b"irreplaceable")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not a zarr store written by napari-emdenoise"):
        write_single_image(str(precious), image, {})
    assert _snapshot(tmp_path) == before


def test_zarr_writer_refuses_foreign_stores_files_and_links(
    tmp_path: Path, image: np.ndarray, zarr_mod
) -> None:
    foreign = tmp_path / "foreign.zarr"  # a real zarr store, not ours
    arr = zarr_mod.create_array(store=str(foreign), shape=(4, 4), dtype="f4")
    arr[...] = 7
    (tmp_path / "file.zarr").write_bytes(b"not a folder")
    ours = Path(write_zarr(tmp_path / "ours.zarr", image))
    (tmp_path / "link.zarr").symlink_to(ours, target_is_directory=True)
    tampered = Path(write_zarr(tmp_path / "tampered.zarr", image))
    (tampered / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    for name in ("foreign.zarr", "file.zarr", "link.zarr", "tampered.zarr"):
        with pytest.raises(ValueError, match="refusing"):
            write_zarr(tmp_path / name, image, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_zarr_writer_replaces_its_own_store_atomically(
    tmp_path: Path, image: np.ndarray, zarr_mod, monkeypatch: pytest.MonkeyPatch
) -> None:
    da = pytest.importorskip("dask.array")
    path = Path(write_zarr(tmp_path / "r.zarr", image))
    with pytest.raises(FileExistsError):
        write_zarr(path, image + 1)
    write_zarr(path, da.from_array(image + 1, chunks=(16, 16)), overwrite=True)
    np.testing.assert_array_equal(read_em(path)[0][0], image + 1)
    # a failure while writing the new store leaves the old one
    before = _snapshot(tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zarr_mod, "create_array", fail)
    with pytest.raises(OSError, match="disk full"):
        write_single_image(str(path), image + 2, {})
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


# ============================================================================= restore


@pytest.mark.parametrize(
    "tile", [0, 1, 2, 3, 8, 63, -64, True, 64.5, "64", (64,), (64, 64.0), [True, 64], {64: 64}]
)
def test_bad_or_tiny_tile_sizes_are_refused(image: np.ndarray, tile: object) -> None:
    with pytest.raises(ValueError, match="tile_size"):
        restore(image, model=Pointwise(), tile_size=tile)
    with pytest.raises(ValueError, match="tile_size"):
        restore_dask(image, model=Pointwise(), tile_size=tile)


@pytest.mark.parametrize("kwargs", [{"overlap": True}, {"overlap": 2.5}, {"batch_size": 0}])
def test_bad_tiling_arguments_are_refused(image: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        restore(image, model=Pointwise(), **kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TiledPredictor(Pointwise(), **kwargs)


def test_smallest_accepted_tile_gives_the_untiled_result() -> None:
    img = np.random.default_rng(1).random((150, 170)).astype(np.float32)
    net = Pointwise()
    whole = restore(img, model=net, tile_size=4096)
    np.testing.assert_allclose(restore(img, model=net, tile_size=64), whole, atol=1e-5)
    np.testing.assert_allclose(
        restore(img, model=net, tile_size=(64, 80), overlap=8), whole, atol=1e-5
    )


def test_tensor_input_with_gradients(image: np.ndarray) -> None:
    net = Pointwise()
    expected = restore(image, model=net)
    tensor = torch.from_numpy(image.copy()).requires_grad_(True)
    np.testing.assert_allclose(restore(tensor, model=net), expected, rtol=1e-6)
    stack = torch.stack([tensor, tensor])
    np.testing.assert_allclose(restore(stack, model=net), np.stack([expected] * 2), rtol=1e-6)
    np.testing.assert_allclose(restore_dask(tensor, model=net).compute(), expected, rtol=1e-6)
    assert tensor.requires_grad and torch.equal(tensor.detach(), torch.from_numpy(image))


def test_values_beyond_float32_are_not_called_nan() -> None:
    big = np.ones((16, 16))
    big[3, 4] = 1e39
    with pytest.raises(ValueError, match="float32 range") as info:
        restore(big, model=Pointwise())
    assert "NaN" not in str(info.value)
    bad = np.ones((16, 16))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        restore(bad, model=Pointwise())


def test_a_model_that_returns_nan_is_reported(image: np.ndarray) -> None:
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = restore(image, model=ReturnsNaN())
    assert np.isnan(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore(image, model=Pointwise())  # a sane model: no warning


_DTYPES = ["bool", "uint8", "int16", "uint16", "int64", "uint64", "float16", "float64", "complex64"]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 20), min_size=0, max_size=5).map(tuple),
    dtype=st.sampled_from(_DTYPES),
)
def test_restore_any_shape_and_dtype(shape: tuple[int, ...], dtype: str) -> None:
    rng = np.random.default_rng(len(shape))
    data = (rng.random(shape) * 100).astype(dtype)
    ok = len(shape) in (2, 3) and min(shape[-2:], default=0) >= 2 and 0 not in shape
    ok = ok and dtype != "complex64"
    if not ok:
        with pytest.raises(ValueError) as info:
            restore(data, refine=False, model=Pointwise())
        assert str(info.value)
        return
    out = restore(data, refine=False, model=Pointwise())
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, np.tanh(0.5 * data.astype(np.float32)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 8), (8,), (2, 2, 2, 2), ()])
def test_restore_dask_refuses_bad_shapes_up_front(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        restore_dask(np.zeros(shape), model=Pointwise())


def test_as_float_image_never_modifies_its_input() -> None:
    data = np.arange(12.0).reshape(3, 4)
    out = as_float_image(data)
    out += 1
    np.testing.assert_array_equal(data, np.arange(12.0).reshape(3, 4))


# ============================================================================= model loading


def _write_card(folder: Path, name: str, arch: str, config: dict) -> Path:
    card = ModelCard(name=name, arch=arch, config=config, modality="stem", kind="hr")
    (folder / f"{name}.json").write_text(card.to_json(), encoding="utf-8")
    return folder / f"{name}.safetensors"


def _small_weights(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(16, 16)}, str(path))  # about 1 KB


@pytest.mark.parametrize(
    ("features", "match"), [(2048, "parameters"), (1024, "do not match"), (8, "do not match")]
)
def test_crafted_card_is_refused_before_the_network_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features: int, match: str
) -> None:
    """A 1 KB weights file beside a card asking for up to 1.2 GB of parameters."""
    import napari_emdenoise.models.registry as registry

    weights = _write_card(tmp_path, "crafted", "dncnn", {"depth": 10, "features": features})
    _small_weights(weights)
    devices: list[str] = []
    real = registry.ARCHITECTURES["dncnn"]

    def recording(**config):
        devices.append(str(torch.get_default_device()))
        return real(**config)

    monkeypatch.setitem(registry.ARCHITECTURES, "dncnn", recording)
    with pytest.raises(ValueError, match=match):
        load_model(weights)
    assert devices == ["meta"]  # only the shape-only reference was built


@pytest.mark.parametrize(
    ("arch", "config", "match"),
    [
        ("dncnn", {"depth": 10, "features": 100_000}, "larger"),
        ("cgrdn", {"n_grdb": 64, "n_rdb": 64, "n_conv": 64}, "layers"),
        ("dncnn", {"depth": 2000, "features": 2048}, "parameters"),
    ],
)
def test_card_size_is_bounded(tmp_path: Path, arch: str, config: dict, match: str) -> None:
    weights = _write_card(tmp_path, "big", arch, config)
    _small_weights(weights)
    with pytest.raises(ValueError, match=match):
        load_model(weights)


def _torch_pickle(path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, path)


@pytest.mark.parametrize(
    "make",
    [
        _torch_pickle,
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        _small_weights,  # valid safetensors, wrong tensors for the card
    ],
    ids=["pickle", "empty", "random", "mismatch"],
)
def test_install_model_validates_the_weights(tmp_path: Path, make) -> None:
    src = tmp_path / "src"
    src.mkdir()
    weights = _write_card(src, "evil", "cgrdn", build_model("cgrdn", "tiny").config.to_dict())
    make(weights)
    target = tmp_path / "installed"
    with pytest.raises(ValueError):
        install_model(weights, target)
    assert not target.exists() or list(target.iterdir()) == []
    assert "evil" not in list_models(extra_dirs=[target])


def test_install_model_refuses_a_card_named_otherwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny")
    card = ModelCard(
        name="right", arch="cgrdn", config=model.config.to_dict(), modality="stem", kind="hr"
    )
    weights = save_model(model, card, tmp_path / "src")
    renamed = weights.with_name("wrong.safetensors")
    weights.rename(renamed)
    weights.with_suffix(".json").rename(renamed.with_suffix(".json"))
    with pytest.raises(ValueError, match="names the model"):
        install_model(renamed, tmp_path / "installed")
    assert not (tmp_path / "installed").exists()


@pytest.mark.parametrize("keep", [0, 8, 100, 1000])
def test_truncated_safetensors_is_a_value_error(tmp_path: Path, keep: int) -> None:
    torch.manual_seed(0)
    model = build_model("cgrdn", "tiny")
    card = ModelCard(
        name="cut", arch="cgrdn", config=model.config.to_dict(), modality="stem", kind="hr"
    )
    weights = save_model(model, card, tmp_path)
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(ValueError, match="cut"):
        load_model(weights)


# ============================================================================= noise parameters


def test_unknown_layer_parameter_is_refused_by_name() -> None:
    from napari_emdenoise.noise import NoiseParams

    params = NoiseParams.default("stem")
    name, layer = next(iter(params.layers.items()))
    good = layer.to_dict()
    field = next(k for k in good if k != "enabled")
    with pytest.raises(ValueError, match=rf"{field}x.*did you mean '{field}'"):
        type(layer).from_dict({**good, f"{field}x": good[field]})
    with pytest.raises(ValueError, match="must be a dict"):
        type(layer).from_dict([1, 2])
    with pytest.raises(ValueError, match="foo"):
        NoiseParams.from_dict({"modality": "stem", "layers": {name: {"foo": 1}}})


def test_distort_refuses_unknown_top_level_parameters() -> None:
    from napari_emdenoise.noise import distort

    clean = np.random.default_rng(0).random((16, 16))
    with pytest.raises(ValueError, match="foo"):
        distort(clean, "stem", params={"foo": 1}, rng=0)


# ============================================================================= CLI: restore


def _rc(argv: list[str]) -> int:
    return main([str(a) for a in argv])


def test_residual_may_not_overwrite_the_input(
    tmp_path: Path, image: np.ndarray, tiny_user_model: str, capsys
) -> None:
    src = Path(write_tif(tmp_path / "scan_residual.tif", image))
    before = _snapshot(tmp_path)
    argv = ["restore", src, "-o", tmp_path / "scan.tif", "--residual", "--model", tiny_user_model]
    assert _rc([*argv, "--overwrite"]) == 2
    assert "must not overwrite the input" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before  # neither the input nor a partial output


def test_existing_residual_stops_the_run_before_anything_is_written(
    tmp_path: Path, scan: Path, tiny_user_model: str, capsys
) -> None:
    (tmp_path / "out_residual.tif").write_bytes(b"keep me")
    before = _snapshot(tmp_path)
    argv = ["restore", scan, "-o", tmp_path / "out.tif", "--residual", "--model", tiny_user_model]
    assert _rc(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert _rc([*argv, "--overwrite"]) == 0
    assert (tmp_path / "out.tif").exists()
    assert read_em(tmp_path / "out_residual.tif")[0][0].shape == (32, 40)


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "dotted"])
@pytest.mark.parametrize("residual", [False, True])
def test_restore_never_overwrites_its_input(
    tmp_path: Path, scan: Path, tiny_user_model: str, how: str, residual: bool
) -> None:
    out = tmp_path / "out.tif"
    if how == "same":
        out = scan
    elif how == "hardlink":
        os.link(scan, out)
    elif how == "symlink":
        out.symlink_to(scan)
    else:
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "scan.tif"
    if residual:  # the input is the residual path of the output
        res = tmp_path / "r_residual.tif"
        if how == "hardlink":
            os.link(scan, res)
        elif how == "symlink":
            res.symlink_to(scan)
        else:
            res = scan.rename(res)
            scan = res
        out = tmp_path / "r.tif"
    before = scan.read_bytes()
    argv = ["restore", scan, "-o", out, "--model", tiny_user_model, "--overwrite"]
    assert _rc([*argv, "--residual"] if residual else argv) == 2
    assert scan.read_bytes() == before


@pytest.mark.parametrize(
    ("output", "extra", "match"),
    [
        ("out.png", [], "must end in"),
        ("missing/out.tif", [], "does not exist"),
        ("folder.tif", ["--overwrite"], "folder"),
        ("taken.tif", [], "--overwrite"),
        ("out.tif", ["--tile-size", "8"], "tile_size"),
        ("out.tif", ["--model", "no-such-model"], "unknown model"),
        ("out.tif", ["--device", "tpu9"], "device"),
    ],
)
def test_restore_checks_everything_before_reading_the_input(
    tmp_path: Path,
    scan: Path,
    tiny_user_model: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    output: str,
    extra: list[str],
    match: str,
) -> None:
    import napari_emdenoise.io.readers as readers

    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "taken.tif").write_bytes(b"keep")

    def no_read(*args, **kwargs):
        raise AssertionError("the input was read before the arguments were checked")

    monkeypatch.setattr(readers, "read_em", no_read)
    before = _snapshot(tmp_path)
    argv = ["restore", scan, "-o", tmp_path / output, "--model", tiny_user_model, *extra]
    assert _rc(argv) == 2
    assert match in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "-1"],
        ["--dataset", "3"],
        ["--tile-size", "0"],
        ["--tile-size", "64.5"],
    ],
)
def test_restore_bad_numbers(
    tmp_path: Path, scan: Path, tiny_user_model: str, argv: list[str], capsys
) -> None:
    assert _rc(["restore", scan, "-o", tmp_path / "o.tif", "--model", tiny_user_model, *argv]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_restore_refuses_colour_images(tmp_path: Path, tiny_user_model: str, capsys) -> None:
    rgb = np.random.default_rng(2).integers(0, 255, (24, 24, 3)).astype(np.uint8)
    src = write_tif(tmp_path / "photo.tif", rgb, {"rgb": True})
    assert _rc(["restore", src, "-o", tmp_path / "o.tif", "--model", tiny_user_model]) == 2
    assert "RGB" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", None])
def test_restore_unreadable_inputs(
    tmp_path: Path, tiny_user_model: str, content: bytes | None, capsys
) -> None:
    src = tmp_path / "in.npy"
    if content is not None:
        src.write_bytes(content)
    assert _rc(["restore", src, "-o", tmp_path / "o.tif", "--model", tiny_user_model]) == 2
    assert "in.npy" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


# ============================================================================= CLI: simulate


def test_simulate_never_overwrites_without_permission(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sim"
    out.mkdir()
    for name in ("clean.tif", "distorted.tif", "params.json"):
        (out / name).write_bytes(b"my data")
    before = _snapshot(tmp_path)
    argv = ["simulate", "--size", "16", "--out-dir", out]
    assert _rc(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert _rc([*argv, "--overwrite"]) == 0
    assert tifffile.imread(out / "clean.tif").shape == (16, 16)
    assert _no_temp_files(tmp_path)


def test_simulate_never_overwrites_its_settings_file(tmp_path: Path) -> None:
    from napari_emdenoise.noise import NoiseParams

    out = tmp_path / "sim"
    settings_file = NoiseParams.default("stem").save(out / "params.json")
    before = settings_file.read_bytes()
    argv = ["simulate", "--size", "16", "--params", settings_file, "--out-dir", out, "--overwrite"]
    assert _rc(argv) == 2
    assert settings_file.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["params.json"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--count", "-1"],
        ["--count", "0"],
        ["--size", "0"],
        ["--size", "4"],
        ["--height", "-3"],
        ["--seed", "-1"],
        ["--size", "big"],
    ],
)
def test_simulate_bad_numbers_write_nothing(tmp_path: Path, argv: list[str], capsys) -> None:
    out = tmp_path / "sim"
    assert _rc(["simulate", *argv, "--out-dir", out]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "wrote" not in err
    assert not out.exists()


@pytest.mark.parametrize("size", ["1000000", "20000"])
@pytest.mark.parametrize("kind", ["hr", "lr"])
def test_simulate_sizes_beyond_memory_are_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, size: str, kind: str
) -> None:
    monkeypatch.setattr(validation, "available_memory", lambda: 8 * GiB)
    out = tmp_path / "sim"
    assert _rc(["simulate", "--kind", kind, "--size", size, "--out-dir", out]) == 2
    err = capsys.readouterr().err
    assert "memory" in err and "fit" in err
    assert not out.exists()


def test_simulate_out_dir_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert _rc(["simulate", "--size", "16", "--out-dir", tmp_path / "f"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_bytes() == b"x"


# ============================================================================= CLI: other commands


def test_demo_refuses_to_overwrite_its_outputs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "restored.tif").write_bytes(b"earlier run")
    assert _rc(["demo", "--size", "32", "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["restored.tif"]


@pytest.mark.parametrize(
    "argv", [["--size", "8"], ["--index", "-1"], ["--dose", "0"], ["--dose", "nan"]]
)
def test_demo_bad_numbers(tmp_path: Path, argv: list[str]) -> None:
    assert _rc(["demo", *argv, "--out", tmp_path / "d"]) == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("how", ["same", "hardlink", "wrong-suffix", "exists"])
def test_fit_noise_never_overwrites_the_image(tmp_path: Path, scan: Path, how: str, capsys) -> None:
    out = tmp_path / "noise.json"
    if how == "same":
        out = scan
    elif how == "hardlink":
        out = tmp_path / "link.json"
        os.link(scan, out)
    elif how == "wrong-suffix":
        out = tmp_path / "noise.tif"
    else:
        out.write_text("{}")
    before = _snapshot(tmp_path)
    overwrite = ["--overwrite"] if how != "exists" else []
    assert _rc(["fit-noise", scan, "--out", out, *overwrite]) == 2
    assert capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_export_onnx_never_replaces_the_source_card(
    tmp_path: Path, tiny_user_model: str, capsys
) -> None:
    (weights,) = [c.weights_path for n, c in list_models().items() if n == tiny_user_model]
    folder = weights.parent
    before = _snapshot(folder)
    out = folder / f"{tiny_user_model}.onnx"  # its card would be the model's own card
    assert _rc(["export-onnx", weights, "--out", out, "--overwrite"]) == 2
    assert "must not overwrite the input" in capsys.readouterr().err
    assert _snapshot(folder) == before
    assert _rc(["export-onnx", tiny_user_model, "--out", tmp_path / "x.txt"]) == 2


def _fake_checkpoint(folder: Path, **config) -> Path:
    from napari_emdenoise.training.checkpoints import CHECKPOINT_NAME, save_checkpoint
    from napari_emdenoise.training.trainer import TrainConfig

    base = TrainConfig(out_dir=str(folder)).to_dict()
    state = {"step": 1, "generator": {"bogus.weight": torch.zeros(3)}, "opt_g": {}}
    return save_checkpoint(folder / CHECKPOINT_NAME, state, {**base, **config})


@pytest.mark.parametrize(
    ("saved", "argv"),
    [
        ({"arch": "dncnn", "model_config": "small"}, ["--arch", "cgrdn", "--config", "tiny"]),
        ({"arch": "cgrdn", "model_config": "small"}, ["--arch", "cgrdn", "--config", "tiny"]),
    ],
)
def test_train_resumed_with_another_configuration(
    tmp_path: Path, capsys, saved: dict, argv: list[str]
) -> None:
    run = tmp_path / "runA"
    checkpoint = _fake_checkpoint(run, **saved)
    before = checkpoint.read_bytes()
    tiny = ["--steps", "1", "--batch", "1", "--patch", "16", "--val-size", "1", "--workers", "0"]
    assert _rc(["train", "--out", run, *tiny, *argv]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "--restart" in err
    assert checkpoint.read_bytes() == before


def test_train_checkpoint_that_does_not_fit_the_network(tmp_path: Path, capsys) -> None:
    """Same declared settings, different tensors (e.g. another version): a clear error."""
    run = tmp_path / "runB"
    _fake_checkpoint(run, arch="cgrdn", model_config="tiny")
    argv = ["train", "--out", run, "--config", "tiny", "--steps", "1", "--batch", "1"]
    argv += ["--patch", "16", "--val-size", "1", "--workers", "0", "--threads", "1"]
    assert _rc(argv) == 2
    err = capsys.readouterr().err
    assert "--restart" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "0"],
        ["--steps", "-5"],
        ["--batch", "0"],
        ["--patch", "8"],
        ["--lr", "-1"],
        ["--lr", "inf"],
        ["--adversarial", "-0.1"],
        ["--workers", "-1"],
        ["--loss-weights", "{l1: 3}"],
        ["--loss-weights", "[1, 2]"],
        ["--diffraction", '{"overlap_probability": 2}'],
        ["--config", '{"ngf": 0}'],
    ],
)
def test_train_bad_numbers(tmp_path: Path, argv: list[str], capsys) -> None:
    # a tiny run, should the bad value ever be accepted; the last occurrence of an option wins
    tiny = ["--steps", "1", "--batch", "1", "--patch", "16", "--val-size", "1", "--workers", "0"]
    assert _rc(["train", "--out", tmp_path / "run", *tiny, *argv]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_json_settings_reach_the_model_card(tmp_path: Path) -> None:
    """--config, --loss-weights and --diffraction as JSON: recorded in the exported card."""
    argv = ["train", "--out", tmp_path / "run", "--model", "p2p_json", "--arch", "pix2pix"]
    argv += ["--modality", "diffraction", "--patch", "32", "--steps", "1", "--batch", "1"]
    argv += ["--val-size", "1", "--workers", "0", "--threads", "1"]
    argv += ["--config", '{"ngf": 4, "pattern_size": 32, "prior_sigma": 2.0}']
    argv += ["--loss-weights", '{"l1": 30, "l2": 10}', "--adversarial", "0"]
    argv += ["--diffraction", '{"coherent_probability": 0.7, "overlap_ratio_range": [0.55, 2]}']
    assert _rc(argv) == 0
    card = json.loads((tmp_path / "run" / "p2p_json.json").read_text())
    assert card["config"]["prior_sigma"] == 2.0 and card["config"]["ngf"] == 4
    weights = card["training"]["loss_weights"]
    assert (weights["l1"], weights["l2"], weights["adversarial"]) == (30, 10, 0)
    diffraction = card["training"]["noise"]["diffraction"]
    assert diffraction["coherent_probability"] == 0.7
    assert diffraction["overlap_ratio_range"] == [0.55, 2]


def test_train_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").write_bytes(b"x")
    argv = ["train", "--out", tmp_path / "run", "--steps", "1", "--batch", "1", "--patch", "16"]
    assert _rc([*argv, "--val-size", "1", "--workers", "0"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert (tmp_path / "run").read_bytes() == b"x"


def test_check_resumable_accepts_the_same_settings(tmp_path: Path) -> None:
    from napari_emdenoise.training.checkpoints import check_resumable
    from napari_emdenoise.training.trainer import TrainConfig

    config = TrainConfig(model_config={"features": 8, "n_conv": 2}).to_dict()
    checkpoint = _fake_checkpoint(tmp_path, **config)
    check_resumable(checkpoint, json.loads(json.dumps(config)))
    check_resumable(tmp_path / "missing.pt", config)  # nothing to resume: fine
    with pytest.raises(ValueError, match="model_config"):
        check_resumable(checkpoint, {**config, "model_config": {"features": 16, "n_conv": 2}})


def test_train_never_overwrites_the_model_it_starts_from(
    tmp_path: Path, tiny_user_model: str, capsys
) -> None:
    weights = list_models()[tiny_user_model].weights_path
    before = _snapshot(weights.parent)
    argv = ["train", "--model", tiny_user_model, "--config", "tiny", "--init-from", weights]
    argv += ["--out", weights.parent, "--steps", "1", "--batch", "1", "--patch", "16"]
    assert _rc([*argv, "--val-size", "1", "--workers", "0", "--restart"]) == 2
    assert "which is the input" in capsys.readouterr().err
    assert _snapshot(weights.parent) == before


def test_train_refuses_a_bad_model_name_before_training(tmp_path: Path, capsys) -> None:
    argv = ["train", "--model", "no/good", "--out", tmp_path / "run", "--steps", "1"]
    assert _rc(argv) == 2
    assert "not a valid file stem" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


#: The smallest CLI training run: one thread, no worker processes, on the CPU.
_TINY_RUN = ["--steps", "1", "--batch", "1", "--patch", "32", "--val-size", "1"]
_TINY_RUN += ["--workers", "0", "--threads", "1", "--device", "cpu"]


def test_train_pair_fractions_reach_the_run(tmp_path: Path) -> None:
    from napari_emdenoise.training.checkpoints import CHECKPOINT_NAME, load_checkpoint

    run = tmp_path / "run"
    argv = ["train", "--model", "mixed", "--config", "tiny", "--out", run, *_TINY_RUN]
    argv += ["--steps", "2", "--batch", "2", "--val-size", "2"]
    argv += ["--plain-fraction", "0.3", "--high-dose-fraction", "0.2"]
    assert _rc([*argv, "--fine-lattice-fraction", "0.4"]) == 0
    training = json.loads((run / "mixed.json").read_text())["training"]
    assert training["plain_fraction"] == 0.3 and training["high_dose_fraction"] == 0.2
    assert training["fine_lattice_fraction"] == 0.4
    pairs = load_checkpoint(run / CHECKPOINT_NAME)[1]["pairs"]
    assert pairs["plain_fraction"] == 0.3 and pairs["high_dose_fraction"] == 0.2
    assert pairs["fine_lattice_fraction"] == 0.4


@pytest.mark.parametrize(
    "option", ["--plain-fraction", "--high-dose-fraction", "--fine-lattice-fraction"]
)
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf", "half"])
def test_train_fraction_outside_zero_one(tmp_path: Path, option: str, value: str, capsys) -> None:
    argv = ["train", "--config", "tiny", "--out", tmp_path / "run", *_TINY_RUN, option, value]
    assert _rc(argv) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_init_partial_needs_init_from(tmp_path: Path, capsys) -> None:
    argv = ["train", "--config", "tiny", "--out", tmp_path / "run", *_TINY_RUN, "--init-partial"]
    assert _rc(argv) == 2
    assert "--init-partial needs --init-from" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_init_partial_carries_a_model_to_another_configuration(
    tmp_path: Path, monkeypatch
) -> None:
    import napari_emdenoise.training.trainer as trainer

    seed_run = tmp_path / "seed"
    argv = ["train", "--model", "seedling", "--config", "tiny", "--out", seed_run, *_TINY_RUN]
    assert _rc(argv) == 0
    source = seed_run / "seedling.safetensors"
    copied: list[list[str]] = []

    def record(src, target):
        copied.append(copy_matching(src, target))
        return copied[-1]

    copy_matching = trainer.copy_matching_tensors
    monkeypatch.setattr(trainer, "copy_matching_tensors", record)
    run = tmp_path / "grown"
    argv = ["train", "--model", "grown", "--config", "small", "--out", run, *_TINY_RUN]
    assert _rc([*argv, "--init-from", source, "--init-partial"]) == 0
    card = json.loads((run / "grown.json").read_text())
    assert card["config"]["features"] == 32  # the small network, not the tiny source
    assert card["training"]["steps"] == 1 and card["training"]["init_partial"] is True
    assert card["training"]["init_from"] == str(source)
    small = build_model("cgrdn", "small").state_dict()
    tiny = load_model(source)[0].state_dict()
    assert copied == [[k for k, v in small.items() if k in tiny and tiny[k].shape == v.shape]]
