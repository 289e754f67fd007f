"""SVKR (Algorithm 1), its evaluation stage and the front-end table, on tiny randomly initialised real networks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.frontend.ladder import (
    evaluate_invariant_ke,
    evaluate_ladder,
    format_markdown,
    ladder_figure,
    merge_seeds,
    response_figure,
    response_row,
    summarize,
)
from ssr_lightning.inference.depth import LearnedDepth, resize_depth
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.modules.svkr_module import FIGURE_NAME, SVKRModule
from ssr_lightning.networks import DKENet
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.networks.nbsr import KernelConditionedSR

S, H, W, K = 4, 12, 12, 21
CODE = 12


def _kernels(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random normalised Gaussian-ish kernels (n, k²) — enough to fit a PCA basis."""
    r = torch.arange(K, dtype=torch.float32) - K // 2
    sig = 0.6 + 4.0 * torch.rand(n, 2, generator=gen)
    g = torch.exp(-(r[None, :, None] ** 2) / (2 * sig[:, 0, None, None] ** 2)
                  - (r[None, None, :] ** 2) / (2 * sig[:, 1, None, None] ** 2))
    return (g / g.sum(dim=(1, 2), keepdim=True)).flatten(1)


def _make_svkr(iterations: int = 3, gamma: float = 0.9) -> SVKR:
    torch.manual_seed(0)
    basis = KernelBasis.fit(_kernels(64, torch.Generator().manual_seed(0)), CODE)
    de = LearnedDepth(DepthNet.tiny())
    ke = DKENet(channels=8, kernel_size=K, scale=S, use_depth=True)
    sr = KernelConditionedSR(code_channels=CODE, channels=16, num_blocks=2, growth=8, scale=S)
    sr.codec.set_basis(basis, torch.ones(CODE))
    return SVKR(de, ke, sr, iterations=iterations, gamma=gamma).eval()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, S * H, S * W, generator=gen)
    depth = torch.linspace(0, 1, S * W).view(1, 1, 1, -1).expand(2, 1, S * H, -1).contiguous()
    kernel = _kernels(2 * H * W, gen).view(2, H, W, K * K).permute(0, 3, 1, 2).contiguous()
    lr = torch.nn.functional.avg_pool2d(hr, S)
    return {"lr": lr, "hr": hr, "depth": depth, "depth_lr": depth[..., ::S, ::S], "kernel": kernel,
            "name": ["a", "b"]}


def test_iterates_count_and_shapes(batch: dict[str, torch.Tensor]) -> None:
    svkr = _make_svkr(iterations=3)
    res = svkr(batch["lr"])
    assert len(res.depths) == len(res.kernels) == len(res.images) == 4
    assert res.iterations == 3
    assert res.final_depth.shape == (2, 1, H, W)
    assert res.final_kernel.shape == (2, K * K, H, W)
    assert res.final_image.shape == (2, 3, S * H, S * W)
    assert torch.allclose(res.final_kernel.sum(1), torch.ones(2, H, W), atol=1e-5)  # EMA keeps kernels normalised
    assert not res.final_image.requires_grad  # inference under no_grad by default
    assert len(svkr(batch["lr"], iterations=0).images) == 1


def test_ema_update_is_exact(batch: dict[str, torch.Tensor]) -> None:
    gamma = 0.7
    svkr = _make_svkr(iterations=2, gamma=gamma)
    res = svkr(batch["lr"])
    lr = batch["lr"]
    with torch.no_grad():
        d0 = resize_depth(svkr.depth_estimator(lr), (H, W))
        assert torch.allclose(res.depths[0], d0, atol=1e-6)
        assert torch.allclose(res.kernels[0], svkr.kernel_estimator(lr, d0), atol=1e-6)
        for t in range(1, 3):
            d = resize_depth(svkr.depth_estimator(res.images[t - 1]), (H, W))  # depth from the latest SR
            assert torch.allclose(res.depths[t], d, atol=1e-6)
            expect = gamma * svkr.kernel_estimator(lr, res.depths[t]) + (1 - gamma) * res.kernels[t - 1]
            assert (res.kernels[t] - expect).abs().max() < 1e-6
            assert torch.allclose(res.images[t], svkr.super_resolve(lr, res.kernels[t]), atol=1e-6)


