"""Copy trained runs into the package's bundled weights, with their model cards.

Usage::

    python tools/install_bundled.py --runs runs            # stage 1: runs/<name>/
    python tools/install_bundled.py --runs runs --stage2   # a later stage: runs/<name>_plain/
    python tools/install_bundled.py --runs runs/s8 --stage2 --suffix _E   # runs/s8/<name>_E/

For every ``runs/<name>/<name>.safetensors`` (written by ``emdenoise train``, with
the commands of ``weights/MODEL_CARD.md``) the weights and card are copied to
``src/napari_emdenoise/weights/``, with the reproducing ``emdenoise train`` command
in the card's notes. With ``--stage2`` every ``runs/<name>_plain/`` (a run
fine-tuned from the bundled ``<name>`` with noise-only and high-dose pairs) is
installed on top of the bundled model instead: its card keeps the earlier
stages' commands (``training.reproduce``) and step counts (``training.stage_steps``)
and adds the PSNR on the 24 validation pairs of the paper's draw
(``metrics.val_paper_draw``, the validation set of the earlier stages). The SEM
models share the S(T)EM networks (the SEM distortion model of Lobato et al. 2023
is the S(T)EM one without black pixels): their cards say so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_emdenoise" / "weights"
CITATION = (
    'Lobato, Friedrich & Van Aert, "Deep convolutional neural networks to restore '
    'single-shot electron microscopy images" (2023, arXiv:2303.17025)'
)
SEM_FROM = {"hrsem": "hrstem", "lrsem": "lrstem"}
#: Settings of the bundled runs that their cards do not record.
RUN_OPTIONS = "--val-size 24 --val-every 250 --checkpoint-every 250 --workers 0 --threads 1"


def _number(x: float) -> str:
    """Short spelling of a command-line number: 4e-4, 0.3, 0."""
    text = f"{x:g}"
    if "e" not in text and abs(x) < 1e-2 and x:
        mantissa, exponent = f"{x:e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return text


def _config(card: dict) -> str:
    """``--config`` of ``card``'s network: a named size, or its settings as quoted JSON."""
    from napari_emdenoise.models.registry import named_configs

    for label, cfg in named_configs(card["arch"]).items():
        if {**cfg, **card["config"]} == cfg:  # older cards lack keys added since
            return label
    return "'" + json.dumps(card["config"], separators=(", ", ": ")) + "'"


def _reproduce(name: str, card: dict, init: str | None = None, out: str | None = None) -> str:
    """The ``emdenoise train`` command of ``card``'s run (by default from the 0.2 weights).

    ``init``: the weights the run started from (default ``<0.2 name.safetensors>``);
    ``out``: its run folder (default ``runs/<name>``).
    """
    from napari_emdenoise.losses import LossWeights

    t = card["training"]
    weights = t["loss_weights"]
    default = json.loads(json.dumps(LossWeights().to_dict()))
    other = sorted(k for k, v in weights.items() if k != "adversarial" and v != default.get(k))
    if other:  # the CLI sets only the adversarial weight
        raise ValueError(f"{name}: loss weights {other} differ from the defaults")
    start = init or f"<0.2 {name}.safetensors>"
    init = f"--init-from {start} --init-partial" if t.get("init_from") else ""
    extra = [
        f"--{flag} {_number(t[key])}"
        for flag, key in (
            ("plain-fraction", "plain_fraction"),
            ("high-dose-fraction", "high_dose_fraction"),
            ("fine-lattice-fraction", "fine_lattice_fraction"),
            ("pulse-spread-fraction", "pulse_spread_fraction"),
            ("texture-fraction", "texture_fraction"),
            ("seed", "seed"),
        )
        if t.get(key)
    ]
    return " ".join(
        [
            f"emdenoise train --model {name} --arch {card['arch']} --config {_config(card)}",
            f"--steps {t['steps']} --batch {t['batch_size']} --patch {t['patch_size']}",
            f"--lr {_number(t['lr'])} --adversarial {_number(weights['adversarial'])}",
            f"--clean-pool {t['clean_pool']}",
            *extra,
            RUN_OPTIONS,
            f"--device {t['device']}",
            *([init] if init else []),
            f"--out {out or f'runs/{name}'}",
        ]
    )


