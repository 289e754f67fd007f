"""The bounded SR path (issue 20): SVKR in code space, band-by-band sampling and output against the whole-image path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.diffusion import LatentDiffusionSR, SamplingConfig
from ssr_lightning.diffusion.config import ComputeConfig
from ssr_lightning.inference.pipeline import SSRPipeline

sys.path.insert(0, str(Path(__file__).parent))
from test_diffusion import TINY_UNET, _randomise_amf
from test_svkr_codes import K, _svkr

pytestmark = pytest.mark.usefixtures("one_thread")
ONE = ComputeConfig(tile_batch=1, feature_cache_mb=0)  # each tile alone, features recomputed: the reference layout


class _Fields(torch.nn.Module):
    """The same SVKR seen as a plain module (no ``coded``): the pipeline takes its whole fields, as before issue 20."""

    def __init__(self, svkr: Any) -> None:
        super().__init__()
        self.inner = svkr
        self.iterations = svkr.iterations

    def forward(self, lr: torch.Tensor, **kw: Any) -> Any:
        return self.inner(lr, **kw)


def _model(**cfg: Any) -> LatentDiffusionSR:
    """configs/ssr.yaml's process on a tiny UNet with all three modalities (kernel fields of k = 9)."""
    unet = {**TINY_UNET, "amf_hidden": 8, "map_width": 8, "map_out": 8, "concat_lr": True, "kernel_channels": K * K}
    base = {"autoencoder": "space_to_depth", "prediction_type": "sample", "residual": True, "residual_scale": 2.0,
            "image_condition": "frontend"}
    torch.manual_seed(0)
    m = LatentDiffusionSR(unet_config=unet, **{**base, **cfg}).eval()
    _randomise_amf(m.unet)
    return m


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return F.interpolate(torch.rand(1, 3, 7, 9, generator=g), size=(26, 34), mode="bicubic",
                         align_corners=False).clamp(0, 1)  # odd-free but not a multiple of the tile: padded


SETTINGS = [
    ({}, {"start": "frontend", "strength": 0.5}),  # the CPU default's kind
    ({}, {"start": "frontend", "strength": 0.5, "color_fix": "wavelet"}),
    ({"image_condition": "bicubic"}, {"start": "frontend", "strength": 0.5, "color_fix": "adain"}),
    ({"image_condition": "bicubic"}, {"start": "bicubic", "strength": 0.5}),
    ({}, {"start": "noise"}),
]


@pytest.mark.parametrize(("cfg", "samp"), SETTINGS, ids=[f"{c.get('image_condition', 'frontend')}-"
                                                          f"{s['start']}-{s.get('color_fix', 'none')}"
                                                          for c, s in SETTINGS])
def test_bounded_path_equals_the_whole_image_path(lr: torch.Tensor, cfg: dict[str, Any],
                                                  samp: dict[str, Any]) -> None:
    m, svkr = _model(**cfg), _svkr(iterations=2)
    sampling = SamplingConfig(steps=4, tile=12, overlap=4, seed=3, **samp)
    assert m.banded(sampling)
    whole = SSRPipeline(m, _Fields(svkr), sampling, compute=ONE)(lr)
    bands: list[tuple[int, torch.Tensor]] = []
    bounded = SSRPipeline(m, svkr, sampling, compute=ONE.replace(frontend_tile=12))
    res = bounded(lr, out=lambda a, band: bands.append((a, band)))
    assert res.sr is None and len(bands) >= 1 and bands[0][0] == 0
    sr = torch.cat([b for _, b in bands], dim=-2)
    assert sr.shape == whole.sr.shape == (1, 3, 104, 136)
    torch.testing.assert_close(sr, whole.sr, rtol=0, atol=2e-5)
    assert torch.equal((sr * 255 + 0.5).to(torch.uint8), (whole.sr * 255 + 0.5).to(torch.uint8)) or \
        float(((sr - whole.sr).abs() * 255).max()) < 0.01
    torch.testing.assert_close(res.depth, whole.depth, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.kernel_var, whole.kernel_var, rtol=1e-4, atol=1e-4)


def test_guidance_reads_kernels_rebuilt_per_tile(lr: torch.Tensor) -> None:
    m, svkr = _model(), _svkr(iterations=1)
    sampling = SamplingConfig(steps=3, strength=0.7, start="frontend", tile=12, overlap=4, guidance=0.5)
    assert not m.banded(sampling)
    whole = SSRPipeline(m, _Fields(svkr), sampling, compute=ONE)(lr)
    coded = SSRPipeline(m, svkr, sampling, compute=ONE.replace(frontend_tile=12))(lr)
    torch.testing.assert_close(coded.sr, whole.sr, rtol=0, atol=2e-5)


