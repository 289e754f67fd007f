"""The CMOS peer row: GIA, the σ + semantics estimator, the σ-conditioned SR, CMOSModule and its checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.cli.main import main
from ssr_lightning.data import SRDataModule
from ssr_lightning.inference.checkpoints import STAGES, load_model, read_checkpoint
from ssr_lightning.modules import CMOSModule
from ssr_lightning.modules.cmos_module import mean_iou
from ssr_lightning.networks.cmos import (
    CMOS,
    GIA,
    CMOSNet,
    SigmaConditionedSR,
    labels_to_onehot,
)

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"estimator_widths": (8, 8, 16), "sr_channels": 8, "sr_blocks": 1, "sr_growth": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def batch() -> dict:
    """One fixed degraded batch of the tiny embedded data: 4 × 64 px HR, 16 px LR."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    dm = SRDataModule(embedded_scene_size=64, num_train=4, num_val=1, num_test=1, patch_size=64, val_size=64,
                      batch_size=4, seed=0)
    dm.setup("fit")
    out = dm.degrade(next(iter(dm.train_dataloader())))
    torch.set_num_threads(n)
    return out


def _with_segmentation(batch: dict, has: list[bool]) -> dict:
    out = dict(batch)
    b, _, h, w = batch["lr"].shape
    out["segmentation_lr"] = torch.randint(0, 12, (b, 1, h, w), generator=torch.Generator().manual_seed(1))
    out["has_segmentation"] = torch.tensor(has)
    return out


# ------------------------------------------------------------------------------------------------------- GIA
@pytest.mark.parametrize("b_size", [(12, 10), (6, 5)], ids=["same", "coarser"])
def test_gia_shapes_identity_at_init_and_learns(b_size: tuple[int, int]) -> None:
    gia = GIA(16, groups=4, upsample=b_size != (12, 10))
    a, b = torch.randn(2, 16, 12, 10), torch.randn(2, 16, *b_size)
    a2, b2 = gia(a, b)
    assert a2.shape == a.shape and b2.shape == a.shape, "both outputs at a's resolution"
    assert torch.equal(a2, a), "a fresh GIA is the identity (zero-initialised output convs)"
    opt = torch.optim.Adam(gia.parameters(), lr=1e-2)
    target = torch.randn(2, 16, 12, 10)
    for _ in range(2):  # step 1 moves the output convs, step 2 the attention streams too
        opt.zero_grad()
        out_a, out_b = gia(a, b)
        (F.mse_loss(out_a, target) + F.mse_loss(out_b, target)).backward()
        opt.step()
    a3, b3 = gia(a, b)
    assert not torch.allclose(a3, a, atol=1e-4) and not torch.allclose(b3, gia.align(a, b), atol=1e-4)
    assert all(p.grad is not None for p in gia.parameters()), "every GIA parameter takes part"


def test_gia_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="multiple of groups"):
        GIA(10, groups=4)
    with pytest.raises(ValueError, match="needs two"):
        GIA(8, groups=4)(torch.randn(1, 8, 4, 4), torch.randn(1, 4, 4, 4))


# ------------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size", [(13, 11), (7, 5), (1, 3)])
def test_cmosnet_shapes_odd_sizes(size: tuple[int, int]) -> None:
    net = CMOSNet(num_classes=5, widths=(8, 8, 16)).eval()
    with torch.no_grad():
        sigma, logits, aux = net(torch.rand(2, 3, *size), return_aux=True)
    assert sigma.shape == (2, 1, *size) and logits.shape == (2, 5, *size)
    assert (sigma >= 0).all()
    assert len(aux) == 3 and all(s.shape == (2, 1, *size) and lg.shape == (2, 5, *size) for s, lg in aux)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sigma_conditioned_sr_shapes(scale: int) -> None:
    lr, sigma = torch.rand(2, 3, 7, 9), torch.rand(2, 1, 7, 9) * 3
    with torch.no_grad():
        net = SigmaConditionedSR(num_classes=4, channels=8, num_blocks=1, growth=4, scale=scale).eval()
        assert net.net.code_channels == 1 + 4
        for sem in (None, torch.randn(2, 4, 7, 9), torch.randint(0, 9, (2, 1, 7, 9))):
            assert net(lr, sigma, sem).shape == (2, 3, scale * 7, scale * 9)
        plain = SigmaConditionedSR(num_classes=4, use_semantics=False, channels=8, num_blocks=1, growth=4,
                                   scale=scale).eval()
        assert plain.net.code_channels == 1
        assert plain(lr, sigma).shape == (2, 3, scale * 7, scale * 9)
    with pytest.raises(ValueError, match="LR grid"):
        net(lr, torch.rand(2, 1, 14, 18))


def test_labels_fold_into_last_class_and_condition_normalisation() -> None:
    onehot = labels_to_onehot(torch.tensor([[[[0, 3, 9, -1]]]]), 4)
    assert onehot[0, :, 0].argmax(0)[:3].tolist() == [0, 3, 3] and onehot[0, :, 0, 3].sum() == 0
    net = SigmaConditionedSR(num_classes=4, channels=8, num_blocks=1, growth=4)
    cond = net.condition(torch.full((1, 1, 2, 2), 3.0), torch.tensor([[[[1, 2], [7, 0]]]]))
    assert cond.shape == (1, 5, 2, 2) and torch.allclose(cond[:, 0], torch.ones(1, 2, 2))
    assert cond[0, 1:, 1, 0].argmax() == 3


