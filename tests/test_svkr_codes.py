"""SVKR in kernel-code space and tiles (issue 20): the same depths, images, codes and maps as the field version."""

from __future__ import annotations

import pytest
import torch
from conftest import randomise_zero_layers

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.inference.depth import LearnedDepth
from ssr_lightning.inference.depth_stream import streams
from ssr_lightning.inference.svkr import SVKR
from ssr_lightning.inference.svkr_codes import iterate_weights
from ssr_lightning.networks import DKENet
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.networks.nbsr import KernelConditionedSR
from ssr_lightning.visualize import kernel_spread

pytestmark = pytest.mark.usefixtures("one_thread")
K = 9


def _svkr(iterations: int = 3, gamma: float = 0.7) -> SVKR:
    torch.manual_seed(0)
    de = DepthNet(channels=8, levels=3, working_size=24)
    with torch.no_grad():
        de.out.weight.mul_(30.0)  # depth with a spread: the iterates differ
    ke = randomise_zero_layers(DKENet(channels=8, kernel_size=K, global_kernel=True, normalize_depth=True), 1)
    with torch.no_grad():
        ke.tail.weight.mul_(20.0)  # kernels that follow the image
    sr = KernelConditionedSR(code_channels=6, channels=8, num_blocks=1, growth=4, kernel_size=K, noise_condition=True,
                             input_condition=True, sft_init=0.05)
    g = torch.Generator().manual_seed(2)
    sr.codec.set_basis(KernelBasis.fit(torch.softmax(3 * torch.randn(256, K * K, generator=g), 1), 6),
                       torch.full((6,), 0.05))
    return SVKR(LearnedDepth(de), ke, randomise_zero_layers(sr, 3), iterations=iterations, gamma=gamma).eval()


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 12, 11, generator=g), size=(48, 44), mode="bicubic",
                                           align_corners=False).clamp(0, 1)


def test_code_space_equals_the_field_version(lr: torch.Tensor) -> None:
    svkr = _svkr()
    proj = torch.randn(7, K * K, generator=torch.Generator().manual_seed(6)), torch.randn(7)
    assert streams(svkr.depth_estimator, (4 * 48, 4 * 44)), "DE reads the SR image tile by tile"
    with torch.no_grad():
        full = svkr(lr)
        coded = svkr.coded(lr, tile=16, keep_all=True, probes={"proj": proj})
    assert coded.iterations == full.iterations == 3 and len(coded.codes) == len(coded.images) == 4
    assert float((full.depths[1] - full.depths[0]).abs().max()) > 1e-3, "the iterates differ"
    for t in range(4):
        torch.testing.assert_close(coded.depths[t], full.depths[t], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(coded.images[t], full.images[t], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(coded.codes[t], svkr.sr_model.encode(full.kernels[t]), rtol=1e-4, atol=1e-4)
    k_t = full.final_kernel
    torch.testing.assert_close(coded.kernel_var(), kernel_spread(k_t, K).pow(2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(coded.stats["proj"], torch.einsum("ck,bkhw->bchw", proj[0], k_t) + proj[1].view(1, -1, 1, 1),
                               rtol=1e-4, atol=1e-5)
    # K_T rebuilt on demand for any window from D^0..D^T
    torch.testing.assert_close(coded.kernel((6, 30, 10, 40)), k_t[..., 6:30, 10:40], rtol=1e-4, atol=1e-6)


def test_final_only_and_the_image_sink(lr: torch.Tensor) -> None:
    svkr = _svkr(iterations=2, gamma=0.9)
    got = torch.zeros(1, 3, 4 * 48, 4 * 44)
    seen = []

    def sink(win: tuple[int, int, int, int], tile: torch.Tensor) -> None:
        y0, y1, x0, x1 = win
        seen.append(win)
        got[..., 4 * y0 : 4 * y1, 4 * x0 : 4 * x1] = tile

    stages = []
    with torch.no_grad():
        full = svkr(lr, keep_all=False)
        coded = svkr.coded(lr, tile=16, image_sink=sink, on_stage=lambda n, t: stages.append(f"{n}{t}"))
    assert stages == ["DE0", "KE0", "NBSR0", "DE1", "KE1", "NBSR1", "DE2", "KE2", "NBSR2"]
    assert len(seen) == 9 and coded.images == [] and len(coded.codes) == 1 and len(coded.depths) == 3
    torch.testing.assert_close(got, full.final_image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(coded.final_code, svkr.sr_model.encode(full.final_kernel), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("t_max", "gamma"), [(0, 0.9), (1, 0.5), (3, 0.9), (3, 1.0)])
def test_iterate_weights_unroll_the_ema(t_max: int, gamma: float) -> None:
    fields = [torch.rand(3) for _ in range(t_max + 1)]
    ema = fields[0]
    for f in fields[1:]:
        ema = gamma * f + (1 - gamma) * ema
    w = iterate_weights(t_max, gamma)
    assert sum(w) == pytest.approx(1.0)
    torch.testing.assert_close(sum(wt * f for wt, f in zip(w, fields, strict=True)), ema)


def test_release_and_float16_probes(lr: torch.Tensor) -> None:
    """``release`` drops what sampling does not read (keeping K_T's rebuild when asked); float16 probes round the
    float32 ones, leaving the code, moments, depths and I_T as they were."""
    svkr = _svkr(iterations=2)
    proj = torch.randn(7, K * K, generator=torch.Generator().manual_seed(6)), torch.randn(7)
    with torch.no_grad():
        wide = svkr.coded(lr, tile=16, probes={"proj": proj})
        narrow = svkr.coded(lr, tile=16, probes={"proj": proj}, probe_dtype=torch.float16)
    assert narrow.stats["proj"].dtype == torch.float16 and narrow.stats["moments"].dtype == torch.float32
    assert torch.equal(narrow.final_code, wide.final_code) and torch.equal(narrow.final_image, wide.final_image)
    torch.testing.assert_close(narrow.stats["proj"].float(), wide.stats["proj"], rtol=2e-3, atol=1e-3)
    window = (6, 30, 10, 40)
    kernel, depth = wide.kernel(window), wide.final_depth
    wide.release(keep_rebuild=True)
    assert wide.codes == [] and wide.images == [] and set(wide.stats) == {"proj"} and len(wide.depths) == 3
    assert torch.equal(wide.kernel(window), kernel)
    narrow.release()
    assert len(narrow.depths) == 1 and torch.equal(narrow.final_depth, depth) and narrow.rebuild is None
