"""The blind-SR front-end table (what SVKR's stages give before the diffusion model); the ``ssr-frontend`` command.

On the embedded test split (``configs/data/embedded.yaml``, test scenes centre-cropped to ``val_size``) it reports
PSNR/SSIM-Y (``scale`` px cropped) and, where a kernel field is estimated, its kernel L1 to the GT field, for:

====================================  ============================================================
bicubic                                bicubic upsampling of LR
NBSR, kernel zeroed                    NBSR with the zero code (the PCA mean kernel): no kernel knowledge
NBSR + DKENet w/o depth                KE without the depth branch (MANet-like), one pass
NBSR + DKENet w/ depth (K0)            KE with depth estimated from LR, one pass (= SVKR's t = 0)
NBSR + SVKR (T, γ)                     Algorithm 1
NBSR + GT kernel                       the upper bound of the front end
====================================  ============================================================

plus the SVKR → upper-bound gap in dB and, with ``--gammas``/``--iterations``, one row per (γ, T) to show when
the refinement helps. A diagnostic row "DKENet w/ GT depth (oracle)" separates depth quality from the rest.

    ssr-frontend --dkenet runs/dkenet/version_0/checkpoints/best.ckpt \
                 --dkenet-nodepth runs/dkenet_nodepth/version_0/checkpoints/best.ckpt \
                 --nbsr runs/nbsr/version_0/checkpoints/best.ckpt --depth-ckpt runs/depth/version_0/checkpoints/best.ckpt \
                 --gammas 0.5,0.9,1.0 --iterations 1,3,5 --out results/frontend
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from ssr_lightning.inference.depth import normalize_depth_map
from ssr_lightning.inference.svkr import SVKR, SVKRResult
from ssr_lightning.metrics import aligned_depth_metrics, kernel_l1, psnr_y, ssim_y

__all__ = ["FrontendRow", "evaluate_frontend", "format_markdown", "make_test_batches", "svkr_gap"]

_DATA_CONFIG = Path("configs/data/embedded.yaml")


@dataclass
class FrontendRow:
    """One table row: means over the test samples (``kernel_l1``/``absrel`` None where not applicable)."""

    method: str
    psnr_y: float
    ssim_y: float
    kernel_l1: float | None = None
    absrel: float | None = None
    num_samples: int = 0


class _Acc:
    """Running per-sample sums for one row."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.double().sum())
        self.n += next(iter(values.values())).shape[0]

    def row(self, method: str) -> FrontendRow:
        m = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        return FrontendRow(method, m["psnr_y"], m["ssim_y"], m.get("kernel_l1"), m.get("absrel"), self.n)


def _image_metrics(sr: Tensor, hr: Tensor, scale: int) -> dict[str, Tensor]:
    return {"psnr_y": psnr_y(sr, hr, crop_border=scale), "ssim_y": ssim_y(sr, hr, crop_border=scale)}


def _iterate_scores(res: SVKRResult, t: int, batch: dict[str, Any], scale: int) -> dict[str, Tensor]:
    """Image metrics of I^t, kernel L1 of K^t and (with GT depth) AbsRel of D^t."""
    out = {**_image_metrics(res.images[t], batch["hr"], scale), "kernel_l1": kernel_l1(res.kernels[t], batch["kernel"])}
    if batch.get("depth_lr") is not None:
        out["absrel"] = aligned_depth_metrics(res.depths[t], batch["depth_lr"])["absrel"]
    return out


