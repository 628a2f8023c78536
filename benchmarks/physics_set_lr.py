"""Low-magnification validation set: gold nanoparticles on amorphous carbon, abTEM.

Usage::

    python benchmarks/physics_set_lr.py [--out benchmarks/data/lr] [--force]

Writes ``physics_set.npz`` and ``physics_set.json`` in the format of
``benchmarks/physics_set.py`` (clean images normalised to a mean of 1; no
atom columns), so that ``python benchmarks/restore_quality.py --physics-dir
benchmarks/data/lr --models lrstem lrtem`` scores the LR models on it. Like the
atomic-resolution set it is for **validation only**: nothing in it may be used
for training.

The scenes are what low-magnification TEM and STEM images of a catalyst or a
nanoparticle sample show: fcc gold particles (1.2–5 nm across, spheres cut from
the crystal in a random orientation) on an amorphous carbon film (random atom
positions at 2 g/cm³, 2–3 nm thick), in a periodic 12.8 or 25.6 nm cell
rendered at 0.5 or 1.0 Å per pixel (256² pixels).

* **TEM**: plane-wave multislice (abTEM: Madsen & Susi, "The abTEM code:
  transmission electron microscopy from first principles", Open Research
  Europe, 2021) at 200 keV, then the contrast transfer function of a
  low-magnification set-up: an 8–12 mrad objective aperture, Cs 1.2 mm, an
  underfocus of 60–120 nm (the phase contrast of the carbon film), focal and
  angular spread; the intensity is integrated over each camera pixel.
* **S(T)EM**, an *incoherent* HAADF model, not multislice (a 256² scan of a
  25 nm cell would take hours here): each atom scatters in proportion to
  Z^1.7 (Pennycook & Jesson, Ultramicroscopy 37, 14, 1991), spread by 0.1 Å of
  thermal motion, and the object is convolved with the intensity of abTEM's
  probe (200 keV, 10–15 mrad, a 1.5 Å effective source). The image is
  point-sampled at the scan positions.

Neither is made by this project's image generator. Cost: about a CPU-minute.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import physics_set  # noqa: E402

DEFAULT_DIR = HERE / "data" / "lr"
SEED = 20261202
SIZE = 256
GOLD_LATTICE_A = 4.078
CARBON_DENSITY_PER_A3 = 2.0 / 12.011 * 0.6022  # 2 g/cm³


@dataclass(frozen=True)
class Scene:
    """One low-magnification scene and how it is imaged."""

    key: str
    technique: str  # "TEM" or "HAADF"
    pixel_size_A: float
    n_particles: int
    radius_range_A: tuple[float, float]
    film_thickness_A: float
    optics: dict


SCENES = (
    Scene("au_c_tem_0.5", "TEM", 0.5, 6, (8.0, 20.0), 25.0,
          {"aperture_mrad": 12.0, "defocus_A": -600.0}),
    Scene("au_c_tem_1.0", "TEM", 1.0, 10, (10.0, 25.0), 30.0,
          {"aperture_mrad": 8.0, "defocus_A": -1200.0}),
    Scene("au_c_tem_1.0b", "TEM", 1.0, 16, (6.0, 15.0), 20.0,
          {"aperture_mrad": 10.0, "defocus_A": -900.0}),
    Scene("au_c_haadf_0.5", "HAADF", 0.5, 6, (8.0, 20.0), 25.0, {"semiangle_mrad": 15.0}),
    Scene("au_c_haadf_1.0", "HAADF", 1.0, 10, (10.0, 25.0), 30.0, {"semiangle_mrad": 10.0}),
    Scene("au_c_haadf_1.0b", "HAADF", 1.0, 16, (6.0, 15.0), 20.0, {"semiangle_mrad": 12.0}),
)  # fmt: skip


def gold_particle(radius: float, rng: np.random.Generator) -> np.ndarray:
    """Positions (Å, centred) of an fcc gold sphere in a random orientation."""
    from scipy.spatial.transform import Rotation

    n = int(np.ceil(radius / GOLD_LATTICE_A)) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pos = (grid[:, None, :] + basis[None]).reshape(-1, 3) * GOLD_LATTICE_A
    pos = pos[np.linalg.norm(pos, axis=1) <= radius]
    return Rotation.random(random_state=int(rng.integers(2**31))).apply(pos)


def scene_atoms(scene: Scene, rng: np.random.Generator):
    """ASE atoms of one scene: a carbon film and gold particles on top of it."""
    from ase import Atoms

    side = scene.pixel_size_A * SIZE
    t = scene.film_thickness_A
    n_c = rng.poisson(CARBON_DENSITY_PER_A3 * side * side * t)
    carbon = rng.uniform((0, 0, 2.0), (side, side, 2.0 + t), size=(n_c, 3))
    gold = []
    top = 2.0 + t
    for _ in range(scene.n_particles):
        r = float(rng.uniform(*scene.radius_range_A))
        centre = np.array([*rng.uniform(0, side, 2), top + r + 1.0])
        gold.append(gold_particle(r, rng) + centre)
    gold = np.concatenate(gold)
    gold[:, :2] %= side
    height = float(gold[:, 2].max() + 2.0)
    positions = np.concatenate([carbon, gold])
    numbers = np.concatenate([np.full(len(carbon), 6), np.full(len(gold), 79)])
    return Atoms(numbers=numbers, positions=positions, cell=[side, side, height], pbc=True)


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape
    return image.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def image_tem(scene: Scene, atoms) -> tuple[np.ndarray, dict]:
    """Plane-wave multislice, CTF, camera pixels integrated (binned from a 4× finer grid)."""
    import abtem

    fine = 4
    gpts = SIZE * fine * max(1, int(round(scene.pixel_size_A / 0.5)))
    pot = abtem.Potential(
        atoms, gpts=gpts, slice_thickness=4.0, projection="infinite", parametrization="lobato"
    )
    wave = abtem.PlaneWave(energy=200e3)
    exit_wave = wave.multislice(pot)
    ctf = abtem.CTF(
        energy=200e3,
        Cs=1.2e7,
        defocus=-scene.optics["defocus_A"],  # abTEM: positive defocus = underfocus
        semiangle_cutoff=scene.optics["aperture_mrad"],
        focal_spread=30.0,
        angular_spread=0.2,
    )
    img = np.asarray(exit_wave.apply_ctf(ctf).intensity().compute().array, np.float64)
    img = img.T  # abTEM indexes [x, y]; images here are [row = y, col = x]
    return _bin(img, img.shape[0] // SIZE), {"potential_gpts": gpts}


def image_haadf(scene: Scene, atoms) -> tuple[np.ndarray, dict]:
    """Incoherent HAADF: Z^1.7 point scatterers ⊛ thermal blur ⊛ probe intensity ⊛ source."""
    import abtem

    side = scene.pixel_size_A * SIZE
    fine = 4
    n = SIZE * fine
    h = side / n
    xy = atoms.positions[:, :2]
    weight = atoms.numbers.astype(np.float64) ** 1.7
    obj, _, _ = np.histogram2d(
        xy[:, 1] % side, xy[:, 0] % side, bins=n, range=[[0, side], [0, side]], weights=weight
    )
    probe = abtem.Probe(energy=200e3, semiangle_cutoff=scene.optics["semiangle_mrad"],
                        defocus=0.0, gpts=(n, n), extent=(side, side))  # fmt: skip
    p = np.asarray(probe.build().intensity().compute().array, np.float64).T
    # The probe's peak at (n/2, n/2): the periodic scene comes out shifted by half a
    # cell, which changes nothing for a validation image (no positions are stored).
    peak = (n // 2 - np.argmax(p.max(1)), n // 2 - np.argmax(p.max(0)))
    probe_ft = np.fft.fft2(np.roll(p, peak, (0, 1)))
    k = np.fft.fftfreq(n, d=h)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    source_sigma = 1.5 / (2 * np.sqrt(2 * np.log(2)))
    blur = np.exp(-2 * np.pi**2 * (0.1**2 + source_sigma**2) * k2)
    img = np.real(np.fft.ifft2(np.fft.fft2(obj) * probe_ft * blur))
    return img[::fine, ::fine], {"probe_gpts": n}


def build(out_dir: Path) -> None:
    physics_set._configure_abtem()
    records, arrays = [], {}
    images = []
    for index, scene in enumerate(SCENES):
        t0 = time.perf_counter()
        rng = np.random.default_rng([SEED, index])
        atoms = scene_atoms(scene, rng)
        make = image_tem if scene.technique == "TEM" else image_haadf
        img, info = make(scene, atoms)
        img = np.maximum(img, 0.0)
        img /= img.mean()
        images.append(img.astype(np.float32))
        arrays[f"columns_{index}"] = np.zeros((0, 2))
        arrays[f"kinds_{index}"] = np.zeros(0, dtype=np.int64)
        records.append(
            {
                "index": index,
                "simulation": scene.key,
                "technique": "HRTEM" if scene.technique == "TEM" else "HAADF",
                "modality": "tem" if scene.technique == "TEM" else "stem",
                "magnification": "low",
                "pixel_size_A": scene.pixel_size_A,
                "size_px": SIZE,
                "n_atoms": len(atoms),
                "scene": asdict(scene),
                "normalisation": "mean 1: dose * image = expected counts per pixel",
                "seconds": round(time.perf_counter() - t0, 1),
                **info,
            }
        )
        print(f"{scene.key}: {len(atoms)} atoms, {records[-1]['seconds']} s", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / physics_set.NPZ_NAME, images=np.stack(images), **arrays)
    meta = {
        "description": "low-magnification validation set (validation only, never training)",
        "generator": "benchmarks/physics_set_lr.py",
        "seed": SEED,
        "images": records,
    }
    (out_dir / physics_set.JSON_NAME).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--force", action="store_true", help="rebuild an existing set")
    args = ap.parse_args(argv)
    if (args.out / physics_set.NPZ_NAME).exists() and not args.force:
        print(f"{args.out} exists; --force rebuilds it")
        return 0
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