def _paper_draw_metrics(weights: Path, card: dict, n_pairs: int = 24) -> dict:
    """PSNR/SSIM on the "val" pairs of the paper's draw (no noise-only or high-dose pairs)."""
    import numpy as np
    import torch

    from napari_emdenoise.metrics import psnr, ssim
    from napari_emdenoise.models.registry import load_model
    from napari_emdenoise.training.datasets import PairConfig, SyntheticPairs

    t = card["training"]
    config = PairConfig(
        modality=card["modality"], kind=card["kind"], patch_size=t["patch_size"], seed=0,
        clean_pool=0,
    )  # fmt: skip
    noisy, clean = SyntheticPairs(config, "val").arrays(n_pairs)
    model, _ = load_model(weights, device="cpu")
    with torch.inference_mode():
        restored = model(torch.from_numpy(noisy[:, None])).numpy()[:, 0]
    return {
        "psnr": round(float(np.mean([psnr(a, b) for a, b in zip(restored, clean)])), 2),
        "ssim": round(float(np.mean([ssim(a, b) for a, b in zip(restored, clean)])), 3),
        "psnr_input": round(float(np.mean([psnr(a, b) for a, b in zip(noisy, clean)])), 2),
        "pairs": n_pairs,
        "note": "the same 'val' pairs drawn without noise-only or high-dose pairs (the "
        "validation set of the earlier stages)",
    }


def _notes(commands: list[str]) -> str:
    stages = "" if len(commands) == 1 else f", in {len(commands)} stages"
    steps = "; ".join(f"({i}) {c}" for i, c in enumerate(commands, 1))
    return (
        f"CGRDN ({CITATION}), small configuration with bilinear upsampling, trained on this "
        f"package's synthetic pairs only{stages}. Reproduce: {steps}. Measured quality: "
        "weights/MODEL_CARD.md."
    )


def _install_stage2(src_dir: Path, name: str) -> dict:
    """Install ``src_dir`` (fine-tuned from the bundled ``name``) on top of it."""
    old = json.loads((WEIGHTS / f"{name}.json").read_text())
    card = json.loads((src_dir / f"{name}.json").read_text())
    t, before = card["training"], old["training"]
    earlier = before.get("stage_steps", [before["steps"]])
    t["stage_steps"] = [*earlier, t["steps"]]
    t["init_from"] = f"the previous bundled '{name}' ({sum(earlier)} steps)"
    t["init_partial"] = True
    commands = before.get("reproduce", [_reproduce(name, old)])
    previous_out = commands[-1].rsplit("--out ", 1)[-1].split()[0]
    t["reproduce"] = [
        *commands,
        _reproduce(name, card, init=f"{previous_out}/{name}.safetensors", out=src_dir.as_posix()),
    ]
    card["metrics"]["val_paper_draw"] = _paper_draw_metrics(src_dir / f"{name}.safetensors", card)
    card["notes"] = _notes(t["reproduce"])
    shutil.copyfile(src_dir / f"{name}.safetensors", WEIGHTS / f"{name}.safetensors")
    (WEIGHTS / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _install(src_dir: Path, name: str) -> dict:
    card = json.loads((src_dir / f"{name}.json").read_text())
    card["training"]["reproduce"] = [_reproduce(name, card)]
    card["notes"] = (
        f"CGRDN ({CITATION}), small configuration with bilinear upsampling, trained on this "
        f"package's synthetic pairs only. Reproduce: {_reproduce(name, card)}. "
        "Measured quality: weights/MODEL_CARD.md."
    )
    shutil.copyfile(src_dir / f"{name}.safetensors", WEIGHTS / f"{name}.safetensors")
    (WEIGHTS / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument(
        "--stage2",
        action="store_true",
        help="install runs/<name>_plain on top of the bundled <name> (see the module notes)",
    )
    ap.add_argument(
        "--suffix",
        default="_plain",
        help="with --stage2: run folders are runs/<name><suffix> (default _plain)",
    )
    args = ap.parse_args(argv)
    installed = {}
    suffix = args.suffix if args.stage2 else ""
    for run in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        name = run.name.removesuffix(suffix) if suffix and run.name.endswith(suffix) else None
        name = name if suffix else run.name
        if not name or name in SEM_FROM or not (run / f"{name}.safetensors").is_file():
            continue
        installed[name] = (_install_stage2 if args.stage2 else _install)(run, name)
        print(f"installed {name} from {run}")
    for sem, stem in SEM_FROM.items():
        if stem not in installed:
            continue
        card = dict(installed[stem], name=sem, modality="sem")
        card["notes"] = (
            f"Shares the weights of '{stem}': the SEM distortion model of {CITATION} is the "
            "S(T)EM one without black pixels, so the S(T)EM network covers it. No SEM-specific "
            "training yet."
        )
        shutil.copyfile(WEIGHTS / f"{stem}.safetensors", WEIGHTS / f"{sem}.safetensors")
        (WEIGHTS / f"{sem}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"installed {sem} (weights of {stem})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
