"""Tests for ssr_lightning.networks: DKENet, its blocks (SFT, MAConv, DABlock) and saving/loading (diffusers config,
save_pretrained/from_pretrained and the stage checkpoint loader)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ssr_lightning.inference.checkpoints import CheckpointError, load_model
from ssr_lightning.networks import SFT, DABlock, DKENet, MAConv, split_sizes

K = 21
KK = K * K


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny() -> DKENet:
    torch.manual_seed(0)
    return DKENet.tiny().eval()


# ------------------------------------------------------------------------------------------------- DKENet shapes
@pytest.mark.parametrize("h,w", [(12, 12), (13, 17), (1, 3)])
def test_dkenet_shapes_with_depth(tiny: DKENet, h: int, w: int) -> None:
    lr, depth = torch.rand(2, 3, h, w), torch.rand(2, 1, h, w)
    with torch.no_grad():
        field = tiny(lr, depth)
        up = tiny(lr, depth, upscale=True)
    assert field.shape == (2, KK, h, w)
    assert up.shape == (2, KK, 4 * h, 4 * w)
    # Upscale layer = nearest repeat of the LR-grid field.
    assert torch.equal(up[..., ::4, ::4], field)
    assert torch.equal(up[..., 3::4, 3::4], field)
    assert torch.equal(tiny.upscale_field(field), up)


@pytest.mark.parametrize("h,w", [(12, 12), (13, 17)])
def test_dkenet_shapes_without_depth(h: int, w: int) -> None:
    net = DKENet.tiny(use_depth=False, scale=2).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, h, w)).shape == (2, KK, h, w)
        assert net(torch.rand(2, 3, h, w), upscale=True).shape == (2, KK, 2 * h, 2 * w)


def test_kernel_normalisation(tiny: DKENet) -> None:
    with torch.no_grad():
        field = tiny(torch.rand(3, 3, 13, 17), torch.rand(3, 1, 13, 17))
    assert (field >= 0).all()
    torch.testing.assert_close(field.sum(1), torch.ones(3, 13, 17), atol=1e-5, rtol=0)


def test_initial_field_is_centred_and_not_degenerate(tiny: DKENet) -> None:
    with torch.no_grad():
        field = DKENet.tiny()(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))
    kern = field[0, :, 4, 4].view(K, K)
    centre = K // 2
    assert kern.argmax() == centre * K + centre  # peak at the centre tap (dy*k + dx layout)
    assert kern.max() < 0.5 and kern.max() > 5.0 / KK  # neither a delta nor the uniform box
    assert field.std(dim=(2, 3)).max() > 0  # varies with the input, i.e. not a constant head


def test_hr_grid_depth_is_sampled_at_lr_positions(tiny: DKENet) -> None:
    lr, depth_hr = torch.rand(1, 3, 6, 7), torch.rand(1, 1, 24, 28)
    with torch.no_grad():
        a = tiny(lr, depth_hr)
        b = tiny(lr, depth_hr[..., ::4, ::4])
        c = tiny(lr, torch.rand(1, 1, 10, 11))  # other sizes: bilinear resize, just check it runs
    torch.testing.assert_close(a, b)
    assert c.shape == a.shape


def test_dkenet_backward_reaches_both_branches() -> None:
    net = DKENet.tiny()
    # Zero-init SFT/tail layers block gradients to earlier layers on the very first step; take one SGD step
    # so the check is about connectivity, not initialisation.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    lr, depth = torch.rand(2, 3, 10, 10), torch.rand(2, 1, 10, 10)
    for _ in range(2):
        opt.zero_grad()
        net(lr, depth).square().sum().backward()
        opt.step()
    assert net.head.weight.grad.abs().sum() > 0
    assert net.depth_encoder.head.weight.grad.abs().sum() > 0


def test_global_kernel_starts_as_without_and_learns_one_kernel_per_image() -> None:
    torch.manual_seed(0)
    plain, gk = DKENet.tiny(use_depth=False), DKENet.tiny(use_depth=False, global_kernel=True)
    gk.load_state_dict(plain.state_dict(), strict=False)  # shared layers equal; the new head is zero
    lr = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(gk(lr), plain(lr), atol=0, rtol=0)
    # the head alone can fit a per-image target kernel that differs between the two images
    target = torch.stack([torch.softmax(torch.randn(441), 0) for _ in range(2)])[..., None, None].expand(2, 441, 11, 13)
    before = (gk(lr) - target).abs().sum(1).mean().item()
    opt = torch.optim.Adam(gk.kernel_head.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        (gk(lr) - target).abs().sum(1).mean().backward()
        opt.step()
    assert (gk(lr) - target).abs().sum(1).mean().item() < 0.7 * before
    assert gk(lr).sum(1).sub(1).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ use_depth
def test_use_depth_false_is_smaller_and_ignores_depth() -> None:
    with_depth, without = DKENet.tiny(), DKENet.tiny(use_depth=False).eval()
    assert _num_params(without) < _num_params(with_depth)
    names = [n for n, _ in without.named_parameters()]
    assert not any("depth" in n or "sft" in n for n in names)
    assert without.depth_encoder is None
    lr = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        ref = without(lr)
        torch.testing.assert_close(without(lr, torch.rand(1, 1, 9, 9)), ref, atol=0, rtol=0)
        torch.testing.assert_close(without(lr, torch.rand(1, 1, 36, 36)), ref, atol=0, rtol=0)


def test_use_depth_true_requires_depth(tiny: DKENet) -> None:
    with pytest.raises(ValueError, match="depth is required.*use_depth=False"):
        tiny(torch.rand(1, 3, 8, 8))


def test_depth_changes_the_estimate() -> None:
    net = DKENet.tiny()
    # Make the zero-initialised SFT layers active so depth actually reaches the output.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, SFT):
                for p in list(m.gamma[-1].parameters()) + list(m.beta[-1].parameters()):
                    p.normal_(0, 0.1)
        lr = torch.rand(1, 3, 8, 8)
        assert not torch.allclose(net(lr, torch.zeros(1, 1, 8, 8)), net(lr, torch.ones(1, 1, 8, 8)))


def test_invalid_constructor_args() -> None:
    with pytest.raises(ValueError):
        DKENet.tiny(kernel_size=20)
    with pytest.raises(ValueError):
        DKENet.tiny(blocks_per_stage=0)


def test_presets() -> None:
    paper = DKENet.paper(use_depth=False)
    assert paper.config["channels"] == 64 and paper.config["blocks_per_stage"] == 2
    assert len(paper.stage1) == 2
    assert DKENet.tiny(channels=8).config["channels"] == 8  # keyword arguments override the preset


# ------------------------------------------------------------------------------------------------------ blocks
def test_split_sizes() -> None:
    assert split_sizes(7, 2) == [4, 3]
    assert split_sizes(12, 3) == [4, 4, 4]
    assert sum(split_sizes(10, 4)) == 10
    with pytest.raises(ValueError):
        split_sizes(1, 2)


@pytest.mark.parametrize("cin,cout", [(8, 12), (12, 8), (7, 10), (10, 7), (9, 9)])
def test_maconv_shapes(cin: int, cout: int) -> None:
    conv = MAConv(cin, cout)
    assert conv(torch.rand(2, cin, 5, 6)).shape == (2, cout, 5, 6)


@pytest.mark.parametrize("cin,cout", [(8, 12), (12, 8), (7, 10)])
def test_maconv_parts_are_mutually_modulated(cin: int, cout: int) -> None:
    conv = MAConv(cin, cout)
    in1, _ = split_sizes(cin, 2)
    out1, _ = split_sizes(cout, 2)
    # Signed input so every bottleneck ReLU is active somewhere (a 1-unit bottleneck can be dead on [0,1]).
    x = torch.randn(1, cin, 6, 6, requires_grad=True)
    y = conv(x)
    # Output part 1 depends on input part 2 (through the affine path) and vice versa.
    (g1,) = torch.autograd.grad(y[:, :out1].sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(y[:, out1:].sum(), x)
    assert g1[:, in1:].abs().sum() > 0 and g1[:, :in1].abs().sum() > 0
    assert g2[:, :in1].abs().sum() > 0 and g2[:, in1:].abs().sum() > 0
    # Finite perturbation of part 2 changes output part 1.
    with torch.no_grad():
        x2 = x.detach().clone()
        x2[:, in1:] += 1.0
        assert not torch.allclose(conv(x2)[:, :out1], y[:, :out1].detach())


def test_sft_initial_identity() -> None:
    sft = SFT(6, 3)
    feat, cond = torch.randn(2, 6, 7, 5), torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(sft(feat, cond), feat, atol=0, rtol=0)


def test_dablock_without_condition_has_no_sft() -> None:
    plain, cond = DABlock(8, None), DABlock(8, 4)
    assert plain.sft is None and not any("sft" in n for n, _ in plain.named_parameters())
    assert _num_params(plain) < _num_params(cond)
    x = torch.rand(1, 8, 5, 5)
    assert plain(x).shape == x.shape
    assert cond(x, torch.rand(1, 4, 5, 5)).shape == x.shape
    with pytest.raises(ValueError):
        cond(x)


# ------------------------------------------------------------------------------------------------ save / load
def _public(config: object) -> dict:
    """A diffusers FrozenDict config without its private ("_"-prefixed) entries."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _write_dkenet_ckpt(net: DKENet, path) -> None:
    """A stage checkpoint as `ssr fit` writes it: DKENetModule's state dict, hparams and `ssr` metadata block."""
    from ssr_lightning.modules.dkenet_module import DKENetModule

    module = DKENetModule(DKENet.from_config(_public(net.config)))
    module.model.load_state_dict(net.state_dict())
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


