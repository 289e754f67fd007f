"""Depth experiment: train one DepthNet variant, report test AbsRel / δ<1.25 (95 % CIs) per input and scene kind.

    OMP_NUM_THREADS=1 python tools/depth_experiment.py \
        '{"name": "w64_l4", "steps": 800, "patch_size": 128, "working_size": 64, "levels": 4}' [results.jsonl]

Keys: name, steps, patch_size (HR training crop), augment (hflip | full), batch_size, lr, and any DepthModule
argument. Evaluates on the embedded test split (24 scenes, 128 px centre crops, default degradation) with the
prediction aligned per image (scale and shift) to z = 1 + 9·d, as ``DepthModule``'s test: from HR, from
bicubic-upsampled LR and from LR. Appends one JSON line to the results file.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from quick_fit import quick_fit, stage_module  # tools/ is the script's folder, first on sys.path

from ssr_lightning.data import SRDataModule
from ssr_lightning.metrics import aligned_depth_metrics
from ssr_lightning.metrics.stats import bootstrap_ci
from ssr_lightning.modules import DepthModule, FitConfig
from ssr_lightning.networks import DepthNet


def evaluate(net: torch.nn.Module) -> dict[str, object]:
    dm = SRDataModule(val_size=128, test_size=128, test_batch_size=8)
    dm.setup("test")
    per: dict[str, list[float]] = defaultdict(list)
    for batch in dm.test_dataloader():
        b = dm.degrade(batch)
        up = F.interpolate(b["lr"], scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        kinds = [n.split("_")[-1] for n in b["name"]]
        with torch.no_grad():
            for src, image, target in (("hr", b["hr"], b["depth"]), ("bicubic", up, b["depth"]),
                                       ("lr", b["lr"], b["depth_lr"])):
                m = aligned_depth_metrics(net(image), target)
                for i, kind in enumerate(kinds):
                    for key in ("absrel", "delta1"):
                        per[f"{src}/{key}"].append(float(m[key][i]))
                        per[f"{src}/{key}/{kind}"].append(float(m[key][i]))
    return {k: bootstrap_ci(v).as_dict() for k, v in sorted(per.items())}


def run(name: str, steps: int, patch_size: int = 96, augment: str = "hflip", batch_size: int = 8, lr: float = 1e-3,
        seed: int = 0, **kw: object) -> dict[str, object]:
    torch.manual_seed(seed)
    dm = SRDataModule(patch_size=patch_size, val_size=128, batch_size=batch_size, augment=augment, num_val=4,
                      seed=seed)
    module = stage_module(DepthModule, DepthNet, fit=FitConfig(learning_rate=lr, min_learning_rate=1e-5,
                                                              warmup_steps=50), **kw)
    secs = quick_fit(module, dm, steps)
    out = {"name": name, "steps": steps, "patch_size": patch_size, "augment": augment, "batch_size": batch_size,
           "lr": lr, "kw": kw, "train_s": round(secs), **evaluate(module.model)}
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    results = sys.argv[2] if len(sys.argv) > 2 else "depth_experiment.jsonl"
    row = run(**spec)
    short = {k: round(v["mean"], 3) for k, v in row.items() if isinstance(v, dict) and "/" in k and "delta" not in k}
    print(json.dumps({"name": row["name"], "train_s": row["train_s"], **short}), flush=True)
    with open(results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
