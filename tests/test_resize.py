"""MATLAB-style bicubic `imresize`: the A = −0.5 kernel, symmetric edges, PIL's bicubic, and how torch's differs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssr_lightning.data.image_io import load_image
from ssr_lightning.degradation.resize import (
    bicubic_upsample,
    cubic,
    imresize,
    resize_matrix,
)


def _astronaut() -> np.ndarray:
    from skimage import data

    return load_image(os.path.join(data.data_dir, "astronaut.png"))  # (512, 512, 3) float32 in [0, 1]


def test_keys_kernel_with_a_minus_half() -> None:
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5, -1.5])
    # 1.5|x|³ − 2.5|x|² + 1 on [0, 1]; −0.5|x|³ + 2.5|x|² − 4|x| + 2 on [1, 2]; 0 beyond
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625, -0.0625], atol=1e-15)
    t = np.linspace(0, 1, 11)
    total = sum(cubic(t - k) for k in range(-2, 3))
    np.testing.assert_allclose(total, 1.0, atol=1e-12)  # a partition of unity: constants are reproduced
    assert cubic(0.5, a=-0.75) == pytest.approx(0.59375)  # torch's kernel at the same point


def test_symmetric_edge_folds_the_taps_by_hand() -> None:
    # 4 -> 8 px (x2): output pixel 1 reads u = 0.75 (1-based), taps -2..3 at distances 2.75 .. -2.25; MATLAB's
    # symmetric padding maps taps 0, -1 onto pixels 1, 2 (1-based)
    row = resize_matrix(4, 8, 2.0)[0]
    c = cubic
    expected = [c(0.75) + c(0.25), c(1.75) + c(1.25), c(2.25), 0.0]
    np.testing.assert_allclose(row, expected, atol=1e-15)
    assert resize_matrix(10, 3, 0.3).sum(axis=1) == pytest.approx(np.ones(3))


def test_constants_stay_constant() -> None:
    x = torch.full((2, 3, 17, 23), 0.7, dtype=torch.float64)
    for arg in (4, 2.5, 0.25, 0.3, (9, 40)):
        y = imresize(x, arg)
        assert torch.allclose(y, torch.full_like(y, 0.7), atol=1e-12), arg
    assert imresize(x, 0.25).shape == (2, 3, 5, 6), "MATLAB: ceil(scale * size)"


def test_upscaling_an_impulse_draws_the_separable_kernel() -> None:
    x = torch.zeros(9, 9, dtype=torch.float64)
    x[4, 4] = 1.0
    y = imresize(x, 4).numpy()
    j = np.arange(36)
    k = cubic((j + 0.5) / 4 - 0.5 - 4)  # output pixel centre in input coordinates, minus the impulse's position
    np.testing.assert_allclose(y, np.outer(k, k), atol=1e-14)
    assert y.max() == pytest.approx(cubic(0.125) ** 2)


def test_downscaling_matches_pil_bicubic_in_the_interior() -> None:
    img = _astronaut()
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).double()[None]
    for size in ((128, 128), (150, 170)):  # x1/4 and non-integer scales
        ours = imresize(x, size)[0].numpy()
        # PIL's BICUBIC: Keys A = -0.5, support widened by the shrink factor; mode "F" keeps float32 values
        pil = np.stack([np.asarray(Image.fromarray(img[..., ch]).resize(size[::-1], Image.BICUBIC))
                        for ch in range(3)])
        interior = np.abs(ours - pil)[:, 3:-3, 3:-3]  # PIL renormalises at the edges instead of mirroring
        assert interior.max() < 1e-5, size  # the brief asks < 1/255; the two agree to float32 round-off
        assert np.abs(ours - pil).max() > 1e-3, "the edges differ: symmetric padding vs PIL's clipping"
    # torch's antialiased bicubic shrink is PIL's too (A = -0.5), so it matches in the interior as well
    aa = F.interpolate(x, size=(128, 128), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(aa[..., 3:-3, 3:-3], imresize(x, 0.25)[..., 3:-3, 3:-3], atol=1e-12)


def test_torch_bicubic_is_the_a_minus_three_quarters_kernel_with_clamped_edges() -> None:
    lr = torch.from_numpy(_astronaut()[::8, ::8].transpose(2, 0, 1).copy()).double()[None]  # (1, 3, 64, 64)
    torch_up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    m = torch.from_numpy(resize_matrix(64, 256, 4.0, a=-0.75))
    same_kernel = m @ lr @ m.T
    # with A = -0.75 our matrix is torch's bicubic away from the 2 px the edge handling touches
    assert torch.allclose(torch_up[..., 2:-2, 2:-2], same_kernel[..., 2:-2, 2:-2], atol=1e-12)
    matlab = bicubic_upsample(lr, 4, "matlab")
    assert torch.equal(bicubic_upsample(lr, 4, "torch"), torch_up)
    diff = (matlab - torch_up)[..., 4:-4, 4:-4]
    assert diff.abs().max() > 0.01, "A = -0.5 and A = -0.75 are visibly different interpolants"
    psnr = 10 * torch.log10(1 / diff.pow(2).mean())
    assert 35 < psnr < 60  # close, not equal: the two references read different PSNRs (docs/METRICS.md)


def test_any_float_dtype_and_shape() -> None:
    x = torch.rand(2, 3, 16, 20)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        y = imresize(x.to(dtype), 0.5)
        assert y.dtype == dtype and y.shape == (2, 3, 8, 10)
    assert imresize(x[0, 0], (7, 9)).shape == (7, 9)
    with pytest.raises(TypeError, match="floating-point"):
        imresize(torch.zeros(4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="'torch' or 'matlab'"):
        bicubic_upsample(x, 4, "pil")  # type: ignore[arg-type]
