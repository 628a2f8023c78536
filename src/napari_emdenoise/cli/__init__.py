"""The ``emdenoise`` command line.

Sub-commands: ``simulate``, ``demo`` (:mod:`.simulate`), ``restore``,
``export-onnx`` (:mod:`.restore`), ``fit-noise``, ``train`` (:mod:`.train`),
``adapt`` (:mod:`.adapt`), ``restore-4d`` (:mod:`.stem4d`) and ``drift``
(:mod:`.drift`); what they share is in :mod:`._common`.

Every sub-command is a thin wrapper over the headless engine; heavy imports
happen inside the sub-command that needs them.

What happens to the user's files: every output path is checked before any
work starts (extension, folder, existing files, and that it is not one of the
command's input files, compared by file identity so that hard links and
symlinks count); nothing is replaced without ``--overwrite``, and an input
never, even with it; every file is written to a temporary file beside its
target and moved into place only when complete. Sizes that cannot fit in
memory are refused up front.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import adapt, drift, restore, simulate, stem4d, train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emdenoise`` command."""
    parser = argparse.ArgumentParser(
        prog="emdenoise",
        description="Restore electron-microscopy images (napari-emdenoise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (simulate, restore, train, adapt, stem4d, drift):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``emdenoise`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args))
    except (ValueError, OSError, ImportError) as exc:
        print(f"emdenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(
            f"emdenoise {args.command}: error: out of memory ({exc or 'no details'}); "
            "try a smaller size, fewer frames or a lazy/tiled workflow",
            file=sys.stderr,
        )
        return 2