@torch.no_grad()
def evaluate_frontend(
    batches: Iterable[dict[str, Any]],
    svkr: SVKR,
    dkenet_nodepth: nn.Module | None = None,
    scale: int = 4,
    gammas: Iterable[float] = (),
    iterations: Iterable[int] = (),
    oracle_depth: bool = True,
    progress: bool = False,
) -> list[FrontendRow]:
    """Evaluate every front-end row over degraded ``batches`` (dicts with lr, hr, kernel, depth, depth_lr).

    ``svkr`` holds KE (with depth), DE and NBSR (also used for the zeroed-kernel and GT-kernel rows); its T and γ
    make the main row. One SVKR run per γ at the largest T gives every smaller T too (iterates are prefixes).
    """
    gammas, iterations = [float(g) for g in gammas], sorted({int(t) for t in iterations})
    t_main, g_main = svkr.iterations, svkr.gamma
    accs: dict[str, _Acc] = {}

    def acc(name: str) -> _Acc:
        return accs.setdefault(name, _Acc())

    main_name = f"NBSR + SVKR (T={t_main}, γ={g_main:g})"
    sweep = [(g, t) for g in gammas for t in iterations]
    for batch in tqdm(batches, desc="front-end", disable=not progress, leave=False):
        lr, hr, gt_kernel = batch["lr"], batch["hr"], batch["kernel"]
        up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        acc("bicubic").add(_image_metrics(up, hr, scale))
        acc("NBSR, kernel zeroed").add(_image_metrics(svkr.super_resolve(lr, None), hr, scale))
        if dkenet_nodepth is not None:
            k = dkenet_nodepth(lr, None).float()
            acc("NBSR + DKENet w/o depth").add(
                {**_image_metrics(svkr.super_resolve(lr, k), hr, scale), "kernel_l1": kernel_l1(k, gt_kernel)})
        if oracle_depth and batch.get("depth_lr") is not None:
            # GT depth as is, and GT depth normalised per image as DE outputs are: separates depth *quality*
            # from the loss of absolute depth that any relative-depth estimator has.
            for name, d in (("NBSR + DKENet w/ GT depth (oracle)", batch["depth_lr"]),
                            ("NBSR + DKENet w/ GT depth, per-image normalised", normalize_depth_map(batch["depth_lr"]))):
                k = svkr.estimate_kernel(lr, d)
                acc(name).add({**_image_metrics(svkr.super_resolve(lr, k), hr, scale), "kernel_l1": kernel_l1(k, gt_kernel)})
        runs = {g_main: svkr(lr, gt_depth=batch.get("depth"), iterations=max([t_main, *iterations]), gamma=g_main)}
        for g in gammas:
            if g not in runs:
                runs[g] = svkr(lr, gt_depth=batch.get("depth"), iterations=max(iterations, default=0), gamma=g)
        acc("NBSR + DKENet w/ depth (K0, no SVKR)").add(_iterate_scores(runs[g_main], 0, batch, scale))
        acc(main_name).add(_iterate_scores(runs[g_main], t_main, batch, scale))
        for g, t in sweep:
            acc(f"sweep: SVKR γ={g:g}, T={t}").add(_iterate_scores(runs[g], t, batch, scale))
        acc("NBSR + GT kernel (upper bound)").add(
            {**_image_metrics(svkr.super_resolve(lr, gt_kernel), hr, scale), "kernel_l1": torch.zeros(lr.shape[0])})
    order = ["bicubic", "NBSR, kernel zeroed", "NBSR + DKENet w/o depth", "NBSR + DKENet w/ depth (K0, no SVKR)",
             main_name, "NBSR + GT kernel (upper bound)", "NBSR + DKENet w/ GT depth (oracle)",
             "NBSR + DKENet w/ GT depth, per-image normalised"]
    order += [k for k in accs if k.startswith("sweep:")]
    return [accs[name].row(name) for name in order if name in accs]


def svkr_gap(rows: list[FrontendRow]) -> dict[str, float]:
    """PSNR/SSIM of the main SVKR row minus the GT-kernel upper bound (negative = below the bound)."""
    main = next(r for r in rows if r.method.startswith("NBSR + SVKR"))
    bound = next(r for r in rows if r.method.startswith("NBSR + GT kernel"))
    return {"psnr_y_db": main.psnr_y - bound.psnr_y, "ssim_y": main.ssim_y - bound.ssim_y}


def format_markdown(rows: list[FrontendRow], gap: dict[str, float] | None = None) -> str:
    """The table as Markdown (PSNR-Y dB, SSIM-Y, kernel L1, depth AbsRel of the final iterate)."""
    def fmt(x: float | None, d: int) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    lines = ["| method | PSNR-Y (dB) | SSIM-Y | kernel L1 | depth AbsRel | n |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.method} | {fmt(r.psnr_y, 2)} | {fmt(r.ssim_y, 4)} | {fmt(r.kernel_l1, 4)} | "
              f"{fmt(r.absrel, 4)} | {r.num_samples} |" for r in rows]
    if gap is not None:
        lines += ["", f"SVKR − upper bound: {gap['psnr_y_db']:+.2f} dB PSNR-Y, {gap['ssim_y']:+.4f} SSIM-Y"]
    return "\n".join(lines)


def _data_config(path: Path) -> dict[str, Any]:
    for cand in (path, Path(__file__).resolve().parents[2] / path):
        if cand.is_file():
            return dict(yaml.safe_load(cand.read_text()) or {})
    raise FileNotFoundError(f"data config not found: {path} (run from the repository root or pass --data-config)")


def make_test_batches(data_config: Path = _DATA_CONFIG, test_size: int | None = None, batch_size: int = 8,
                      limit: int | None = None, noise: bool = True, jpeg: bool = True,
                      ) -> tuple[list[dict[str, Any]], int]:
    """Degraded test batches of the data config's SRDataModule (test crop ``test_size``, default its val_size).

    ``noise=False``/``jpeg=False`` switch those degradation steps off (same kernels: the seeds are unchanged).
    """
    from ssr_lightning.data import SRDataModule
    from ssr_lightning.degradation.degrader import DegradationConfig
    from ssr_lightning.degradation.kernels import KernelConfig

    cfg = _data_config(data_config)
    cfg["test_size"] = test_size or cfg.get("test_size") or cfg.get("val_size")
    cfg["test_batch_size"] = batch_size
    deg = dict(cfg.get("degradation") or {})
    if isinstance(deg.get("kernel"), dict):
        deg["kernel"] = KernelConfig(**deg["kernel"])
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
