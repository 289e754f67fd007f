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

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.files import load_yaml
from ssr_lightning.metrics import kernel_l1
from ssr_lightning.metrics.stats import bootstrap_seeds
from ssr_lightning.networks import DKENet

from ke_readings import (  # tools/ is the script's folder, first on sys.path
    DEGRADATION,
    parse_args,
    refuses,
    seed_values,
    summarize_rows,
    table_lines,
    write_record,
)
from record_formats import estimate

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
    z0, z1 = KernelConfig(**load_yaml(REPO / DEGRADATION[0])["kernel"]).z_range
    c = z0 / (z1 - z0)
    offsets: dict[str, float] = {"gt": c}

    def offset(seed: int, net: DKENet) -> None:
        offsets[str(seed)] = float(torch.nn.functional.softplus(net.lens_offset))

    values, names, ckpts = seed_values(runs, seeds, run, split, lambda net, batch: score_batch(net, batch, c),
                                       "lens reading", on_net=offset)
    return values, names, {"checkpoints": ckpts, "depth_offset_c": offsets}


def summarize(values: dict[str, np.ndarray]) -> dict[str, Any]:
    s = summarize_rows(values, ROWS, REFERENCE)
    errors = {t: bootstrap_seeds(values[f"err_{t}"]).as_dict() for t in (*TERMS, "focus_constant", "sharpness_focal")
              if f"err_{t}" in values}
    return {"rows": s.pop("rows"), "lens_errors": errors, **s}


def markdown(s: dict[str, Any], split: str) -> str:
    lines = table_lines(s, "The thin-lens KE's lens reading", "KE", split)
    e = s["lens_errors"]
    lines += ["", "The head's errors on its lens terms (mean |estimate − GT| [95 % CI]): focal depth d_f "
              f"{estimate(e['focus'], 3)} (depth scale 0–1; the constant 0.5, which reads nothing: "
              f"{estimate(e['focus_constant'], 3)}), gain g {estimate(e['gain'], 0)} % of the GT gain, "
              f"threshold t {estimate(e['threshold'], 3)}, optics σ {estimate(e['optics'], 3)} px"
              + (f"; the sharpness-weighted depth (the head shifts it by at most 0.25) is "
                 f"{estimate(e['sharpness_focal'], 3)} from the GT d_f" if "sharpness_focal" in e else "") + ".",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, "dkenet_lens", "results/lens_reading/dkenet_lens", argv)
    if refuses("lens_reading", args):
        return 2
    values, names, read = evaluate(args.runs, args.seeds, args.run, args.split)
    summary = summarize(values)
    return write_record("lens_reading", args, "the thin-lens KE's kernel L1 with parts of its lens replaced by the GT "
                        "lens (issue 21)", markdown(summary, args.split), summary, values, names, read)


if __name__ == "__main__":
    raise SystemExit(main())
