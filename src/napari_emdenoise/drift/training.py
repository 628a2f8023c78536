"""Training data and a small training loop for the CNN shift regressor.

Vasudevan & Jesse (2019) trained their regressor on normalised cross-correlation
maps of denoised frame pairs with known shifts (250 batches of 1,024 pairs). We
do the same with our own generator (:mod:`.synthetic`: lattices, amorphous
films, particles and mixed scenes, the project's TEM and S(T)EM distortion
model at 0.3–2000 counts/pixel) on a CPU budget:

1. :func:`generate_dataset` draws frame pairs and stores, for each, the raw
   frames *and* the frames denoised by the matching bundled restoration model
   (float16 shards of ``pairs_per_shard`` pairs, resumable: existing shards
   are kept). Storing frames rather than correlation maps keeps the
   preprocessing of :mod:`.pipeline` the single source of truth: the
   training crops are rebuilt with exactly the code used at inference.
2. :func:`build_examples` turns every pair into two examples, one from the
   denoised and one from the raw frames, each preprocessed, correlated and
   cropped around the integer peak exactly as :func:`.pipeline.estimate_shift`
   does; the target is the true shift minus that integer peak.
3. :func:`train` fits :class:`.regressor.ShiftRegressor` with a Gaussian
   negative log-likelihood (so the network predicts its own uncertainty),
   random flips of the crops (a flip of the map flips the target), Adam and
   a cosine schedule; it checkpoints with
   :func:`napari_emdenoise.training.checkpoints.save_checkpoint` and resumes.

Run ``python -m napari_emdenoise.drift.training --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .synthetic import CONTENT_TYPES, MAX_JITTER_PX, MODALITIES, random_pair

__all__ = [
    "TrainSettings",
    "build_examples",
    "export_bundled",
    "generate_dataset",
    "load_shards",
    "train",
]

_SHARD = "pairs_{:05d}.npz"


def _weights_digest(name: str) -> str:
    from ..models.registry import list_models

    card = list_models().get(name)
    if card is None or card.weights_path is None:
        return "missing"
    return hashlib.sha256(Path(card.weights_path).read_bytes()).hexdigest()[:16]


def generate_dataset(
    out_dir: str | Path,
    n_pairs: int,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
    pairs_per_shard: int = 50,
    dose_range: tuple[float, float] = (0.3, 2000.0),
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Draw frame pairs, denoise them with the matching bundled model, write shards.

    Parameters
    ----------
    out_dir : path-like
        Folder of the shards (created).
    n_pairs : int
        Total number of pairs (rounded up to whole shards).
    shape : tuple of int
        Frame ``(height, width)`` in pixels.
    seed : int
        Shard ``k`` uses ``numpy.random.default_rng([seed, k])``: shards are
        reproducible and independent, and a resumed run skips finished ones.
    pairs_per_shard : int
        Pairs per file.
    dose_range : tuple of float
        Log-uniform dose range, counts per pixel.
    log : callable
        Progress messages.

    Returns
    -------
    list of pathlib.Path
        The shard files.
    """
    import torch

    from ..engine import restore
    from ..models.registry import load_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(int(n_pairs) / int(pairs_per_shard))
    models: dict[str, Any] = {}
    digests: dict[str, str] = {}
    paths = []
    for k in range(n_shards):
        path = out / _SHARD.format(k)
        paths.append(path)
        if path.exists():
            continue
        start = time.perf_counter()
        rng = np.random.default_rng([int(seed), k])
        rows: dict[str, list] = {
            key: []
            for key in ("raw", "den", "shift", "dose", "content", "modality", "kind", "period")
        }
        for _ in range(int(pairs_per_shard)):
            pair = random_pair(shape, rng, dose_range=dose_range)
            name = pair.denoiser
            if name not in models:
                models[name] = load_model(name)[0]
                digests[name] = _weights_digest(name)
            with torch.inference_mode():
                den = restore(
                    np.stack([pair.reference, pair.moving]), model=models[name], refine=False
                )
            rows["raw"].append(np.stack([pair.reference, pair.moving]).astype(np.float16))
            rows["den"].append(den.astype(np.float16))
            rows["shift"].append(pair.shift)
            rows["dose"].append(pair.dose)
            rows["content"].append(CONTENT_TYPES.index(pair.content))
            rows["modality"].append(MODALITIES.index(pair.modality))
            rows["kind"].append(0 if pair.kind == "hr" else 1)
            rows["period"].append(np.nan if pair.period_px is None else pair.period_px)
        meta = {
            "shape": list(shape),
            "seed": [int(seed), k],
            "dose_range": list(dose_range),
            "denoisers": digests,
            "contents": list(CONTENT_TYPES),
            "modalities": list(MODALITIES),
        }
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            raw=np.stack(rows["raw"]),
            den=np.stack(rows["den"]),
            shift=np.asarray(rows["shift"], np.float64),
            dose=np.asarray(rows["dose"], np.float64),
            content=np.asarray(rows["content"], np.int8),
            modality=np.asarray(rows["modality"], np.int8),
            kind=np.asarray(rows["kind"], np.int8),
            period=np.asarray(rows["period"], np.float64),
            meta=json.dumps(meta),
        )
        tmp.replace(path)
        log(
            f"shard {k + 1}/{n_shards}: {pairs_per_shard} pairs in "
            f"{time.perf_counter() - start:.0f} s -> {path}"
        )
    return paths


