"""``emdenoise drift``: align a drifting frame stack."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..drift.__main__ import build_parser as build_drift_parser
    from ..drift.__main__ import run

    drift = sub.add_parser(
        "drift",
        help="align a drifting frame stack (denoise, normalised cross-correlation, CNN "
        "refinement) and write the drift table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build_drift_parser(drift)
    drift.set_defaults(func=run)
