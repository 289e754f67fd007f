"""Tests for the generative stage: AMF (Eq. 3), SSRUNet modality switches, sampling, tiling, checkpoints, `ssr sr`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssr_lightning.diffusion.config import LossConfig, UNetConfig
from ssr_lightning.diffusion.model import LatentDiffusionSR, pad_reflect
from ssr_lightning.diffusion.config import SamplingConfig
from ssr_lightning.inference.checkpoints import load_model
from ssr_lightning.inference.pipeline import (
    SSRPipeline,
    blend_ramp,
    tile_starts,
    tiled_apply,
)
from ssr_lightning.inference.svkr import SVKRResult
from ssr_lightning.modules.diffusion_module import SSRDiffusionModule
from ssr_lightning.networks.amf import AMF
from ssr_lightning.networks.ssr_unet import SSRUNet

TINY_UNET: dict[str, Any] = dict(
    block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
)


pytestmark = pytest.mark.usefixtures("one_thread")


_NET_ARGS = ("autoencoder", "autoencoder_config", "pretrained_path", "scale", "num_train_timesteps", "prediction_type",
             "residual", "residual_scale", "image_condition")
_GROUPS: dict[str, type] = {"unet_config": UNetConfig, "sampling": SamplingConfig, "loss": LossConfig}


def tiny_net(**kw: Any) -> LatentDiffusionSR:
    """A seconds-fast network: untrained ×2 VAE (8/16 ch), 2-level UNet; keyword overrides are LatentDiffusionSR
    arguments or UNetConfig fields."""
    unet = {**TINY_UNET, "amf_hidden": 8, "map_width": 8, "map_out": 8}
    net: dict[str, Any] = {"autoencoder_config": {"block_out_channels": [8, 16]}}
    for key, value in kw.items():
        (unet if key in UNetConfig.__dataclass_fields__ else net)[key] = value
    return LatentDiffusionSR(unet_config=unet, **net)


def tiny_module(**kw: Any) -> SSRDiffusionModule:
    """A seconds-fast module around :func:`tiny_net`, sampling 2 DDIM steps.

    Keyword overrides are LatentDiffusionSR arguments or field names of the argument groups (``use_depth=False``
    lands in the net's ``unet_config``, ``strength=0.5`` in ``sampling``)."""
    groups: dict[str, dict[str, Any]] = {"unet_config": {}, "sampling": {"steps": 2}, "loss": {"ema_decay": 0.9}}
    net: dict[str, Any] = {}
    for key, value in kw.items():
        if key in _NET_ARGS:
            net[key] = value
            continue
        group = [g for g, cls in _GROUPS.items() if key in cls.__dataclass_fields__]
        assert len(group) == 1, f"tiny_module: {key!r} is not a field of exactly one group"
        groups[group[0]][key] = value
    return SSRDiffusionModule(tiny_net(**groups.pop("unet_config"), **net),
                              sampling=SamplingConfig(**groups["sampling"]), loss=LossConfig(**groups["loss"])).eval()


def _randomise_amf(net: torch.nn.Module) -> None:
    # Fresh AMFs are the identity (zero last layers); give them weights so the conditions really act.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".fc2." in name:
                p.normal_(0, 0.1)


# --- AMF (Eq. 3) ---------------------------------------------------------------------------------------------
def _hand_amf(mode: str) -> AMF:
    """feat_ch=2, one modality with 1 channel, hidden 1: every weight set by hand."""
    amf = AMF(2, {"depth": 1}, hidden=1, mode=mode).eval()
    mlp = amf.mlp["depth"]
    with torch.no_grad():
        # hidden_α = relu(2 f + 0), hidden_β = relu(-1 f + 1)
        mlp.fc1.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        mlp.fc1.bias.copy_(torch.tensor([0.0, 1.0]))
        # α = [0.5, -1] * hidden_α + [0, 0.1];  β = [3, 1] * hidden_β + [-1, 0]
        mlp.fc2.weight.copy_(torch.tensor([0.5, -1.0, 3.0, 1.0]).view(4, 1, 1, 1))
        mlp.fc2.bias.copy_(torch.tensor([0.0, 0.1, -1.0, 0.0]))
        amf.bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        amf.bn.running_var.copy_(torch.tensor([4.0, 1.0]) - amf.bn.eps)  # BN divides by sqrt(var + eps)
    return amf


@pytest.mark.parametrize("mode", ["residual", "paper"])
def test_amf_matches_hand_computed_equation(mode: str) -> None:
    amf = _hand_amf(mode)
    x = torch.tensor([5.0, 0.0]).view(1, 2, 1, 1)   # BN(x) = [(5-1)/2, (0+2)/1] = [2, 2]
    f = torch.tensor([1.5]).view(1, 1, 1, 1)         # hidden_α = 3, hidden_β = relu(-0.5) = 0
    # α = [1.5, -2.9], β = [-1, 0]
    out = amf(x, {"depth": f}).flatten().tolist()
    if mode == "paper":   # (1 + α) ⊙ BN(x) + β
        expected = [(1 + 1.5) * 2 - 1, (1 - 2.9) * 2 + 0]
    else:                 # x + α ⊙ BN(x) + β
        expected = [5 + 1.5 * 2 - 1, 0 - 2.9 * 2 + 0]
    assert out == pytest.approx(expected, abs=1e-5)


def test_amf_sums_modalities_and_resizes() -> None:
    amf = AMF(3, {"a": 2, "b": 4}, hidden=8).eval()
    _randomise_amf(amf)
    x, fa, fb = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8), torch.randn(2, 4, 4, 4)
    fb_up = F.interpolate(fb, size=(8, 8), mode="bilinear", align_corners=False)
    (aa, ba), (ab, bb) = amf.mlp["a"](fa), amf.mlp["b"](fb_up)
    expected = x + (aa + ab) * amf.bn(x) + (ba + bb)
    torch.testing.assert_close(amf(x, {"a": fa, "b": fb}), expected)


