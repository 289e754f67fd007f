"""KE and NBSR over tiles with a halo (issue 20): the same kernels and SR image as on the whole image."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import randomise_zero_layers

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.inference.tiled_stages import (
    TiledKE,
    core_windows,
    dkenet_halo,
    grown,
    nbsr_halo,
    tiled_sr,
)
from ssr_lightning.networks import DKENet
from ssr_lightning.networks.nbsr import KernelConditionedSR

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, h, w, generator=g)
    depth = torch.nn.functional.interpolate(torch.rand(1, 1, h // 8, w // 8, generator=g), size=(h, w),
                                            mode="bilinear", align_corners=False)
    return lr, depth


KE_CONFIGS = [
    {},  # configs/dkenet.yaml's switches below on the tiny width
    {"global_kernel": True, "normalize_depth": True},
    {"focal_plane": True, "thin_lens": True, "global_context": False},
    {"depth_fusion": "input", "global_kernel": True},
    {"depth_fusion": "none", "thin_lens": True, "focal_plane": True},
    {"use_depth": False, "global_kernel": True},
    {"blocks_per_stage": 2, "thin_lens": True},
    {"global_kernel": True, "normalize_depth": True, "depth_pool_bins": 6},  # issue 21's depth-pooled KE
]


@pytest.mark.parametrize("cfg", KE_CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "base" for c in KE_CONFIGS])
def test_tiled_ke_equals_the_whole_image(cfg: dict[str, Any]) -> None:
    net = randomise_zero_layers(DKENet(channels=8, kernel_size=9, **cfg))
    h, w = 3 * dkenet_halo(net) + 10, 2 * dkenet_halo(net) + 14  # a grown tile does not reach across the image
    lr, depth = _inputs(h, w)
    with torch.no_grad():
        whole = net(lr, depth)
        tiled = TiledKE(net, lr, depth, tile=16)
        assert len(tiled.windows) > 6
        out = torch.zeros_like(whole)
        for (y0, y1, x0, x1), field in tiled:
            out[..., y0:y1, x0:x1] = field
    torch.testing.assert_close(out, whole, rtol=1e-4, atol=2e-6)
    # any window, e.g. one straddling the core tiles (the on-demand rebuild of a diffusion tile's kernels)
    torch.testing.assert_close(tiled.field((5, 29, 7, 33)), whole[..., 5:29, 7:33], rtol=1e-4, atol=2e-6)


def test_ke_halo_covers_the_receptive_field() -> None:
    """A change just outside the halo leaves a window's kernels as they were; one near the window does not. (The halo
    is the structural receptive field; with these weights the far end of it changes nothing a float can show.)"""
    net = randomise_zero_layers(DKENet(channels=8, kernel_size=9, global_context=False, blocks_per_stage=2))
    halo = dkenet_halo(net)
    lr, depth = _inputs(2 * halo + 40, 2 * halo + 40)
    win = (halo + 10, halo + 30, halo + 10, halo + 30)
    with torch.no_grad():
        base = net(lr, depth)[..., 10 + halo : 30 + halo, 10 + halo : 30 + halo]
        for d, changes in ((halo, False), (4, True)):
            moved = depth.clone()
            moved[..., win[0] - d - 1, win[2] + 5] += 0.5
            moved_lr = lr.clone()
            moved_lr[..., win[0] + 5, win[3] + d] += 0.5
            out = net(moved_lr, moved)[..., win[0] : win[1], win[2] : win[3]]
            assert bool((out - base).abs().max() > 1e-7) is changes, (d, halo)


def _nbsr(**kw: Any) -> KernelConditionedSR:
    torch.manual_seed(0)
    net = KernelConditionedSR(code_channels=6, channels=8, num_blocks=2, growth=4, kernel_size=9, **kw)
    g = torch.Generator().manual_seed(0)
    k = torch.softmax(torch.randn(64, 81, generator=g), 1)
    net.codec.set_basis(KernelBasis.fit(k, 6), torch.ones(6))
    return randomise_zero_layers(net)


@pytest.mark.parametrize("kw", [{}, {"noise_condition": True, "input_condition": True, "sft_init": 0.05}])
def test_tiled_nbsr_equals_the_whole_image(kw: dict[str, Any]) -> None:
    net = _nbsr(**kw)
    halo = nbsr_halo(net)
    lr, _ = _inputs(2 * halo + 20, 2 * halo + 12, seed=3)
    code = torch.randn(1, 6, *lr.shape[-2:], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = net.forward_code(lr, code)
        out = torch.zeros_like(whole)
        n = 0
        for (y0, y1, x0, x1), tile in tiled_sr(net, lr, code, tile=24):
            out[..., 4 * y0 : 4 * y1, 4 * x0 : 4 * x1] = tile
            n += 1
    assert n > 4
    torch.testing.assert_close(out, whole, rtol=1e-4, atol=1e-5)
    # the code path is the field path through the (linear) codec
    field = torch.softmax(torch.randn(1, 81, 10, 12), 1)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_code(lr[..., :10, :12], net.encode(field)), net(lr[..., :10, :12], field))


def test_core_windows_partition_the_image() -> None:
    wins = core_windows(30, 22, 8, align=4)
    cover = torch.zeros(30, 22)
    for y0, y1, x0, x1 in wins:
        assert y0 % 8 == 0 and x0 % 8 == 0
        cover[y0:y1, x0:x1] += 1
    assert torch.equal(cover, torch.ones_like(cover))
    assert core_windows(30, 22, 0) == [(0, 30, 0, 22)] == core_windows(30, 22, 64)
    g, core = grown((8, 16, 0, 8), 5, 30, 22)
    assert g == (3, 21, 0, 13) and core == (slice(5, 13), slice(0, 8))