def test_deterministic_and_gamma_one(batch: dict[str, torch.Tensor]) -> None:
    svkr = _make_svkr(iterations=2, gamma=1.0)
    a, b = svkr(batch["lr"]), svkr(batch["lr"])
    for x, y in zip(a.kernels + a.images + a.depths, b.kernels + b.images + b.depths):
        assert torch.equal(x, y)
    with torch.no_grad():
        for t in range(1, 3):
            assert (a.kernels[t] - svkr.kernel_estimator(batch["lr"], a.depths[t])).abs().max() < 1e-6


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "dkenet" / "best.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        SVKR.from_config(SVKRConfig(dkenet_ckpt=str(missing), nbsr_ckpt=str(tmp_path / "nbsr.ckpt"), depth="gt"))
    assert "ssr fit --config configs/dkenet.yaml" in str(err.value)
    module = SVKRModule(svkr=SVKRConfig(dkenet_ckpt=str(missing), nbsr_ckpt=str(tmp_path / "n.ckpt")))
    with pytest.raises(FileNotFoundError, match="DKENet"):
        module.setup("test")
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        module.training_step({}, 0)


def _save_stage(module, path: Path) -> Path:
    """A checkpoint file as `ssr fit` writes it (state dict, hyper-parameters and the `ssr` block)."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_from_config_loads_the_stage_checkpoints(batch: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from ssr_lightning.modules import DepthModule, DKENetModule, NBSRModule

    ref = _make_svkr(iterations=2, gamma=0.8)
    ke = DKENetModule(DKENet(channels=8, kernel_size=K, scale=S, use_depth=True))
    ke.model.load_state_dict(ref.kernel_estimator.state_dict())
    sr = NBSRModule(KernelConditionedSR(channels=16, num_blocks=2, growth=8, code_channels=CODE, scale=S,
                                        kernel_size=K))
    sr.model.load_state_dict(ref.sr_model.state_dict())
    de = DepthModule(DepthNet(channels=16, blocks_per_level=1))
    de.model.load_state_dict(ref.depth_estimator.net.state_dict())
    paths = {name: _save_stage(m, tmp_path / f"{name}.ckpt") for name, m in (("ke", ke), ("sr", sr), ("de", de))}
    cfg = SVKRConfig(dkenet_ckpt=str(paths["ke"]), nbsr_ckpt=str(paths["sr"]), depth="learned",
                     depth_ckpt=str(paths["de"]), iterations=2, gamma=0.8)
    svkr = SVKR.from_config(cfg)
    assert isinstance(svkr.depth_estimator, LearnedDepth) and isinstance(svkr.sr_model, KernelConditionedSR)
    assert (svkr.iterations, svkr.gamma) == (2, 0.8) and not svkr.training
    a, b = svkr(batch["lr"]), ref(batch["lr"])
    for x, y in zip(a.kernels + a.images + a.depths, b.kernels + b.images + b.depths):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    # a present KE but a missing NBSR checkpoint: the error names the NBSR path
    missing = tmp_path / "no_nbsr" / "best.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        SVKR.from_config(SVKRConfig(dkenet_ckpt=str(paths["ke"]), nbsr_ckpt=str(missing), depth="gt"))
    assert "configs/nbsr.yaml" in str(err.value)
    # stage checkpoints given in the wrong slots are refused, naming the file
    with pytest.raises(ValueError, match=r"sr\.ckpt.*'nbsr'.*'dkenet'"):
        SVKR.from_config(SVKRConfig(dkenet_ckpt=str(paths["sr"]), nbsr_ckpt=str(paths["ke"]), depth="gt"))


def test_module_test_step_reports_every_iteration(batch: dict[str, torch.Tensor], tmp_path: Path) -> None:
    module = SVKRModule(svkr=SVKRConfig(iterations=2, gamma=0.9), scale=S, num_figure_samples=2)
    module.svkr = _make_svkr(iterations=2)
    module.eval()
    module.on_test_epoch_start()
    module.test_step(batch, 0)
    row = module._test_rows[0]
    for t in range(3):
        for key in ("absrel", "kernel_l1", "psnr_y", "ssim_y"):
            assert math.isfinite(row[f"t{t}/{key}"])
    assert "t3/psnr_y" not in row and row["name"] == "a"
    path = module.write_figure(tmp_path)
    assert path.name == FIGURE_NAME and path.stat().st_size > 0


def test_frontend_ladder_rows_statistics_and_figure(batch: dict[str, torch.Tensor], tmp_path: Path) -> None:
    svkr = _make_svkr(iterations=2)
    nodepth = DKENet(channels=8, kernel_size=K, scale=S, use_depth=False).eval()
    blind = svkr.sr_model  # any (lr, None) -> sr network stands in for the blind RRDB here
    kernel = batch["kernel"].clone()
    kernel[0] = kernel[0, :, :1, :1].expand_as(kernel[0])  # sample 0 is spatially invariant
    batch = {**batch, "kernel": kernel, "invariant": torch.tensor([True, False])}
    lad = evaluate_ladder([batch, batch], svkr, blind=blind, dkenet_nodepth=nodepth, scale=S, gammas=[1.0],
                          sweep=[1, 2])
    for row in ("bicubic", "blind RRDB", "NBSR, kernel zeroed", "NBSR + DKENet w/o depth",
                "NBSR + DKENet, depth from LR (K0)", "NBSR + SVKR T=1", "NBSR + SVKR T=2", "NBSR + DKENet, GT depth",
                "NBSR + GT kernel"):
        assert len(lad.rows[row]["psnr_y"]) == 4, row
    assert sum(r.startswith("sweep:") for r in lad.rows) == 2
    assert set(lad.premise) == {"from HR", "from NBSR + GT-kernel SR", "from bicubic LR", "from LR"}
    summary = summarize(lad)
    gap = summary["oracle_gap"]
    gt, zero = lad.rows["NBSR + GT kernel"]["psnr_y"], lad.rows["NBSR, kernel zeroed"]["psnr_y"]
    assert gap["mean"] == pytest.approx(sum(gt) / 4 - sum(zero) / 4) and gap["lo"] <= gap["mean"] <= gap["hi"]
    k0 = summary["rows"]["NBSR + DKENet, depth from LR (K0)"]
    assert "recovered_fraction" in k0 and k0["kernel_l1_invariant"]["n"] == 2
    assert summary["rows"]["oracle: per-image mean kernel"]["kernel_l1_invariant"]["mean"] == pytest.approx(0, abs=1e-5)
    md = format_markdown(summary)
    assert "Oracle gap" in md and "SVKR premise" in md and md.count("\n| ") == len(summary["rows"]) + 2
    png = ladder_figure(summary, tmp_path / "ladder.png")
    assert png.stat().st_size > 10_000
    inv = evaluate_invariant_ke([batch], svkr, dkenet_nodepth=nodepth)
    assert set(inv) == {"NBSR + DKENet w/o depth", "NBSR + DKENet, depth from LR (K0)", "NBSR + SVKR T=2",
                        "training mean kernel (reads nothing)", "oracle: per-image mean kernel"}
    assert inv["oracle: per-image mean kernel"][0] == pytest.approx(0, abs=1e-5)  # sample 0 is invariant
    lad.invariant_ke = inv
    inv_summary = summarize(lad)["invariant_ke"]
    assert inv_summary["NBSR + DKENet w/o depth"]["delta_vs_mean_kernel"]["n"] == 2
    assert "KE on spatially invariant samples" in format_markdown(summarize(lad))
    merged, seeds = merge_seeds([lad, lad])
    assert merged.invariant_ke == inv
    assert merged.rows["NBSR + GT kernel"]["psnr_y"] == gt and seeds["NBSR + GT kernel"]["psnr_y"][1] == 0.0


def test_frontend_response_rows_walk_from_the_ke_to_the_gt_kernel(batch: dict[str, torch.Tensor],
                                                                   tmp_path: Path) -> None:
    """--response: NBSR given α·GT + (1 − α)·the GT-depth KE's field; kernel L1 falls as (1 − α), a share each, no
    Δ test (the table's Holm family is the ladder's own), and a share-vs-L1 figure."""
    svkr = _make_svkr(iterations=1)
    plain = summarize(evaluate_ladder([batch], svkr, scale=S))
    lad = evaluate_ladder([batch], svkr, scale=S, response=[0.25, 0.75])
    ke = torch.tensor(lad.rows["NBSR + DKENet, GT depth"]["kernel_l1"])
    for a in (0.25, 0.75):
        row = lad.rows[response_row(a)]
        assert torch.tensor(row["kernel_l1"]) == pytest.approx((1 - a) * ke, rel=1e-4, abs=1e-6)
    summary = summarize(lad)
    r = summary["rows"][response_row(0.75)]
    assert "recovered_fraction" in r and "delta_vs_zeroed" not in r
    assert summary["statistics"]["correction_note"] == plain["statistics"]["correction_note"]
    assert response_figure(summary, tmp_path / "response.png").stat().st_size > 10_000
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"response α {bad:g}: must lie strictly between 0"):
            response_row(bad)


def test_frontend_refuses_a_response_outside_0_1_before_any_work(tmp_path: Path) -> None:
    import ssr_lightning.cli.frontend as cli

    with pytest.raises(ValueError, match="response α 1.5"):
        cli.run(["--response", "0.5,1.5", "--out", str(tmp_path / "ladder")])
    assert not (tmp_path / "ladder").exists()


def test_frontend_train_schedules_seeds_and_jobs(tmp_path: Path, monkeypatch) -> None:
    """--train: every stage per seed, single-seed stages once, --jobs sets threads, finished stages skipped."""
    import ssr_lightning.cli.frontend as cli

    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli.CLIRunner, "execute", lambda self, cmd, log, env: calls.append((cmd, env)))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = cli.build_parser().parse_args(["--train", "--seeds", "[0, 1]", "--stages", "[dkenet, blind]",
                                          "--jobs", "2", "--out", str(tmp_path)])
    ckpts = cli._train(args, tmp_path)
    trained = sorted((c[c.index("--seed_everything") + 1], c[c.index("--name") + 1]) for c, _ in calls)
    assert trained == [("0", "blind"), ("0", "dkenet"), ("1", "dkenet")]
    assert all(env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) for _, env in calls)
    assert (tmp_path / "runs/seed_1/dkenet/DONE").is_file()
    assert ckpts == {0: {}, 1: {}}  # the fake runner wrote no checkpoints
    calls.clear()
    cli._train(args, tmp_path)
    assert calls == []  # DONE stages are not trained again
    with pytest.raises(SystemExit, match="unknown stage 'dkenett'"):
        cli._train(cli.build_parser().parse_args(["--stages", "[dkenett]"]), tmp_path)


def test_frontend_trains_the_thin_lens_ke_and_ke_run_picks_it(tmp_path: Path, monkeypatch) -> None:
    """dkenet_thinlens trains DKENet with the thin-lens head on absolute depth; --ke-run names a trained run."""
    import ssr_lightning.cli.frontend as cli

    calls: list[list[str]] = []
    monkeypatch.setattr(cli.CLIRunner, "execute", lambda self, cmd, log, env: calls.append(cmd))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = cli.build_parser().parse_args(["--train", "--stages", "[dkenet_thinlens]", "--ke-run", "dkenet_thinlens",
                                          "--out", str(tmp_path)])
    cli._train(args, tmp_path)
    (cmd,) = calls
    assert cmd[cmd.index("--model.init_args.net.init_args.thin_lens") + 1] == "true"
    assert cmd[cmd.index("--model.init_args.net.init_args.normalize_depth") + 1] == "false"
    assert cmd[cmd.index("--name") + 1] == "dkenet_thinlens"
    with pytest.raises(ValueError, match="--ke-run dkenet_thinlens: no trained run"):
        cli._evaluate(args, {"depth": "x.ckpt"}, [], 4)


def test_frontend_long_budget_runs_train_longer_and_nodepth_run_picks_one(tmp_path: Path, monkeypatch) -> None:
    """The _x4 runs are their KE's flags plus 4x the steps; --nodepth-run names the 'w/o depth' row's trained run."""
    import ssr_lightning.cli.frontend as cli

    calls: list[list[str]] = []
    monkeypatch.setattr(cli.CLIRunner, "execute", lambda self, cmd, log, env: calls.append(cmd))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = cli.build_parser().parse_args(["--train", "--stages", "[dkenet_lens_x4, dkenet_nodepth_x4]",
                                          "--ke-run", "dkenet_lens_x4", "--nodepth-run", "dkenet_nodepth_x4",
                                          "--out", str(tmp_path)])
    cli._train(args, tmp_path)
    lens, nodepth = calls
    assert lens[lens.index("--trainer.max_steps") + 1] == nodepth[nodepth.index("--trainer.max_steps") + 1] == "6400"
    assert lens[lens.index("--model.init_args.lens_loss") + 1] == "0.1"
    assert nodepth[nodepth.index("--model.init_args.net.init_args.use_depth") + 1] == "false"
    with pytest.raises(ValueError, match="--nodepth-run dkenet_nodepth_x4: no trained run"):
        cli._evaluate(args, {"depth": "x.ckpt", "dkenet_lens_x4": "k.ckpt"}, [], 4)


def test_frontend_refuses_to_replace_a_ladder_without_overwrite(tmp_path: Path) -> None:
    """A finished ladder in --out is a record: another run there (a --split val run, say) needs --overwrite."""
    import ssr_lightning.cli.frontend as cli

    (tmp_path / "frontend.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a ladder .* --overwrite"):
        cli.run(["--split", "val", "--out", str(tmp_path)])
    assert (tmp_path / "frontend.json").read_text() == "{}", "nothing replaced"


def test_keeping_only_the_final_iterate_gives_the_same_result(batch: dict[str, torch.Tensor]) -> None:
    svkr = _make_svkr(iterations=3, gamma=0.8)
    full, last = svkr(batch["lr"]), svkr(batch["lr"], keep_all=False)
    assert len(last.kernels) == len(last.images) == len(last.depths) == 1 and last.iterations == full.iterations == 3
    for a, b in zip(full.final, last.final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