def test_amf_without_modalities_is_parameter_free_identity() -> None:
    amf = AMF(4, {})
    x = torch.randn(1, 4, 3, 3)
    assert sum(p.numel() for p in amf.parameters()) == 0 and len(list(amf.buffers())) == 0
    assert amf(x, {"kernel": torch.randn(1, 5, 3, 3)}) is x


# --- modality switches -----------------------------------------------------------------------------------------
def _inputs(b: int = 2, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"z_t": torch.randn(b, 4, size, size, generator=g), "t": torch.tensor([10, 500]),
            "z_lr": torch.randn(b, 4, size, size, generator=g), "depth": torch.rand(b, 1, size // 2, size // 2, generator=g),
            "kernel": torch.softmax(torch.randn(b, 441, size // 2, size // 2, generator=g), 1)}


def test_all_modalities_off_is_the_plain_backbone() -> None:
    from diffusers import UNet2DModel

    net = SSRUNet(use_kernel=False, use_depth=False, use_lr=False, **TINY_UNET).eval()
    plain = UNet2DModel.from_config(net.backbone.config).eval()
    plain.load_state_dict(net.backbone.state_dict())
    assert len(net.amf) == 0 and len(net.encoders) == 0
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters())
    i = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(i["z_t"], i["t"]), plain(i["z_t"], i["t"]).sample, rtol=0, atol=0)
        # a fresh (zero-initialised) residual AMF with every modality on is still exactly the backbone
        full = SSRUNet(**TINY_UNET).eval()
        full.backbone.load_state_dict(net.backbone.state_dict())
        torch.testing.assert_close(full(**i), plain(i["z_t"], i["t"]).sample, rtol=0, atol=0)


@pytest.mark.parametrize("off", ["kernel", "depth", "lr"])
def test_switched_off_modality_has_no_parameters_and_no_effect(off: str) -> None:
    net = SSRUNet(**{f"use_{off}": False}, **TINY_UNET).eval()
    _randomise_amf(net)
    assert off not in net.encoders and all(off not in amf.mlp for amf in net.amf.values())
    assert not any(f"encoders.{off}." in n or f"mlp.{off}." in n for n, _ in net.named_parameters())
    i = _inputs()
    other = dict(i)
    other[{"kernel": "kernel", "depth": "depth", "lr": "z_lr"}[off]] = torch.rand_like(i[{"lr": "z_lr"}.get(off, off)])
    with torch.no_grad():
        torch.testing.assert_close(net(**i), net(**other), rtol=0, atol=0)
        on = [m for m in ("kernel", "depth", "lr") if m != off][0]  # an enabled modality does change the output
        changed = dict(i)
        changed[{"lr": "z_lr"}.get(on, on)] = torch.rand_like(i[{"lr": "z_lr"}.get(on, on)])
        assert (net(**i) - net(**changed)).abs().max() > 1e-4


# --- sampling, tiling, checkpoints -----------------------------------------------------------------------------
def test_sampler_is_deterministic_for_a_seed() -> None:
    m = tiny_module(use_depth=False, use_kernel=False)
    lr = torch.rand(1, 3, 6, 5)
    a = m.model.super_resolve(lr, generator=torch.Generator().manual_seed(3), steps=2)
    b = m.model.super_resolve(lr, generator=torch.Generator().manual_seed(3), steps=2)
    c = m.model.super_resolve(lr, generator=torch.Generator().manual_seed(4), steps=2)
    assert a.shape == (1, 3, 24, 20)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4


def test_blend_weights_partition_of_unity_and_pointwise_tiling_is_exact() -> None:
    assert tile_starts(20, 8, 4, 2) == [0, 4, 8, 12] and tile_starts(6, 8, 2) == [0]
    assert blend_ramp(6, 2, 0).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    lr = torch.rand(1, 3, 20, 14)

    def fn(t: torch.Tensor, origin: tuple[int, int]) -> dict[str, torch.Tensor]:
        # per-pixel maps on both grids: any tiling must reproduce them exactly (weights normalised to sum 1)
        return {"sr": F.interpolate(t, scale_factor=4, mode="nearest") ** 2, "ones": torch.ones_like(t[:, :1]),
                "lrmap": t.mean(1, keepdim=True)}

    whole = fn(lr, (0, 0))
    for tile, overlap in ((8, 4), (6, 2), (10, 3)):
        out = tiled_apply(fn, lr, 4, tile, overlap)
        for k in whole:
            torch.testing.assert_close(out[k], whole[k], rtol=0, atol=1e-6)


class _FakeSVKR(torch.nn.Module):
    """Depth = mean LR intensity, kernel = a delta at the centre: stands in for the trained chain."""

    def forward(self, lr: torch.Tensor, **kw: Any) -> SVKRResult:
        b, _, h, w = lr.shape
        kernel = torch.zeros(b, 441, h, w)
        kernel[:, 220] = 1.0
        depth = lr.mean(1, keepdim=True)
        return SVKRResult([depth], [kernel], [F.interpolate(lr, scale_factor=4)])


def test_tiled_pipeline_equals_untiled_when_one_tile_covers_the_image() -> None:
    m = tiny_module().model
    _randomise_amf(m.unet)
    lr = torch.rand(1, 3, 10, 9)
    one = SSRPipeline(m, _FakeSVKR(), SamplingConfig(steps=2, tile=16, overlap=4, seed=5))(lr)
    untiled = SSRPipeline(m, _FakeSVKR(), SamplingConfig(steps=2, tile=0, seed=5))(lr)
    torch.testing.assert_close(one.sr, untiled.sr, rtol=0, atol=1e-6)
    noise = torch.randn((1, 4, 20, 18), generator=torch.Generator().manual_seed(5))
    depth, kernel, _ = _FakeSVKR()(lr).final
    direct = m.super_resolve(lr, depth, kernel, noise=noise, steps=2, tile=0)
    torch.testing.assert_close(one.sr, direct, rtol=0, atol=1e-6)
    # several tiles: same size and close to untiled (not equal: GroupNorm statistics and receptive fields differ)
    tiled = SSRPipeline(m, _FakeSVKR(), SamplingConfig(steps=2, tile=6, overlap=2, seed=5))(lr)
    assert tiled.sr.shape == (1, 3, 40, 36) and tiled.depth.shape == (1, 1, 10, 9)
    assert tiled.kernel_var is not None and float(tiled.kernel_var.abs().max()) < 1e-6  # delta kernels: variance 0
    assert (tiled.sr - untiled.sr).abs().mean() < 0.1


def test_pad_reflect_handles_tiny_maps() -> None:
    x = torch.rand(1, 3, 1, 3)
    y, (ph, pw) = pad_reflect(x, 4)
    assert y.shape == (1, 3, 4, 4) and (ph, pw) == (3, 1)


def _save_ckpt(m: SSRDiffusionModule, path: Path) -> Path:
    """A checkpoint as Lightning writes it: state_dict + hparams, then the module's ``ssr`` and ``ema`` blocks."""
    ckpt: dict[str, Any] = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                            "pytorch-lightning_version": lightning.__version__}
    m.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    m = tiny_module()
    _randomise_amf(m.model.unet)
    params = dict(m._trainable())
    raw_name = "unet.amf.in.mlp.lr.fc2.weight"
    for _ in range(3):  # the EMA must survive the round trip too
        with torch.no_grad():
            params[raw_name].add_(0.05)
        m.on_train_batch_end(None, None, 0)
    assert m.ema is not None and m.ema.optimization_step == 3
    shadow = dict(zip(m._ema_names, m.ema.shadow_params, strict=True))
    assert (shadow[raw_name] - params[raw_name]).abs().max() > 1e-4, "the EMA lags the raw weights"
    path = _save_ckpt(m, tmp_path / "ssr.ckpt")

    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["ssr"]["format"] == 3 and saved["ssr"]["stage"] == "ssrdiffusion"
    assert saved["ssr"]["model_class"] == "LatentDiffusionSR"
    net = saved["hyper_parameters"]["net"]  # the network's own complete config: the checkpoint alone rebuilds it
    assert net["class_path"] == "ssr_lightning.diffusion.LatentDiffusionSR"
    assert net["init_args"] == saved["ssr"]["model_config"]
    assert net["init_args"]["autoencoder_config"]["block_out_channels"] == [8, 16]
    assert saved["ssr"]["sampling"] == {**vars(SamplingConfig()), "steps": 2}
    assert set(saved["ema"]["shadow"]) == set(m._ema_names)

    # inference: the ready network, with the EMA weights
    back = load_model(path, "ssrdiffusion")
    assert isinstance(back, LatentDiffusionSR) and not back.training
    sd_m, sd_b = m.model.state_dict(), back.state_dict()
    assert sd_m.keys() == sd_b.keys()
    for k in sd_m:
        expected = shadow[k] if k in shadow else sd_m[k]  # trainable: EMA shadow; frozen VAE, buffers: as saved
        torch.testing.assert_close(sd_b[k], expected, rtol=0, atol=0, msg=lambda e, k=k: f"{k}: {e}")
    lr, depth = torch.rand(1, 3, 6, 6), torch.rand(1, 1, 6, 6)
    kernel = torch.softmax(torch.randn(1, 441, 6, 6), 1)
    args = (lr, depth, kernel)
    raw = m.model.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2)
    m._use_ema()
    try:
        with_ema = m.model.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2)
    finally:
        m._restore()
    torch.testing.assert_close(back.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2), with_ema,
                               rtol=0, atol=0)
    assert (with_ema - raw).abs().max() > 0, "the EMA weights really change the sample"
    torch.testing.assert_close(params[raw_name], dict(m._trainable())[raw_name], rtol=0, atol=0)
    torch.testing.assert_close(m.model.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2), raw,
                               rtol=0, atol=0, msg="_restore() puts the raw weights back")

    # resuming training: the module comes back with its raw weights and its EMA state
    resumed = SSRDiffusionModule.load_from_checkpoint(path, map_location="cpu").eval()
    assert resumed.model.config.autoencoder_config["block_out_channels"] == [8, 16]
    sd_a, sd_r = m.state_dict(), resumed.state_dict()
    assert sd_a.keys() == sd_r.keys()
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_r[k], rtol=0, atol=0)
    assert resumed.ema is not None and resumed.ema.optimization_step == 3
    for a, b in zip(m.ema.shadow_params, resumed.ema.shadow_params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- the user command -----------------------------------------------------------------------------------------
def test_sr_command_odd_rgba_and_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssr_lightning.cli.main import main as ssr_main

    ckpt = _save_ckpt(tiny_module(use_depth=False, use_kernel=False), tmp_path / "lr_only.ckpt")
    inp = tmp_path / "in"
    inp.mkdir()
    rgba = np.random.default_rng(0).integers(0, 256, size=(13, 11, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(inp / "odd_rgba.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        ssr_main(["sr", str(inp), str(tmp_path / "missing.png"), "-o", str(out), "--ckpt", str(ckpt),
                  "--steps", "2", "--tile", "8", "--overlap", "2"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.png" in err and "1/3 images" in err
    sr = Image.open(out / "odd_rgba.png")
    assert sr.size == (44, 52) and sr.mode == "RGB"
    assert not (out / "broken.png").exists()


def test_sr_command_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssr_lightning.cli.sr import main as sr_main

    img = tmp_path / "in.png"  # a real input: the command reaches the model loading
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
    assert sr_main([str(img), "-o", str(tmp_path / "o"), "--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "nope.ckpt" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("*.png")), "nothing written"


def test_pretrained_backbone_plugs_in_frozen(tmp_path: Path) -> None:
    """A local diffusers folder with a UNet2DConditionModel (SD layout, tiny here) loads, freezes and trains AMF."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    UNet2DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8,
    ).save_pretrained(tmp_path / "sd" / "unet")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=8,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(tmp_path / "sd" / "vae")
    with pytest.raises(FileNotFoundError, match="nope"):
        LatentDiffusionSR(pretrained_path=str(tmp_path / "nope"))
    m = SSRDiffusionModule(LatentDiffusionSR(pretrained_path=str(tmp_path / "sd"),
                                             unet_config={"amf_hidden": 8, "map_width": 8, "map_out": 8}),
                           sampling=SamplingConfig(steps=2))
    hr = torch.rand(2, 3, 16, 16)
    batch = {"hr": hr, "lr": hr[..., ::4, ::4], "depth_lr": torch.rand(2, 1, 4, 4),
             "kernel": torch.softmax(torch.randn(2, 441, 4, 4), 1)}
    m.diffusion_loss(batch)["loss"].backward()
    frozen = [p for n, p in m.model.unet.backbone.named_parameters() if not n.startswith("conv_in.")]
    assert all(p.grad is None for p in frozen) and m.model.unet.null_context.grad is not None
    assert all(p.grad is not None for p in m.model.unet.amf.parameters())
    assert all(p.grad is None for p in m.model.latents.parameters())
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)  # frozen pretrained weights are not duplicated into checkpoints
    assert any(k.startswith("model.unet.amf.") for k in ckpt["state_dict"])
    assert not any(k.startswith("model.latents.") for k in ckpt["state_dict"])
    assert {k for k in ckpt["state_dict"] if k.startswith("model.unet.backbone.")} == {
        "model.unet.backbone.conv_in.weight", "model.unet.backbone.conv_in.bias"}
    m.eval()
    args = (batch["lr"][:1], batch["depth_lr"][:1], batch["kernel"][:1])
    sr = m.model.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2)
    assert sr.shape == (1, 3, 16, 16)
    # the slimmed checkpoint still rebuilds the same sampler: the frozen weights come back from pretrained_path
    back = load_model(_save_ckpt(m, tmp_path / "ssr.ckpt"), "ssrdiffusion")
    torch.testing.assert_close(back.super_resolve(*args, generator=torch.Generator().manual_seed(0), steps=2), sr,
                               rtol=0, atol=0)