@pytest.mark.parametrize("use_depth", [True, False])
def test_save_load_round_trip(tmp_path, use_depth: bool) -> None:
    net = DKENet.tiny(use_depth=use_depth, kernel_size=11, scale=2).eval()
    assert _public(net.config) == {
        "in_channels": 3,
        "depth_channels": 1,
        "channels": 16,
        "kernel_size": 11,
        "scale": 2,
        "use_depth": use_depth,
        "blocks_per_stage": 1,
        "global_context": True,
        "global_kernel": False,
        "normalize_depth": False,
        "depth_fusion": "sft",
        "focal_plane": False,
        "thin_lens": False,
        "lens_sharpness": 1.0,
        "lens_floor": -6.0,
        "depth_pool_bins": 0,
    }
    lr, depth = torch.rand(1, 3, 7, 9), torch.rand(1, 1, 7, 9)
    with torch.no_grad():
        ref = net(lr, depth)
    # diffusers save_pretrained / from_pretrained
    folder = tmp_path / "sub" / "dkenet"
    net.save_pretrained(folder)
    loaded = DKENet.from_pretrained(folder).eval()
    assert _public(loaded.config) == _public(net.config)
    # from_config + state dict
    rebuilt = DKENet.from_config(net.config).eval()
    assert _public(rebuilt.config) == _public(net.config)
    rebuilt.load_state_dict(net.state_dict())
    # the stage checkpoint loader
    path = tmp_path / "runs" / "best.ckpt"
    _write_dkenet_ckpt(net, path)
    from_ckpt = load_model(path, "dkenet")
    assert isinstance(from_ckpt, DKENet) and not from_ckpt.training
    assert _public(from_ckpt.config) == _public(net.config)
    assert not any(p.requires_grad for p in from_ckpt.parameters())
    with torch.no_grad():
        for other in (rebuilt, from_ckpt):
            torch.testing.assert_close(other(lr, depth), ref, atol=0, rtol=0)
        # from_pretrained gives bit-identical weights in freshly allocated storage; oneDNN may then take a
        # differently vectorised path, which moves outputs by ~1e-8 (measured 7e-9), never more.
        torch.testing.assert_close(loaded(lr, depth), ref, atol=1e-7, rtol=0)


