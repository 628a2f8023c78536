"""Tests of the networks (CGRDN, DnCNN, discriminators) and the model registry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from napari_emdenoise.models import registry
from napari_emdenoise.models._normalization import (
    NORM_STD_FLOOR,
    denormalize,
    normalize_per_image,
)
from napari_emdenoise.models.cgrdn import CGRDN, CGRDN_CONFIGS, CGRDNConfig
from napari_emdenoise.models.discriminators import (
    MultiScalePatchDiscriminator,
    PatchDiscriminator,
)
from napari_emdenoise.models.dncnn import DNCNN_BF_CONFIGS, DNCNN_CONFIGS, DnCNN
from napari_emdenoise.models.registry import (
    ModelCard,
    build_model,
    list_models,
    load_model,
    save_model,
)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny_cgrdn(seed: int = 0, **kwargs: bool) -> CGRDN:
    torch.manual_seed(seed)
    return CGRDN(CGRDN_CONFIGS["tiny"], **kwargs).eval()


def _images(rng: np.random.Generator, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(rng.random(shape), dtype=dtype)


# ----------------------------------------------------------------------------- CGRDN
def test_full_cgrdn_has_published_parameter_count():
    # The published layout (transposed-convolution upsampling) has exactly the
    # released models' size; the bilinear variant replaces the 4×4 kernel by a 3×3 one.
    with torch.device("meta"):
        published = CGRDN(CGRDNConfig(upsampling="transposed"))
        model = CGRDN(CGRDN_CONFIGS["full"])
    assert _n_params(published) == 7_035_521
    assert _n_params(model) == 7_035_521 - 64 * 64 * (16 - 9)
    assert CGRDN_CONFIGS["full"] == CGRDNConfig()


def test_config_without_upsampling_key_loads_as_transposed():
    # Models saved before the option existed used the transposed convolution.
    old = {k: v for k, v in CGRDN_CONFIGS["small"].to_dict().items() if k != "upsampling"}
    assert CGRDNConfig.from_dict(old).upsampling == "transposed"
    assert CGRDNConfig.from_dict(CGRDN_CONFIGS["small"].to_dict()).upsampling == "bilinear"
    with pytest.raises(ValueError, match="upsampling"):
        CGRDNConfig(upsampling="nearest")


def test_bilinear_cgrdn_adds_no_checkerboard_to_a_constant_image():
    # Random weights: a transposed convolution turns a flat input into a 2-px
    # pattern, the bilinear upsampling path cannot (away from the zero-padded border).
    torch.manual_seed(0)
    flat = torch.full((1, 1, 32, 32), 0.5)
    with torch.no_grad():
        for upsampling, has_pattern in (("transposed", True), ("bilinear", False)):
            cfg = CGRDNConfig(
                features=8, growth=8, n_grdb=1, n_rdb=1, n_conv=2, upsampling=upsampling
            )
            model = CGRDN(cfg, normalize=False)
            core = model(flat)[0, 0, 8:-8, 8:-8]
            phases = torch.stack(
                [core[::2, ::2], core[1::2, ::2], core[::2, 1::2], core[1::2, 1::2]]
            )
            spread = float(phases.mean(dim=(1, 2)).std())
            assert (spread > 1e-4) == has_pattern, (upsampling, spread)


@pytest.mark.parametrize("name", sorted(CGRDN_CONFIGS))
def test_closed_form_parameter_count_matches_module(name):
    cfg = CGRDN_CONFIGS[name]
    with torch.device("meta"):
        model = CGRDN(cfg)
    assert cfg.n_parameters() == _n_params(model)


def test_named_config_sizes():
    assert 100_000 <= CGRDN_CONFIGS["small"].n_parameters() <= 300_000
    assert 5_000 <= CGRDN_CONFIGS["tiny"].n_parameters() <= 20_000


def test_cgrdn_layout_follows_spec():
    with torch.device("meta"):
        model = CGRDN()
    assert model.down.stride == (2, 2) and model.down.kernel_size == (4, 4)
    assert model.up.stride == (1, 1) and model.up.kernel_size == (3, 3)  # then bilinear ×2
    published = CGRDN(CGRDNConfig(upsampling="transposed"))
    assert published.up.stride == (2, 2) and published.up.kernel_size == (4, 4)
    assert model.fusion.in_channels == 4 * 64 and model.fusion.out_channels == 64
    rdb = model.grdbs[0].rdbs[0]
    assert len(rdb.convs) == 8
    assert rdb.fusion.in_channels == 64 + 8 * 32  # dense concatenation 64 → 320
    assert model.grdbs[0].fusion.in_channels == 4 * 64


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), batch=st.integers(1, 2))
def test_cgrdn_output_shape_equals_input_shape(h, w, batch):
    model = _tiny_cgrdn()
    x = torch.rand(batch, 1, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_cgrdn_odd_size_33x47():
    model = _tiny_cgrdn()
    x = _images(np.random.default_rng(1), (1, 1, 33, 47))
    with torch.no_grad():
        assert model(x).shape == (1, 1, 33, 47)


@pytest.mark.parametrize("normalize", [True, False])
def test_cgrdn_zero_last_conv_is_identity(normalize):
    # The global residual makes the network the identity when the tail conv
    # outputs zero; with normalisation on, that also checks it is undone.
    model = _tiny_cgrdn(normalize=normalize)
    with torch.no_grad():
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        x = 500.0 * _images(np.random.default_rng(2), (2, 1, 31, 40)) + 1000.0
        y = model(x)
    torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-3)


def test_cgrdn_normalization_makes_it_affine_equivariant():
    # (x - mean)/std is invariant to x → a·x + b once std > floor, so the
    # restored image must follow the same affine map.
    model = _tiny_cgrdn()
    x = _images(np.random.default_rng(3), (2, 1, 24, 30))  # std ≈ 0.29 > 0.1
    a, b = 37.0, -5.0
    with torch.no_grad():
        torch.testing.assert_close(model(a * x + b), a * model(x) + b, rtol=1e-4, atol=1e-3)
        # Without normalisation, the network is not equivariant (the test can fail).
        model.normalize = False
        assert not torch.allclose(model(a * x + b), a * model(x) + b, rtol=1e-2, atol=1e-2)


def test_cgrdn_is_unit_invariant_at_low_contrast():
    # The scale floor is relative: an image in [0, 0.01] is restored like the
    # same image in [0, 1] (an absolute floor made these differ).
    model = _tiny_cgrdn()
    x = _images(np.random.default_rng(4), (1, 1, 20, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(0.01 * x), 0.01 * model(x), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            model(0.01 * x + 3.0), 0.01 * model(x) + 3.0, rtol=1e-5, atol=1e-4
        )
    # A flat image (to one part in 10⁶) is not blown up to unit variance.
    flat = torch.full((1, 1, 8, 8), 5.0)
    _, _, scale = normalize_per_image(flat)
    torch.testing.assert_close(scale.flatten(), torch.tensor([5.0 * NORM_STD_FLOOR]))


def test_cgrdn_normalize_off_matches_external_normalisation():
    # What the inference engine does: normalise outside, switch it off inside.
    model = _tiny_cgrdn()
    x = 3.0 * _images(np.random.default_rng(5), (2, 1, 18, 26)) + 1.0
    with torch.no_grad():
        inside = model(x)
        xn, mean, scale = normalize_per_image(x)
        model.normalize = False
        outside = denormalize(model(xn), mean, scale)
    torch.testing.assert_close(inside, outside, rtol=1e-5, atol=1e-5)


def test_cgrdn_input_not_modified_and_gradients_flow():
    model = CGRDN(CGRDN_CONFIGS["tiny"])
    x = _images(np.random.default_rng(6), (2, 1, 16, 16))
    x0 = x.clone()
    model(x).square().mean().backward()
    assert torch.equal(x, x0)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(1, 8, 8),  # wrong rank
        torch.zeros(1, 2, 8, 8),  # wrong channels
        torch.zeros(1, 1, 8, 8, dtype=torch.int64),  # integer dtype
        torch.zeros(0, 1, 8, 8),  # empty
        np.zeros((1, 1, 8, 8), np.float32),  # not a tensor
    ],
)
def test_cgrdn_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        _tiny_cgrdn()(bad)


@pytest.mark.parametrize("field", ["features", "growth", "n_grdb", "n_rdb", "n_conv"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_cgrdn_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError):
        CGRDNConfig(**{field: value})


@pytest.mark.parametrize("value", [1, -1, 2.5, True])
def test_cgrdn_full_res_convs_rejects_bad_values(value):
    with pytest.raises(ValueError, match="full_res_convs"):
        CGRDNConfig(full_res_convs=value)


def test_full_resolution_block_starts_as_the_model_it_extends():
    # A model extended with the refinement block (weights copied, new block at
    # its initial state) gives the same output as before: training starts there.
    torch.manual_seed(0)
    small = CGRDN(CGRDN_CONFIGS["tiny"]).eval()
    cfg = CGRDNConfig(**{**CGRDN_CONFIGS["tiny"].to_dict(), "full_res_convs": 3})
    extended = CGRDN(cfg).eval()
    result = extended.load_state_dict(small.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(
        f"refine.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    )
    x = torch.rand(2, 1, 24, 30) * 50
    with torch.no_grad():
        torch.testing.assert_close(extended(x), small(x))
    assert cfg.n_parameters() == _n_params(extended)
    # ... and the block is trainable: the zero conv gets a gradient.
    extended.train()
    extended(x).square().mean().backward()
    assert extended.refine[-1].weight.grad.abs().sum() > 0


def test_cgrdn_config_without_full_res_key_has_no_block():
    cfg = CGRDNConfig.from_dict({"features": 8, "growth": 8, "n_grdb": 1, "n_rdb": 1, "n_conv": 1})
    assert cfg.full_res_convs == 0 and CGRDN(cfg).refine is None


def test_cgrdn_config_dict_round_trip():
    cfg = CGRDN_CONFIGS["small"]
    assert CGRDNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        CGRDNConfig.from_dict({"features": 8, "bogus": 1})


# ----------------------------------------------------------------------------- DnCNN
def test_dncnn_full_matches_seed_002():
    model = DnCNN(**DNCNN_CONFIGS["full"])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    assert all(c.out_channels == 64 for c in convs[:-1])


@pytest.mark.parametrize("bias", [True, False])
def test_dncnn_shape_and_zero_noise_identity(bias):
    torch.manual_seed(0)
    model = DnCNN(depth=4, features=8, bias=bias, normalize=bias).eval()
    x = _images(np.random.default_rng(7), (2, 1, 21, 34))
    with torch.no_grad():
        assert model(x).shape == x.shape
        last = model.body[-1]
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        torch.testing.assert_close(model(x), x)


def test_bias_free_dncnn_has_no_additive_parameters():
    model = DnCNN(**DNCNN_BF_CONFIGS["small"])
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def _trained_a_little(model: DnCNN, rng: np.random.Generator) -> DnCNN:
    # One training step moves the BN running statistics away from 1 so the
    # eval-mode test exercises them.
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = _images(rng, (4, 1, 16, 16), torch.float64)
    model.train()
    loss = (model(x) - 0.5).square().mean()
    loss.backward()
    opt.step()
    return model.eval()


@settings(max_examples=10, deadline=None)
@given(a=st.floats(0.01, 100.0))
def test_bias_free_dncnn_is_scale_equivariant(a):
    torch.manual_seed(1)
    model = DnCNN(depth=5, features=8, bias=False, normalize=False).double()
    model = _trained_a_little(model, np.random.default_rng(8))
    x = torch.as_tensor(np.random.default_rng(9).standard_normal((2, 1, 17, 19)))
    with torch.no_grad():
        torch.testing.assert_close(model(a * x), a * model(x), rtol=1e-9, atol=1e-12)


def test_biased_dncnn_is_not_scale_equivariant():
    # Counterpart of the property above: biases break f(a·x) = a·f(x).
    torch.manual_seed(1)
    model = DnCNN(depth=5, features=8, bias=True, normalize=False).double()
    model = _trained_a_little(model, np.random.default_rng(8))
    x = torch.as_tensor(np.random.default_rng(9).standard_normal((2, 1, 17, 19)))
    with torch.no_grad():
        assert not torch.allclose(model(0.05 * x), 0.05 * model(x), rtol=1e-3, atol=1e-6)


def test_dncnn_normalization_removes_offsets():
    torch.manual_seed(2)
    model = DnCNN(depth=4, features=8).eval()
    x = _images(np.random.default_rng(10), (1, 1, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x + 7.0), model(x) + 7.0, rtol=1e-5, atol=1e-4)


def test_dncnn_rejects_bad_arguments():
    with pytest.raises(ValueError):
        DnCNN(depth=1)
    with pytest.raises(ValueError):
        DnCNN(depth=4, features=8)(torch.zeros(1, 1, 8))


# --------------------------------------------------------------------- discriminators
@pytest.mark.parametrize(("padding", "size"), [("same", 32), ("valid", 24), (1, 30)])
def test_patch_discriminator_output_size_on_256(padding, size):
    disc = PatchDiscriminator(base_channels=4, padding=padding)
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        out = disc(x, x)
    assert out.shape == (1, 1, size, size)
    assert disc.output_shape(256, 256) == (size, size)
    assert disc.receptive_field == 70


@pytest.mark.parametrize("padding", ["same", "valid", 1])
def test_patch_discriminator_output_shape_formula_on_odd_sizes(padding):
    disc = PatchDiscriminator(base_channels=4, padding=padding)
    h, w = disc.min_input_size + 5, disc.min_input_size + 12
    with torch.no_grad():
        out = disc(torch.rand(2, 2, h, w))
    assert out.shape == (2, 1, *disc.output_shape(h, w))


def test_patch_discriminator_receptive_field_is_70_pixels():
    # Without normalisation and padding, one logit depends on a 70×70 patch.
    disc = PatchDiscriminator(base_channels=4, norm="none", padding="valid").double()
    x = torch.rand(1, 2, 96, 96, dtype=torch.float64, requires_grad=True)
    disc(x)[0, 0, 1, 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)))
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)))
    assert int(rows.max() - rows.min()) + 1 == 70
    assert int(cols.max() - cols.min()) + 1 == 70
    assert int(rows.min()) == 1 * 8 and int(cols.min()) == 2 * 8  # total stride 8


def test_patch_discriminator_uses_instance_norm_and_raw_logits():
    disc = PatchDiscriminator(base_channels=4)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in disc.modules()) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules())
    x = 10.0 * torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = disc(x)
    assert (out < 0).any() or (out > 1).any()  # not squashed by a sigmoid


def test_patch_discriminator_rejects_bad_input():
    disc = PatchDiscriminator(base_channels=4)
    with pytest.raises(ValueError, match="too small"):
        disc(torch.rand(1, 2, disc.min_input_size - 1, 64))
    with pytest.raises(ValueError):
        disc(torch.rand(1, 1, 64, 64))  # one channel instead of two
    with pytest.raises(ValueError):
        disc(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError):
        PatchDiscriminator(padding="reflect")


def test_multiscale_discriminator_matches_pooled_single_scale():
    torch.manual_seed(3)
    multi = MultiScalePatchDiscriminator(n_scales=2, base_channels=4)
    x, y = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        outs = multi(x, y)
        assert [o.shape[-1] for o in outs] == [8, 4]
        pooled = torch.nn.functional.avg_pool2d(
            torch.cat([x, y], 1), 3, stride=2, padding=1, count_include_pad=False
        )
        torch.testing.assert_close(outs[1], multi.discriminators[1](pooled))
        torch.testing.assert_close(outs[0], multi.discriminators[0](x, y))


# ---------------------------------------------------------------------------- registry
def test_build_model_named_and_dict_configs():
    model = build_model("cgrdn", "tiny")
    assert isinstance(model, CGRDN) and model.config == CGRDN_CONFIGS["tiny"]
    model = build_model("cgrdn", {**CGRDN_CONFIGS["tiny"].to_dict(), "normalize": False})
    assert model.normalize is False
    bf = build_model("dncnn_bf", "tiny")
    assert isinstance(bf, DnCNN) and not bf.bias and not bf.normalize
    assert build_model("dncnn", "tiny").bias
    assert set(registry.ARCHITECTURES) >= {"cgrdn", "dncnn", "dncnn_bf"}


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("unet", "small"),
        ("cgrdn", "huge"),
        ("cgrdn", {"features": 8, "colour": 3}),
        ("dncnn", {"depth": 3, "width": 2}),
        ("dncnn_bf", {"bias": True}),
        ("cgrdn", 3),
    ],
)
def test_build_model_rejects_bad_requests(arch, config):
    with pytest.raises(ValueError):
        build_model(arch, config)


def _card(name: str = "tinystem", arch: str = "cgrdn", config: str = "tiny") -> ModelCard:
    return ModelCard(
        name=name,
        arch=arch,
        config=registry.named_configs(arch)[config],
        modality="stem",
        kind="hr",
        training={
            "steps": 3,
            "batch": 2,
            "patch": 32,
            "lr": np.float32(1e-3),
            "seed": 0,
            "loss_weights": {"l1": 10.0},
            "windows": (2, 4),
        },
        metrics={"psnr_db": np.float64(31.5)},
        notes="unit test",
    )


def test_model_card_json_round_trip():
    card = _card()
    again = ModelCard.from_json(card.to_json())
    assert again.training["lr"] == pytest.approx(1e-3)
    assert again.training["windows"] == [2, 4]
    assert again.metrics == {"psnr_db": 31.5}
    assert (again.name, again.arch, again.config, again.created) == (
        card.name,
        card.arch,
        card.config,
        card.created,
    )


@pytest.mark.parametrize(
    "change",
    [{"modality": "xray"}, {"kind": "mid"}, {"name": "../evil"}, {"name": ""}, {"config": [1, 2]}],
)
def test_model_card_validation(change):
    fields = {"name": "ok", "arch": "cgrdn", "config": {}, "modality": "tem", "kind": "lr"}
    with pytest.raises(ValueError):
        ModelCard(**{**fields, **change})


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", '{"name": "x"}', '{"format": 99, "name": "x"}']
)
def test_model_card_from_bad_json(text):
    with pytest.raises(ValueError):
        ModelCard.from_json(text)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(4)
    model = build_model("cgrdn", "tiny")
    path = save_model(model, _card(), tmp_path / "models")
    assert path == tmp_path / "models" / "tinystem.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "tinystem.json",
        "tinystem.safetensors",
    ]
    loaded, card = load_model(path)
    assert not loaded.training and card.weights_path == path
    x = _images(np.random.default_rng(11), (2, 1, 29, 35))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_bias_free_dncnn_round_trip_keeps_running_statistics(tmp_path):
    torch.manual_seed(5)
    model = _trained_a_little(
        build_model("dncnn_bf", "tiny").double(), np.random.default_rng(12)
    ).float()
    save_model(model, _card("bf", "dncnn_bf"), tmp_path)
    loaded, _ = load_model("bf", extra_dirs=[tmp_path])
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = _images(np.random.default_rng(13), (1, 1, 20, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_list_models_finds_cards_with_weights(tmp_path):
    user, other = tmp_path / "user", tmp_path / "other"
    save_model(build_model("cgrdn", "tiny"), _card("lrtem"), user)
    save_model(build_model("dncnn", "tiny"), _card("lrtem", "dncnn"), other)
    (user / "orphan.json").write_text(_card("orphan").to_json())  # no weights
    (user / "broken.safetensors").write_bytes(b"")
    (user / "broken.json").write_text("{")
    with pytest.warns(UserWarning, match="broken.json"):
        found = list_models([user, tmp_path / "missing"])
    assert "lrtem" in found and "orphan" not in found and "broken" not in found
    assert found["lrtem"].arch == "cgrdn"
    assert found["lrtem"].weights_path == user / "lrtem.safetensors"
    with pytest.warns(UserWarning):
        later_wins = list_models([user, other])
    assert later_wins["lrtem"].arch == "dncnn"


def test_list_models_bundled_dir_is_package_weights():
    assert registry.bundled_weights_dir().name == "weights"
    assert registry.bundled_weights_dir().parent.name == "napari_emdenoise"
    for name, card in list_models().items():
        assert card.weights_path.parent == registry.bundled_weights_dir()
        assert name == card.name


class _Exploit:
    """Unpickling this would create the sentinel file; it must never happen."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".ckpt"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, protocol, suffix):
    sentinel = tmp_path / "pwned"
    weights = tmp_path / f"evil{suffix}"
    weights.write_bytes(pickle.dumps(_Exploit(sentinel), protocol=protocol))
    (tmp_path / "evil.json").write_text(_card("evil").to_json())
    with pytest.raises(ValueError, match="pickle|safetensors"):
        load_model(weights)
    assert not sentinel.exists()
    if suffix == ".safetensors":  # also when found by name
        with pytest.raises(ValueError):
            load_model("evil", extra_dirs=[tmp_path])
        assert not sentinel.exists()


