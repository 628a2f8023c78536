"""Copy trained runs into the package's bundled weights, with their model cards.

Usage::

    python tools/install_bundled.py --runs runs

For every ``runs/<name>/<name>.safetensors`` (written by ``tools/train_bundled.py``)
the weights and card are copied to ``src/napari_emdenoise/weights/``, with the
reproduction command in the card's notes. The SEM models share the S(T)EM
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


def _install(src_dir: Path, name: str) -> dict:
    card = json.loads((src_dir / f"{name}.json").read_text())
    steps = card["training"]["steps"]
    card["notes"] = (
        f"CGRDN ({CITATION}), small configuration with bilinear upsampling, trained on this "
        "package's synthetic pairs only. Reproduce: python tools/train_bundled.py "
        f"{name} --steps {steps} --out runs/{name} --init-from <the 0.2 {name} weights>. "
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