def load_shards(paths: list[Path]) -> dict[str, np.ndarray]:
    """Concatenate shards written by :func:`generate_dataset`."""
    parts: dict[str, list] = {}
    for path in sorted(paths):
        with np.load(path) as data:
            for key in data.files:
                if key != "meta":
                    parts.setdefault(key, []).append(data[key])
    return {key: np.concatenate(value) for key, value in parts.items()}


def build_examples(
    data: dict[str, np.ndarray], variants: tuple[str, ...] = ("den", "raw")
) -> dict[str, np.ndarray]:
    """Correlation crops and targets, computed exactly as at inference.

    Parameters
    ----------
    data : dict
        From :func:`load_shards`.
    variants : tuple of str
        ``"den"``: raw and denoised frames (``denoise=True`` at inference);
        ``"raw"``: the raw frames only (``denoise=False``).

    Returns
    -------
    dict
        ``x`` (N, C, S, S) float32 network inputs, ``target`` (N, 2) true
        shift minus the integer peak in pixels, ``peak`` (N, 2), ``pair``
        (N,) pair index, ``denoised`` (N,) bool, ``dose`` (N,), ``inside``
        (N,) whether the target lies within the crop, ``parabolic`` (N, 2)
        the 3-point parabola's offset from the integer peak (the "ncc" method).
    """
    from .correlation import parabolic_peak
    from .pipeline import Prepared, _correlate
    from .regressor import CROP_RADIUS, crop_features

    xs, targets, peaks, pair_idx, den_flags, inside, parabolic = [], [], [], [], [], [], []
    for v in variants:
        for i in range(data["raw"].shape[0]):
            raw = [data["raw"][i, j].astype(np.float32) for j in (0, 1)]
            den = (
                [data["den"][i, j].astype(np.float32) for j in (0, 1)] if v == "den" else [None] * 2
            )
            ncc, den_map, raw_map, _filtered = _correlate(
                Prepared(raw[0], den[0]), Prepared(raw[1], den[1]), sigma=None, max_shift=None
            )
            peak = ncc.peak()
            xs.append(crop_features(den_map, raw_map, peak))
            target = data["shift"][i] - np.asarray(peak, np.float64)
            targets.append(target)
            peaks.append(peak)
            parabolic.append(np.subtract(parabolic_peak(ncc, peak), peak))
            pair_idx.append(i)
            den_flags.append(v == "den")
            inside.append(bool(np.all(np.abs(target) <= CROP_RADIUS - 0.5)))
    return {
        "x": np.stack(xs).astype(np.float32),
        "target": np.asarray(targets, np.float32),
        "peak": np.asarray(peaks, np.int32),
        "pair": np.asarray(pair_idx, np.int64),
        "denoised": np.asarray(den_flags, bool),
        "dose": data["dose"][np.asarray(pair_idx, np.int64)],
        "inside": np.asarray(inside, bool),
        "parabolic": np.asarray(parabolic, np.float32),
    }


@dataclass
class TrainSettings:
    """Settings of :func:`train` (all recorded in the checkpoint and the model card).

    Attributes
    ----------
    steps : int
        Optimiser steps.
    batch_size : int
        Examples per step.
    lr : float
        Initial Adam learning rate, cosine decay to 2 % of it.
    weight_decay : float
        Adam weight decay.
    val_fraction : float
        Fraction of *pairs* held out for validation.
    seed : int
        Seed of the split, the initialisation and the batches.
    checkpoint_every : int
        Steps between checkpoints.
    loss : {"huber+nll", "nll"}
        ``"nll"``: Gaussian negative log-likelihood of offsets and σ together;
        ``"huber+nll"``: Huber loss (δ = 0.5 px) on the offsets plus the
        likelihood of σ given the (detached) offsets, so that the offsets are
        not learnt mostly from the examples the network is already sure of.
    config : dict
        :class:`.regressor.ShiftRegressor` constructor settings.
    """

    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.15
    seed: int = 0
    checkpoint_every: int = 500
    loss: str = "huber+nll"
    config: dict[str, Any] = field(default_factory=dict)