def test_torch_save_zip_is_refused(tmp_path):
    weights = tmp_path / "zipped.safetensors"
    torch.save(build_model("cgrdn", "tiny").state_dict(), weights)
    (tmp_path / "zipped.json").write_text(_card("zipped").to_json())
    with pytest.raises(ValueError, match="pickle"):
        load_model(weights)


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path):
    # The first byte of a safetensors file is the low byte of its header length;
    # 0x80 there is not a pickle (a bundled model once had a 6272-byte header).
    model = build_model("cgrdn", "tiny")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = tmp_path / "odd.safetensors"
    for pad in range(0, 512):
        save_file(tensors, str(weights), metadata={"pad": "x" * pad})
        if weights.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    (tmp_path / "odd.json").write_text(_card("odd").to_json())
    loaded, _ = load_model(weights)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, tensors[key])


def test_mismatched_state_dict_is_refused(tmp_path):
    tensors = {k: v.contiguous() for k, v in build_model("cgrdn", "tiny").state_dict().items()}
    tensors["head.extra"] = torch.zeros(1)
    del tensors["tail.bias"]
    tensors["head.weight"] = torch.zeros(3, 1, 3, 3)
    save_file(tensors, str(tmp_path / "wrong.safetensors"))
    (tmp_path / "wrong.json").write_text(_card("wrong").to_json())
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "wrong.safetensors")
    message = str(info.value)
    assert "missing keys: tail.bias" in message
    assert "unexpected keys: head.extra" in message
    assert "shape mismatches: head.weight (3, 1, 3, 3) != (8, 1, 3, 3)" in message


