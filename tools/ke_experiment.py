"""KE experiment: train one DKENet variant, report kernel L1 (95 % CIs) on the test split and on invariant samples.

    OMP_NUM_THREADS=1 python tools/ke_experiment.py \
        '{"name": "gk", "steps": 800, "patch_size": 96, "global_kernel": true}' [results.jsonl]

Keys: name, steps, patch_size, batch_size, lr, train_noise (noise + JPEG at training), seed, and any DKENetModule
argument. Evaluates on the embedded test split (24 scenes, 128 px crops) with its own kernel draws ("mixed") and
with every sample spatially invariant ("invariant": ``kernel.invariant_prob = 1``, where depth says nothing), each
with and without noise + JPEG; next to two references: the training distribution's mean kernel (a KE that reads
nothing) and each image's own mean GT kernel (exact on invariant samples). Appends one JSON line.
"""

from __future__ import annotations

import json
import sys

import torch
from quick_fit import quick_fit, stage_module  # tools/ is the script's folder, first on sys.path

from ssr_lightning.data import SRDataModule
from ssr_lightning.degradation import DegradationConfig
from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.inference.depth import normalize_depth_map
from ssr_lightning.metrics import kernel_l1
from ssr_lightning.metrics.stats import bootstrap_ci
from ssr_lightning.modules import DKENetModule, FitConfig
from ssr_lightning.networks import DKENet

TINY = {"channels": 16}  # the tiny CPU width (configs/dkenet.yaml's net); a spec's `channels` overrides it


def test_batches(invariant: bool, noise: bool) -> list[dict]:
    kernel = KernelConfig(invariant_prob=1.0) if invariant else KernelConfig()
    dm = SRDataModule(val_size=128, test_size=128, test_batch_size=8,
                      degradation=DegradationConfig(kernel=kernel, noise=noise, jpeg=noise))
    dm.setup("test")
    return [dm.degrade(b) for b in dm.test_dataloader()]


def mean_training_kernel(n: int = 16) -> torch.Tensor:
    """The mean kernel of the training distribution (a KE that reads nothing predicts about this)."""
    dm = SRDataModule(patch_size=96, batch_size=8)
    dm.setup("fit")
    acc, count = 0.0, 0
    for i, b in enumerate(dm.train_dataloader()):
        if i >= n:
            break
        k = dm.degrade(b, training=True)["kernel"]
        acc = acc + k.mean(dim=(0, 2, 3))
        count += 1
    return acc / count


def evaluate(module: DKENetModule | None, mean_kernel: torch.Tensor) -> dict[str, object]:
    out: dict[str, object] = {}
    for invariant in (False, True):
        for noise in (True, False):
            tag = f"{'invariant' if invariant else 'mixed'}_{'noisy' if noise else 'clean'}"
            rows: dict[str, list[float]] = {"ke": [], "ke_gt_depth_norm": [], "mean_kernel": [], "per_image_oracle": []}
            for b in test_batches(invariant, noise):
                gt = b["kernel"]
                with torch.no_grad():
                    if module is not None:
                        rows["ke"] += kernel_l1(module._estimate(b), gt).tolist()
                        if module.model.use_depth:
                            rows["ke_gt_depth_norm"] += kernel_l1(module(b["lr"], normalize_depth_map(b["depth_lr"])),
                                                                  gt).tolist()
                const = mean_kernel.view(1, -1, 1, 1).expand_as(gt)
                rows["mean_kernel"] += kernel_l1(const, gt).tolist()
                rows["per_image_oracle"] += kernel_l1(gt.mean(dim=(2, 3), keepdim=True).expand_as(gt), gt).tolist()
            out[tag] = {k: bootstrap_ci(v).as_dict() for k, v in rows.items() if v}
    return out


def run(name: str, steps: int, patch_size: int = 96, batch_size: int = 8, lr: float = 3e-3, train_noise: bool = True,
        seed: int = 0, **kw: object) -> dict[str, object]:
    torch.manual_seed(seed)
    deg = DegradationConfig(noise=train_noise, jpeg=train_noise)
    dm = SRDataModule(patch_size=patch_size, val_size=128, batch_size=batch_size, num_val=4, seed=seed,
                      degradation=deg)
    module = stage_module(DKENetModule, DKENet, TINY, fit=FitConfig(learning_rate=lr, min_learning_rate=1e-5,
                                                                    warmup_steps=50), **kw)
    secs = quick_fit(module, dm, steps)
    return {"name": name, "steps": steps, "patch_size": patch_size, "batch_size": batch_size, "lr": lr,
            "train_noise": train_noise, "seed": seed, "kw": kw, "train_s": round(secs),
            **evaluate(module, mean_training_kernel())}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    results = sys.argv[2] if len(sys.argv) > 2 else "ke_experiment.jsonl"
    row = run(**spec)
    short = {f"{tag}/{k}": round(v["mean"], 3) for tag, d in row.items() if isinstance(d, dict) and "_" in tag
             for k, v in d.items()}
    print(json.dumps({"name": row["name"], "train_s": row["train_s"], **short}), flush=True)
    with open(results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