def _flip(x, target, fy, fx):
    """Flip crops (and their targets) along y and/or x, per example (torch tensors)."""
    import torch

    x = torch.where(fy[:, None, None, None], x.flip(2), x)
    x = torch.where(fx[:, None, None, None], x.flip(3), x)
    sign = torch.stack([1.0 - 2.0 * fy.float(), 1.0 - 2.0 * fx.float()], dim=1)
    return x, target * sign


def gaussian_nll(pred, target):
    """Per-axis Gaussian negative log-likelihood of ``pred = (μy, μx, log σy, log σx)``."""
    mean, log_sigma = pred[:, :2], pred[:, 2:]
    return (0.5 * ((target - mean) * (-log_sigma).exp()) ** 2 + log_sigma).mean()


def training_loss(pred, target, kind: str = "huber+nll"):
    """The loss of :class:`TrainSettings` ``loss``."""
    import torch

    if kind == "nll":
        return gaussian_nll(pred, target)
    if kind != "huber+nll":
        raise ValueError(f"unknown loss {kind!r}")
    mean, log_sigma = pred[:, :2], pred[:, 2:]
    huber = torch.nn.functional.huber_loss(mean, target, delta=0.5)
    return huber + gaussian_nll(torch.cat([mean.detach(), log_sigma], dim=1), target)


def evaluate(model, examples: dict[str, np.ndarray], index: np.ndarray) -> dict[str, float]:
    """Validation metrics of the regressor on ``index`` (examples whose target is in the crop)."""
    from .regressor import predict_offsets

    sel = index[examples["inside"][index]]
    mean, sigma = predict_offsets(model, examples["x"][sel])
    err = mean - examples["target"][sel]
    parabolic = examples.get("parabolic")
    out = {
        "val_examples": int(sel.size),
        "val_rms_px": float(np.sqrt(np.mean(np.sum(err**2, axis=1)))),
        "val_median_px": float(np.median(np.hypot(err[:, 0], err[:, 1]))),
        "val_within_1sigma": float(np.mean(np.abs(err) <= sigma)),
        "val_within_2sigma": float(np.mean(np.abs(err) <= 2 * sigma)),
        "val_accuracy_0.5px": float(np.mean(np.hypot(err[:, 0], err[:, 1]) <= 0.5)),
    }
    if parabolic is not None:
        perr = parabolic[sel] - examples["target"][sel]
        out["val_parabolic_rms_px"] = float(np.sqrt(np.mean(np.sum(perr**2, axis=1))))
        out["val_parabolic_median_px"] = float(np.median(np.hypot(perr[:, 0], perr[:, 1])))
    return out


