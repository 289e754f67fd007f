"""DE: DepthNet, the SSI loss and depth metrics, the estimators and the offline MiDaS/DPT adapters."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from ssr_lightning.inference.checkpoints import CheckpointError
from ssr_lightning.inference.depth import (
    DPTAdapter,
    GroundTruthDepth,
    LearnedDepth,
    MiDaSAdapter,
    build_depth_estimator,
    normalize_depth_map,
    resize_depth,
)
from ssr_lightning.metrics import (
    abs_rel,
    align_scale_shift,
    aligned_depth_metrics,
    delta1,
    ssi_loss,
)
from ssr_lightning.modules.depth_module import DepthModule
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.networks.midas import MIDAS_PRESETS, MiDaSDPT

# Tiny MiDaS architectures: the real presets' structure with a 4-block, 32-wide backbone at 64x64.
TINY_MIDAS = {
    "img_size": 64, "features": 16, "head_features": 8, "hooks": (0, 1, 2, 3), "in_features": (8, 16, 32, 32),
    "timm_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2},
}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF offline mode, and any socket connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _check_convention(depth: torch.Tensor, size: tuple[int, int]) -> None:
    assert depth.shape == (1, 1, *size)
    assert torch.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 1


# --- DepthNet --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(17, 23), (32, 32), (5, 3)])
def test_depthnet_any_size(size: tuple[int, int]) -> None:
    net = DepthNet(channels=8)
    out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size) and ((out > 0) & (out < 1)).all()
    assert not torch.allclose(out, out.flatten()[0])  # never constant at init: the SSI loss needs variation
    assert DepthNet(channels=8, output="softplus")(torch.rand(1, 3, 9, 9)).min() > 0


@pytest.mark.parametrize("levels", [2, 4, 5])
@pytest.mark.parametrize("size", [(17, 23), (64, 40)])
def test_depthnet_levels_and_working_size_keep_shapes(levels: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = DepthNet(channels=8, levels=levels, working_size=32)
    x = torch.rand(2, 3, *size)
    out = net(x)
    assert out.shape == (2, 1, *size) and torch.isfinite(out).all()
    # with a working size, an image and its 2x upsampled copy are seen at the same scale
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    small_again = torch.nn.functional.interpolate(net(big), size=size, mode="bilinear", align_corners=False)
    native = DepthNet(channels=8, levels=levels)
    native.load_state_dict(net.state_dict())
    native_again = torch.nn.functional.interpolate(native(big), size=size, mode="bilinear", align_corners=False)
    assert (small_again - out).abs().mean() < (native_again - native(x)).abs().mean()


def test_depthnet_loads_three_level_parameter_names() -> None:
    """State dicts of the fixed three-level DepthNet (enc1/down1/bottleneck/up2 ...) load unchanged."""
    torch.manual_seed(0)
    net = DepthNet(channels=8)
    renames = {"encoders.0.": "enc1.", "encoders.1.": "enc2.", "encoders.2.": "bottleneck.", "downs.0.": "down1.",
               "downs.1.": "down2.", "ups.0.": "up2.", "ups.1.": "up1."}
    old = {}
    for key, value in net.state_dict().items():
        for new, was in renames.items():
            if key.startswith(new):
                key = was + key[len(new):]
                break
        old[key] = value
    assert "enc1.0.body.0.weight" in old and "bottleneck.0.body.0.weight" in old
    fresh = DepthNet(channels=8)
    fresh.load_state_dict(old)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(fresh(x), net(x))
    with pytest.raises(ValueError, match="levels"):
        DepthNet(levels=1)


def test_depthnet_presets() -> None:
    tiny, paper = DepthNet.tiny(), DepthNet.paper()
    n_tiny, n_paper = (sum(p.numel() for p in n.parameters()) for n in (tiny, paper))
    assert n_tiny < 300_000 < n_paper


# --- loss and metrics ------------------------------------------------------------------------------------------
def test_align_scale_shift_recovers_affine() -> None:
    torch.manual_seed(0)
    pred = torch.rand(3, 1, 8, 9)
    scale, shift = torch.tensor([2.5, -1.0, 0.3]), torch.tensor([0.5, 3.0, -0.2])
    target = pred * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)
    aligned, s, t = align_scale_shift(pred, target)
    torch.testing.assert_close(s, scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t, shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aligned, target, atol=1e-5, rtol=1e-5)
    # a mask restricts the fit: corrupt the masked-out half, the fit on the rest is unchanged
    mask = torch.zeros_like(pred)
    mask[..., :4] = 1
    noisy = target.clone()
    noisy[..., 4:] += 10
    _, s2, t2 = align_scale_shift(pred, noisy, mask)
    torch.testing.assert_close(s2, scale, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t2, shift, atol=1e-4, rtol=1e-4)


def test_ssi_loss_invariant_to_affine() -> None:
    torch.manual_seed(0)
    pred = torch.rand(2, 1, 16, 16, requires_grad=True)
    target = 4.0 * pred.detach() - 1.5
    for kind in ("l1", "mse"):
        assert ssi_loss(pred, target, kind=kind, grad_weight=0.5).max() < 1e-5
    other = torch.rand(2, 1, 16, 16)
    loss = ssi_loss(pred, other, grad_weight=0.5)
    assert (loss > 1e-2).all()
    loss.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_absrel_delta1_hand_computed() -> None:
    pred = torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 2.0, 2.0, 10.0]).view(1, 1, 2, 2)
    # |e|/t = 0, 0, 1, 0.2 -> 0.3; ratios 1, 1, 2, 1.25 -> two of four strictly below 1.25
    torch.testing.assert_close(abs_rel(pred, target), torch.tensor([0.3]))
    torch.testing.assert_close(delta1(pred, target), torch.tensor([0.5]))
    # an affine copy of the GT depth is perfect after alignment
    gt = torch.rand(2, 1, 8, 8)
    m = aligned_depth_metrics(3 * gt + 7, gt)
    assert m["absrel"].max() < 1e-5 and (m["delta1"] == 1).all()


# --- estimators ------------------------------------------------------------------------------------------------
def test_resize_and_normalize() -> None:
    depth = torch.rand(2, 1, 32, 48)
    torch.testing.assert_close(resize_depth(depth, (8, 12)), depth[..., ::4, ::4])  # LR sampling convention
    assert resize_depth(depth, (20, 30)).shape == (2, 1, 20, 30)
    norm = normalize_depth_map(5 * depth - 2)
    assert norm.min() == 0 and norm.max() == 1
    assert (normalize_depth_map(torch.full((1, 1, 4, 4), 3.0)) == 0.5).all()


def test_ground_truth_depth() -> None:
    gt = GroundTruthDepth()
    depth = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(gt(torch.rand(2, 3, 8, 8), depth), depth[..., ::4, ::4])
    assert gt(torch.rand(2, 3, 64, 64), gt_depth=depth).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="gt_depth"):
        gt(torch.rand(1, 3, 8, 8))
    assert isinstance(build_depth_estimator("gt"), GroundTruthDepth)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert torch.equal(sb[k], v), k


def test_learned_depth_from_new_checkpoint(tmp_path: Path) -> None:
    """A checkpoint as `ssr fit --config configs/depth.yaml` writes it: DepthModule state dict + `ssr` block."""
    module = DepthModule(DepthNet(channels=8, output="softplus", global_context=False))
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    assert ckpt["ssr"]["stage"] == "depth" and ckpt["ssr"]["model_class"] == "DepthNet"
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    file = tmp_path / "best.ckpt"
    torch.save(ckpt, file)
    est = build_depth_estimator("learned", str(file))
    assert isinstance(est, LearnedDepth) and isinstance(est.net, DepthNet) and not est.net.training
    assert est.net.config["channels"] == 8 and est.net.config["output"] == "softplus"
    assert not est.net.config["global_context"]
    _same_weights(module.model, est.net)
    image = torch.rand(1, 3, 21, 30)
    out = est(image)
    _check_convention(out, (21, 30))
    with torch.no_grad():  # the estimator is the trained net, normalised per image
        torch.testing.assert_close(out, normalize_depth_map(module.model.eval()(image)))
    loaded = LearnedDepth.from_checkpoint(file)
    _same_weights(module.model, loaded.net)
    # a checkpoint of another stage is refused, naming the file
    from ssr_lightning.modules.dkenet_module import DKENetModule
    from ssr_lightning.networks import DKENet

    other = DKENetModule(DKENet(channels=8))
    ckpt = {"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}
    other.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "dkenet.ckpt")
    with pytest.raises(CheckpointError, match=r"dkenet\.ckpt.*'dkenet'.*'depth'"):
        LearnedDepth.from_checkpoint(tmp_path / "dkenet.ckpt")
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt.*configs/depth\.yaml"):
        LearnedDepth.from_checkpoint(missing)


@pytest.mark.parametrize("with_depthnet_config", [True, False])
def test_learned_depth_from_first_format_checkpoint(tmp_path: Path, with_depthnet_config: bool) -> None:
    """Checkpoints of ssr_lightning 0.1 (flat hyper-parameters, `net.*` weights) still load."""
    net = DepthNet(channels=8, blocks_per_level=2, output="softplus", global_context=False)
    hp = {"channels": 8, "blocks_per_level": 2, "output": "softplus", "global_context": False, "input": "both",
          "loss": "l1", "grad_weight": 0.5, "grad_scales": 4, "scale": 4, "lr": 1e-3, "min_lr": 1e-5,
          "warmup_steps": 0, "ckpt_every_n_steps": 100, "num_log_images": 4}
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": hp,
            "epoch": 3, "global_step": 120}
    if with_depthnet_config:  # what the 0.1 DepthModule.on_save_checkpoint added
        ckpt["depthnet_config"] = {"in_channels": 3, "channels": 8, "blocks_per_level": 2, "output": "softplus",
                                   "global_context": False}
    file = tmp_path / "best.ckpt"
    torch.save(ckpt, file)
    est = build_depth_estimator("learned", str(file))
    assert isinstance(est, LearnedDepth) and not est.net.training
    assert est.net.config["blocks_per_level"] == 2 and est.net.config["output"] == "softplus"
    _same_weights(net, est.net)
    image = torch.rand(1, 3, 17, 26)
    out = est(image)
    _check_convention(out, (17, 26))
    with torch.no_grad():
        torch.testing.assert_close(out, normalize_depth_map(net.eval()(image)))


@pytest.mark.parametrize("model_type", ["dpt_large_384", "dpt_beit_large_512"])
def test_midas_adapter_loads_local_state_dict(tmp_path: Path, offline: None, model_type: str) -> None:
    torch.manual_seed(0)
    net = MiDaSDPT(**{**MIDAS_PRESETS[model_type], **TINY_MIDAS})
    with torch.no_grad():  # random init ends in an all-negative map that the final ReLU flattens to 0
        net.scratch.output_conv[4].bias.fill_(1.0)
    path = tmp_path / f"{model_type}.pt"
    torch.save(net.state_dict(), path)
    est = build_depth_estimator("midas", str(path), **TINY_MIDAS)  # model type from the file stem
    assert isinstance(est, MiDaSAdapter) and est.model_type == model_type
    for k, v in net.state_dict().items():
        assert torch.equal(est.net.state_dict()[k], v), k
    image = torch.rand(1, 3, 64, 64)
    depth = est(image)
    _check_convention(depth, (64, 64))
    # convention: the largest disparity (nearest point) maps to depth 0, the smallest to 1
    with torch.no_grad():
        disp = net.eval()(est._prepare(image, (64, 64), est.mean, est.std)).flatten()
    assert depth.flatten()[disp.argmax()] == 0 and depth.flatten()[disp.argmin()] == 1
    with pytest.raises(FileNotFoundError, match="missing_midas.pt"):
        MiDaSAdapter(tmp_path / "missing_midas.pt")


def test_dpt_adapter_loads_local_folder(tmp_path: Path, offline: None) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():  # HF's std-0.02 init gives a near-constant map: widen it, keep it above the final ReLU
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
        model.head.head[4].bias.fill_(3.0)
    folder = tmp_path / "tiny-dpt"
    model.save_pretrained(folder)
    est = build_depth_estimator("dpt", str(folder))
    assert isinstance(est, DPTAdapter) and est.size == 64
    saved = model.state_dict()
    for k, v in est.net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    image = torch.rand(1, 3, 64, 64)
    depth = est(image)
    _check_convention(depth, (64, 64))
    with torch.no_grad():
        disp = model(pixel_values=est._prepare(image, (64, 64), est.mean, est.std)).predicted_depth.flatten()
    assert depth.flatten()[disp.argmax()] == 0 and depth.flatten()[disp.argmin()] == 1
    assert est(torch.rand(1, 3, 40, 56)).shape == (1, 1, 40, 56)  # any image size, square net input
    with pytest.raises(FileNotFoundError, match="no_such_dpt"):
        DPTAdapter(tmp_path / "no_such_dpt")


def test_build_depth_estimator_errors() -> None:
    with pytest.raises(ValueError, match="path"):
        build_depth_estimator("midas")
    with pytest.raises(ValueError, match="unknown"):
        build_depth_estimator("sonar", "x")  # type: ignore[arg-type]
