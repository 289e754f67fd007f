"""Where the thin-lens KE's kernel error comes from: its reading of the lens, term by term (issue 21).

    OMP_NUM_THREADS=1 python tools/lens_reading.py --run dkenet_lens --out results/lens_reading/dkenet_lens

The KE is the `dkenet_lens` run of `ssr-frontend` (thin-lens head supervised with the lens, ``lens_loss: 0.1``), one
training per seed under ``--runs``. On the defocus family's validation split (the ladder's crops, noise-free, GT
depth; diagnosis on validation, so that a fix chosen from it leaves the test split unread) each KE is scored as
trained and with parts of its lens replaced by the lens that made the sample (``degradation.kernels.lens_targets``),
its per-pixel logits kept:

- GT focal depth d_f; GT gain g (the aperture); GT optics σx, σy, θ; the whole GT lens (threshold t included);
- the thin-lens prior alone with the whole GT lens, no per-pixel logits: what the head's Gaussian form can reach.

A row that falls far below "as trained" names the lens term whose reading limits the KE. Beside the kernel L1 the
record keeps the head's errors on each term. Statistics: mean with a 95 % CI, two-level bootstrap over the training
seeds then the images; Δ: paired difference to "as trained", Holm across the table.

Writes ``--out``: ``summary.md`` (rendered into docs/EXPERIMENTS.md), ``summary.json``, ``per_image.json`` and
``RECORD.json`` (command, provenance, the checkpoints read). Refuses to replace them without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.files import atomic_write_json, atomic_write_text, load_yaml
from ssr_lightning.frontend.ladder import make_test_batches
from ssr_lightning.inference.checkpoints import find_checkpoint, load_model
from ssr_lightning.metrics import kernel_l1
from ssr_lightning.metrics.stats import (
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
)
from ssr_lightning.networks import DKENet

from record_formats import estimate  # tools/ is the script's folder, first on sys.path

DEGRADATION = ["configs/degradation/defocus.yaml", "configs/degradation/clean.yaml"]
TERMS = ("focus", "gain", "threshold", "optics")
ROWS = {"trained": "KE as trained (its own lens)",
        "focus": "… with the GT focal depth d_f",
        "gain": "… with the GT gain g (aperture)",
        "optics": "… with the GT optics σx, σy, θ",
        "lens": "… with the whole GT lens (d_f, g, t, optics, depth offset c)",
        "prior": "the thin-lens prior alone with the GT lens (no per-pixel logits)"}
REFERENCE = "trained"


_COLUMNS = {"focus": [0], "gain": [1], "optics": [3, 4, 5], "lens": [0, 1, 2, 3, 4, 5]}


@contextmanager
def gt_offset(net: DKENet, c: float) -> Iterator[None]:
    """The head's depth offset c (z = z_near + d·(z_far − z_near) makes |z − z_f|/z = |d − d_f|/(d + c)) set to the
    family's own ``c`` for the duration."""
    assert net.lens_offset is not None
    kept = net.lens_offset.detach().clone()
    net.lens_offset.data.copy_(torch.log(torch.expm1(torch.tensor(c))))
    try:
        yield
    finally:
        net.lens_offset.data.copy_(kept)


@torch.no_grad()
def score_batch(net: DKENet, batch: dict[str, Any], c: float) -> dict[str, Tensor]:
    """Per-image kernel L1 of every row of :data:`ROWS` and the head's absolute error on each lens term."""
    if net.lens_head is None:
        raise ValueError("lens_reading reads a thin-lens DKENet (thin_lens true): this one has no lens head")
    lr, gt_kernel, gt = batch["lr"], batch["kernel"], batch["lens"].float()
    depth = net.prepare_depth(lr, batch["depth_lr"])
    focal = net.focal_depth(lr, depth) if net.focus_score is not None else None  # d_f's anchor, if it reads one
    f3 = net.features(lr, depth, focal)
    own = net.lens_parameters(f3, depth)
    target = DKENet.raw_lens(gt, focal).to(own)
    out: dict[str, Tensor] = {"trained": kernel_l1(net.kernels(f3, depth, focal, lens=own), gt_kernel)}
    for row, cols in _COLUMNS.items():
        mixed = own.clone()
        mixed[:, cols] = target[:, cols]
        with gt_offset(net, c) if row == "lens" else nullcontext():
            out[row] = kernel_l1(net.kernels(f3, depth, focal, lens=mixed), gt_kernel)
    with gt_offset(net, c):
        prior = net.lens_prior(target, depth, (lr.shape[-2], lr.shape[-1]), focal)
    out["prior"] = kernel_l1(prior, gt_kernel)
    terms = net.lens_terms(own, focal)
    out["err_focus"] = (terms["focus"] - gt[:, 0]).abs()
    out["err_gain"] = 100 * (terms["gain"] - gt[:, 1]).abs() / gt[:, 1].clamp_min(1e-6)  # per cent of the GT gain
    out["err_threshold"] = (terms["threshold"] - gt[:, 2]).abs()
    out["err_optics"] = ((terms["sigma_x"] - gt[:, 3]).abs() + (terms["sigma_y"] - gt[:, 4]).abs()) / 2
    out["err_focus_constant"] = (gt[:, 0] - 0.5).abs()  # a head that reads nothing: the middle of the depth range
    if focal is not None:  # the sharpness-weighted depth alone, before the head's shift
        out["err_sharpness_focal"] = (focal.reshape(-1).float() - gt[:, 0]).abs()
    return out


