"""DKENet's depth-pooled kernels (depth_pool_bins, issue 21): pixels at one depth share their kernel."""

from __future__ import annotations

import pytest
import torch
from conftest import randomise_zero_layers

from ssr_lightning.networks import DKENet
from ssr_lightning.networks.depth_pooling import DepthKernelPool

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(**kw: object) -> DKENet:
    return randomise_zero_layers(DKENet(channels=8, kernel_size=9, depth_pool_bins=5, **kw))


def test_pixels_at_one_depth_share_the_kernel_when_the_pixels_own_share_is_off() -> None:
    net = _net()
    with torch.no_grad():
        net.depth_pool.mix.fill_(-60.0)  # the pixel's own log-kernel has no share
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 24, 24, generator=g)
    depth = torch.full((1, 1, 24, 24), 0.25)
    depth[..., 12:, :] = 0.75  # two depth planes, each a bin centre
    with torch.no_grad():
        field = net(lr, depth)
    near, far = field[0, :, :12].flatten(1), field[0, :, 12:].flatten(1)
    torch.testing.assert_close(near, near[:, :1].expand_as(near))
    torch.testing.assert_close(far, far[:, :1].expand_as(far))
    assert (near[:, 0] - far[:, 0]).abs().max() > 1e-4  # the two depths pool different pixels
    torch.testing.assert_close(field.sum(1), torch.ones(1, 24, 24))


def test_the_pixels_own_kernel_keeps_its_learned_share() -> None:
    net = _net()
    lr, depth = torch.rand(1, 3, 16, 16), torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        net.depth_pool.mix.fill_(60.0)  # all the pixel's own
        own = net(lr, depth)
        plain = torch.softmax(net.kernel_logits(net.features(lr, net.prepare_depth(lr, depth)),
                                                net.prepare_depth(lr, depth)), dim=1)
    torch.testing.assert_close(own, plain)
    assert float(own.flatten(2).std(dim=2).max()) > 0  # varies over pixels, unlike the pooled kernel


def test_an_empty_bin_takes_the_images_pooled_kernel_and_confidence_weights_the_pool() -> None:
    pool = DepthKernelPool(channels=4, bins=3)
    kernels = torch.softmax(torch.randn(1, 5, 2, 2), dim=1)
    conf = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # the right column has no say
    depth = torch.zeros(1, 1, 2, 2)  # every pixel in the first bin: bins 2 and 3 are empty
    num, den = pool.sums(torch.cat([kernels, conf], 1), depth)
    table = pool.table(num, den)
    left = kernels[0, :, :, 0].mean(dim=1)
    torch.testing.assert_close(table[0, 1], left)  # empty bin: the image's (confidence-weighted) kernel
    torch.testing.assert_close(table[0, 2], left)
    torch.testing.assert_close(table[0, 0], left)  # the bin's own pixels agree with it here


@pytest.mark.parametrize(("kw", "message"), [({"depth_pool_bins": 1}, "depth_pool_bins must be 0"),
                                             ({"depth_pool_bins": -2}, "depth_pool_bins must be 0"),
                                             ({"depth_pool_bins": 4, "use_depth": False}, "set use_depth true")])
def test_depth_pool_bins_is_validated_with_its_name(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DKENet(channels=8, kernel_size=9, **kw)


def test_ke_pooling_tool_pools_a_depth_function_exactly_and_scores_the_net_as_it_runs() -> None:
    """tools/ke_pooling.py: a field that is a function of depth (on bin centres) survives the pooling up to the pull
    towards the image's kernel (1 pixel's weight in a plane of ≥ 64: L1 ≤ 2/65), so the GT floor is near 0 there;
    the "as trained" row is the net's own field."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import ke_pooling

    g = torch.Generator().manual_seed(3)
    depth = torch.zeros(2, 1, 16, 16)
    depth[:, :, 8:] = 1.0
    depth[:, :, :, :4] = 8 / 15  # three depth planes, each a centre of the 16 bins
    table = torch.softmax(torch.randn(2, 3, 81, generator=g), dim=-1)  # one kernel per plane
    plane = (depth * 15 / 8).round().long().clamp(max=1) + (depth == 1).long()  # 0, 1, 2
    gt = torch.stack([table[b, plane[b, 0]].permute(2, 0, 1) for b in range(2)])  # (2, 81, 16, 16)
    assert float((ke_pooling.depth_pooled(gt, depth, 16) - gt).abs().sum(1).max()) < 2 / 65
    net = _net().eval()
    batch = {"lr": torch.rand(2, 3, 16, 16, generator=g), "kernel": gt, "depth_lr": depth}
    out = ke_pooling.score_batch(net, batch)
    assert float(out["gt_pool16"].max()) < 2 / 65
    with torch.no_grad():
        own = net(batch["lr"], depth)
    torch.testing.assert_close(out["trained"], (own - gt).abs().sum(1).mean(dim=(1, 2)))
    assert float(out["gt_image"].min()) > 0.01  # three kernels per image: one kernel cannot be them all
