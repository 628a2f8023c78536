"""Geometric self-ensemble of the restoration engine (``restore(..., ensemble=n)``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdenoise.engine import restore
from napari_emdenoise.engine.self_ensemble import ensemble_transforms, output_shapes
from napari_emdenoise.models.registry import build_model


@pytest.fixture(scope="module")
def net():
    import torch

    torch.manual_seed(3)
    return build_model("cgrdn", "tiny").eval()


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(5).poisson(20.0, (40, 56)).astype(np.float32)


@pytest.mark.parametrize("size", [1, 2, 8])
def test_transforms_are_inverted_and_distinct(size):
    a = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)
    pairs = ensemble_transforms(size)
    assert len(pairs) == size
    views = [forward(a) for forward, _ in pairs]
    assert [v.shape for v in views] == output_shapes(a.shape, size)
    np.testing.assert_array_equal(views[0], a)  # the identity first
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == size
    for (_, inverse), view in zip(pairs, views, strict=True):
        np.testing.assert_array_equal(inverse(view), a)


@pytest.mark.parametrize("size", [2, 8])
def test_restore_averages_the_back_transformed_restorations(net, frame, size):
    single = [
        inverse(restore(forward(frame), refine=False, model=net, backend="torch"))
        for forward, inverse in ensemble_transforms(size)
    ]
    out = restore(frame, refine=False, model=net, backend="torch", ensemble=size)
    np.testing.assert_allclose(out, np.mean(single, axis=0), rtol=1e-5, atol=1e-4)
    assert not np.allclose(out, single[0], atol=1e-3)  # the ensemble did change the output


def test_ensemble_is_equivariant_to_its_transforms(net, frame):
    def gap(a, b):
        return float(np.abs(a - b).max() / np.ptp(a))

    out8 = restore(frame, refine=False, model=net, backend="torch", ensemble=8)
    rotated = restore(np.rot90(frame).copy(), refine=False, model=net, backend="torch", ensemble=8)
    assert gap(np.rot90(out8), rotated) < 1e-5
    out2 = restore(frame, refine=False, model=net, backend="torch", ensemble=2)
    flipped = restore(frame[::-1].copy(), refine=False, model=net, backend="torch", ensemble=2)
    assert gap(out2[::-1], flipped) < 1e-5
    # the network alone is not: the check above can fail
    out1 = restore(frame, refine=False, model=net, backend="torch")
    assert (
        gap(
            np.rot90(out1),
            restore(np.rot90(frame).copy(), refine=False, model=net, backend="torch"),
        )
        > 1e-3
    )


def test_ensemble_keeps_unit_invariance_and_stacks(net, frame):
    out = restore(frame, model=net, backend="torch", ensemble=8)
    scaled = restore(1000.0 * frame + 3e6, model=net, backend="torch", ensemble=8)
    assert np.abs((scaled - 3e6) / 1000.0 - out).max() < 1e-3 * np.ptp(out)
    stack = np.stack([frame, frame[::-1].copy()])
    progress = []
    both = restore(
        stack, model=net, backend="torch", ensemble=8, progress=lambda d, t: progress.append((d, t))
    )
    np.testing.assert_allclose(both[0], out, rtol=1e-5, atol=1e-4)
    done = [d for d, _ in progress]
    assert done == sorted(done) and progress[-1][0] == progress[-1][1] == progress[0][1] > 0


def test_ensemble_with_the_safeguard_blends_the_ensemble(net):
    x = np.random.default_rng(9).poisson(30.0, (200, 200)).astype(np.float32)
    reports = []
    out = restore(
        x, model=net, backend="torch", ensemble=2, safeguard=True,
        safeguard_report=lambda _i, r: reports.append(r),
    )  # fmt: skip
    (report,) = reports
    from napari_emdenoise.engine.lattice import restore_lattice

    expected = restore_lattice(x, report.image)  # the lattice pass: last
    np.testing.assert_allclose(out, expected, atol=1e-5 * float(np.ptp(expected)))
    assert len(report.band_weights) == 5


@pytest.mark.parametrize("bad", [0, 3, 4, True, 2.0, "8", None])
def test_bad_ensemble_sizes_are_refused(frame, bad):
    with pytest.raises(ValueError, match="ensemble must be one of 1, 2, 8"):
        restore(frame, model="hrstem", ensemble=bad)


def test_command_line_ensemble(tmp_path, tiny_user_model):
    from napari_emdenoise.cli import main
    from napari_emdenoise.io.readers import read_em
    from napari_emdenoise.io.writers import write_tif

    data = (np.random.default_rng(1).random((45, 61)) * 3000).astype(np.uint16)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    write_tif(src, data, {})
    assert (
        main(["restore", str(src), "-o", str(dst), "--model", tiny_user_model, "--ensemble", "8"])
        == 0
    )
    ((out, meta),) = read_em(dst)
    expected = restore(data, model=tiny_user_model, ensemble=8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert main(["restore", str(src), "-o", str(dst), "--ensemble", "3"]) == 2


def test_restore_dask_passes_the_ensemble(net, frame):
    from napari_emdenoise.engine import restore_dask

    stack = np.stack([frame, frame[::-1].copy()])
    lazy = restore_dask(stack, model=net, backend="torch", ensemble=8)
    expected = restore(stack, model=net, backend="torch", ensemble=8)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        restore_dask(stack, model=net, ensemble=4)


def test_restore_dask_passes_the_safeguard(net):
    from napari_emdenoise.engine import restore_dask
    from napari_emdenoise.evaluation import lattice_probe

    probes = [lattice_probe(np.random.default_rng(i), size=96, dose=20.0) for i in range(2)]
    stack = np.stack([p.noisy for p in probes])
    lazy = restore_dask(stack, refine=False, model=net, backend="torch", safeguard=True).compute()
    expected = restore(stack, refine=False, model=net, backend="torch", safeguard=True)
    np.testing.assert_allclose(lazy, expected, rtol=1e-5, atol=1e-4)
    # The safeguard changed something, so the equality above is not the plain output's.
    plain = restore(stack, refine=False, model=net, backend="torch")
    assert np.abs(expected - plain).max() > 1e-3 * np.ptp(plain)