def train(
    examples: dict[str, np.ndarray],
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[dict[str, Any]]:
    """Fit the shift regressor; yields ``{"step", "loss"}`` and validation events.

    Resumes from ``out_dir/checkpoint.pt`` when it exists. The best
    validation model is kept as ``out_dir/best.safetensors`` with its card.

    Parameters
    ----------
    examples : dict
        From :func:`build_examples`.
    out_dir : path-like
        Run folder.
    settings : TrainSettings, optional
        Defaults when None.
    log : callable
        Progress messages.

    Yields
    ------
    dict
        Training and validation events.
    """
    import torch

    from ..training.checkpoints import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
    from .regressor import ShiftRegressor, save_regressor

    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    n_pairs = int(examples["pair"].max()) + 1
    val_pairs = rng.permutation(n_pairs)[: max(1, int(settings.val_fraction * n_pairs))]
    is_val = np.isin(examples["pair"], val_pairs)
    train_idx = np.nonzero(~is_val & examples["inside"])[0]
    val_idx = np.nonzero(is_val)[0]
    torch.manual_seed(settings.seed)
    model = ShiftRegressor(**settings.config)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, settings.steps) / settings.steps))
        ),
    )
    step, best = 0, math.inf
    ckpt = out / CHECKPOINT_NAME
    config = {"settings": asdict(settings), "model_config": model.config}
    if ckpt.exists():
        state, _saved = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, best = int(state["step"]), float(state["best"])
        log(f"resumed at step {step}")
    x_all = torch.from_numpy(examples["x"])
    t_all = torch.from_numpy(examples["target"])
    batch_rng = np.random.default_rng([settings.seed, step])
    start = time.perf_counter()
    while step < settings.steps:
        model.train()
        idx = torch.from_numpy(batch_rng.choice(train_idx, settings.batch_size))
        fy = torch.from_numpy(batch_rng.random(settings.batch_size) < 0.5)
        fx = torch.from_numpy(batch_rng.random(settings.batch_size) < 0.5)
        x, target = _flip(x_all[idx], t_all[idx], fy, fx)
        loss = training_loss(model(x), target, settings.loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            yield {
                "step": step,
                "loss": float(loss.detach()),
                "seconds": time.perf_counter() - start,
            }
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            metrics = evaluate(model, examples, val_idx)
            metrics["step"] = step
            yield {"validation": metrics}
            if metrics["val_rms_px"] < best:
                best = metrics["val_rms_px"]
                save_regressor(
                    model, out / "best.safetensors", {"training": config, "metrics": metrics}
                )
            save_checkpoint(
                ckpt,
                {
                    "step": step,
                    "best": best,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                },
                config,
            )


def export_bundled(
    run_dir: str | Path, data_dir: str | Path, target: str | Path | None = None
) -> Path:
    """Copy a run's best model to the bundled location with a complete model card.

    Parameters
    ----------
    run_dir : path-like
        Training run folder (``best.safetensors`` and its card).
    data_dir : path-like
        The shards it was trained on (their settings go into the card).
    target : path-like, optional
        Destination (default :data:`.regressor.BUNDLED_REGRESSOR`).

    Returns
    -------
    pathlib.Path
        The weights written.
    """
    from .regressor import BUNDLED_REGRESSOR, load_regressor, save_regressor

    model, card = load_regressor(Path(run_dir) / "best.safetensors")
    shards = sorted(Path(data_dir).glob("pairs_*.npz"))
    metas = []
    n_pairs = 0
    for path in shards:
        with np.load(path) as data:
            metas.append(json.loads(str(data["meta"])))
            n_pairs += int(data["shift"].shape[0])
    denoisers: dict[str, str] = {}
    for meta in metas:
        denoisers.update(meta["denoisers"])
    first = metas[0]
    card["data"] = {
        "pairs": n_pairs,
        "frame_px": first["shape"],
        "dose_counts_per_px": first["dose_range"],
        "dose_distribution": "log-uniform",
        "contents": first["contents"],
        "modalities": first["modalities"],
        "noise": "project distortion model (napari_emdenoise.noise), random parameters, "
        f"geometric post-processing off, scan jitter capped at {MAX_JITTER_PX} px",
        "shift": "uniform in a disc of radius a third of the frame; lattices below 0.45 "
        "of the shortest repeat distance",
        "examples": "each pair twice: denoised+raw correlation maps, raw maps only; "
        "random flips during training",
        "denoisers_sha256_16": denoisers,
        "generator_seeds": f"numpy default_rng([{first['seed'][0]}, shard]) for shards "
        f"0..{len(shards) - 1}",
    }
    card["notes"] = (
        "CNN shift regressor after Vasudevan & Jesse, 'Deep Learning as a Tool for Image "
        "Denoising and Drift Correction', Microscopy and Microanalysis 2019: conv layers + "
        "three fully connected layers on a 15x15 crop of the normalised cross-correlation "
        "around the classical integer peak; predicts a correction to the 3-point parabola "
        "and a per-axis log sigma. Trained on CPU with napari_emdenoise.drift.training."
    )
    out = Path(target) if target is not None else BUNDLED_REGRESSOR
    extra = {k: v for k, v in card.items() if k not in ("format", "name", "arch", "config")}
    return save_regressor(model, out, extra)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_emdenoise.drift.training")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="draw, denoise and store frame pairs")
    gen.add_argument("--out", required=True)
    gen.add_argument("--pairs", type=int, default=2000)
    gen.add_argument("--size", type=int, default=128)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--per-shard", type=int, default=50)
    tr = sub.add_parser("train", help="train the regressor on stored pairs")
    tr.add_argument("--data", required=True, nargs="+", help="shard folders")
    tr.add_argument("--out", required=True)
    tr.add_argument("--steps", type=int, default=TrainSettings.steps)
    tr.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    tr.add_argument("--lr", type=float, default=TrainSettings.lr)
    tr.add_argument("--seed", type=int, default=0)
    ex = sub.add_parser("export", help="bundle a run's best model with its card")
    ex.add_argument("--run", required=True)
    ex.add_argument("--data", required=True)
    ex.add_argument("--to", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.command == "generate":
        generate_dataset(args.out, args.pairs, (args.size, args.size), args.seed, args.per_shard)
        return
    if args.command == "export":
        print(export_bundled(args.run, args.data, args.to))
        return
    paths = [p for folder in args.data for p in sorted(Path(folder).glob("pairs_*.npz"))]
    print(f"{len(paths)} shards", flush=True)
    cache = Path(args.out) / f"examples_{len(paths)}_shards.npz"
    if cache.exists():
        with np.load(cache) as stored:
            examples = {key: stored[key] for key in stored.files}
    else:
        examples = build_examples(load_shards(paths))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        np.savez(cache, **examples)
    print(
        f"{len(examples['x'])} examples, {int(examples['inside'].sum())} with the target "
        "inside the crop",
        flush=True,
    )
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    for event in train(examples, args.out, settings, log=lambda m: print(m, flush=True)):
        print(json.dumps(event), flush=True)


if __name__ == "__main__":
    _main()
