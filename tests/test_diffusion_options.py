"""Process options of the diffusion stage (issue 12): autoencoder, image condition, start, guidance, colour fix.

Each option: shapes, determinism for a seed, and one property that could fail (exact round trip, I_T
really conditions the sample, the start image is where sampling starts, guidance lowers the LR-consistency error,
the colour fix restores the channel means). Tiling and the stage grid are in tests/test_tiling.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.degradation.blur import blur_downsample
from ssr_lightning.diffusion import (
    KernelGuidance,
    LatentDiffusionSR,
    SamplingConfig,
    SpaceToDepthLatents,
    color_fix,
    lr_consistency,
)
from ssr_lightning.diffusion.process import StepState
from ssr_lightning.metrics import color_shift

sys.path.insert(0, str(Path(__file__).parent))
from test_diffusion import TINY_UNET, _randomise_amf, tiny_module


pytestmark = pytest.mark.usefixtures("one_thread")


def _gaussian_field(b: int, h: int, w: int, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(21, dtype=torch.float32) - 10
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).flatten().view(1, 441, 1, 1).expand(b, 441, h, w).contiguous()


def _smooth_image(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(b, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic",
                         align_corners=False).clamp(0, 1)


def s2d_model(**kw: Any) -> LatentDiffusionSR:
    unet = {**TINY_UNET, "amf_hidden": 8, "map_width": 8, "map_out": 8, "concat_lr": True, **kw.pop("unet", {})}
    m = LatentDiffusionSR(autoencoder="space_to_depth", autoencoder_config={"factor": 4}, unet_config=unet, **kw).eval()
    _randomise_amf(m.unet)
    return m


# --- a. autoencoder ------------------------------------------------------------------------------------------------
def test_space_to_depth_is_an_exact_normalised_round_trip() -> None:
    ae = SpaceToDepthLatents(factor=4)
    img = torch.rand(2, 3, 32, 24)
    z = ae.encode(img)
    assert z.shape == (2, 48, 8, 6) and ae.channels == 48 and ae.factor == 4 and ae.pointwise
    torch.testing.assert_close(ae.decode(z), img, atol=1e-6, rtol=0)
    # the per-colour constants normalise: a flat image at a colour's mean has a zero latent in that colour's channels
    mean = torch.tensor(ae.config.mean).view(1, 3, 1, 1)
    flat = ((mean + 1) / 2).expand(1, 3, 8, 8)
    assert ae.encode(flat).abs().max() < 1e-6
    # and unit scale: an image at mean + std is one unit above
    std = torch.tensor(ae.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(ae.encode(((mean + std + 1) / 2).expand(1, 3, 8, 8)), torch.ones(1, 48, 2, 2),
                               atol=1e-5, rtol=0)


def test_space_to_depth_stage_needs_no_vae_and_samples_deterministically(tmp_path: Path) -> None:
    from ssr_lightning.modules.diffusion_module import SSRDiffusionModule

    # vae_ckpt points at nothing: a VAE stage would fail to fit
    net = LatentDiffusionSR(autoencoder="space_to_depth", unet_config={
        **TINY_UNET, "amf_hidden": 8, "map_width": 8, "use_depth": False, "use_kernel": False})
    m = SSRDiffusionModule(net, vae_ckpt=str(tmp_path / "no_vae.ckpt"), sampling=SamplingConfig(steps=2)).eval()
    m.setup("fit")  # no VAE to read
    assert m.model.latents.channels == 48
    assert m.model.config.autoencoder_config["mean"] == list(m.model.latents.config.mean)  # constants travel
    lr = torch.rand(1, 3, 8, 8)
    a = m.model.super_resolve(lr, generator=torch.Generator().manual_seed(1), sampling=m.sampling)
    b = m.model.super_resolve(lr, generator=torch.Generator().manual_seed(1), sampling=m.sampling)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    hr = torch.rand(2, 3, 32, 32)
    terms = m.diffusion_loss({"hr": hr, "lr": hr[..., ::4, ::4]}, torch.Generator().manual_seed(0))
    assert torch.isfinite(terms["loss"]) and terms["mse"] > 0
    with pytest.raises(ValueError, match="pretrained_path"):
        LatentDiffusionSR(autoencoder="space_to_depth", pretrained_path=str(tmp_path))


def test_model_configs_without_the_newer_options_keep_the_old_behaviour() -> None:
    old = {"autoencoder_config": {"block_out_channels": [8, 16]},
           "unet_config": {**TINY_UNET, "amf_hidden": 8, "map_width": 8, "map_out": 8}}
    m = LatentDiffusionSR.from_config(old)
    cfg = m.config
    assert (cfg.autoencoder, cfg.image_condition, cfg.prediction_type, cfg.residual) == (
        "vae", "bicubic", "epsilon", False)
    assert m.needs(SamplingConfig()) == {"depth": True, "kernel": True, "frontend": False, "guidance_kernel": False}
    assert m.needs(SamplingConfig(start="frontend", strength=0.5, guidance=1.0))["frontend"]


# --- b. image condition --------------------------------------------------------------------------------------------
def test_frontend_image_condition_reads_i_t() -> None:
    m = s2d_model(image_condition="frontend", unet={"use_kernel": False, "use_depth": False})
    lr = torch.rand(1, 3, 8, 8)
    ref_a, ref_b = _smooth_image(1, 32, 1), _smooth_image(1, 32, 2)
    with pytest.raises(ValueError, match="frontend="):
        m.super_resolve(lr, generator=torch.Generator().manual_seed(0), steps=4)
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\)"):
        m.super_resolve(lr, frontend=ref_a[..., :16, :16], generator=torch.Generator().manual_seed(0), steps=4)
    a = m.super_resolve(lr, frontend=ref_a, generator=torch.Generator().manual_seed(0), steps=4)
    a2 = m.super_resolve(lr, frontend=ref_a, generator=torch.Generator().manual_seed(0), steps=4)
    b = m.super_resolve(lr, frontend=ref_b, generator=torch.Generator().manual_seed(0), steps=4)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    assert (a - b).abs().mean() > 1e-3, "I_T conditions the sample"
    torch.testing.assert_close(m.condition_image(lr, ref_a), ref_a)  # what the LR encoder / concat_lr read


def test_frontend_image_condition_in_training_uses_nbsr_with_the_gt_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny_module(use_kernel=False, use_depth=False, image_condition="frontend")
    hr = torch.rand(2, 3, 16, 16)
    batch = {"hr": hr, "lr": hr[..., ::4, ::4], "kernel": _gaussian_field(2, 4, 4)}
    seen: list[torch.Tensor] = []

    def fake_nbsr(lr: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        seen.append(kernel)
        return F.interpolate(lr, scale_factor=4, mode="nearest")

    monkeypatch.setattr(m, "oracle_frontend", fake_nbsr)
    cond = m.conditions(batch, training=True)
    assert cond.frontend is not None and cond.frontend.shape == (2, 3, 16, 16) and cond.depth is None
    assert seen and seen[0] is batch["kernel"], "GT conditions: I_T stands in as NBSR(LR, GT kernel)"
    assert torch.isfinite(m.diffusion_loss(batch)["loss"])
    with pytest.raises(ValueError, match="GT kernel"):
        m.conditions({"hr": hr, "lr": batch["lr"]}, training=True)


# --- c. sampling start ---------------------------------------------------------------------------------------------
def test_start_image_is_where_sampling_starts() -> None:
    m = s2d_model(unet={"use_kernel": False, "use_depth": False})
    lr = _smooth_image(1, 8, 3)
    front = _smooth_image(1, 32, 4)
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    kw: dict[str, Any] = {"steps": 20, "strength": 0.05, "generator": torch.Generator().manual_seed(0)}
    from_front = m.super_resolve(lr, start="frontend", frontend=front, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    from_lr = m.super_resolve(lr, start="bicubic", **kw)
    # one step at t≈50 from the noised start image: the sample stays near it (space-to-depth decodes exactly)
    assert (from_front - front).abs().mean() < 0.5 * (from_front - bicubic).abs().mean()
    assert (from_lr - bicubic).abs().mean() < 0.5 * (from_lr - front).abs().mean()
    with pytest.raises(ValueError, match="start noise: runs every step from pure noise, so strength must be 1"):
        m.super_resolve(lr, start="noise", strength=0.5)
    with pytest.raises(ValueError, match="I_T"):
        m.super_resolve(lr, start="frontend", strength=0.5)
    # at strength 1 every start is pure noise: identical samples
    a = m.super_resolve(lr, start="noise", strength=1.0, generator=torch.Generator().manual_seed(5), steps=4)
    b = m.super_resolve(lr, start="frontend", frontend=front, strength=1.0, generator=torch.Generator().manual_seed(5),
                        steps=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sampling_options_are_validated_with_their_names() -> None:
    with pytest.raises(ValueError, match="sampling start noise: runs every step from pure noise"):
        SamplingConfig(start="noise", strength=0.5)
    with pytest.raises(ValueError, match=r"sampling guidance -1.0: must be >= 0"):
        SamplingConfig(guidance=-1.0)
    with pytest.raises(ValueError, match="sampling color_fix sepia: must be one of none, wavelet, adain"):
        SamplingConfig(color_fix="sepia")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling overlap 16: must be smaller than tile 8"):
        SamplingConfig(tile=8)
    # a replacement is checked as a whole, by the same code
    with pytest.raises(ValueError, match="sampling strength 0.0"):
        SamplingConfig().replace(strength=0.0)
    with pytest.raises(TypeError, match="not a sampling option: sample_strength"):
        SamplingConfig().replace(sample_strength=0.5)


# --- d. kernel-aware guidance --------------------------------------------------------------------------------------
def _toy_problem(b: int = 1, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hr = _smooth_image(b, size, 7)
    kernel = _gaussian_field(b, size // 4, size // 4, 1.8)
    return hr, blur_downsample(hr, kernel, 4, method="shift"), kernel


def test_guidance_step_is_the_line_search_minimum_and_lowers_the_error() -> None:
    ae = SpaceToDepthLatents(4)
    _, lr, kernel = _toy_problem()
    x0 = ae.encode(_smooth_image(1, 32, 8))  # a wrong clean estimate
    err = {}
    for eta in (0.5, 1.0, 1.5):
        guide = KernelGuidance(ae.decode, lr, kernel, 4, eta)
        err[eta] = float(lr_consistency(ae.decode(guide.correct(x0)), lr, kernel, 4))
    before = float(lr_consistency(ae.decode(x0), lr, kernel, 4))
    assert guide.history[0].item() == pytest.approx(before, rel=1e-4)
    # a linear decoder: the error along the gradient is a parabola with its minimum at η = 1
    assert err[1.0] < err[0.5] < before and err[1.0] < err[1.5]
    assert err[1.0] < 0.8 * before


def test_guidance_through_a_vae_decoder_and_as_a_step_hook() -> None:
    from ssr_lightning.diffusion import VAELatents

    vae = VAELatents(block_out_channels=(8, 16)).eval().requires_grad_(False)
    _, lr, kernel = _toy_problem(size=16)
    x0 = vae.encode(_smooth_image(1, 16, 9)) * 1.3
    guide = KernelGuidance(vae.decode, lr, kernel, 4, 0.5, latent_factor=2.0)
    state = StepState(0, 1, torch.tensor(10), latent=x0 * 0.7, eps=torch.zeros_like(x0), x0=x0, x0_coef=0.7)
    new_latent = guide(state)
    assert new_latent is not None and new_latent.shape == x0.shape
    new_x0 = x0 + (new_latent - state.latent) / 0.7  # the hook moves z_{t-1} by x0_coef · Δx̂0
    assert float(lr_consistency(vae.decode(new_x0), lr, kernel, 4)) < float(guide.history[0])
    assert KernelGuidance(vae.decode, lr, kernel, 4, 0.0)(state) is None  # η = 0: off


def test_guided_sampling_is_more_lr_consistent_and_deterministic() -> None:
    m = s2d_model(unet={"use_kernel": False, "use_depth": False})
    _, lr, kernel = _toy_problem()
    # from the noised LR (an untrained UNet's samples from pure noise saturate at the clamp)
    kw: dict[str, Any] = {"steps": 4, "guidance_kernel": kernel, "strength": 0.5}
    plain = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), **kw)
    guided = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), guidance=1.0, **kw)
    again = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), guidance=1.0, **kw)
    torch.testing.assert_close(guided, again, rtol=0, atol=0)
    assert float(lr_consistency(guided, lr, kernel, 4)) < 0.5 * float(lr_consistency(plain, lr, kernel, 4))
    with pytest.raises(ValueError, match="kernel field"):
        m.super_resolve(lr, guidance=1.0)


def test_guidance_works_inside_inference_mode() -> None:
    """Lightning's test/predict loops run under torch.inference_mode; guidance still differentiates."""
    m = s2d_model(unet={"use_kernel": False, "use_depth": False})
    hr, lr, kernel = _toy_problem()
    kw: dict[str, Any] = {"steps": 2, "guidance_kernel": kernel, "strength": 0.5}
    from ssr_lightning.degradation import blur

    blur._phase_index.cache_clear()
    with torch.inference_mode():
        blur_downsample(hr, kernel, 4, method="shift")  # the Degrader caches its gather index in here
        out = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), guidance=1.0, **kw)
    expected = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), guidance=1.0, **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# --- e. colour fix -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["wavelet", "adain"])
