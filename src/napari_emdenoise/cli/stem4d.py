"""``emdenoise restore-4d``: 4D-STEM stacks, in the process or on a dask cluster."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ._common import (
    add_dataset_arg,
    add_device_arg,
    int_at_least,
    names_same_file,
    non_negative_float,
    non_negative_int,
    positive_int,
    progress_printer,
    read_dataset,
)


def _cmd_restore_4d(args: argparse.Namespace) -> int:
    """``emdenoise restore-4d``: denoise a 4D-STEM dataset into a resumable zarr store."""
    from ..engine.predictor import Cancelled
    from ..engine.stack4d import parse_region_text, restore_4dstem

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(f"no such file: {src}")
    if dst.suffix.lower() != ".zarr":
        raise ValueError(f"{dst}: the output must be a .zarr store")
    if names_same_file(dst, src):
        raise ValueError(f"the output {dst} must not be the input {src}")
    if not dst.absolute().parent.is_dir():
        raise FileNotFoundError(f"cannot write {dst}: the folder {dst.parent} does not exist")
    region = parse_region_text(args.region) if args.region else None
    data, meta = read_dataset(src, args.dataset, lazy=True)
    if len(getattr(data, "shape", ())) != 4:
        raise ValueError(
            f"dataset {args.dataset} of {src} has shape {tuple(data.shape)}; restore-4d needs "
            "4D-STEM data (scan_y, scan_x, det_y, det_x)"
        )
    progress = progress_printer("patterns")
    calibration = {k: meta[k] for k in ("scale", "units", "translate", "axis_names", "name")}
    kwargs = {
        "model": args.model,
        "device": args.device,
        "batch_size": args.batch_size,
        "out": dst,
        "progress": progress,
        "region": region,
        "calibration": calibration,
        "overwrite": args.overwrite,
        "local_counts_sigma": args.local_counts_sigma or None,
        "local_counts_passes": args.local_counts_passes,
        "neighbour_residuals": not args.no_neighbour_residuals,
    }
    try:
        if args.scheduler is None and args.workers == 0:
            out = restore_4dstem(data, executor="inline", **kwargs)
        else:
            out = _restore_4d_on_cluster(restore_4dstem, data, args, kwargs)
    except (KeyboardInterrupt, Cancelled):
        print(
            f"interrupted: finished blocks are kept in {dst}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"restored {src} ({'x'.join(map(str, data.shape))}) with {args.model} -> {dst} "
        f"({'x'.join(map(str, out.shape))} float32)"
    )
    return 0


def _restore_4d_on_cluster(run: Callable, data: object, args: argparse.Namespace, kwargs: dict):
    """Run ``restore_4dstem`` on ``--scheduler`` or on a LocalCluster of ``--workers`` threads."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(
            "restore-4d --workers/--scheduler needs dask.distributed (pip install distributed); "
            "use --workers 0 to run in this process"
        ) from exc
    if args.scheduler is not None:
        with Client(args.scheduler) as client:
            return run(data, executor=client, **kwargs)
    # Threads in this process: lazy readers' arrays need not be picklable, torch releases
    # the GIL, and every block runs torch single-threaded.
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=args.workers,
            processes=False,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        return run(data, executor=client, torch_threads=1, **kwargs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..engine.stack4d import LOCAL_COUNTS_PASSES, LOCAL_COUNTS_SIGMA

    r4 = sub.add_parser(
        "restore-4d",
        help="denoise a 4D-STEM dataset (mib, blo, EMPAD xml/raw, emd/hdf5, zarr, npy) into a "
        "resumable zarr store",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r4.add_argument("input", type=Path, help="4D-STEM file (scan_y, scan_x, det_y, det_x)")
    r4.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .zarr store; re-running the same command resumes an interrupted run",
    )
    r4.add_argument(
        "--model", default="pix2pix-4dstem", help="diffraction model name or .safetensors path"
    )
    r4.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(4, os.cpu_count() or 1),
        help="threads of the local dask cluster (0: run in this process without dask)",
    )
    r4.add_argument(
        "--scheduler",
        default=None,
        help="address of a running dask.distributed scheduler (e.g. tcp://host:8786); the "
        "output must be on storage its workers share",
    )
    r4.add_argument("--region", default=None, help="scan region y0:y1,x0:x1 (None: the whole scan)")
    r4.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="patterns per forward pass (None: 16 of 64² on the CPU, 1024 on CUDA)",
    )
    r4.add_argument(
        "--local-counts-sigma",
        type=non_negative_float,
        default=LOCAL_COUNTS_SIGMA,
        metavar="PX",
        help="put the raw counts back at scales above this many detector pixels, so Bragg-disk "
        "and virtual-detector intensities stay unbiased (0: the network output as is)",
    )
    r4.add_argument(
        "--local-counts-passes",
        type=int_at_least(1, 16),
        default=LOCAL_COUNTS_PASSES,
        metavar="N",
        help="passes of that correction, 1-16: more cut more sharply between the network's fine "
        "scales and the raw coarse ones",
    )
    r4.add_argument(
        "--no-neighbour-residuals",
        action="store_true",
        help="restore each pattern on its own; by default what the network got wrong alike at "
        "neighbouring scan positions (3x3, 5x5 or the whole scan, chosen by an unbiased "
        "error estimate) is put back afterwards",
    )
    add_device_arg(r4)
    add_dataset_arg(r4)
    r4.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an existing output store made by restore-4d (never the input)",
    )
    r4.set_defaults(func=_cmd_restore_4d)
