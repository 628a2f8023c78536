"""Copy trained runs into the package's bundled weights, with their model cards.

Usage::

    python tools/install_bundled.py --runs runs

For every ``runs/<name>/<name>.safetensors`` (written by ``emdenoise train``, with
the commands of ``weights/MODEL_CARD.md``) the weights and card are copied to
``src/napari_emdenoise/weights/``, with the reproducing ``emdenoise train`` command
in the card's notes. The SEM models share the S(T)EM
networks (the SEM distortion model of Lobato et al. 2023 is the S(T)EM one
without black pixels): their cards say so.
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


def _reproduce(name: str, card: dict) -> str:
    """The ``emdenoise train`` command that retrains ``name`` from its 0.2 weights."""
    from napari_emdenoise.losses import LossWeights

    t = card["training"]
    weights = t["loss_weights"]
    default = json.loads(json.dumps(LossWeights().to_dict()))
    other = sorted(k for k, v in weights.items() if k != "adversarial" and v != default.get(k))
    if other:  # the CLI sets only the adversarial weight
        raise ValueError(f"{name}: loss weights {other} differ from the defaults")
    init = f"--init-from <0.2 {name}.safetensors> --init-partial" if t.get("init_from") else ""
    extra = [
        f"--{flag} {_number(t[key])}"
        for flag, key in (
            ("plain-fraction", "plain_fraction"),
            ("high-dose-fraction", "high_dose_fraction"),
            ("seed", "seed"),
        )
        if t.get(key)
    ]
    return " ".join(
        [
            f"emdenoise train --model {name} --arch {card['arch']} --config small",
            f"--steps {t['steps']} --batch {t['batch_size']} --patch {t['patch_size']}",
            f"--lr {_number(t['lr'])} --adversarial {_number(weights['adversarial'])}",
            f"--clean-pool {t['clean_pool']}",
            *extra,
            RUN_OPTIONS,
            f"--device {t['device']}",
            *([init] if init else []),
            f"--out runs/{name}",
        ]
    )


def _install(src_dir: Path, name: str) -> dict:
    card = json.loads((src_dir / f"{name}.json").read_text())
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
    args = ap.parse_args(argv)
    installed = {}
    for run in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        if (run / f"{run.name}.safetensors").is_file() and run.name not in SEM_FROM:
            installed[run.name] = _install(run, run.name)
            print(f"installed {run.name}")
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
