"""DE on an SR image gathered tile by tile (issue 20): the same depth as on the whole SR image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.inference.depth import LearnedDepth, resize_depth
from ssr_lightning.inference.depth_stream import StreamedDepth, aa_weights, bilinear_at, streams
from ssr_lightning.networks.depthnet import DepthNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("n_in", "n_out"), [(97, 13), (256, 64), (64, 64), (40, 57)])
def test_aa_weights_are_torchs(n_in: int, n_out: int) -> None:
    x = torch.rand(1, 2, n_in, 5, dtype=torch.float64)
    want = F.interpolate(x, size=(n_out, 5), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(torch.einsum("oi,bcix->bcox", aa_weights(n_in, n_out), x), want)


def test_bilinear_at_is_the_resized_map_at_those_pixels() -> None:
    y = torch.randn(2, 1, 9, 13)
    full = F.interpolate(y, size=(50, 61), mode="bilinear", align_corners=False)
    rows, cols = torch.tensor([0, 3, 17, 49]), torch.tensor([0, 5, 60, 33])
    torch.testing.assert_close(bilinear_at(y, (50, 61), rows, cols, grid=True), full[..., rows, :][..., cols])
    torch.testing.assert_close(bilinear_at(y, (50, 61), rows, cols, grid=False), full[..., rows, cols])


@pytest.mark.parametrize(("h", "w"), [(60, 84), (300, 260)])  # 300x260 x4: above 2^20 HR pixels, sampled range
def test_streamed_depth_equals_the_whole_image(h: int, w: int) -> None:
    torch.manual_seed(0)
    net = DepthNet(channels=8, levels=3, working_size=32)
    with torch.no_grad():
        net.out.weight.mul_(30.0)  # a depth map with a spread, so its range matters
    est = LearnedDepth(net).eval()
    sr = F.interpolate(torch.rand(1, 3, h // 4, w // 4), size=(4 * h, 4 * w), mode="bicubic").clamp(0, 1)
    assert streams(est, sr.shape[-2:]) and not streams(est, (24, 30))
    with torch.no_grad():
        want = resize_depth(est(sr), (h, w))
        stream = StreamedDepth(est, (4 * h, 4 * w))
        for y0 in range(0, 4 * h, 72):
            for x0 in range(0, 4 * w, 100):
                stream.add(y0, x0, sr[..., y0 : y0 + 72, x0 : x0 + 100])
        got = stream.depth_lr((h, w))
    assert got.shape == want.shape == (1, 1, h, w) and float(want.std()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
