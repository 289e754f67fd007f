"""Tests for the NBSR stage: the network, the kernel-code artifact, the Y-channel metrics and NBSRModule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssr_lightning.cli import kernel_basis
from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.degradation.kernels import KernelConfig, sample_kernel_field
from ssr_lightning.inference.checkpoints import load_model
from ssr_lightning.metrics import psnr_y, rgb_to_y, ssim, ssim_y
from ssr_lightning.modules import NBSRModule
from ssr_lightning.networks.kernel_codec import (
    default_basis_path,
    fit_kernel_basis,
    load_or_fit_basis,
    reconstruction_error,
    sample_kernels,
)
from ssr_lightning.networks.nbsr import NBSR, KernelConditionedSR

# Small fits keep the file fast; the bounds below were measured for these sizes (12 components, 4000 kernels,
# 2000 held-out kernels of seed 1): L1 mean 0.131, max 0.51, rel. L2 0.083 (the full 20000-kernel fit on 20000
# held-out kernels: 0.121 / 0.58 / 0.073); the bounds leave some margin.
FIT_SAMPLES, HELDOUT = 4000, 2000
L1_MEAN_BOUND, L1_MAX_BOUND, REL_L2_BOUND = 0.15, 0.70, 0.10


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def basis() -> KernelBasis:
    return fit_kernel_basis(KernelConfig(), n_components=12, n_samples=FIT_SAMPLES, seed=0)


# ---------------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nbsr_shapes_odd_sizes(scale: int) -> None:
    net = NBSR.tiny(scale=scale).eval()
    lr, code = torch.rand(2, 3, 7, 9), torch.randn(2, 12, 7, 9)
    with torch.no_grad():
        assert net(lr, code).shape == (2, 3, 7 * scale, 9 * scale)
        assert net(lr).shape == (2, 3, 7 * scale, 9 * scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_code_concatenated_at_the_input_keeps_shapes_and_acts_from_step_zero(scale: int) -> None:
    torch.manual_seed(0)
    net = NBSR.tiny(scale=scale, input_condition=True, sft_init=0.0).eval()  # SFTs are the identity here
    assert net.conv_first.in_channels == 3 + 12
    lr, code = torch.rand(2, 3, 7, 9), torch.randn(2, 12, 7, 9)
    with torch.no_grad():
        with_code, without = net(lr, code), net(lr)
    assert with_code.shape == without.shape == (2, 3, 7 * scale, 9 * scale)
    assert not torch.allclose(with_code, without)  # the input path carries the code before any SFT learns


def test_noise_channel_is_estimated_from_the_pixels_and_kept_when_the_code_is_zeroed(basis: KernelBasis) -> None:
    from ssr_lightning.networks.nbsr import KernelConditionedSR

    m = KernelConditionedSR(noise_condition=True, input_condition=True)
    m.codec.set_basis(basis, torch.ones(12))
    clean = torch.full((1, 3, 8, 10), 0.5)
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 20 / 255).clamp(0, 1)
    c_clean, c_noisy = m.condition(clean, None), m.condition(noisy, None)
    assert c_clean.shape == (1, 13, 8, 10) and torch.equal(c_clean[:, :12], torch.zeros(1, 12, 8, 10))
    assert float(c_clean[0, 12, 0, 0]) == pytest.approx(-1.0) and float(c_noisy[0, 12, 0, 0]) > 0.0
    assert m(noisy).shape == (1, 3, 32, 40)


def test_nbsr_none_code_is_zero_code_and_code_matters() -> None:
    net = NBSR.tiny().eval()
    # SFT starts as the identity; perturb its heads so the condition actually reaches the output.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    lr = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        none = net(lr, None)
        zero = net(lr, torch.zeros(1, 12, 7, 9))
        other = net(lr, torch.randn(1, 12, 7, 9))
    assert torch.equal(none, zero)
    assert not torch.allclose(none, other)


def test_nbsr_starts_near_bicubic_and_rejects_bad_inputs() -> None:
    net = NBSR.tiny().eval()
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        sr = net(lr)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert (sr - bicubic).abs().mean() < 0.05  # global residual: the untrained net is a small correction
    with pytest.raises(ValueError, match="code must be"):
        net(lr, torch.zeros(1, 12, 4, 4))
    with pytest.raises(ValueError, match="scale 2, 3 or 4"):
        NBSR.tiny(scale=5)


# ---------------------------------------------------------------------------------------------- kernel basis
def test_basis_reconstruction_within_measured_bound(basis: KernelBasis) -> None:
    err = reconstruction_error(basis, sample_kernels(KernelConfig(), HELDOUT, seed=1))
    assert err["l1_mean"] < L1_MEAN_BOUND and err["l1_max"] < L1_MAX_BOUND and err["rel_l2"] < REL_L2_BOUND
    # Field layout round trip: encode/decode of a sampled (B, 441, h, w) field.
    field, _ = sample_kernel_field(torch.rand(2, 1, 5, 6), KernelConfig(), [torch.Generator().manual_seed(i) for i in range(2)])
    rec = basis.decode(basis.encode(field))
    assert rec.shape == field.shape
    assert (rec - field).abs().sum(1).mean() < L1_MEAN_BOUND
    torch.testing.assert_close(rec.sum(1), torch.ones(2, 5, 6), atol=1e-4, rtol=0)


def test_basis_fit_deterministic_and_save_load(basis: KernelBasis, tmp_path: Path) -> None:
    again = fit_kernel_basis(KernelConfig(), n_components=12, n_samples=FIT_SAMPLES, seed=0)
    assert torch.equal(again.components, basis.components) and torch.equal(again.mean, basis.mean)
    other = fit_kernel_basis(KernelConfig(), n_components=12, n_samples=FIT_SAMPLES, seed=5)
    assert not torch.equal(other.mean, basis.mean)
    basis.save(tmp_path / "b.pt")
    loaded = KernelBasis.load(tmp_path / "b.pt")
    assert torch.equal(loaded.components, basis.components) and torch.equal(loaded.explained, basis.explained)


def test_load_or_fit_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSR_ARTIFACTS", str(tmp_path / "art"))
    assert default_basis_path(12).parent == tmp_path / "art"
    assert default_basis_path(12).name.startswith("kernel_basis_c12_")
    # another kernel distribution gets another artifact, never a stale basis
    assert default_basis_path(12, KernelConfig(focus_range=(0.0, 1.0))) != default_basis_path(12)
    messages: list[str] = []
    fitted = load_or_fit_basis(None, KernelConfig(), 12, n_samples=1000, log=messages.append)
    assert default_basis_path(12).is_file() and "missing" in messages[0]
    loaded = load_or_fit_basis(None, KernelConfig(), 12, log=messages.append)
    assert torch.equal(loaded.components, fitted.components) and len(messages) == 1
    with pytest.raises(ValueError, match="components"):
        load_or_fit_basis(default_basis_path(12), KernelConfig(), 10)
    out = tmp_path / "cli" / "kb.pt"
    report = kernel_basis.main(["--components", "6", "--out", str(out), "--samples", "800", "--heldout", "400"])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert out.is_file() and saved["heldout_error"] == report["heldout_error"] and saved["heldout_seed"] == 1


# ------------------------------------------------------------------------------------------ Y-channel metrics
def _y_numpy(img: np.ndarray) -> np.ndarray:
    """Y in [0, 255] of an (H, W, 3) RGB image in [0, 1], written out as MATLAB's rgb2ycbcr."""
    return 16.0 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]