def test_cmos_config_round_trip() -> None:
    model = CMOS(num_classes=6, estimator_widths=(8, 8, 16), sr_channels=8, sr_blocks=1, sr_growth=4).eval()
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    again = CMOS.from_config(config)
    assert isinstance(again.estimator, CMOSNet) and isinstance(again.sr, SigmaConditionedSR)
    again.load_state_dict(model.state_dict())
    lr = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(model(lr), again(lr)) and model(lr).shape == (1, 3, 36, 28)
        sigma, logits = model.estimate(lr)
    assert sigma.shape == (1, 1, 9, 7) and logits.shape == (1, 6, 9, 7)


# ------------------------------------------------------------------------------------------------- module
def test_losses_mask_segmentation_and_skip_when_absent(batch: dict) -> None:
    module = CMOSModule(CMOS(**TINY_NET, num_classes=4))
    plain = {k: v for k, v in batch.items() if k not in ("segmentation_lr", "has_segmentation")}
    terms = module.losses(plain)
    assert "ce" not in terms and {"sigma_l1", "sigma_aux", "sr_l1", "loss"} <= set(terms)
    seg = _with_segmentation(plain, [True, False, True, False])
    terms = module.losses(seg)
    _, logits = module.model.estimate(seg["lr"])
    labels = seg["segmentation_lr"][[0, 2], 0].clamp_max(3)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits[[0, 2]], labels).item(), rel=1e-5)
    none = module.losses(_with_segmentation(plain, [False] * 4))
    assert "ce" not in none
    terms["loss"].backward()
    assert module.model.sr.net.conv_first.weight.grad is not None

    maps, metrics = module._evaluate(seg)
    assert maps["sr"].shape == seg["hr"].shape
    assert torch.isnan(metrics["miou"][[1, 3]]).all() and (metrics["miou"][[0, 2]] >= 0).all()
    assert metrics["sigma_l1"].shape == (4,) and metrics["psnr_y"].shape == (4,)


def test_mean_iou() -> None:
    labels = torch.tensor([[[[0, 0], [1, 1]]]])
    perfect = F.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    assert mean_iou(perfect, labels, 3).item() == pytest.approx(1.0)
    wrong = perfect.flip(2)  # rows swapped: class 0 and 1 each hit nothing
    assert mean_iou(wrong, labels, 3).item() == pytest.approx(0.0)


def test_estimator_sigma_l1_decreases(batch: dict) -> None:
    module = CMOSModule(CMOS(**TINY_NET))
    opt = torch.optim.Adam(module.model.estimator.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        opt.zero_grad()
        terms = module.losses(batch, with_sr=False)
        terms["loss"].backward()
        opt.step()
        first = terms["sigma_l1"].item() if first is None else first
    with torch.no_grad():
        last = module.losses(batch, with_sr=False)["sigma_l1"].item()
    assert last < 0.8 * first, (first, last)


def test_stage_registered() -> None:
    assert STAGES["cmos"].model_class == "CMOS" and (REPO / STAGES["cmos"].config).is_file()


def test_tiny_fit_checkpoint_loads_as_cmos(tmp_path: Path, batch: dict) -> None:
    main([
        "fit", "--config", str(REPO / "configs/cmos.yaml"), "--trainer", str(REPO / "configs/trainer/debug.yaml"),
        "--data", str(REPO / "configs/data/tiny.yaml"), "--root", str(tmp_path),
        "--data.num_train", "4", "--data.num_val", "2", "--data.embedded_scene_size", "64",
        "--data.patch_size", "32", "--data.val_size", "32", "--data.batch_size", "2", "--data.val_batch_size", "2",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--model.init_args.net.init_args.estimator_widths", "[8, 8, 16]",
        "--model.init_args.net.init_args.sr_channels", "8",
        "--model.init_args.net.init_args.sr_blocks", "1", "--model.init_args.net.init_args.sr_growth", "4",
        "--model.init_args.fit.ckpt_every_n_steps", "2",
    ])
    ckpt_path = tmp_path / "cmos/version_0/checkpoints/last.ckpt"
    assert ckpt_path.is_file() and (tmp_path / "cmos/version_0/checkpoints/best.ckpt").is_file()
    model = load_model(ckpt_path, "cmos")
    assert isinstance(model, CMOS) and list(model.config["estimator_widths"]) == [8, 8, 16]

    ckpt = read_checkpoint(ckpt_path, "cmos")
    assert ckpt["global_step"] == 2
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    module = CMOSModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    with torch.no_grad():
        expected = module.predict_step(batch, 0)
        got = model(batch["lr"]).clamp(0, 1)
    assert expected.shape == batch["hr"].shape
    assert torch.allclose(got, expected, atol=1e-6)
