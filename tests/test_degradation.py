"""Tests of the degradation engine: kernel families, blur + downsample paths, basis, noise/JPEG, Degrader."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.degradation import (
    DegradationConfig,
    Degrader,
    KernelBasis,
    KernelConfig,
    add_noise,
    anisotropic_covariance,
    blur_downsample,
    blur_downsample_invariant,
    defocus_sigma,
    gaussian_kernels,
    jpeg,
    sample_kernel_field,
)

K = 21
KK = K * K


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _random_field(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(b, KK, h, w, generator=g) + 0.01
    return f / f.sum(dim=1, keepdim=True)


def _real_image(size: int = 96) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    img = skimage_data.astronaut()[100 : 100 + size, 150 : 150 + size]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255.0


def _ramp(b: int, h: int, w: int) -> torch.Tensor:
    return torch.linspace(0, 1, h).view(1, 1, h, 1).expand(b, 1, h, w).contiguous()


def _kernel_variance(field: torch.Tensor) -> torch.Tensor:
    """Second moment sum_c K_c (x_c^2 + y_c^2) per pixel: (B, h, w)."""
    r = torch.arange(K, dtype=field.dtype) - K // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.einsum("bchw,c->bhw", field, (xx * xx + yy * yy).reshape(-1))


# --------------------------------------------------------------------------------------------- blur + downsample


@pytest.mark.parametrize("method", ["exact", "shift"])
def test_blur_downsample_matches_per_pixel_loop(method: str) -> None:
    b, c, hh, ww, s = 2, 3, 16, 12, 4
    hr = torch.rand(b, c, hh, ww, generator=torch.Generator().manual_seed(1))
    field = _random_field(b, hh // s, ww // s)
    # Independent reference: numpy reflect padding (= reflect-101) and the formula of docs/ARCHITECTURE.md.
    pad = np.pad(hr.double().numpy(), ((0, 0), (0, 0), (K // 2, K // 2), (K // 2, K // 2)), mode="reflect")
    ker = field.double().numpy()
    ref = np.zeros((b, c, hh // s, ww // s))
    for bi in range(b):
        for i in range(hh // s):
            for j in range(ww // s):
                patch = pad[bi, :, s * i : s * i + K, s * j : s * j + K]  # rows dy, cols dx
                ref[bi, :, i, j] = (patch * ker[bi, :, i, j].reshape(K, K)).sum(axis=(1, 2))
    out = blur_downsample(hr, field, s, method=method)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)


def test_exact_row_chunks_and_other_scales_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssr_lightning.degradation import blur

    monkeypatch.setattr(blur, "_UNFOLD_CHUNK_ELEMS", 1)  # one LR row per unfold chunk
    for s, k in [(1, 5), (2, 21), (3, 3), (3, 21), (4, 5)]:
        hr = torch.rand(2, 3, 8 * s, 8 * s, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        field = torch.rand(2, k * k, 8, 8, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        field = field / field.sum(1, keepdim=True)
        exact = blur_downsample(hr, field, s, "exact")
        torch.testing.assert_close(blur_downsample(hr, field, s, "shift"), exact, atol=1e-12, rtol=0)
        if k == 3:  # conv path, full basis
            basis = KernelBasis.fit(field.permute(0, 2, 3, 1).reshape(-1, k * k), k * k)
            torch.testing.assert_close(blur_downsample(hr, field, s, "basis", basis), exact, atol=1e-6, rtol=0)
        ref = blur_downsample_invariant(hr, field[:, :, 0, 0], s)
        const = field[:, :, :1, :1].expand_as(field)
        torch.testing.assert_close(blur_downsample(hr, const, s, "exact"), ref, atol=1e-12, rtol=0)


def test_constant_field_equals_conv2d_and_cv2() -> None:
    s = 4
    hr = _real_image(64)
    cov = anisotropic_covariance(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(0.7))
    kern = gaussian_kernels(cov)  # (441,), strongly anisotropic so a transposed layout would be caught
    field = kern.view(1, KK, 1, 1).expand(1, KK, 16, 16).contiguous()
    ref = F.conv2d(F.pad(hr, (K // 2,) * 4, mode="reflect"), kern.view(1, 1, K, K).expand(3, 1, K, K), groups=3)
    ref = ref[..., ::s, ::s]
    for method in ("exact", "shift"):
        torch.testing.assert_close(blur_downsample(hr, field, s, method=method), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(blur_downsample_invariant(hr, kern, s), ref, atol=1e-5, rtol=0)
    chan = hr[0, 1].numpy()
    cv = cv2.filter2D(chan, -1, kern.view(K, K).numpy(), borderType=cv2.BORDER_REFLECT_101)[::s, ::s]
    np.testing.assert_allclose(blur_downsample(hr, field, s, method="shift")[0, 1].numpy(), cv, atol=1e-5)


def test_basis_with_all_components_is_exact() -> None:
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    field = _random_field(2, 8, 8, seed=3)
    basis = KernelBasis.fit(field.permute(0, 2, 3, 1).reshape(-1, KK), n_components=128)  # 128 kernels: full rank
    exact = blur_downsample(hr, field, 4, method="exact")
    torch.testing.assert_close(blur_downsample(hr, field, 4, method="basis", basis=basis), exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(basis.decode(basis.encode(field)), field, atol=1e-5, rtol=0)


def test_basis_few_components_small_error() -> None:
    # Measured with 12 components on this crop (seeds 0-3): max |err| <= 0.017, mean |err| <= 0.0026 (in [0, 1]).
    cfg = KernelConfig()
    basis = KernelBasis.from_distribution(cfg, n_components=12, n_samples=4000, seed=0)
    assert basis.explained.sum() > 0.95
    hr = _real_image(96)
    for seed in range(4):
        field, _ = sample_kernel_field(_ramp(1, 24, 24), cfg, _gens([seed]))
        err = (blur_downsample(hr, field, 4, "basis", basis) - blur_downsample(hr, field, 4, "exact")).abs()
        assert err.max() < 0.03 and err.mean() < 0.004, (seed, err.max(), err.mean())


def test_basis_requires_basis_and_bad_shapes_raise() -> None:
    hr = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="KernelBasis"):
        blur_downsample(hr, _random_field(1, 8, 8), 4, method="basis")
    with pytest.raises(ValueError, match=r"\(1, 441, 7, 8\)"):
        blur_downsample(hr, _random_field(1, 7, 8), 4)


def test_size_not_divisible_by_scale_raises() -> None:
    with pytest.raises(ValueError, match=r"s=4.*multiple of s"):
        blur_downsample(torch.rand(1, 3, 30, 32), _random_field(1, 7, 8), 4)
    deg = Degrader(DegradationConfig(scale=4))
    with pytest.raises(ValueError, match="s=4"):
        deg(torch.rand(1, 3, 30, 32), torch.rand(1, 1, 30, 32), [0])


# ------------------------------------------------------------------------------------------------------ kernels


def test_gaussian_kernels_normalised_nonnegative_and_oriented() -> None:
    g = torch.Generator().manual_seed(0)
    sx, sy = 0.6 + 4.4 * torch.rand(2, 50, generator=g)
    theta = (2 * torch.rand(50, generator=g) - 1) * math.pi
    kern = gaussian_kernels(anisotropic_covariance(sx, sy, theta))
    assert kern.shape == (50, KK)
    torch.testing.assert_close(kern.sum(-1), torch.ones(50), atol=1e-5, rtol=0)
    assert (kern >= 0).all()
    # theta = 0, sigma_x > sigma_y: the kernel is wider along columns (x) than along rows (y).
    k0 = gaussian_kernels(anisotropic_covariance(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(0.0))).view(K, K)
    assert k0[K // 2, K // 2 + 3] > k0[K // 2 + 3, K // 2]
    # Zero covariance (in focus, no optics blur) is a delta, not a NaN.
    delta = gaussian_kernels(torch.zeros(2, 2))
    assert delta[KK // 2] == 1.0 and torch.isfinite(delta).all()


@pytest.mark.parametrize("mult", [0.0, 0.25])
def test_sampled_fields_normalised_and_nonnegative(mult: float) -> None:
    cfg = KernelConfig(multiplicative_noise=mult, invariant_prob=0.5)
    field, params = sample_kernel_field(_ramp(4, 12, 10), cfg, _gens([0, 1, 2, 3]))
    assert field.shape == (4, KK, 12, 10)
    torch.testing.assert_close(field.sum(1), torch.ones(4, 12, 10), atol=1e-5, rtol=0)
    assert (field >= 0).all()
    assert set(params) >= {"invariant", "focus_z", "aperture", "sigma_x", "sigma_y", "theta"}
    assert params["invariant"].dtype == torch.bool and params["theta"].shape == (4,)


def test_defocus_sigma_zero_at_focus_and_growing() -> None:
    zf, a = torch.tensor(4.0), torch.tensor(1.5)
    assert defocus_sigma(zf, zf, a, 2.0, 5.0) == 0
    z = torch.linspace(1.0, 10.0, 91)
    sig = defocus_sigma(z, zf, a, 2.0, 50.0)
    dist = (z - zf).abs()
    near, far = z < zf, z > zf
    # Grows with |z - z_f| on either side of the focal plane (non-decreasing, and strictly somewhere).
    assert (sig[near].flip(0).diff() >= 0).all() and (sig[far].diff() >= 0).all()
    assert sig[dist.argmax()] > 0 and sig[0] > sig[20]
    assert defocus_sigma(torch.tensor(1.0), torch.tensor(10.0), a, 2.0, 5.0) == 5.0  # capped


def test_depth_drives_kernel_size_in_variant_samples() -> None:
    cfg = KernelConfig(invariant_prob=0.0, sigma_range=(0.6, 1.0))
    depth = _ramp(3, 24, 4)
    field, params = sample_kernel_field(depth, cfg, _gens([5, 6, 7]))
    var = _kernel_variance(field)  # (B, h, w)
    z = cfg.z_range[0] + depth[:, 0] * (cfg.z_range[1] - cfg.z_range[0])
    for b in range(3):
        dist = (z[b] - params["focus_z"][b]).abs().flatten()
        v = var[b].flatten()
        corr = torch.corrcoef(torch.stack([dist, v]))[0, 1]
        assert corr > 0.5, (b, corr)
        # The pixel nearest the focal plane has the sharpest kernel (ties: CoC < 1 px counts as sharp).
        assert v[dist.argmin()] <= v.min() + 1e-5


def test_invariant_samples_have_constant_field() -> None:
    cfg = KernelConfig(invariant_prob=1.0, multiplicative_noise=0.2)
    field, params = sample_kernel_field(_ramp(3, 8, 6), cfg, _gens([0, 1, 2]))
    assert params["invariant"].all()
    torch.testing.assert_close(field, field[..., :1, :1].expand_as(field), atol=0, rtol=0)
    # ...whereas a variant sample on a depth ramp is not constant.
    var, _ = sample_kernel_field(_ramp(1, 8, 6), KernelConfig(invariant_prob=0.0), _gens([0]))
    assert (var - var[..., :1, :1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------- noise, JPEG


def test_noise_level_and_jpeg_backends() -> None:
    lr = _real_image(96)[..., ::2, ::2].expand(4, 3, 48, 48).contiguous() * 0.8 + 0.1
    sigma = torch.full((4,), 0.04)
    noisy = add_noise(lr, sigma, _gens([0, 1, 2, 3]), poisson=torch.tensor([False, False, True, True]))
    std = (noisy - lr).std(dim=(1, 2, 3))
    assert torch.allclose(std[:2], sigma[:2], rtol=0.1)  # Gaussian: std = sigma
    assert (std[2:] < std[:2].min()).all()  # Poisson: sigma*sqrt(lr) < sigma below white
    q = torch.tensor([30.0, 50.0, 75.0, 95.0])
    ref = jpeg(lr, q, backend="cv2")
    out = jpeg(lr, q, backend="kornia")
    mse = ((out - ref) ** 2).mean(dim=(1, 2, 3))
    # kornia's differentiable codec vs libjpeg on the same input: measured 38-43 dB PSNR.
    assert (10 * torch.log10(1 / mse) > 33).all()
    assert ((out - lr).abs().mean(dim=(1, 2, 3)).diff() < 0).all()  # higher quality, smaller error


# ---------------------------------------------------------------------------------------------------- Degrader


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    hr = _real_image(64).expand(b, 3, 64, 64).contiguous()
    hr = hr.roll(shifts=7, dims=-1) if b == 1 else torch.stack([hr[i].roll(7 * i, -1) for i in range(b)])
    return hr, _ramp(b, 64, 64)


def test_degrader_reproducible_and_batch_independent() -> None:
    deg = Degrader(DegradationConfig(kernel=KernelConfig(invariant_prob=0.3, multiplicative_noise=0.1)))
    hr, depth = _inputs(3)
    a = deg(hr, depth, torch.tensor([10, 11, 12]))
    b = deg(hr, depth, [10, 11, 12])
    assert set(a) == {"lr", "kernel", "depth_lr", "noise_sigma", "jpeg_quality", "invariant", "lens"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = deg(hr, depth, [20, 21, 22])
    assert not torch.equal(a["lr"], c["lr"]) and not torch.equal(a["kernel"], c["kernel"])
    alone = deg(hr[1:2], depth[1:2], [11])
    for key in a:
        torch.testing.assert_close(alone[key], a[key][1:2], atol=1e-6, rtol=0, msg=key)
    assert a["lr"].shape == (3, 3, 16, 16) and a["kernel"].shape == (3, KK, 16, 16)
    assert ((a["noise_sigma"] * 255 >= 1) & (a["noise_sigma"] * 255 <= 30)).all()
    assert ((a["jpeg_quality"] >= 30) & (a["jpeg_quality"] <= 95)).all()


def test_switches_off_give_resynthesis_and_keep_other_draws() -> None:
    hr, depth = _inputs(2)
    full = Degrader(DegradationConfig())(hr, depth, [3, 4])
    clean_deg = Degrader(DegradationConfig(noise=False, jpeg=False))
    clean = clean_deg(hr, depth, [3, 4])
    assert torch.equal(clean["lr"], clean_deg.resynthesize(hr, clean["kernel"]))
    assert torch.equal(clean["kernel"], full["kernel"])  # switches do not change the kernel draws
    assert (clean["noise_sigma"] == 0).all() and (clean["jpeg_quality"] == 0).all()
    no_noise = Degrader(DegradationConfig(noise=False))(hr, depth, [3, 4])
    assert torch.equal(no_noise["jpeg_quality"], full["jpeg_quality"])
    assert not torch.equal(full["lr"], clean["lr"])


def test_degrader_basis_method_close_to_exact() -> None:
    hr, depth = _inputs(2)
    cfg = DegradationConfig(noise=False, jpeg=False)
    basis = KernelBasis.from_distribution(cfg.kernel, 12, n_samples=4000)
    fast = Degrader(DegradationConfig(noise=False, jpeg=False, blur_method="basis", basis_components=12), basis=basis)
    out = fast(hr, depth, [0, 1])
    ref = Degrader(cfg)(hr, depth, [0, 1])
    assert (out["lr"] - ref["lr"]).abs().mean() < 0.004


# ------------------------------------------------------------------------------------------------- KernelBasis


def test_kernel_basis_save_load_and_determinism(tmp_path) -> None:
    cfg = KernelConfig()
    a = KernelBasis.from_distribution(cfg, 10, n_samples=3000, seed=1)
    b = KernelBasis.from_distribution(cfg, 10, n_samples=3000, seed=1)
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)
    comp = a.components.double()
    torch.testing.assert_close(comp @ comp.T, torch.eye(10, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (a.explained[:-1] >= a.explained[1:]).all()
    idx = a.components.abs().argmax(dim=1)
    assert (a.components.gather(1, idx[:, None]) > 0).all()
    path = tmp_path / "basis.pt"
    a.save(path)
    c = KernelBasis.load(path)
    for name in ("mean", "components", "explained"):
        assert torch.equal(getattr(a, name), getattr(c, name))
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        KernelBasis.load(missing)