def test_weights_of_another_config_are_refused(tmp_path):
    # Weights of the tiny model under a card that says "small".
    save_model(build_model("cgrdn", "tiny"), _card("other"), tmp_path)
    (tmp_path / "other.json").write_text(_card("other", config="small").to_json())
    with pytest.raises(ValueError, match="do not match"):
        load_model("other", extra_dirs=[tmp_path])


def test_save_model_refuses_model_not_matching_card(tmp_path):
    with pytest.raises(ValueError, match="missing keys|shape"):
        save_model(build_model("cgrdn", "tiny"), _card(config="small"), tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ("nonexistent-model", ValueError),
        ("weights.npz", ValueError),
        ("missing/dir/model.safetensors", FileNotFoundError),
    ],
)
def test_load_model_bad_requests(request_, error):
    with pytest.raises(error):
        load_model(request_)


def test_load_model_without_card(tmp_path):
    save_file({"a": torch.zeros(1)}, str(tmp_path / "lonely.safetensors"))
    with pytest.raises(FileNotFoundError, match="card"):
        load_model(tmp_path / "lonely.safetensors")


def test_package_import_and_listing_do_not_import_torch():
    code = (
        "import sys\n"
        "import napari_emdenoise.models as m\n"
        "from napari_emdenoise.models import registry\n"
        "registry.list_models()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "m.CGRDN\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