def test_layout_options_do_not_change_the_result(lr: torch.Tensor) -> None:
    m = _model()
    sampling = SamplingConfig(steps=3, strength=0.7, start="frontend", tile=12, overlap=4, seed=1)
    g = torch.Generator().manual_seed(8)
    frontend = F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    depth, kernel = torch.rand(1, 1, 26, 34, generator=g), torch.softmax(torch.randn(1, K * K, 26, 34, generator=g), 1)
    runs = {}
    for name, comp in {"one": ONE, "batched": ComputeConfig(tile_batch=5, feature_cache_mb=0),
                       "cached": ComputeConfig(tile_batch=1, feature_cache_mb=64)}.items():
        runs[name] = m.super_resolve(lr, depth, kernel, sampling=sampling, frontend=frontend, compute=comp)
    # whole-latent steps (a hook that changes nothing forces GaussianDiffusion.sample) against bands
    runs["whole"] = m.super_resolve(lr, depth, kernel, sampling=sampling, frontend=frontend, compute=ONE,
                                    hooks=[lambda state: None])
    assert torch.equal(runs["whole"], runs["one"]), "band by band is the whole step, bit for bit"
    assert torch.equal(runs["cached"], runs["one"])
    torch.testing.assert_close(runs["batched"], runs["one"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance", [0.0, 0.5], ids=["banded", "guided"])
def test_float16_storage_stays_within_one_level(lr: torch.Tensor, guidance: float) -> None:
    """``ComputeConfig.storage``: the condition maps (latent of I_T, kernel projection) stored as float16 change the
    output by less than one 8-bit level; ``auto`` on a small image is float32, bit for bit. Measured here: max
    2.4e-4 (0.061 of a level) / mean 3.6e-5 banded, 1% of the values rounding to another 8-bit level; max 2.7e-7 /
    mean 4e-8 guided (its condition latent comes whole from I_T in float32: only the kernel projection is narrow)."""
    m, svkr = _model(), _svkr(iterations=2)
    sampling = SamplingConfig(steps=4, strength=0.5, start="frontend", tile=12, overlap=4, seed=3, guidance=guidance)
    comp = ONE.replace(frontend_tile=12)
    runs = {st: SSRPipeline(m, svkr, sampling, compute=comp.replace(storage=st))(lr).sr
            for st in ("auto", "float32", "float16")}
    assert torch.equal(runs["auto"], runs["float32"])
    diff = (runs["float16"] - runs["float32"]).abs()
    assert 0 < float(diff.max()) <= 1 / 255, float(diff.max())


def test_float16_storage_keeps_the_maps_narrow(lr: torch.Tensor) -> None:
    """The job's condition latent, kernel projection and stepped latent are float16 (each band steps in float32)."""
    m, svkr = _model(), _svkr(iterations=1)
    sampling = SamplingConfig(steps=2, strength=0.5, start="frontend", tile=12, overlap=4)
    pipe = SSRPipeline(m, svkr, sampling, compute=ONE.replace(frontend_tile=12, storage="float16"))
    seen = {}

    def sample_latent(job: Any, *a: Any, **k: Any) -> torch.Tensor:
        seen.update(z_c=job.inputs.z_c.dtype, kernel=job.inputs.kernel.dtype)
        z = LatentDiffusionSR.sample_latent(m, job, *a, **k)
        seen["z"] = z.dtype
        return z

    m.sample_latent = sample_latent  # type: ignore[method-assign]
    pipe(lr)
    assert seen == {"z_c": torch.float16, "kernel": torch.float16, "z": torch.float16}


def test_banded_noise_equals_one_draw() -> None:
    """The float16 latent's noise, drawn one (h, w) slab at a time, is the float32 draw of the whole tensor rounded:
    the CPU generator's sequence does not depend on how a multiple-of-16 tensor is split."""
    from ssr_lightning.diffusion.banded import noise_like

    for shape in [(1, 48, 40, 36), (2, 12, 8, 6)]:
        whole = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        half = noise_like(torch.empty(shape, dtype=torch.float16), torch.Generator().manual_seed(7))
        assert half.dtype == torch.float16 and torch.equal(half, whole.half())
        same = noise_like(torch.empty(shape), torch.Generator().manual_seed(7))
        assert torch.equal(same, whole)
    odd = noise_like(torch.empty(1, 3, 5, 3, dtype=torch.float16), torch.Generator().manual_seed(7))
    assert torch.equal(odd, torch.randn(1, 3, 5, 3, generator=torch.Generator().manual_seed(7)).half())


def test_storage_option_is_validated_and_a_flag() -> None:
    from ssr_lightning.cli.sr import build_parser
    from ssr_lightning.diffusion.config import STORAGE_AUTO_PIXELS

    with pytest.raises(ValueError, match="compute storage 'half': must be one of auto, float32, float16"):
        ComputeConfig(storage="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="storage"):
        ComputeConfig().replace(storage="bf16")
    auto = ComputeConfig()
    assert auto.storage_dtype(STORAGE_AUTO_PIXELS) == torch.float32
    assert auto.storage_dtype(STORAGE_AUTO_PIXELS + 1) == torch.float16
    assert ComputeConfig(storage="float16").storage_dtype(1) == torch.float16
    assert "--storage" in build_parser().format_help()