def test_load_missing_file_names_path(tmp_path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt.*configs/dkenet\.yaml"):
        load_model(missing, "dkenet")


def test_load_wrong_class(tmp_path) -> None:
    path = tmp_path / "k.ckpt"
    _write_dkenet_ckpt(DKENet.tiny(), path)
    # a DKENet checkpoint where another stage's network is expected: the error names the file and both stages
    with pytest.raises(CheckpointError, match=r"k\.ckpt.*'dkenet'.*'nbsr'"):
        load_model(path, "nbsr")
    # DKENet weights under metadata naming another class: the error names the file and the class
    ckpt = torch.load(path, weights_only=True)
    config = dict(ckpt["ssr"]["model_config"])
    ckpt["ssr"]["model_class"], ckpt["ssr"]["model_config"] = "KernelConditionedSR", {}
    torch.save(ckpt, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match=r"mixed\.ckpt.*KernelConditionedSR"):
        load_model(tmp_path / "mixed.ckpt", "dkenet")
    # ... or a config of the same class that does not fit them (a no-depth DKENet: the depth weights are extra)
    ckpt["ssr"]["model_class"], ckpt["ssr"]["model_config"] = "DKENet", {**config, "use_depth": False}
    torch.save(ckpt, tmp_path / "nodepth.ckpt")
    with pytest.raises(CheckpointError, match=r"nodepth\.ckpt.*DKENet.*unexpected \['depth_encoder"):
        load_model(tmp_path / "nodepth.ckpt", "dkenet")
    # not a checkpoint at all
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt.*not a Lightning checkpoint"):
        load_model(tmp_path / "plain.pt", "dkenet")


# ------------------------------------------------------------------------------------------------ layering
def test_networks_do_not_import_lightning() -> None:
    code = (
        "import sys, ssr_lightning.networks\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_global_context_pools_the_whole_image() -> None:
    """With global context, a pixel's kernel depends on image content outside its receptive field."""
    torch.manual_seed(0)
    lr, depth = torch.rand(1, 3, 40, 40), torch.rand(1, 1, 40, 40)
    far = lr.clone()
    far[..., 30:, 30:] = 0.0  # change only a far corner
    for gc, should_change in ((True, True), (False, False)):
        net = DKENet.tiny(global_context=gc).eval()
        with torch.no_grad():
            a, b = net(lr, depth)[..., :4, :4], net(far, depth)[..., :4, :4]
        assert (not torch.allclose(a, b, atol=1e-7)) == should_change