def test_rgb_to_y_constants() -> None:
    white, black = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_y(white).flatten(), torch.tensor([235.0 / 255]))
    torch.testing.assert_close(rgb_to_y(black).flatten(), torch.tensor([16.0 / 255]))


def test_psnr_ssim_y_against_references() -> None:
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 40, 36, generator=gen, dtype=torch.float64)
    pred = (target + 0.08 * torch.randn(2, 3, 40, 36, generator=gen, dtype=torch.float64)).clamp(0, 1)
    crop = 4
    p, s = psnr_y(pred, target, crop_border=crop), ssim_y(pred, target, crop_border=crop)
    s_rgb = ssim(pred, target, crop_border=crop)
    for b in range(2):
        yp = _y_numpy(pred[b].permute(1, 2, 0).numpy())[crop:-crop, crop:-crop]
        yt = _y_numpy(target[b].permute(1, 2, 0).numpy())[crop:-crop, crop:-crop]
        mse = np.mean((yp - yt) ** 2)
        assert abs(float(p[b]) - 10 * math.log10(255.0**2 / mse)) < 1e-4  # float32 output
        # skimage filters with reflect padding then drops a 5-px margin: the same numbers as BasicSR's valid conv.
        ref = structural_similarity(yt, yp, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255)
        assert abs(float(s[b]) - ref) < 1e-6
        ref_rgb = np.mean([
            structural_similarity(255 * target[b, c].numpy()[crop:-crop, crop:-crop],
                                  255 * pred[b, c].numpy()[crop:-crop, crop:-crop], gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False, data_range=255)
            for c in range(3)
        ])
        assert abs(float(s_rgb[b]) - ref_rgb) < 1e-6
    assert torch.isinf(psnr_y(target, target)).all() and torch.allclose(ssim_y(target, target), torch.ones(2))


