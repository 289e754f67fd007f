"""Per-sample image and kernel-field metrics (no reduction over the batch, so callers can aggregate and report)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, crop_border: int = 0) -> Tensor:
    """PSNR in dB per sample over all channels, `(B,)`, after cropping `crop_border` pixels on each side."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    return peak_signal_noise_ratio(
        pred.float().clamp(0, data_range), target.float(), data_range=data_range, reduction="none", dim=(1, 2, 3)
    )


def kernel_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over pixels of the L1 distance between two kernel fields `(B, k², h, w)`, per sample `(B,)`.

    The sum runs over the k² kernel taps, so the value is in [0, 2] whatever the kernel size
    (0: identical kernels, 2: disjoint supports) and reads as twice the total-variation distance.
    """
    if pred.shape != target.shape:
        raise ValueError(f"kernel_l1: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred.float() - target.float()).abs().sum(dim=1).mean(dim=(1, 2))


# --- Y-channel metrics (BasicSR's `calculate_psnr/ssim(..., test_y_channel=True)` convention) -------------------

# ITU-R BT.601 "studio swing" luma as MATLAB's rgb2ycbcr and BasicSR's `rgb2ycbcr(y_only=True)`: for RGB in [0, 1]
# Y = 16/255 + (65.481 R + 128.553 G + 24.966 B)/255, so Y lies in [16/255, 235/255].
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _crop(img: Tensor, crop_border: int) -> Tensor:
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return img
    if min(img.shape[-2:]) <= 2 * crop_border:
        raise ValueError(f"image {tuple(img.shape[-2:])} is too small to crop {crop_border} px from each side")
    return img[..., crop_border:-crop_border, crop_border:-crop_border]


def _check_pair(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) images, got shape {tuple(pred.shape)}")


def _prepare(img: Tensor, quantize: bool) -> Tensor:
    # float64 so the reference comparison is not limited by float32 round-off on 8-bit-scale sums.
    img = img.detach().to(torch.float64).clamp(0, 1)
    # BasicSR evaluates images after `tensor2img`, i.e. rounded to 8 bit; opt-in so training-time numbers stay smooth.
    return torch.round(img * 255.0) / 255.0 if quantize else img


def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 luma `(B, 1, H, W)` of RGB `img (B, 3, H, W)` in [0, 1], as MATLAB / BasicSR (result in [0, 1])."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects (B, 3, H, W) RGB images, got shape {tuple(img.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (16.0 + (img * w).sum(dim=1, keepdim=True)) / 255.0


def _psnr_255(pred: Tensor, target: Tensor) -> Tensor:
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # inf for identical images, as BasicSR


def psnr_y(pred: Tensor, target: Tensor, crop_border: int = 0, quantize: bool = False) -> Tensor:
    """PSNR (dB) on the Y channel per sample `(B,)`, on the [0, 255] scale, `crop_border` px cropped per side.

    `pred` is clamped to [0, 1]; `quantize` rounds both images to 8 bit first, as BasicSR's evaluation does.
    """
    _check_pair("psnr_y", pred, target)
    y_pred = _crop(rgb_to_y(_prepare(pred, quantize)), crop_border) * 255.0
    y_true = _crop(rgb_to_y(_prepare(target, quantize)), crop_border) * 255.0
    return _psnr_255(y_pred, y_true).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                     device: torch.device | None = None) -> Tensor:
    # cv2.getGaussianKernel(11, 1.5) outer itself, as BasicSR's `_ssim`.
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def _ssim_255(x: Tensor, y: Tensor) -> Tensor:
    """Mean SSIM per sample and channel `(B, C)` of images on the [0, 255] scale (valid 11x11 Gaussian filtering)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    b, c, h, w = x.shape
    if min(h, w) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 after cropping, got {h}x{w}")
    win = _gaussian_window(dtype=x.dtype, device=x.device)
    x, y = x.reshape(b * c, 1, h, w), y.reshape(b * c, 1, h, w)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(1, 2, 3)).view(b, c)


def ssim_y(pred: Tensor, target: Tensor, crop_border: int = 0, quantize: bool = False) -> Tensor:
    """SSIM on the Y channel per sample `(B,)`: 11x11 Gaussian (σ=1.5), valid filtering, Y on [0, 255] (BasicSR)."""
    _check_pair("ssim_y", pred, target)
    y_pred = _crop(rgb_to_y(_prepare(pred, quantize)), crop_border) * 255.0
    y_true = _crop(rgb_to_y(_prepare(target, quantize)), crop_border) * 255.0
    return _ssim_255(y_pred, y_true)[:, 0].float()


def ssim(pred: Tensor, target: Tensor, crop_border: int = 0, quantize: bool = False) -> Tensor:
    """RGB SSIM per sample `(B,)`: the BasicSR SSIM of each channel on [0, 255], averaged over channels."""
    _check_pair("ssim", pred, target)
    x = _crop(_prepare(pred, quantize), crop_border) * 255.0
    y = _crop(_prepare(target, quantize), crop_border) * 255.0
    return _ssim_255(x, y).mean(dim=1).float()


def color_shift(pred: Tensor, target: Tensor) -> Tensor:
    """Largest per-channel difference of the image means, in 8-bit levels, per sample `(B,)` (0 = true colours)."""
    _check_pair("color_shift", pred, target)
    diff = _prepare(pred, False).mean(dim=(2, 3)) - _prepare(target, False).mean(dim=(2, 3))
    return (diff.abs().amax(dim=1) * 255.0).float()
