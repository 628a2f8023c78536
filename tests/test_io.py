"""EM file readers and writers: calibrated round trips, synthetic vendor files, corrupt files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from napari_emdenoise.io import (
    SUPPORTED_EXTENSIONS,
    napari_get_reader,
    read_em,
    write_single_image,
    write_tif,
    write_zarr,
)
from napari_emdenoise.io._units import to_nm

tifffile = pytest.importorskip("tifffile")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((24, 36)).astype(np.float32)


# ----------------------------------------------------------------------------- synthetic files
# Minimal writers for formats nothing here can write, following the published layouts
# (MRC2014 header, FEI TIA series, Gatan DM3/DM4 tag tree).


def _write_mrc(path: Path, data: np.ndarray, pixel_angstrom: float) -> None:
    """MRC2014, mode 2 (float32), little-endian; cell lengths in Å."""
    nz, ny, nx = (1, *data.shape) if data.ndim == 2 else data.shape
    header = bytearray(1024)
    struct.pack_into("<3i", header, 0, nx, ny, nz)
    struct.pack_into("<i", header, 12, 2)  # mode: float32
    struct.pack_into("<3i", header, 28, nx, ny, nz)  # sampling grid
    struct.pack_into("<3f", header, 40, nx * pixel_angstrom, ny * pixel_angstrom, nz * 1.0)
    struct.pack_into("<3f", header, 52, 90.0, 90.0, 90.0)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    struct.pack_into("<3f", header, 76, data.min(), data.max(), data.mean())
    header[208:212] = b"MAP "
    header[212:214] = b"\x44\x44"
    path.write_bytes(bytes(header) + data.astype("<f4").tobytes())


def _write_ser(path: Path, data: np.ndarray, pixel_m: float) -> None:
    """FEI TIA series file holding one 2-D float32 image calibrated in metres."""
    ny, nx = data.shape
    units = b"meters"
    description = b"Number"
    head = struct.pack("<HHHIIII", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, 1, 1)
    dims = struct.pack("<IddII", 1, 0.0, 1.0, 0, len(description)) + description
    dims += struct.pack("<I", len(units)) + units
    offset_array_at = 30 + len(dims)
    data_at = offset_array_at + 8
    head += struct.pack("<II", offset_array_at, 1)  # OffsetArrayOffset, NumberDimensions
    element = struct.pack("<ddIddIHII", 0.0, pixel_m, 0, 0.0, pixel_m, 0, 7, nx, ny)
    element += data[::-1].astype("<f4").tobytes()  # TIA stores the rows bottom-up
    tag_at = data_at + len(element)
    offsets = struct.pack("<II", data_at, tag_at)
    tag = struct.pack("<HHI", 0x4152, 0, 0)
    path.write_bytes(head + dims + offsets + element + tag)


def _write_dm(
    path: Path, data: np.ndarray, scale: float, unit: str, title: str, version: int
) -> None:
    """Gatan DM3/DM4 file with one float32 image, its calibration and a title."""
    length = ">I" if version == 3 else ">Q"

    def n(value: int) -> bytes:
        return struct.pack(length, value)

    def header(tag_id: int, name: str) -> bytes:
        return struct.pack(">bh", tag_id, len(name)) + name.encode()

    def data_tag(name: str, info: list[int], payload: bytes) -> bytes:
        size = n(0) if version == 4 else b""
        return header(21, name) + size + b"%%%%" + n(len(info)) + b"".join(map(n, info)) + payload

    def simple(name: str, code: int, fmt: str, value: float) -> bytes:
        return data_tag(name, [code], struct.pack("<" + fmt, value))

    def text(name: str, value: str) -> bytes:  # array of uint16 characters
        return data_tag(name, [20, 4, len(value)], struct.pack(f"<{len(value)}H", *map(ord, value)))

    def group(name: str, children: list[bytes]) -> bytes:
        size = n(0) if version == 4 else b""
        return header(20, name) + b"\x00\x01" + size + n(len(children)) + b"".join(children)

    ny, nx = data.shape
    calibrations = group(
        "Calibrations",
        [
            group(
                "Brightness",
                [
                    simple("Origin", 6, "f", 0.0),
                    simple("Scale", 6, "f", 1.0),
                    text("Units", "counts"),
                ],
            ),
            group(
                "Dimension",
                [
                    group(
                        "",
                        [
                            simple("Origin", 6, "f", 0.0),
                            simple("Scale", 6, "f", scale),
                            text("Units", unit),
                        ],
                    )
                    for _ in range(2)
                ],
            ),
        ],
    )
    image_data = group(
        "ImageData",
        [
            calibrations,
            data_tag("Data", [20, 6, data.size], data.astype("<f4").tobytes()),
            simple("DataType", 3, "i", 2),  # 2 = float32
            group("Dimensions", [simple("", 3, "i", nx), simple("", 3, "i", ny)]),
        ],
    )
    image_tags = group("ImageTags", [group("Microscope Info", [simple("Voltage", 7, "d", 2e5)])])
    image = group("", [image_data, image_tags, text("Name", title)])
    root = b"\x00\x01" + n(1) + group("ImageList", [image])
    body = struct.pack(">I", version) + n(0) + struct.pack(">I", 1) + root
    path.write_bytes(body + b"\x00" * 8)


# ----------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("scale", "unit", "expected"),
    [
        (2.0, "Å", (0.2, "nm")),
        (2.0, "A", (0.2, "nm")),
        (0.5, "µm", (500.0, "nm")),
        (0.5, "μm", (500.0, "nm")),
        (0.5, "micron", (500.0, "nm")),
        (3e-10, "m", (0.3, "nm")),
        (1.5, "nanometer", (1.5, "nm")),
        (0.2, "1/Å", (2.0, "1/nm")),
        (0.2, "1 / angstrom", (2.0, "1/nm")),
        (4e8, "1/m", (0.4, "1/nm")),
        (0.01, "nm^-1", (0.01, "1/nm")),
        (1.0, None, (1.0, "pixel")),
        (1.0, "<undefined>", (1.0, "pixel")),
        (0.1, "s", (0.1, "s")),
        (0.1, "second", (0.1, "s")),
        (0.3, "eV", (0.3, "eV")),
    ],
)
def test_unit_conversion_to_nm(scale: float, unit: str | None, expected: tuple) -> None:
    value, name = to_nm(scale, unit)
    assert name == expected[1]
    assert value == pytest.approx(expected[0], rel=1e-12)


# ----------------------------------------------------------------------------- TIFF / zarr / npy


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.uint8, np.int16, np.float64, np.int32])
def test_tif_round_trip_keeps_data_and_scale(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(1)
    data = (rng.random((3, 20, 30)) * 200).astype(dtype)
    meta = {"scale": (1.5, 0.0123, 0.0234), "units": ("nm", "µm", "µm"), "name": "frames"}
    written = write_tif(tmp_path / "a.tif", data, meta)
    ((back, info),) = read_em(written)
    np.testing.assert_array_equal(back, data)  # values exact (dtype may widen for ImageJ)
    assert info["units"][-2:] == ("nm", "nm")
    assert info["scale"][-2:] == pytest.approx((12.3, 23.4), rel=1e-9)
    assert info["name"] == "frames"


def test_tif_translate_and_z_spacing_survive_imagej(tmp_path: Path, image: np.ndarray) -> None:
    stack = np.stack([image, image + 1])
    meta = {"scale": (5.0, 0.2, 0.4), "units": ("nm", "nm", "nm"), "translate": (0, 3.0, -2.0)}
    ((back, info),) = read_em(write_tif(tmp_path / "t.tif", stack, meta))
    assert info["scale"] == pytest.approx((5.0, 0.2, 0.4))
    assert info["translate"] == pytest.approx((0.0, 3.0, -2.0))
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:  # plain ImageJ tags for Fiji
        ij = tif.imagej_metadata
        assert ij["unit"] == "nm" and ij["spacing"] == pytest.approx(5.0)
        xres = tif.pages.first.tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.4, rel=1e-6)


def test_tif_written_by_imagej_in_microns_is_read_in_nm(tmp_path: Path, image: np.ndarray) -> None:
    """A file written by another program: only the resolution tags and the unit."""
    tifffile.imwrite(
        tmp_path / "fiji.tif",
        image,
        imagej=True,
        resolution=(1 / 0.0025, 1 / 0.0025),
        metadata={"unit": "micron"},
    )
    ((_, info),) = read_em(tmp_path / "fiji.tif")
    assert info["units"] == ("nm", "nm") and info["scale"] == pytest.approx((2.5, 2.5), rel=1e-6)


def test_plain_tif_is_uncalibrated(tmp_path: Path, image: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", image)
    ((back, info),) = read_em(tmp_path / "plain.tif")
    np.testing.assert_array_equal(back, image)
    assert info["scale"] == (1.0, 1.0) and info["units"] == ("pixel", "pixel")


def test_rgb_tif(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 255, (10, 12, 3)).astype(np.uint8)
    path = write_tif(
        tmp_path / "rgb.tif", rgb, {"rgb": True, "scale": (2.0, 2.0), "units": ("nm", "nm")}
    )
    ((back, info),) = read_em(path)
    np.testing.assert_array_equal(back, rgb)
    assert info["rgb"] and info["scale"] == pytest.approx((2.0, 2.0))


def test_writer_refuses_to_overwrite_unless_asked(tmp_path: Path, image: np.ndarray) -> None:
    path = write_tif(tmp_path / "x.tif", image)
    with pytest.raises(FileExistsError):
        write_tif(path, image + 1)
    write_tif(path, image + 1, overwrite=True)
    np.testing.assert_array_equal(read_em(path)[0][0], image + 1)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("bad.png", np.zeros((4, 4))),
        ("c.tif", np.zeros((4, 4), complex)),
        ("1d.tif", np.zeros(4)),
        ("e.tif", np.zeros((0, 4))),
    ],
)
def test_writer_rejects_bad_input(tmp_path: Path, name: str, data: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_tif(tmp_path / name, data)


def test_zarr_round_trip_numpy_and_dask(tmp_path: Path, image: np.ndarray) -> None:
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    stack = np.stack([image, 2 * image, 3 * image])
    meta = {"scale": (1.0, 0.3, 0.3), "units": ("s", "Å", "Å"), "name": "movie"}
    for name, data in (("n.zarr", stack), ("d.zarr", da.from_array(stack, chunks=(1, 12, 36)))):
        ((back, info),) = read_em(write_zarr(tmp_path / name, data, meta))
        np.testing.assert_array_equal(np.asarray(back), stack)
        assert info["units"] == ("s", "nm", "nm")
        assert info["scale"] == pytest.approx((1.0, 0.03, 0.03))
        assert info["name"] == "movie"
    ((lazy, _),) = read_em(tmp_path / "d.zarr", lazy=True)
    assert isinstance(lazy, da.Array)


def test_npy(tmp_path: Path, image: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", image)
    ((back, info),) = read_em(tmp_path / "a.npy")
    np.testing.assert_array_equal(back, image)
    assert info["units"] == ("pixel", "pixel") and info["name"] == "a"
    ((mapped, _),) = read_em(tmp_path / "a.npy", lazy=True)
    assert isinstance(mapped, np.memmap)


# ----------------------------------------------------------------------------- vendor formats


def test_mrc_scale_from_angstrom_header(tmp_path: Path, image: np.ndarray) -> None:
    pytest.importorskip("rsciio")
    _write_mrc(tmp_path / "a.mrc", image, pixel_angstrom=1.7)
    ((back, info),) = read_em(tmp_path / "a.mrc")
    np.testing.assert_array_equal(back, image)
    assert info["units"] == ("nm", "nm")
    assert info["scale"] == pytest.approx((0.17, 0.17), rel=1e-6)
    assert info["format"] == "MRC"


def test_mrc_without_cell_is_uncalibrated(tmp_path: Path, image: np.ndarray) -> None:
    pytest.importorskip("rsciio")
    _write_mrc(tmp_path / "z.mrc", image, pixel_angstrom=0.0)
    ((_, info),) = read_em(tmp_path / "z.mrc")
    assert info["units"] == ("pixel", "pixel") and info["scale"] == (1.0, 1.0)


def test_ser_scale_from_metres(tmp_path: Path, image: np.ndarray) -> None:
    pytest.importorskip("rsciio")
    _write_ser(tmp_path / "a_1.ser", image, pixel_m=4.2e-11)
    ((back, info),) = read_em(tmp_path / "a_1.ser")
    np.testing.assert_array_equal(back, image)
    assert info["units"] == ("nm", "nm")
    assert info["scale"] == pytest.approx((0.042, 0.042), rel=1e-9)


@pytest.mark.parametrize(("version", "ext"), [(3, "dm3"), (4, "dm4")])
def test_dm_scale_title_and_metadata(
    tmp_path: Path, image: np.ndarray, version: int, ext: str
) -> None:
    pytest.importorskip("rsciio")
    path = tmp_path / f"a.{ext}"
    _write_dm(path, image, scale=0.25, unit="Å", title="HAADF 8Mx", version=version)
    ((back, info),) = read_em(path)
    np.testing.assert_array_equal(back, image)
    assert info["name"] == "HAADF 8Mx"
    assert info["units"] == ("nm", "nm") and info["scale"] == pytest.approx((0.025, 0.025))
    assert info["original_metadata"]["ImageList.TagGroup0.ImageTags.Microscope Info.Voltage"] == 2e5
    json.dumps(info["original_metadata"])  # JSON friendly


def test_emd_berkeley_written_by_rosettasciio(tmp_path: Path, image: np.ndarray) -> None:
    pytest.importorskip("h5py")
    emd = pytest.importorskip("rsciio.emd")
    axes = [
        {"name": n, "scale": 0.5, "offset": 0.0, "units": "Å", "size": s, "navigate": False}
        for n, s in zip("yx", image.shape, strict=True)
    ]
    signal = {
        "data": image,
        "axes": axes,
        "metadata": {"General": {"title": "exit wave"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
    }
    emd.file_writer(str(tmp_path / "a.emd"), signal)
    ((back, info),) = read_em(tmp_path / "a.emd")
    np.testing.assert_array_equal(back, image)
    assert info["name"] == "exit wave" and info["axis_names"] == ("y", "x")
    assert info["units"] == ("nm", "nm") and info["scale"] == pytest.approx((0.05, 0.05))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("ext", ["dm4", "dm3", "ser", "mrc", "emd", "tif", "npy"])
def test_corrupt_files_raise_value_error(tmp_path: Path, ext: str) -> None:
    if ext not in ("tif", "npy"):
        pytest.importorskip("rsciio")
    if ext == "emd":
        pytest.importorskip("h5py")
    path = tmp_path / f"junk.{ext}"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="junk"):
        read_em(path)


def test_truncated_tif_raises_value_error(tmp_path: Path) -> None:
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.arange(256 * 256, dtype=np.uint16).reshape(256, 256))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut"):
        read_em(cut)


def test_unsupported_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="unsupported"):
        read_em(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError):
        read_em(tmp_path / "missing.dm4")


# ----------------------------------------------------------------------------- napari hooks


def test_reader_hook_returns_layer_data(tmp_path: Path, image: np.ndarray) -> None:
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.png")]) is None
    assert set(SUPPORTED_EXTENSIONS) >= {".dm3", ".dm4", ".emd", ".ser", ".mrc", ".tif", ".npy"}
    path = write_tif(tmp_path / "a.tif", image, {"scale": (0.2, 0.2), "units": ("nm", "nm")})
    reader = napari_get_reader(path)
    assert callable(reader)
    ((data, kwargs, kind),) = reader(path)
    assert kind == "image" and data.shape == image.shape
    assert kwargs["name"] == "a" and kwargs["scale"] == pytest.approx((0.2, 0.2))
    assert kwargs["units"] == ("nm", "nm") and kwargs["metadata"]["source"] == path


def test_reader_hook_refuses_files_without_pixels(tmp_path: Path) -> None:
    """An empty array or a list of strings is a clear error, not an empty layer."""
    for name, array in (("empty", np.zeros((0, 16))), ("text", np.array(["a", "b"]))):
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        with pytest.raises(ValueError, match="no image"):
            napari_get_reader(str(path))(str(path))


def test_reader_hook_output_builds_a_napari_layer(tmp_path: Path, image: np.ndarray) -> None:
    layers = pytest.importorskip("napari.layers")
    stack = np.stack([image] * 2)
    meta = {"scale": (0.5, 0.2, 0.2), "units": ("s", "nm", "nm")}
    path = write_tif(tmp_path / "m.tif", stack, meta)
    ((data, kwargs, _),) = napari_get_reader(path)(path)
    layer = layers.Image(data, **kwargs)
    assert tuple(layer.scale) == pytest.approx((0.5, 0.2, 0.2))
    # napari's writer hands the layer's attributes back: the calibration survives
    out = write_single_image(str(tmp_path / "out.tif"), layer.data, layer.as_layer_data_tuple()[1])
    ((_, info),) = read_em(out[0])
    assert info["scale"] == pytest.approx((0.5, 0.2, 0.2)) and info["units"] == ("s", "nm", "nm")


def test_hspy_file_is_read_with_its_calibration(tmp_path: Path) -> None:
    """HyperSpy's own format, written here with rosettasciio's writer."""
    from rsciio.hspy import file_writer

    from napari_emdenoise.io.readers import read_em

    data = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    axes = [
        {"name": n, "scale": 0.02, "units": "nm", "size": s, "offset": 0.0, "navigate": False}
        for n, s in (("y", 64), ("x", 48))
    ]
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": "haadf"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "learning_results": {},
        "models": {},
        "package_info": {"name": "", "version": ""},
    }
    file_writer(str(tmp_path / "a.hspy"), signal)
    (out, meta), *_ = read_em(tmp_path / "a.hspy")
    np.testing.assert_array_equal(np.asarray(out), data)
    assert meta["scale"] == pytest.approx((0.02, 0.02)) and meta["units"] == ("nm", "nm")
