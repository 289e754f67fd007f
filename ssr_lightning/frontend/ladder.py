"""The blind-SR front-end ladder: what SVKR's stages give before the diffusion model (docs/DESIGN.md §5).

Every row is scored per test image, so each number carries a 95 % bootstrap CI and every comparison is a paired
per-image difference:

==========================================  ==============================================================
bicubic                                      bicubic upsampling of LR
blind RRDB                                   an NBSR of the same size and budget trained without any code
NBSR, kernel zeroed                          the kernel-conditioned NBSR given the zero code (mean kernel)
NBSR + DKENet w/o depth                      KE without its depth branch (MANet-like), one pass
NBSR + DKENet, depth from LR (K0)            KE with depth estimated from the LR image (= SVKR's t = 0)
NBSR + SVKR T=t                              Algorithm 1 after t refinements (t = 1 .. T)
NBSR + DKENet, GT depth                      KE with the ground-truth depth (depth oracle)
CMOS (σ map + semantics)                     the CMOS peer: blur map + semantic map → σ-conditioned NBSR
NBSR + GT kernel                             the kernel oracle: the front end's upper bound
==========================================  ==============================================================

Summaries: the oracle gap PSNR(GT kernel) − PSNR(zeroed), each KE row's recovered fraction
(PSNR_row − PSNR_zeroed) / gap (bootstrapped over images as a ratio of means), SVKR T vs the single pass, KE's
kernel L1 on spatially invariant samples next to the per-image mean-kernel oracle, and the SVKR premise: depth
AbsRel from HR, from NBSR + GT-kernel SR, from bicubic-upsampled LR and from LR itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ssr_lightning.files import YAMLFileError, load_yaml
from ssr_lightning.inference.depth import resize_depth
from ssr_lightning.inference.svkr import SVKR
from ssr_lightning.metrics import aligned_depth_metrics, kernel_l1, psnr_y, ssim_y
from ssr_lightning.metrics.stats import (
    Estimate,
    bootstrap_ci,
    paired_difference,
    seed_summary,
)

__all__ = ["Ladder", "evaluate_invariant_ke", "evaluate_ladder", "format_markdown", "ladder_figure",
           "make_test_batches", "merge_seeds", "summarize"]

_DATA_CONFIG = Path("configs/data/embedded.yaml")
BICUBIC, BLIND, ZEROED, NODEPTH = "bicubic", "blind RRDB", "NBSR, kernel zeroed", "NBSR + DKENet w/o depth"
K0, GT_DEPTH, CMOS, GT_KERNEL = ("NBSR + DKENet, depth from LR (K0)", "NBSR + DKENet, GT depth",
                                "CMOS (σ map + semantics)", "NBSR + GT kernel")
HEADLINE = (ZEROED, K0, "SVKR_T", GT_KERNEL)  # rows repeated over training seeds ("SVKR_T": the main SVKR row)


def svkr_row(t: int) -> str:
    return f"NBSR + SVKR T={t}"


@dataclass
class Ladder:
    """Per-image values: ``rows[row][metric]`` lists, all in the order of ``names``."""

    names: list[str] = field(default_factory=list)
    invariant: list[bool] = field(default_factory=list)
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    premise: dict[str, list[float]] = field(default_factory=dict)
    invariant_ke: dict[str, list[float]] = field(default_factory=dict)  # kernel L1 on all-invariant samples
    iterations: int = 3
    gamma: float = 0.9

    def add(self, row: str, values: dict[str, Tensor]) -> None:
        target = self.rows.setdefault(row, {})
        for k, v in values.items():
            target.setdefault(k, []).extend(float(x) for x in v.detach().double().cpu().reshape(-1))

    def order(self) -> list[str]:
        main = [BICUBIC, BLIND, ZEROED, NODEPTH, K0, *(svkr_row(t) for t in range(1, self.iterations + 1)), GT_DEPTH,
                CMOS, GT_KERNEL]
        return [r for r in main if r in self.rows] + [r for r in self.rows if r not in main]


def _image(sr: Tensor, hr: Tensor, scale: int) -> dict[str, Tensor]:
    sr = sr.clamp(0, 1)
    return {"psnr_y": psnr_y(sr, hr, crop_border=scale), "ssim_y": ssim_y(sr, hr, crop_border=scale)}


def _absrel(depth: Tensor, gt_lr: Tensor) -> Tensor:
    return aligned_depth_metrics(depth, gt_lr.to(depth))["absrel"]


@torch.no_grad()
def evaluate_ladder(
    batches: Iterable[dict[str, Any]], svkr: SVKR, *, blind: nn.Module | None = None,
    dkenet_nodepth: nn.Module | None = None, cmos: nn.Module | None = None, scale: int = 4,
    gammas: Sequence[float] = (), sweep: Sequence[int] = (), progress: bool = False,
) -> Ladder:
    """Score every row on degraded ``batches`` (dicts with lr, hr, kernel, depth, depth_lr, invariant, name).

    ``svkr`` holds DE, KE (with depth) and NBSR; its T and γ make the SVKR rows (every t ≤ T). ``gammas`` ×
    ``sweep`` (T values) add "sweep" rows.
    """
    lad = Ladder(iterations=svkr.iterations, gamma=svkr.gamma)
    t_max = max([svkr.iterations, *sweep])
    for batch in tqdm(list(batches), desc="front-end ladder", disable=not progress, leave=False):
        lr, hr, gt_kernel = batch["lr"], batch["hr"], batch["kernel"]
        b = lr.shape[0]
        lad.names += [str(n) for n in batch.get("name", [f"img{len(lad.names) + i}" for i in range(b)])]
        lad.invariant += [bool(x) for x in torch.as_tensor(batch.get("invariant", torch.zeros(b))).reshape(-1)]
        up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        lad.add(BICUBIC, _image(up, hr, scale))
        if blind is not None:
            lad.add(BLIND, _image(blind(lr, None), hr, scale))
        lad.add(ZEROED, _image(svkr.super_resolve(lr, None), hr, scale))
        if dkenet_nodepth is not None:
            k = dkenet_nodepth(lr, None).float()
            lad.add(NODEPTH, {**_image(svkr.super_resolve(lr, k), hr, scale), "kernel_l1": kernel_l1(k, gt_kernel)})
        gt_depth = batch.get("depth")
        # depth metrics only where the data has real depth (photos carry a synthetic plane that drives the
        # defocus, not the scene's depth: has_depth False)
        scored_depth = batch.get("depth_lr") is not None and bool(torch.as_tensor(batch.get("has_depth", True)).all())
        res = svkr(lr, gt_depth=gt_depth, iterations=t_max)
        for t in range(svkr.iterations + 1):
            vals = {**_image(res.images[t], hr, scale), "kernel_l1": kernel_l1(res.kernels[t], gt_kernel)}
            if scored_depth:
                vals["absrel"] = _absrel(res.depths[t], batch["depth_lr"])
            lad.add(K0 if t == 0 else svkr_row(t), vals)
        for g in gammas:
            run = res if g == svkr.gamma else svkr(lr, gt_depth=gt_depth, iterations=t_max, gamma=g)
            for t in sweep:
                lad.add(f"sweep: SVKR γ={g:g}, T={t}", {**_image(run.images[t], hr, scale),
                                                       "kernel_l1": kernel_l1(run.kernels[t], gt_kernel)})
        if batch.get("depth_lr") is not None:
            k = svkr.estimate_kernel(lr, batch["depth_lr"])
            lad.add(GT_DEPTH, {**_image(svkr.super_resolve(lr, k), hr, scale), "kernel_l1": kernel_l1(k, gt_kernel)})
        if cmos is not None:
            lad.add(CMOS, _image(cmos(lr), hr, scale))
        sr_gt = svkr.super_resolve(lr, gt_kernel)
        lad.add(GT_KERNEL, {**_image(sr_gt, hr, scale), "kernel_l1": torch.zeros(b)})
        # mean-kernel oracles: each image's own mean GT kernel (exact for invariant samples) and the batch's
        per_image = gt_kernel.mean(dim=(2, 3), keepdim=True).expand_as(gt_kernel)
        lad.add(PER_IMAGE, {"kernel_l1": kernel_l1(per_image, gt_kernel)})
        if scored_depth:
            size = lr.shape[-2:]
            premise = {"from HR": hr, "from NBSR + GT-kernel SR": sr_gt, "from bicubic LR": up, "from LR": lr}
            for name, image in premise.items():
                depth = resize_depth(svkr.depth_estimator(image.clamp(0, 1)), size).float()
                lad.premise.setdefault(name, []).extend(_absrel(depth, batch["depth_lr"]).double().tolist())
    return lad


MEAN_KERNEL, PER_IMAGE = "training mean kernel (reads nothing)", "oracle: per-image mean kernel"


@torch.no_grad()
def evaluate_invariant_ke(
    batches: Iterable[dict[str, Any]], svkr: SVKR, *, dkenet_nodepth: nn.Module | None = None,
) -> dict[str, list[float]]:
    """Kernel L1 per image on spatially invariant samples (where depth says nothing about the blur).

    Rows: KE without depth, KE with depth from LR (SVKR's K0), KE after SVKR's T refinements, the training
    distribution's mean kernel (the NBSR codec's zero code: a KE that reads nothing from the pixels) and each
    image's own mean GT kernel (exact here, L1 0). KE's distance from the mean-kernel row is what it reads
    from the pixels.
    """
    rows: dict[str, list[float]] = {}

    def add(name: str, values: Tensor) -> None:
        rows.setdefault(name, []).extend(values.double().cpu().tolist())

    codec = getattr(svkr.sr_model, "codec", None)
    for batch in batches:
        lr, gt = batch["lr"], batch["kernel"]
        if dkenet_nodepth is not None:
            add(NODEPTH, kernel_l1(dkenet_nodepth(lr, None).float(), gt))
        res = svkr(lr, gt_depth=batch.get("depth"))
        add(K0, kernel_l1(res.kernels[0], gt))
        add(svkr_row(svkr.iterations), kernel_l1(res.final_kernel, gt))
        if codec is not None:
            zero = torch.zeros(lr.shape[0], codec.n_components, *lr.shape[-2:], device=lr.device)
            add(MEAN_KERNEL, kernel_l1(codec.decode(zero).float(), gt))
        add(PER_IMAGE, kernel_l1(gt.mean(dim=(2, 3), keepdim=True).expand_as(gt), gt))
    return rows


def _fraction(row: Sequence[float], zero: Sequence[float], gt: Sequence[float], n_boot: int = 2000,
              seed: int = 0) -> Estimate:
    """(mean(row) − mean(zero)) / (mean(gt) − mean(zero)) with a bootstrap CI over images."""
    r, z, g = (np.asarray(v, dtype=np.float64) for v in (row, zero, gt))
    n = r.size
    ratio = (r.mean() - z.mean()) / (g.mean() - z.mean()) if g.mean() != z.mean() else math.nan
    if n < 2:
        return Estimate(float(ratio), float(ratio), float(ratio), n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    num, den = (r[idx] - z[idx]).mean(1), (g[idx] - z[idx]).mean(1)
    boots = np.where(den != 0, num / np.where(den == 0, 1, den), np.nan)
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return Estimate(float(ratio), float(lo), float(hi), n)


def summarize(lad: Ladder, seeds: dict[str, dict[str, tuple[float, float, int]]] | None = None) -> dict[str, Any]:
    """Per-row estimates (mean + CI of every metric), paired Δ vs the zeroed code, the oracle gap, recovered
    fractions, SVKR vs the single pass, invariant-sample kernel errors and the depth premise."""
    rows: dict[str, Any] = {}
    zero = lad.rows.get(ZEROED, {}).get("psnr_y")
    gt = lad.rows.get(GT_KERNEL, {}).get("psnr_y")
    inv = np.asarray(lad.invariant, dtype=bool)
    for name in lad.order():
        vals = lad.rows[name]
        entry: dict[str, Any] = {m: bootstrap_ci(v).as_dict() for m, v in vals.items()}
        if "psnr_y" in vals and zero is not None and name != ZEROED:
            entry["delta_vs_zeroed"] = paired_difference(vals["psnr_y"], zero).as_dict()
            if gt is not None and name not in (GT_KERNEL, BICUBIC):
                entry["recovered_fraction"] = _fraction(vals["psnr_y"], zero, gt).as_dict()
        if "kernel_l1" in vals and inv.any():
            kl = np.asarray(vals["kernel_l1"])
            entry["kernel_l1_invariant"] = bootstrap_ci(kl[inv]).as_dict()
            entry["kernel_l1_variant"] = bootstrap_ci(kl[~inv]).as_dict()
        if seeds and name in seeds:
            entry["seeds"] = {m: {"mean": s[0], "std": s[1], "n": s[2]} for m, s in seeds[name].items()}
        rows[name] = entry
    out: dict[str, Any] = {"rows": rows, "num_images": len(lad.names), "num_invariant": int(inv.sum()),
                           "iterations": lad.iterations, "gamma": lad.gamma}
    if zero is not None and gt is not None:
        out["oracle_gap"] = paired_difference(gt, zero).as_dict()
    main, k0 = lad.rows.get(svkr_row(lad.iterations)), lad.rows.get(K0)
    if main is not None and k0 is not None:
        out["svkr_minus_single_pass"] = paired_difference(main["psnr_y"], k0["psnr_y"]).as_dict()
    out["depth_premise_absrel"] = {k: bootstrap_ci(v).as_dict() for k, v in lad.premise.items()}
    if lad.invariant_ke:
        base = lad.invariant_ke.get(MEAN_KERNEL)
        out["invariant_ke"] = {
            name: {"kernel_l1": bootstrap_ci(v).as_dict(),
                   **({"delta_vs_mean_kernel": paired_difference(v, base).as_dict()}
                      if base is not None and name != MEAN_KERNEL else {})}
            for name, v in lad.invariant_ke.items()
        }
    return out


def _fmt(e: dict[str, Any] | None, digits: int, signed: bool = False) -> str:
    if e is None or e.get("n", 0) == 0 or not math.isfinite(e["mean"]):
        return "–"
    est = Estimate(e["mean"], e["lo"], e["hi"], e["n"])
    text = est.format(digits, signed)
    return text + (" *" if signed and est.significant else "")


def format_markdown(summary: dict[str, Any]) -> str:
    """The ladder as Markdown: means with [95 % CI], Δ vs the zeroed code (* = CI excludes 0), seeds mean ± std."""
    n, n_inv = summary["num_images"], summary["num_invariant"]
    lines = [f"Front-end ladder: {n} test images ({n_inv} spatially invariant); mean [95 % bootstrap CI]; "
             "Δ = paired per-image difference vs the zeroed code, * where its CI excludes 0.", "",
             "| method | PSNR-Y (dB) | Δ PSNR-Y vs zeroed | share of oracle gap | SSIM-Y | kernel L1 | "
             "kernel L1 (invariant) | depth AbsRel | seeds: PSNR-Y mean ± std |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in summary["rows"].items():
        seeds = r.get("seeds", {}).get("psnr_y")
        seed_txt = f"{seeds['mean']:.2f} ± {seeds['std']:.2f} (n={seeds['n']})" if seeds else "–"
        frac = r.get("recovered_fraction")
        frac_txt = "–" if frac is None else _fmt({**frac, "mean": 100 * frac["mean"], "lo": 100 * frac["lo"],
                                                    "hi": 100 * frac["hi"]}, 0) + " %"
        lines.append(f"| {name} | {_fmt(r.get('psnr_y'), 2)} | {_fmt(r.get('delta_vs_zeroed'), 2, True)} | "
                     f"{frac_txt} | {_fmt(r.get('ssim_y'), 4)} | {_fmt(r.get('kernel_l1'), 3)} | "
                     f"{_fmt(r.get('kernel_l1_invariant'), 3)} | {_fmt(r.get('absrel'), 3)} | {seed_txt} |")
    lines.append("")
    if "oracle_gap" in summary:
        lines.append(f"Oracle gap PSNR(GT kernel) − PSNR(zeroed): {_fmt(summary['oracle_gap'], 2, True)} dB.")
    if "svkr_minus_single_pass" in summary:
        lines.append(f"SVKR T={summary['iterations']} − single pass (K0): "
                     f"{_fmt(summary['svkr_minus_single_pass'], 3, True)} dB.")
    if summary.get("depth_premise_absrel"):
        premise = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in summary["depth_premise_absrel"].items())
        lines.append(f"SVKR premise, depth AbsRel of DE applied to: {premise}.")
    inv = summary.get("invariant_ke")
    if inv:
        n_inv = next(iter(inv.values()))["kernel_l1"]["n"]
        lines += ["", f"KE on spatially invariant samples ({n_inv} images, the test split with every kernel invariant): "
                  "kernel L1; Δ = paired difference vs the training mean kernel (negative = KE reads blur from the "
                  "pixels), * where its CI excludes 0.", "",
                  "| kernel | kernel L1 | Δ vs training mean kernel |", "| --- | ---: | ---: |"]
        for name, r in inv.items():
            lines.append(f"| {name} | {_fmt(r['kernel_l1'], 3)} | {_fmt(r.get('delta_vs_mean_kernel'), 3, True)} |")
    return "\n".join(lines) + "\n"


def ladder_figure(summary: dict[str, Any], path: Path) -> Path:
    """Two panels: PSNR-Y of every row with its 95 % CI (honest axis, reference lines at bicubic, the zeroed code
    and the GT kernel), and the paired per-image Δ vs the zeroed code with its CI, centred on 0 (filled where the
    CI excludes 0): the comparison the unpaired CIs of the left panel cannot show."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ssr_lightning.files import atomic_write

    rows = [(k, v) for k, v in summary["rows"].items() if "psnr_y" in v]
    fig = Figure(figsize=(11, 0.42 * len(rows) + 1.8))
    FigureCanvasAgg(fig)
    ax, ax_d = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.2, 1]})
    ys = np.arange(len(rows))[::-1]

    def bars(axis: Any, key: str) -> None:
        for y, (name, r) in zip(ys, rows, strict=True):
            e = r.get(key)
            if e is None or (key != "psnr_y" and name == BICUBIC):  # bicubic's −2 dB would flatten the Δ axis
                continue
            sig = key != "psnr_y" and (e["lo"] > 0 or e["hi"] < 0)
            axis.errorbar(e["mean"], y, xerr=[[e["mean"] - e["lo"]], [e["hi"] - e["mean"]]], fmt="o",
                          color="#1f4e79", mfc="#1f4e79" if key == "psnr_y" or sig else "white", capsize=3)

    bars(ax, "psnr_y")
    for name, colour in ((BICUBIC, "#c62828"), (ZEROED, "#999999"), (GT_KERNEL, "#2e7d32")):
        if name in summary["rows"]:
            ax.axvline(summary["rows"][name]["psnr_y"]["mean"], ls="--", lw=1, color=colour, label=name)
    ax.set_yticks(ys)
    ax.set_yticklabels([k for k, _ in rows], fontsize=8)
    ax.set_xlabel("PSNR-Y (dB): mean, 95 % bootstrap CI")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / max(len(rows), 1)), ncol=3)
    bars(ax_d, "delta_vs_zeroed")
    ax_d.axvline(0.0, color="#999999", lw=1)
    if "oracle_gap" in summary:
        ax_d.axvline(summary["oracle_gap"]["mean"], ls="--", lw=1, color="#2e7d32", label="oracle gap")
        ax_d.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / max(len(rows), 1)))
    ax_d.set_xlabel("Δ PSNR-Y vs zeroed code (dB), paired 95 % CI\n(filled: CI excludes 0; bicubic left out)")
    fig.suptitle(f"Front-end ladder ({summary['num_images']} images)", fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", metadata={"Software": None}))


def merge_seeds(ladders: Sequence[Ladder]) -> tuple[Ladder, dict[str, dict[str, tuple[float, float, int]]]]:
    """One ladder of per-image values averaged over seeds (rows every seed has), and each row's per-seed means
    summarised as (mean, std, n) per metric."""
    base = ladders[0]
    merged = Ladder(list(base.names), list(base.invariant), iterations=base.iterations, gamma=base.gamma)
    seeds: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name in base.order():
        if not all(name in lad.rows for lad in ladders):
            continue
        merged.rows[name] = {}
        seeds[name] = {}
        for metric in base.rows[name]:
            per_seed = np.array([lad.rows[name][metric] for lad in ladders], dtype=np.float64)
            merged.rows[name][metric] = per_seed.mean(0).tolist()
            seeds[name][metric] = seed_summary(per_seed.mean(1).tolist())
    for key in base.premise:
        merged.premise[key] = np.mean([lad.premise[key] for lad in ladders], axis=0).tolist()
    for key in base.invariant_ke:
        if all(key in lad.invariant_ke for lad in ladders):
            merged.invariant_ke[key] = np.mean([lad.invariant_ke[key] for lad in ladders], axis=0).tolist()
    return merged, seeds


def _data_config(path: Path) -> dict[str, Any]:
    for cand in (path, Path(__file__).resolve().parents[2] / path):
        if cand.is_file():
            doc = load_yaml(cand) or {}  # bounded; YAMLFileError (a ValueError) names the file
            if not isinstance(doc, dict):
                raise YAMLFileError(f"{cand}: a data config must hold a mapping of SRDataModule options")
            return dict(doc)
    raise FileNotFoundError(f"data config not found: {path} (run from the repository root or pass --data-config)")


def make_test_batches(data_config: Path = _DATA_CONFIG, test_size: int | None = None, batch_size: int = 8,
                      limit: int | None = None, noise: bool = True, jpeg: bool = True,
                      overrides: dict[str, Any] | None = None,
                      invariant: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Degraded test batches of the data config's SRDataModule (test crop ``test_size``, default its val_size).

    ``noise=False``/``jpeg=False`` switch those degradation steps off (same kernels: the seeds are unchanged);
    ``overrides`` replace data options (e.g. ``{"dataset": "photos"}``); ``invariant`` makes every sample's
    kernel spatially invariant (``kernel.invariant_prob = 1``).
    """
    from ssr_lightning.data import SRDataModule
    from ssr_lightning.degradation.degrader import DegradationConfig
    from ssr_lightning.degradation.kernels import KernelConfig

    cfg = {**_data_config(data_config), **(overrides or {})}
    cfg["test_size"] = test_size if test_size is not None else (cfg.get("test_size") or cfg.get("val_size"))
    cfg["test_batch_size"] = batch_size
    deg = dict(cfg.get("degradation") or {})
    if isinstance(deg.get("kernel"), dict) or invariant:
        deg["kernel"] = KernelConfig(**{**dict(deg.get("kernel") or {}), **({"invariant_prob": 1.0} if invariant
                                                                            else {})})
    cfg["degradation"] = dataclasses.replace(DegradationConfig(**deg), noise=noise and deg.get("noise", True),
                                             jpeg=jpeg and deg.get("jpeg", True))
    dm = SRDataModule(**cfg)
    dm.setup("test")
    batches = []
    for i, batch in enumerate(dm.test_dataloader()):
        if limit is not None and i >= limit:
            break
        batches.append(dm.degrade(batch))
    return batches, dm.scale
