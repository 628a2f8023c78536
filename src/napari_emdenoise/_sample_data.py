"""Sample data for File ▸ Open Sample, generated locally from fixed seeds (no download)."""

from __future__ import annotations

from .simulate import simulate

__all__ = ["hrstem_pair"]


def hrstem_pair() -> list[tuple]:
    """A 512×512 distorted HR-STEM image and its clean reference (seed 7, default noise)."""
    sim = simulate("stem", "hr", (512, 512), seed=7)
    meta = {"noise_params": sim.params.to_dict(), "specimen": sim.info}
    return [
        (sim.target, {"name": "HR-STEM clean reference", "metadata": meta, "visible": False}),
        (sim.distorted, {"name": "HR-STEM distorted", "metadata": meta}),
    ]
