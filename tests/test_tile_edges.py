"""Tile edges of the diffusion stage: the UNet's padding option and the stripe measure of tools/tile_stripes.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssr_lightning.diffusion import LatentDiffusionSR, UNetConfig
from ssr_lightning.networks import SSRUNet

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("tile_stripes", REPO / "tools" / "tile_stripes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _padded(module: nn.Module) -> set[str]:
    return {c.padding_mode for c in module.modules()
            if isinstance(c, nn.Conv2d) and isinstance(c.padding, tuple) and any(c.padding)}


def test_reflect_padding_reaches_every_padded_conv() -> None:
    torch.manual_seed(0)
    zeros = SSRUNet(latent_channels=4, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"), map_width=8, map_out=8, concat_lr=True)
    torch.manual_seed(0)
    reflect = SSRUNet(latent_channels=4, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), map_width=8, map_out=8, concat_lr=True,
                      padding_mode="reflect")
    assert _padded(zeros) == {"zeros"} and _padded(reflect) == {"reflect"}
    assert all(torch.equal(a, b) for a, b in zip(zeros.state_dict().values(), reflect.state_dict().values(),
                                                 strict=True)), "the option changes padding only, not weights"
    z, k, d = torch.randn(1, 4, 8, 8), torch.rand(1, 441, 8, 8), torch.rand(1, 1, 8, 8)
    a, b = zeros(z, 10, z, d, k), reflect(z, 10, z, d, k)
    assert a.shape == b.shape == z.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="padding_mode"):
        SSRUNet(latent_channels=4, padding_mode="circular")


def test_padding_mode_is_recorded_and_old_configs_keep_zeros() -> None:
    kw = dict(autoencoder="space_to_depth", autoencoder_config={"factor": 4}, prediction_type="sample")
    model = LatentDiffusionSR(**kw, unet_config={"padding_mode": "reflect", "block_out_channels": [8, 16, 16],
                                                 "map_width": 8, "map_out": 8})
    assert model.config.unet_config["padding_mode"] == "reflect" and _padded(model.unet) == {"reflect"}
    again = LatentDiffusionSR.from_config(model.config)
    assert _padded(again.unet) == {"reflect"}
    old = dict(model.config.unet_config)
    old.pop("padding_mode")  # a checkpoint written before the option
    assert UNetConfig.of(old).padding_mode == "zeros"


def test_bands_of_a_tiling() -> None:
    tool = _tool()
    m = tool.bands(64, 32, 8, 4, 4)  # LR 64 px, tiles 32/8 -> starts 0, 24, 32 (ends 32, 56, 64)
    border = np.flatnonzero(m["border"]) // 4
    assert set(border) == {23, 24, 31, 32, 55, 56}, "±1 LR px around the inner tile edges 24, 32, 56"
    assert not (m["border"] & m["offset"]).any() and not (m["rest"] & (m["border"] | m["offset"])).any()
    untiled = tool.bands(64, 0, 0, 4, 4)
    assert not untiled["border"].any()
    offset = set(np.flatnonzero(untiled["offset"]) // 4)
    assert {14, 18, 45, 49} <= offset and 13 not in offset and 20 not in offset
    # a side that is not a multiple of 4 is padded at the end by the pipeline: the tiles are those of the padded side
    odd = tool.bands(218, 64, 16, 4, 4)  # padded to 220: tiles (0, 64), (48, 112), (96, 160), (144, 208), (156, 220)
    assert odd["border"].size == 218 * 4 - 1
    assert set(np.flatnonzero(odd["border"]) // 4) == {47, 48, 63, 64, 95, 96, 111, 112, 143, 144, 155, 156, 159, 160,
                                                       207, 208}


def test_a_stripe_is_measured_where_it_is() -> None:
    tool = _tool()
    rng = np.random.default_rng(0)
    img = torch.from_numpy(0.5 + 0.03 * rng.standard_normal((1, 3, 256, 256))).float()  # ~6 levels of texture
    clean = tool.stripe_stats(img, 0, 0, 4, 4)
    assert abs(clean["offset_row"] - 1) < 0.03 and abs(clean["offset_col"] - 1) < 0.03
    striped = img.clone()
    striped[..., 4 * 15 + 1, :] += 0.1  # one bright HR row 15 LR rows below the top
    s = tool.stripe_stats(striped, 0, 0, 4, 4)
    assert s["offset_row"] > 1.08 and abs(s["offset_col"] - 1) < 0.05
    assert 15 <= s["peak_row_lr"] <= 16 and s["peak_row"] > 2
