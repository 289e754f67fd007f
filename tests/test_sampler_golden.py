"""Golden values of the sampler (diffusers pipeline-test style): numeric drift is caught, not only nondeterminism.

The stored slices were produced by the implementation before the layers were split (``SSRDiffusionModule`` of
ssr_lightning 0.1 with the same seeds and latent scale 1) and are reproduced exactly by ``LatentDiffusionSR``.
"""

from __future__ import annotations

import pytest
import torch

from ssr_lightning.diffusion import LatentDiffusionSR

FROM_NOISE = torch.tensor([[0.5159, 0.2474, 0.4365, 0.5420, 0.7318, 0.7189],
                           [0.7383, 0.7403, 0.4316, 0.3921, 0.2501, 0.0000],
                           [0.6413, 0.6381, 0.5145, 0.3775, 0.1612, 0.2690]])
FROM_LR_HALF = torch.tensor([0.2482, 0.2824, 0.3824, 0.4463, 0.6648, 0.4491])


@pytest.fixture(scope="module")
def model_and_inputs() -> tuple[LatentDiffusionSR, tuple[torch.Tensor, ...]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = LatentDiffusionSR(
        autoencoder_config={"block_out_channels": [8, 16]},
        unet_config={"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "UpBlock2D"], "amf_hidden": 8, "map_width": 8, "map_out": 8,
                     "concat_lr": True},
        num_inference_steps=3, sample_strength=1.0).eval()
    m.latents.scale.fill_(1.0)
    with torch.no_grad():  # fresh AMFs are the identity: give them weights so every condition acts
        for name, p in m.unet.named_parameters():
            if ".fc2." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(1, 3, 8, 8, generator=g)
    depth = torch.rand(1, 1, 8, 8, generator=g)
    kernel = torch.softmax(torch.randn(1, 441, 8, 8, generator=g), 1)
    yield m, (lr, depth, kernel)
    torch.set_num_threads(threads)


def test_ddim_from_pure_noise_matches_stored_slice(model_and_inputs) -> None:
    m, (lr, depth, kernel) = model_and_inputs
    out = m.super_resolve(lr, depth, kernel, generator=torch.Generator().manual_seed(3))
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out[0, :, 10, 10:16], FROM_NOISE, atol=2e-4, rtol=0)


def test_lr_initialised_start_matches_stored_slice(model_and_inputs) -> None:
    m, (lr, depth, kernel) = model_and_inputs
    out = m.super_resolve(lr, depth, kernel, generator=torch.Generator().manual_seed(3), strength=0.5)
    torch.testing.assert_close(out[0, 1, 20, 4:10], FROM_LR_HALF, atol=2e-4, rtol=0)


def test_step_hooks_see_every_step_and_can_replace_the_latent(model_and_inputs) -> None:
    m, (lr, depth, kernel) = model_and_inputs
    seen: list[int] = []

    def hook(state):
        seen.append(state.index)
        assert state.x0 is not None and state.x0.shape == state.latent.shape
        return torch.zeros_like(state.latent) if state.index == state.num_steps - 1 else None

    out = m.super_resolve(lr, depth, kernel, generator=torch.Generator().manual_seed(3), hooks=[hook])
    assert seen == [0, 1, 2]
    zero = m.latents.decode(torch.zeros(1, 4, 16, 16)).clamp(0, 1)
    torch.testing.assert_close(out, zero)
