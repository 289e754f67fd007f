"""The blind-SR front-end ladder: what SVKR's stages give before the diffusion model (docs/DESIGN.md §5).

Every row is scored per test image, so each number carries a 95 % bootstrap CI and every comparison is a paired
per-image difference; over several training seeds the CI is two-level (seeds, then images), kernel draws of one
photo are resampled as one source, and the Δ column carries Holm marks beside the raw ones (`summary.py`):

==========================================  ==============================================================
bicubic                                      bicubic upsampling of LR (MATLAB imresize; or torch's)
blind RRDB                                   an NBSR of the same size and budget trained without any code
NBSR, kernel zeroed                          the kernel-conditioned NBSR given the zero code (mean kernel)
NBSR + DKENet w/o depth                      KE without its depth branch (MANet-like), one pass
NBSR + DKENet, depth from LR (K0)            KE with depth estimated from the LR image (= SVKR's t = 0)
NBSR + SVKR T=t                              Algorithm 1 after t refinements (t = 1 .. T)
NBSR + DKENet, GT depth                      KE with the ground-truth depth (depth oracle)
CMOS (σ map + semantics)                     the CMOS peer: blur map + semantic map → σ-conditioned NBSR
NBSR + GT kernel                             the kernel oracle: the front end's upper bound
response: GT-depth KE → GT kernel, α=a       the GT-depth KE's field moved a fraction α of the way to the GT
                                             field (optional: how the NBSR's PSNR follows kernel error)
==========================================  ==============================================================

Summaries (`summary.py`, with the row names, the Markdown and the figure): the oracle gap PSNR(GT kernel) −
PSNR(zeroed), each KE row's recovered fraction (PSNR_row − PSNR_zeroed) / gap (bootstrapped as a ratio of means),
SVKR T vs the single pass, KE's kernel L1 on spatially invariant samples next to the per-image mean-kernel oracle,
and the SVKR premise: depth AbsRel from HR, from NBSR + GT-kernel SR, from bicubic-upsampled LR and from LR itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ssr_lightning.degradation.resize import bicubic_upsample
from ssr_lightning.files import YAMLFileError, load_yaml
from ssr_lightning.frontend.summary import (
    BICUBIC,
    BLIND,
    CMOS,
    GT_DEPTH,
    GT_KERNEL,
    HEADLINE,
    K0,
    MEAN_KERNEL,
    NODEPTH,
    PER_IMAGE,
    RESPONSE,
    ZEROED,
    format_markdown,
    ladder_figure,
    response_figure,
    summarize,
    svkr_row,
)
from ssr_lightning.inference.depth import resize_depth
from ssr_lightning.inference.svkr import SVKR
from ssr_lightning.metrics import aligned_depth_metrics, kernel_l1, psnr_y, ssim_y
from ssr_lightning.metrics.stats import seed_summary, source_clusters

# the row names, the statistics and the text of a ladder live in summary.py; they are imported from here as before
__all__ = ["BICUBIC", "BLIND", "CMOS", "GT_DEPTH", "GT_KERNEL", "HEADLINE", "K0", "MEAN_KERNEL", "NODEPTH",
           "PER_IMAGE", "RESPONSE", "ZEROED", "Ladder", "evaluate_invariant_ke", "evaluate_ladder", "format_markdown",
           "ladder_figure", "make_test_batches", "merge_seeds", "response_figure", "response_row", "summarize",
           "svkr_row"]

_DATA_CONFIG = Path("configs/data/embedded.yaml")
@dataclass
class Ladder:
    """Per-image values: ``rows[row][metric]`` lists, all in the order of ``names`` (over several seeds: their
    per-image means, with every seed's values in ``per_seed``)."""

    names: list[str] = field(default_factory=list)
    invariant: list[bool] = field(default_factory=list)
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    premise: dict[str, list[float]] = field(default_factory=dict)
    invariant_ke: dict[str, list[float]] = field(default_factory=dict)  # kernel L1 on all-invariant samples
    iterations: int = 3
    gamma: float = 0.9
    sources: list[str] = field(default_factory=list)  # each image's source photo (its kernel draws share one)
    bicubic: str = "matlab"  # which bicubic the bicubic row (and the premise's bicubic LR) is
    # (part, name, metric) -> (seeds, images) values; part "rows", "premise" or "invariant_ke" (metric empty)
    per_seed: dict[tuple[str, str, str], list[list[float]]] = field(default_factory=dict)

    def values(self, part: str, name: str, metric: str = "") -> np.ndarray:
        """``(seeds, images)`` values of a row's metric (``part="rows"``), a premise or an invariant-KE row."""
        if (part, name, metric) in self.per_seed:
            return np.asarray(self.per_seed[(part, name, metric)], dtype=np.float64)
        flat = self.rows[name][metric] if part == "rows" else getattr(self, part)[name]
        return np.asarray(flat, dtype=np.float64)[None]

    def add(self, row: str, values: dict[str, Tensor]) -> None:
        target = self.rows.setdefault(row, {})
        for k, v in values.items():
            target.setdefault(k, []).extend(float(x) for x in v.detach().double().cpu().reshape(-1))

    def order(self) -> list[str]:
        main = [BICUBIC, BLIND, ZEROED, NODEPTH, K0, *(svkr_row(t) for t in range(1, self.iterations + 1)), GT_DEPTH,
                CMOS, GT_KERNEL]
        return [r for r in main if r in self.rows] + [r for r in self.rows if r not in main]


def response_row(alpha: float) -> str:
    """The row of the kernel-quality response at ``alpha`` (see :func:`evaluate_ladder`)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"response α {alpha:g}: must lie strictly between 0 (the KE) and 1 (the GT kernel)")
    return f"{RESPONSE}{alpha:g}"


def _image(sr: Tensor, hr: Tensor, scale: int) -> dict[str, Tensor]:
    sr = sr.clamp(0, 1)
    return {"psnr_y": psnr_y(sr, hr, crop_border=scale), "ssim_y": ssim_y(sr, hr, crop_border=scale)}


def _absrel(depth: Tensor, gt_lr: Tensor) -> Tensor:
    return aligned_depth_metrics(depth, gt_lr.to(depth))["absrel"]


@torch.no_grad()
def evaluate_ladder(
    batches: Iterable[dict[str, Any]], svkr: SVKR, *, blind: nn.Module | None = None,
    dkenet_nodepth: nn.Module | None = None, cmos: nn.Module | None = None, scale: int = 4,
    gammas: Sequence[float] = (), sweep: Sequence[int] = (), progress: bool = False, bicubic: str = "matlab",
    response: Sequence[float] = (),
) -> Ladder:
    """Score every row on degraded ``batches`` (dicts with lr, hr, kernel, depth, depth_lr, invariant, name).

    ``svkr`` holds DE, KE (with depth) and NBSR; its T and γ make the SVKR rows (every t ≤ T). ``gammas`` ×
    ``sweep`` (T values) add "sweep" rows. ``bicubic``: "matlab" (imresize, A = −0.5) or "torch" (A = −0.75).
    ``response`` (α values in (0, 1)) adds the rows :func:`response_row`: NBSR given α·GT + (1 − α)·the GT-depth
    KE's field, a straight path in kernel space (and in code space: the code is linear) from the KE to the oracle.
    Photos name their ``source``: kernel draws of one photo are one source for the statistics.
    """
    lad = Ladder(iterations=svkr.iterations, gamma=svkr.gamma, bicubic=bicubic)
    t_max = max([svkr.iterations, *sweep])
    for batch in tqdm(list(batches), desc="front-end ladder", disable=not progress, leave=False):
        lr, hr, gt_kernel = batch["lr"], batch["hr"], batch["kernel"]
        b = lr.shape[0]
        names = [str(n) for n in batch.get("name", [f"img{len(lad.names) + i}" for i in range(b)])]
        lad.names += names
        lad.sources += [str(x) for x in batch["source"]] if "source" in batch else source_clusters(names)
        lad.invariant += [bool(x) for x in torch.as_tensor(batch.get("invariant", torch.zeros(b))).reshape(-1)]
        up = bicubic_upsample(lr, scale, bicubic).clamp(0, 1)
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
            for a in response:
                blend = a * gt_kernel + (1.0 - a) * k.to(gt_kernel)
                lad.add(response_row(a), {**_image(svkr.super_resolve(lr, blend), hr, scale),
                                          "kernel_l1": kernel_l1(blend, gt_kernel)})
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


def merge_seeds(ladders: Sequence[Ladder]) -> tuple[Ladder, dict[str, dict[str, tuple[float, float, int]]]]:
    """One ladder of the rows every seed has: per-image values averaged over seeds, every seed's values kept in
    ``per_seed`` (for the two-level CIs of :func:`summarize`), and each row's per-seed means summarised as
    (mean, std, n) per metric."""
    base = ladders[0]
    merged = Ladder(list(base.names), list(base.invariant), iterations=base.iterations, gamma=base.gamma,
                    sources=list(base.sources), bicubic=base.bicubic)
    seeds: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name in base.order():
        if not all(name in lad.rows for lad in ladders):
            continue
        merged.rows[name] = {}
        seeds[name] = {}
        for metric in base.rows[name]:
            per_seed = np.array([lad.rows[name][metric] for lad in ladders], dtype=np.float64)
            merged.rows[name][metric] = per_seed.mean(0).tolist()
            merged.per_seed[("rows", name, metric)] = per_seed.tolist()
            seeds[name][metric] = seed_summary(per_seed.mean(1).tolist())
    for part in ("premise", "invariant_ke"):
        for key in getattr(base, part):
            if all(key in getattr(lad, part) for lad in ladders):
                per_seed = np.array([getattr(lad, part)[key] for lad in ladders], dtype=np.float64)
                getattr(merged, part)[key] = per_seed.mean(0).tolist()
                merged.per_seed[(part, key, "")] = per_seed.tolist()
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
                      invariant: bool = False, degradation: Sequence[str | Path] = (),
                      split: str = "test") -> tuple[list[dict[str, Any]], int]:
    """Degraded test batches of the data config's SRDataModule (test crop ``test_size``, default its val_size).

    ``noise=False``/``jpeg=False`` switch those degradation steps off (same kernels: the seeds are unchanged);
    ``overrides`` replace data options (e.g. ``{"dataset": "photos"}``); ``invariant`` makes every sample's
    kernel spatially invariant (``kernel.invariant_prob = 1``); ``degradation`` are fragments of
    ``data.degradation`` merged on top in order (``configs/degradation/defocus.yaml``: the defocus family);
    ``split="val"`` takes as many validation scenes, cropped alike, instead of the test split (choices are made there).
    """
    from ssr_lightning.data import SRDataModule
    from ssr_lightning.degradation.degrader import DegradationConfig
    from ssr_lightning.degradation.kernels import KernelConfig
    from ssr_lightning.files import load_yaml

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    cfg = {**_data_config(data_config), **(overrides or {})}
    cfg["test_size"] = test_size if test_size is not None else (cfg.get("test_size") or cfg.get("val_size"))
    cfg["test_batch_size"] = batch_size
    if split == "val":  # as many validation scenes as test scenes (or the validation photos), cropped alike
        cfg.update(eval_split="val", num_val=cfg.get("num_test", 24))
    deg = dict(cfg.get("degradation") or {})
    for fragment in degradation:
        extra = load_yaml(fragment) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{fragment}: a degradation fragment is a mapping of data.degradation options")
        deg = {**deg, **{k: v for k, v in extra.items() if k != "kernel"},
               "kernel": {**dict(deg.get("kernel") or {}), **dict(extra.get("kernel") or {})}}
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