# ---------------------------------------------------------------------------------------------- NBSRModule
def test_missing_dkenet_ckpt_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"DKENet.*nope\.ckpt.*Train that stage first.*configs/dkenet\.yaml"):
        NBSRModule(KernelConditionedSR(), kernel_source="dkenet", dkenet_ckpt=str(missing))
    with pytest.raises(FileNotFoundError, match="train DKENet first"):
        NBSRModule(KernelConditionedSR(), kernel_source="dkenet")


def _batch(b: int = 2, h: int = 16, s: int = 4) -> dict[str, torch.Tensor]:
    gens = [torch.Generator().manual_seed(10 + i) for i in range(b)]
    kernel, _ = sample_kernel_field(torch.rand(b, 1, h, h), KernelConfig(), gens)
    return {"lr": torch.rand(b, 3, h, h), "hr": torch.rand(b, 3, s * h, s * h), "kernel": kernel}


def test_module_training_step_and_checkpoint_carries_basis(tmp_path: Path) -> None:
    path = tmp_path / "basis_c12.pt"
    module = NBSRModule(KernelConditionedSR(), basis_path=str(path), basis_samples=1000)
    batch = _batch()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and path.is_file() and bool(module.model.codec.ready)
    loss.backward()
    assert module.model.net.conv_first.weight.grad is not None
    opt.step()
    sr, metrics = module._evaluate(batch)
    assert sr.shape == batch["hr"].shape and all(torch.isfinite(v).all() for v in metrics.values())
    # Whitened codes: about unit scale, whatever the raw PCA magnitudes.
    assert 0.1 < float(module.encode(batch["kernel"]).std()) < 10
    # A fresh module given only the state dict (no artifact) reproduces the output: the basis travels with it.
    path.unlink()
    fresh = NBSRModule(KernelConditionedSR(), basis_path=str(path))
    fresh.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch["lr"], batch["kernel"]), module(batch["lr"], batch["kernel"]))
    assert not path.exists()
    # The same through a checkpoint file and the stage loader: a ready KernelConditionedSR, basis included.
    module.eval()
    with torch.no_grad():
        ref = module(batch["lr"], batch["kernel"])
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    assert ckpt["ssr"]["stage"] == "nbsr" and ckpt["ssr"]["model_class"] == "KernelConditionedSR"
    torch.save(ckpt, tmp_path / "best.ckpt")
    loaded = load_model(tmp_path / "best.ckpt", "nbsr")
    assert isinstance(loaded, KernelConditionedSR) and bool(loaded.codec.ready) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["lr"], batch["kernel"]), ref, atol=0, rtol=0)
    # A checkpoint of the first format (NBSRModule 0.1: net.*, basis.*, code_std, basis_ready) loads the same.
    renames = (("model.net.", "net."), ("model.codec.basis.", "basis."), ("model.codec.code_std", "code_std"),
               ("model.codec.ready", "basis_ready"))
    old_state = {}
    for key, value in module.state_dict().items():
        old, new = next((o, n) for o, n in renames if key.startswith(o))
        old_state[new + key[len(old):]] = value
    hp = {"channels": 16, "num_blocks": 2, "growth": 8, "code_channels": 12, "scale": 4, "kernel_size": 21,
          "basis_path": str(path), "basis_samples": 1000, "kernel_source": "gt", "dkenet_ckpt": None, "lr": 2e-4,
          "min_lr": 1e-6, "warmup_steps": 0, "ckpt_every_n_steps": 100, "num_log_images": 4}
    torch.save({"state_dict": old_state, "hyper_parameters": hp}, tmp_path / "old.ckpt")
    old_model = load_model(tmp_path / "old.ckpt", "nbsr")
    assert bool(old_model.codec.ready)
    with torch.no_grad():
        torch.testing.assert_close(old_model(batch["lr"], batch["kernel"]), ref, atol=0, rtol=0)


def test_module_gt_source_needs_kernel() -> None:
    module = NBSRModule(KernelConditionedSR(), basis_samples=500)
    with pytest.raises(ValueError, match="kernel_source"):
        module._kernel({"lr": torch.rand(1, 3, 8, 8), "hr": torch.rand(1, 3, 32, 32)})