def test_colour_fix_restores_the_hr_channel_means(mode: str) -> None:
    hr = _smooth_image(2, 64, 11)
    detail = 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(1))
    cast = torch.tensor([0.12, -0.08, 0.05]).view(1, 3, 1, 1)
    sr = (hr * 0.85 + cast + detail).clamp(0, 1)  # a washed, tinted output with its own fine detail
    cond = F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert color_shift(sr, hr).min() > 10.0  # levels (8-bit) before
    fixed = color_fix(sr, cond, mode)
    assert fixed.shape == sr.shape
    assert color_shift(fixed, hr).max() < 1.0
    if mode == "wavelet":  # the output's fine detail is kept
        hp = lambda x: x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        assert F.cosine_similarity(hp(fixed).flatten(), hp(sr).flatten(), dim=0) > 0.9
    assert color_fix(sr, cond, "none") is sr


def test_stage_reports_metrics_with_and_without_the_colour_fix() -> None:
    m = tiny_module(use_kernel=False, use_depth=False, color_fix="adain")
    rows: list[dict[str, Any]] = []
    m.record_test = lambda metrics, names=None: rows.append({k: v.clone() for k, v in metrics.items()})
    hr = _smooth_image(2, 64, 12)
    m.test_step({"hr": hr, "lr": F.avg_pool2d(hr, 4)}, 0)
    r = rows[0]
    assert {"psnr_y", "psnr_y_raw", "color_shift", "color_shift_raw", "ssim_y_raw", "psnr_raw"} <= set(r)
    assert not torch.equal(r["psnr_y"], r["psnr_y_raw"]), "the fix changes the scored image"
    assert (r["color_shift"] < r["color_shift_raw"]).all()


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_train_and_sample_consistently(kind: str) -> None:
    from ssr_lightning.diffusion import GaussianDiffusion

    proc = GaussianDiffusion(prediction_type=kind)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ac = proc.scheduler.alphas_cumprod

    def oracle(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # knows z0: the exact target of its kind
        a = ac[t.long()].view(-1, 1, 1, 1)
        eps = (z_t - a.sqrt() * z0) / (1 - a).sqrt()
        return {"epsilon": eps, "sample": z0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * z0}[kind]

    assert proc.loss(oracle, z0, generator=torch.Generator().manual_seed(1))["mse"] < 1e-8
    x0s: list[torch.Tensor] = []
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    out = proc.sample(oracle, noise, SamplingConfig(steps=5), hooks=[lambda state: x0s.append(state.x0)])
    torch.testing.assert_close(x0s[-1], z0, atol=1e-4, rtol=0)  # the scheduler reads the output as its kind
    assert (out - z0).abs().mean() < 0.05  # (DDIM ends at ᾱ_0 = 0.99915, not exactly at z0)


@pytest.mark.parametrize(("args", "message"), [
    (["--guidance", "-1"], "--guidance -1.0: must be >= 0"),
    (["--start", "noise", "--strength", "0.5"], "--start noise: runs every step from pure noise"),
    (["--iterations", "-1"], "--iterations -1: SVKR: need iterations >= 0"),
    (["--color-fix", "sepia"], "color-fix"),
    (["--tile", "8", "--overlap", "8"], "--overlap 8: must be smaller than tile 8"),
    (["--depth", "gt"], "--depth gt: a user's image has no ground-truth depth"),
])
def test_sr_process_flags_are_checked_before_any_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             args: list[str], message: str) -> None:
    from PIL import Image

    from ssr_lightning.cli.sr import main as sr_main

    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    argv = [str(img), "-o", str(tmp_path / "out"), "--ckpt", str(tmp_path / "missing.ckpt"), *args]
    try:
        code = sr_main(argv)
    except SystemExit as exc:  # a value outside a flag's choices: the parser's own usage error
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()


