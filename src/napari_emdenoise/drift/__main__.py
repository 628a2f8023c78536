"""Command line: ``python -m napari_emdenoise.drift INPUT -o aligned.tif --table drift.csv``.

Reads a ``(frames, y, x)`` stack with :func:`napari_emdenoise.io.readers.read_em`
(dm3/dm4, emd, mrc, tif, npy, zarr…), aligns it with
:func:`napari_emdenoise.drift.align_stack` and writes the aligned stack with
its pixel size (:func:`napari_emdenoise.io.writers.write_tif` or ``write_zarr``)
and the drift table as CSV. ``emdenoise drift`` is the same command
(:func:`build_parser` adds the arguments to its sub-parser, :func:`run` runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..cli._common import (
    add_fast_scan_axis_arg,
    check_outputs,
    float_in,
    int_at_least,
    names_same_file,
)
from .pipeline import DEFAULT_DENOISER, METHODS, REFERENCES

__all__ = ["build_parser", "main", "run"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the drift command (added to ``parser`` when given)."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m napari_emdenoise.drift",
        description="Align a drifting frame stack (denoise → NCC → CNN shift regressor).",
    )
    parser.add_argument("input", help="(frames, y, x) stack: tif, mrc, dm4, emd, npy, zarr…")
    parser.add_argument("-o", "--output", required=True, help="aligned stack (.tif or .zarr)")
    parser.add_argument("--table", help="write the drift table (CSV) here")
    parser.add_argument(
        "--reference",
        choices=REFERENCES,
        default="first",
        help="first: every frame against frame 0 (the most accurate at high dose); previous: "
        "frame to frame, chained; mean: every frame against the mean of the others (the "
        "most accurate at about 5 counts/pixel and below)",
    )
    parser.add_argument("--method", choices=METHODS, default="cnn")
    parser.add_argument(
        "--denoiser", default=DEFAULT_DENOISER, help="restoration model for the shift estimate"
    )
    parser.add_argument("--no-denoise", action="store_true", help="correlate the raw frames")
    add_fast_scan_axis_arg(
        parser,
        "the frames' fast-scan axis, for the S(T)EM/SEM denoisers (y: scanned along the "
        "columns or stored transposed)",
    )
    parser.add_argument(
        "--group",
        type=int_at_least(1),
        default=1,
        metavar="N",
        help="measure the drift on the means of N consecutive frames and interpolate it "
        "between them (for a slow drift in movies too noisy to register frame by frame, "
        "even with --reference mean; 1: every frame)",
    )
    parser.add_argument(
        "--max-shift",
        type=float_in(0.0, strict=True, name="--max-shift"),
        default=None,
        metavar="PX",
        help="largest shift searched per frame (or group) and axis, pixels (default 3/8 of "
        "the frame); a limit that the drift is known to stay within helps at low dose",
    )
    parser.add_argument("--dataset", type=int, default=0, help="dataset index in the file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for bad input)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed arguments; returns the exit status (2 for bad input)."""
    from ..io.readers import read_em
    from ..io.writers import write_tif, write_zarr
    from .pipeline import align_stack
    from .table import drift_table, write_table

    try:
        out = Path(args.output)
        _check_targets(Path(args.input), out, Path(args.table) if args.table else None, args)
        datasets = read_em(args.input, lazy=True)
        if not 0 <= args.dataset < len(datasets):
            raise ValueError(
                f"{args.input} has {len(datasets)} dataset(s); got --dataset {args.dataset}"
            )
        data, meta = datasets[args.dataset]

        def progress(done: int, total: int) -> None:
            print(f"\r{done}/{total} pairs", end="", file=sys.stderr, flush=True)

        aligned, shifts, info = align_stack(
            data,
            reference=args.reference,
            method=args.method,
            denoise=False if args.no_denoise else args.denoiser,
            progress=progress,
            return_info=True,
            fast_scan_axis=args.fast_scan_axis,
            group=args.group,
            max_shift=args.max_shift,
        )
        print(file=sys.stderr)
        aligned = np.asarray(aligned.compute() if hasattr(aligned, "compute") else aligned)
        written_meta = {**meta, "name": f"{meta.get('name', out.stem)} aligned"}
        if out.suffix.lower() == ".zarr":
            write_zarr(out, aligned, written_meta, overwrite=args.overwrite)
        else:
            write_tif(out, aligned, written_meta, overwrite=args.overwrite)
        if args.table:
            scale = tuple(meta.get("scale", (1.0, 1.0, 1.0)))[-2:]
            units = tuple(meta.get("units", ("", "", "")))
            unit = str(units[-1]) if units and str(units[-1]) not in ("pixel", "px") else ""
            write_table(drift_table(info, scale, unit), args.table)
            print(f"wrote {args.table}", file=sys.stderr)
        print(f"wrote {out}", file=sys.stderr)
        advice = info.advice()
        if advice:
            print(f"note: {advice}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_targets(src: Path, out: Path, table: Path | None, args: argparse.Namespace) -> None:
    """Check both outputs before any work: right kind, not the input, not each other.

    The input is never replaced, not even with ``--overwrite`` (nor by the table).
    """
    if out.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise ValueError(f"{out}: the aligned stack must end in .tif, .tiff or .zarr")
    if out.suffix.lower() == ".zarr":  # a folder: checked here, the table below
        if names_same_file(out, src):
            raise ValueError(
                f"the output {out} must not overwrite the input {src} "
                "(inputs are never modified, not even with --overwrite)"
            )
        if table is not None and table.absolute() == out.absolute():
            raise ValueError(f"two outputs would be the same file: {out}")
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    files = [p for p in (out, table) if p is not None and p.suffix.lower() != ".zarr"]
    check_outputs(files, inputs=[src], overwrite=args.overwrite)


if __name__ == "__main__":
    raise SystemExit(main())
