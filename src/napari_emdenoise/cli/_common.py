"""What every ``emdenoise`` sub-command shares: argument types, output-file safety, reading."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def float_in(low: float, *, strict: bool, name: str = "number") -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = finite_float(text)
        if value < low or (strict and value == low):
            relation = "greater than" if strict else "at least"
            raise argparse.ArgumentTypeError(f"must be {relation} {low:g}, got {value:g}")
        return value

    parse.__name__ = name
    return parse


def probability(text: str) -> float:
    """A finite number in [0, 1] (argparse type of the ``train`` pair fractions)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def offset_value(text: str) -> float | str:
    """``auto`` or a finite number (argparse type of ``fit-noise --offset``)."""
    return "auto" if text.strip().lower() == "auto" else finite_float(text)


positive_int = int_at_least(1)


non_negative_int = int_at_least(0)


positive_float = float_in(0.0, strict=True)


non_negative_float = float_in(0.0, strict=False)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file on disk (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def names_same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b``: the same file on disk, or (if neither exists yet) the same path."""
    return same_file(a, b) or a.absolute() == b.absolute()


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks; None if it does not exist."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_outputs(
    outputs: Iterable[Path],
    *,
    inputs: Iterable[Path | None] = (),
    overwrite: bool,
    suffixes: tuple[str, ...] | None = None,
) -> None:
    """Check every file a command will write, before it does any work.

    Raises
    ------
    ValueError
        For a wrong extension, an output that is one of the inputs (also via
        a hard link or symlink; refused even with ``--overwrite``), or two
        outputs that are the same file.
    FileExistsError
        For an existing output without ``--overwrite``.
    FileNotFoundError, NotADirectoryError, IsADirectoryError
        For a missing output folder, or a folder where a file is expected.
    """
    given = [Path(p) for p in inputs if p is not None]
    seen_paths: set[Path] = set()
    seen_files: set[tuple[int, int]] = set()
    for out in outputs:
        if suffixes is not None and out.suffix.lower() not in suffixes:
            raise ValueError(f"{out}: the output must end in {' or '.join(suffixes)}")
        parent = out.parent
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"cannot write {out}: {parent} is not a folder")
        if not parent.exists():
            raise FileNotFoundError(f"cannot write {out}: the folder {parent} does not exist")
        if out.is_dir():
            raise IsADirectoryError(f"cannot write {out}: it is a folder")
        for src in given:
            if names_same_file(out, src):
                raise ValueError(
                    f"the output {out} must not overwrite the input file {src} "
                    "(inputs are never modified, not even with --overwrite)"
                )
        identity = file_identity(out)
        if out.absolute() in seen_paths or (identity is not None and identity in seen_files):
            raise ValueError(f"two outputs would be the same file: {out}")
        if os.path.lexists(out) and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        seen_paths.add(out.absolute())
        if identity is not None:
            seen_files.add(identity)


def check_output_dir(folder: Path) -> None:
    """An output folder must be a folder (it is created if missing)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")


def atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in its folder, moved into place on success."""
    from ..io.writers import _replace_atomically

    _replace_atomically(Path(path), write)


def write_plain_tif(path: Path, image: object, pixel_nm: float = 0.0) -> None:
    """TIFF, atomically; with ``pixel_nm`` > 0 calibrated with ImageJ tags (read by Fiji)."""
    import tifffile

    if pixel_nm > 0:
        kwargs = {
            "imagej": True,
            "resolution": (1.0 / pixel_nm, 1.0 / pixel_nm),
            "metadata": {"unit": "nm"},
        }
    else:
        kwargs = {}
    atomic(path, lambda tmp: tifffile.imwrite(tmp, image, **kwargs))


def write_text(path: Path, text: str) -> None:
    atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_image_memory(shape: tuple[int, int], bytes_per_pixel: float, what: str) -> None:
    """Refuse an image size that would not fit in memory; say what would."""
    from .._validation import available_memory, check_fits_in_memory

    height, width = shape
    available = available_memory()
    hint = ""
    if available is not None:
        side = int(math.sqrt(0.8 * available / bytes_per_pixel))
        hint = f"at most about {side}×{side} pixels fit now"
    check_fits_in_memory(
        height * width * bytes_per_pixel, f"{what} of {height}×{width} pixels", hint=hint
    )


def read_dataset(src: Path, index: int, *, lazy: bool = False) -> tuple[object, dict]:
    """``(data, metadata)`` of dataset ``index`` of ``src`` (``--dataset``), range-checked."""
    from ..io.readers import read_em

    datasets = read_em(src, lazy=True) if lazy else read_em(src)
    if index >= len(datasets):
        raise ValueError(
            f"{src} holds {len(datasets)} dataset(s); --dataset {index} is out of range"
        )
    return datasets[index]


def progress_printer(unit: str) -> Callable[[int, int], None]:
    """``progress(done, total)`` printing to stderr each time another 10 % of ``unit`` is done."""
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct // 10 != last[0] // 10:
            last[0] = pct
            print(f"  {pct:3d} % ({done}/{total} {unit})", file=sys.stderr, flush=True)

    return progress


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (None: the fastest found)")


def add_fast_scan_axis_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """``--fast-scan-axis {x,y}`` (default x), as the engine's ``fast_scan_axis`` takes it."""
    from ..engine.scan_axis import FAST_SCAN_AXES

    parser.add_argument("--fast-scan-axis", choices=FAST_SCAN_AXES, default="x", help=help)


def add_dataset_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=non_negative_int, default=0, help="dataset index in multi-dataset files"
    )


def check_disk_space(folder: Path, nbytes: float, what: str) -> None:
    """Refuse to start writing ``nbytes`` into ``folder`` (or its nearest existing parent)."""
    import shutil

    from .._validation import format_bytes

    existing = folder.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if nbytes > free:
        raise OSError(
            f"{what} needs about {format_bytes(nbytes)} of disk space, but only "
            f"{format_bytes(free)} are free in {existing}"
        )


def model_files(model: str) -> list[Path]:
    """The weights and card of a model name or ``.safetensors`` path (those that exist)."""
    from ..models.registry import list_models

    cards = list_models()
    weights = cards[model].weights_path if model in cards else Path(model)
    if weights is None:
        return []
    return [p for p in (Path(weights), Path(weights).with_suffix(".json")) if p.exists()]


def json_object(text: str, option: str) -> dict:
    """Parse a JSON object given on the command line, with a clear message if it is not one."""

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{option} must be a JSON object such as '{{\"l1\": 30}}': {exc}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value