# --- residual diffusion (SRDiff / ResShift) --------------------------------------------------------------------------
def test_residual_process_falls_back_to_the_condition_image_and_trains_on_the_residual() -> None:
    lr = _smooth_image(2, 8, 3)
    front = _smooth_image(2, 32, 4)
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    hr = _smooth_image(2, 32, 5)
    zero = lambda z_t, t, feats, z_c: torch.zeros_like(z_t)  # noqa: E731  (a model that predicts x0 = 0)
    for condition, image in (("bicubic", bicubic), ("frontend", front)):
        res = s2d_model(unet={"use_kernel": False, "use_depth": False}, prediction_type="sample", residual=True,
                        residual_scale=2.0, image_condition=condition)
        plain = s2d_model(unet={"use_kernel": False, "use_depth": False}, prediction_type="sample",
                          image_condition=condition)
        res.unet.denoise = plain.unet.denoise = zero
        kw: dict[str, Any] = {"steps": 4, "strength": 1.0, "frontend": front}
        out = res.super_resolve(lr, generator=torch.Generator().manual_seed(0), **kw)
        flat = plain.super_resolve(lr, generator=torch.Generator().manual_seed(0), **kw)
        # x0 = 0 is "no residual": the condition image (up to DDIM's last-step noise, √(1 − ᾱ_0)/2 ≈ 0.015 rms)
        assert (out - image).abs().mean() < 0.02, condition
        assert (flat - image).abs().mean() > 5 * (out - image).abs().mean(), "without residual: the mean image"
        # the training target is the scaled residual: with x0 = 0 the loss is its mean square
        z0, z_c = res.latents.encode(hr), res.latents.encode(image)
        mse = res.loss(hr, lr, None, None, generator=torch.Generator().manual_seed(1), frontend=front)["mse"]
        torch.testing.assert_close(mse, ((z0 - z_c) * 2.0).pow(2).mean())
    with pytest.raises(ValueError, match="residual_scale"):
        s2d_model(residual=True, residual_scale=0.0)


def test_guidance_on_a_residual_process_lowers_the_lr_error() -> None:
    m = s2d_model(unet={"use_kernel": False, "use_depth": False}, prediction_type="sample", residual=True,
                  residual_scale=2.0)
    _, lr, kernel = _toy_problem()
    kw: dict[str, Any] = {"steps": 4, "guidance_kernel": kernel, "strength": 0.5}
    plain = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), **kw)
    guided = m.super_resolve(lr, generator=torch.Generator().manual_seed(0), guidance=1.0, **kw)
    assert float(lr_consistency(guided, lr, kernel, 4)) < 0.5 * float(lr_consistency(plain, lr, kernel, 4))
