"""The thin-lens head's auxiliary supervision (issue 21): the degrader's lens targets describe its own kernels in the
head's terms, and DKENetModule(lens_loss=...) trains the head on them."""

from __future__ import annotations

import pytest
import torch

from ssr_lightning.degradation import DegradationConfig
from ssr_lightning.degradation.degrader import Degrader
from ssr_lightning.degradation.kernels import KernelConfig, defocus_sigma, lens_targets, sample_kernel_field
from ssr_lightning.modules import DKENetModule
from ssr_lightning.networks import DKENet


def test_lens_targets_reproduce_the_defocus_sigma() -> None:
    """σ_def = max(g·|d − d_f|/(d + c) − t, 0), c = z_near/(z_far − z_near), equals the sampler's thin-lens σ."""
    cfg = KernelConfig(invariant_prob=0.0, max_sigma=100.0)
    depth = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _, params = sample_kernel_field(depth, cfg, [torch.Generator().manual_seed(i) for i in range(3)])
    lens = lens_targets(params, cfg)
    z0, z1 = cfg.z_range
    d, c = depth[:, 0], z0 / (z1 - z0)
    ours = (lens[:, 1, None, None] * (d - lens[:, 0, None, None]).abs() / (d + c) - lens[:, 2, None, None]).clamp_min(0)
    z = z0 + d * (z1 - z0)
    theirs = defocus_sigma(z, params["focus_z"].view(-1, 1, 1), params["aperture"].view(-1, 1, 1), cfg.magnification,
                           cfg.max_sigma)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert torch.equal(lens[:, 3], params["sigma_x"]) and torch.equal(lens[:, 5], params["theta"])


def test_the_degrader_returns_the_lens_of_each_sample() -> None:
    deg = Degrader(DegradationConfig(noise=False, jpeg=False))
    hr, depth = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    out = deg(hr, depth, [0, 1])
    assert out["lens"].shape == (2, 6) and bool((out["lens"][:, 1] > 0).all()), "defocus on: a positive gain"


def _batch() -> dict:
    deg = Degrader(DegradationConfig(noise=False, jpeg=False, kernel=KernelConfig(invariant_prob=0.0)))
    hr, depth = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    return deg(hr, depth, [3, 4])


def test_lens_loss_trains_the_lens_head() -> None:
    torch.manual_seed(0)
    net = DKENet(channels=8, thin_lens=True, use_depth=True, normalize_depth=False)
    module = DKENetModule(net, lens_loss=1.0)
    batch = _batch()
    module.train()
    field, lens = module._estimate_with_lens(batch)
    torch.testing.assert_close(field, module(batch["lr"], batch["depth_lr"]))  # one pass, the forward's field
    assert lens.item() > 0
    lens.backward()
    assert net.lens_head[-1].weight.grad.abs().sum() > 0, "the lens loss reaches the head"
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = lens.item()
    for _ in range(30):
        opt.zero_grad()
        loss = module._estimate_with_lens(batch)[1]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


@pytest.mark.parametrize("kw", [{"thin_lens": False}, {"normalize_depth": True}, {"use_depth": False}])
def test_lens_loss_needs_a_thin_lens_head_on_absolute_depth(kw: dict) -> None:
    args = {"channels": 4, "thin_lens": True, "use_depth": True, "normalize_depth": False, **kw}
    with pytest.raises(ValueError, match="lens_loss"):
        DKENetModule(DKENet(**args), lens_loss=1.0)
    DKENetModule(DKENet(**args), lens_loss=0.0)  # the default trains on the kernel L1 alone


@pytest.mark.parametrize(("sharpness", "floor", "ceiling"), [(1.0, -6.0, None), (10.0, -10.0, 0.12)])
def test_the_thin_lens_prior_with_the_true_lens_is_the_kernel_when_sharp(sharpness: float, floor: float,
                                                                        ceiling: float | None) -> None:
    """The prior's form given the lens that made the sample (raw_lens ∘ lens_targets, the family's depth offset c):
    at lens_sharpness 10, lens_floor −10 it is the GT field up to a small L1; at the first KEs' 1 / −6 it is not
    (a half-pixel blur in focus, floored taps outweighing a sharp centre)."""
    from ssr_lightning.metrics import kernel_l1

    cfg = KernelConfig(invariant_prob=0.0, aperture_range=(0.5, 2.0), focus_range=(0.0, 1.0))
    depth = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(1)).expand(4, 1, 12, 12).clone()
    depth += torch.linspace(0, 0.5, 12).view(1, 1, 1, 12)  # a depth ramp across each image
    depth = depth.clamp(0, 1)
    field, params = sample_kernel_field(depth, cfg, [torch.Generator().manual_seed(i) for i in range(4)])
    net = DKENet(channels=8, thin_lens=True, normalize_depth=False, lens_sharpness=sharpness, lens_floor=floor)
    z0, z1 = cfg.z_range
    with torch.no_grad():
        net.lens_offset.copy_(torch.log(torch.expm1(torch.tensor(z0 / (z1 - z0)))))
        prior = net.lens_prior(DKENet.raw_lens(lens_targets(params, cfg)), depth, (12, 12))
    err = kernel_l1(prior, field).mean().item()
    if ceiling is None:
        assert err > 0.25, err
    else:
        assert err < ceiling, err


def test_lens_form_options_are_validated() -> None:
    with pytest.raises(ValueError, match="lens_sharpness must be > 0"):
        DKENet(channels=8, thin_lens=True, lens_sharpness=0.0)
    with pytest.raises(ValueError, match="lens_floor must be < 0"):
        DKENet(channels=8, thin_lens=True, lens_floor=1.0)


def test_lens_reading_replaces_the_lens_and_keeps_the_logits() -> None:
    """tools/lens_reading.py: with the per-pixel logits silenced, "the whole GT lens" is the prior alone; the head's
    own lens (an untrained head) is further from the GT kernel than the true lens at the sharp form."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import lens_reading

    torch.manual_seed(0)
    net = DKENet(channels=8, thin_lens=True, normalize_depth=False, lens_sharpness=10.0, lens_floor=-10.0).eval()
    with torch.no_grad():
        net.tail.weight.zero_()
        net.tail.bias.zero_()
    before = net.lens_offset.detach().clone()
    out = lens_reading.score_batch(net, _batch(), c=0.5)
    torch.testing.assert_close(out["lens"], out["prior"], atol=1e-5, rtol=1e-5)
    assert set(out) >= {"trained", "focus", "gain", "optics", "err_focus", "err_gain"}
    assert float(out["prior"].mean()) < float(out["trained"].mean())
    assert torch.equal(net.lens_offset.detach(), before), "the net's own depth offset c is restored"
