"""Interpolate two trained networks of one architecture, tensor by tensor.

Usage::

    python tools/interpolate_weights.py FINE_TUNED.safetensors BASE.safetensors \
        --alpha 0.85 --out runs/hrstem_wise

writes ``OUT/<name>.safetensors`` + ``.json`` with the weights
``alpha · FINE_TUNED + (1 − alpha) · BASE`` and the fine-tuned model's card
(weight-space interpolation between a network and its fine-tuned version:
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
arXiv:2109.01903). The bundled ``hrstem`` (alpha 0.85) and ``hrtem`` (0.7) were
made this way; see ``src/napari_emdenoise/weights/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fine_tuned", type=Path)
    ap.add_argument("base", type=Path)
    ap.add_argument("--alpha", type=float, required=True, help="weight of FINE_TUNED, in [0, 1]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        ap.error("--alpha must be in [0, 1]")

    from napari_emdenoise.models.registry import load_model, save_model

    fine, card = load_model(args.fine_tuned)
    base, base_card = load_model(args.base)
    if (card.arch, card.config) != (base_card.arch, base_card.config):
        ap.error("the two models have different architectures or configurations")
    a, b = fine.state_dict(), base.state_dict()
    mixed = {
        k: args.alpha * a[k] + (1.0 - args.alpha) * b[k] if a[k].is_floating_point() else a[k]
        for k in a
    }
    fine.load_state_dict(mixed)
    card.training = dict(
        card.training,
        weight_interpolation={"alpha": args.alpha, "base": str(args.base)},
    )
    save_model(fine, card, args.out)
    print(f"wrote {args.out / card.name}.safetensors (alpha {args.alpha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