def evaluate(runs: Path, seeds: list[int], run: str, split: str) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """``(seeds, images)`` matrices of every row and error, the image names, the checkpoints read and each KE's
    learned depth offset c beside the family's."""
    batches, _ = make_test_batches(noise=False, jpeg=False, degradation=DEGRADATION, split=split)
    z0, z1 = KernelConfig(**load_yaml(REPO / DEGRADATION[0])["kernel"]).z_range
    c = z0 / (z1 - z0)
    values: dict[str, list[list[float]]] = {}
    names: list[str] = [str(n) for b in batches for n in b["name"]]
    ckpts: dict[str, str] = {}
    offsets: dict[str, float] = {"gt": c}
    for seed in seeds:
        ckpt = find_checkpoint(run, runs / f"seed_{seed}", "best")
        if ckpt is None:
            raise FileNotFoundError(f"--runs {runs}: no {run} checkpoint for seed {seed} under "
                                    f"{runs / f'seed_{seed}' / run}; train it with ssr-frontend --train --stages "
                                    f"'[{run}, ...]' --runs {runs}")
        ckpts[str(seed)] = ckpt.relative_to(REPO).as_posix() if ckpt.is_relative_to(REPO) else ckpt.name
        net = load_model(ckpt, "dkenet")
        offsets[str(seed)] = float(torch.nn.functional.softplus(net.lens_offset))
        per: dict[str, list[float]] = {}
        for batch in tqdm(batches, desc=f"lens reading, seed {seed}", leave=False):
            for key, v in score_batch(net, batch, c).items():
                per.setdefault(key, []).extend(v.double().tolist())
        for key, v in per.items():
            values.setdefault(key, []).append(v)
    return {k: np.asarray(v) for k, v in values.items()}, names, {"checkpoints": ckpts, "depth_offset_c": offsets}


def summarize(values: dict[str, np.ndarray]) -> dict[str, Any]:
    rows = {k: {"label": ROWS[k], "kernel_l1": bootstrap_seeds(100 * values[k]).as_dict()} for k in ROWS}
    deltas = {k: paired_difference_seeds(100 * values[k], 100 * values[REFERENCE]) for k in ROWS if k != REFERENCE}
    marks = mark_deltas(list(deltas.values()))
    for (k, d), m in zip(deltas.items(), marks, strict=True):
        rows[k]["delta"] = {**d.as_dict(), "mark": m.text if m else ""}
    errors = {t: bootstrap_seeds(values[f"err_{t}"]).as_dict() for t in (*TERMS, "focus_constant", "sharpness_focal")
              if f"err_{t}" in values}
    seeds, n = values[REFERENCE].shape
    return {"rows": rows, "lens_errors": errors, "seeds": seeds, "images": n, "ci": ci_phrase(seeds, n),
            "correction": correction_note(marks)}


def markdown(s: dict[str, Any], split: str) -> str:
    lines = [f"**The thin-lens KE's lens reading** (defocus family, {split} split, GT depth; kernel L1 × 100 of the "
             f"per-pixel 21×21 kernel, lower is better; 95 % CI: {s['ci']})", "",
             "| KE | kernel L1 × 100 | Δ vs as trained | mark |", "| --- | --- | --- | --- |"]
    for r in s["rows"].values():
        d = r.get("delta")
        lines.append(f"| {r['label']} | {estimate(r['kernel_l1'], 1)} | {estimate(d, 1, True) if d else '—'} | "
                     f"{d['mark'] if d else ''} |")
    e = s["lens_errors"]
    lines += ["", f"Δ: paired per-image difference, * where its CI excludes 0; {s['correction']}.", "",
              "The head's errors on its lens terms (mean |estimate − GT| [95 % CI]): focal depth d_f "
              f"{estimate(e['focus'], 3)} (depth scale 0–1; the constant 0.5, which reads nothing: "
              f"{estimate(e['focus_constant'], 3)}), gain g {estimate(e['gain'], 0)} % of the GT gain, "
              f"threshold t {estimate(e['threshold'], 3)}, optics σ {estimate(e['optics'], 3)} px"
              + (f"; the sharpness-weighted depth (the head shifts it by at most 0.25) is "
                 f"{estimate(e['sharpness_focal'], 3)} from the GT d_f" if "sharpness_focal" in e else "") + ".",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("results/frontend_defocus/runs"),
                   help="ssr-frontend --runs folder holding seed_<k>/<run>")
    p.add_argument("--run", default="dkenet_lens", help="the thin-lens KE's run name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--out", type=Path, default=Path("results/lens_reading/dkenet_lens"))
    p.add_argument("--overwrite", action="store_true", help="replace the record in --out")
    args = p.parse_args(argv)
    if (args.out / "summary.json").is_file() and not args.overwrite:
        print(f"lens_reading: {args.out} already holds a record; pass --overwrite to replace it", file=sys.stderr)
        return 2
    values, names, read = evaluate(args.runs, args.seeds, args.run, args.split)
    summary = summarize(values)
    md = markdown(summary, args.split)
    command = ("OMP_NUM_THREADS=1 python tools/lens_reading.py --runs " + args.runs.as_posix()
               + f" --run {args.run} --seeds {' '.join(map(str, args.seeds))} --split {args.split} --out "
               + args.out.as_posix())
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "what": "the thin-lens KE's kernel L1 with parts of its lens replaced by the GT lens "
            "(issue 21)", "provenance": environment(), **read}
    atomic_write_text(args.out / "summary.md", md)
    atomic_write_json(args.out / "summary.json", {**meta, **summary})
    atomic_write_json(args.out / "per_image.json", {"names": names, "seeds": args.seeds,
                                                    **{k: v.tolist() for k, v in values.items()}})
    atomic_write_json(args.out / "RECORD.json", meta)
    print(md)
    return 0 if all(math.isfinite(r["kernel_l1"]["mean"]) for r in summary["rows"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
