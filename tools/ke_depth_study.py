"""Does DKENet use depth? Train one KE variant on a kernel family and score it with GT depth (issue 21).

    OMP_NUM_THREADS=1 python tools/ke_depth_study.py '{"name": "depth_abs", "family": "defocus", "steps": 1600,
        "seed": 0, "use_depth": true, "normalize_depth": false}' results/ke_depth/runs.jsonl

Keys: name, family (``default`` | ``defocus``: configs/degradation/defocus.yaml), steps, seed, patch_size, batch_size,
lr, and any DKENetModule argument. Training and evaluation are noise-free (configs/degradation/clean.yaml): the regime
where a kernel can be read. The trained KE is scored on the validation split (choices are made there) and on the test
split (24 crops each, 128 px, the family's own kernel draws), with the batch's GT depth; per-image kernel L1 values
are kept. References on the same images: the training distribution's mean kernel (a KE that reads nothing) and each
image's own mean GT kernel (the best spatially invariant estimate). Appends one JSON line per run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from quick_fit import quick_fit, stage_module  # tools/ is the script's folder, first on sys.path

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.data import SRDataModule
from ssr_lightning.degradation import DegradationConfig
from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.files import load_yaml
from ssr_lightning.metrics import kernel_l1
from ssr_lightning.metrics.stats import bootstrap_ci
from ssr_lightning.modules import DKENetModule, FitConfig
from ssr_lightning.networks import DKENet

REPO = Path(__file__).resolve().parents[1]
TINY = {"channels": 16}  # the tiny CPU width (configs/dkenet.yaml's net); a spec's `channels` overrides it


def degradation(family: str) -> DegradationConfig:
    """The noise-free degradation of a kernel family (``default`` or a file under configs/degradation/)."""
    kernel = {} if family == "default" else dict(load_yaml(REPO / "configs/degradation" / f"{family}.yaml")["kernel"])
    kernel = {k: tuple(v) if isinstance(v, list) else v for k, v in kernel.items()}
    return DegradationConfig(kernel=KernelConfig(**kernel), noise=False, jpeg=False)


def split_batches(family: str, split: str, n: int = 24) -> list[dict]:
    dm = SRDataModule(val_size=128, test_size=128, val_batch_size=8, test_batch_size=8, num_val=n, num_test=n,
                      degradation=degradation(family))
    dm.setup("fit" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    return [dm.degrade(b) for b in loader]


def mean_training_kernel(family: str, n: int = 16) -> torch.Tensor:
    dm = SRDataModule(patch_size=128, batch_size=8, degradation=degradation(family))
    dm.setup("fit")
    acc = 0.0
    for i, b in enumerate(dm.train_dataloader()):
        if i >= n:
            break
        acc = acc + dm.degrade(b, training=True)["kernel"].mean(dim=(0, 2, 3))
    return acc / n


def training_fit(module: DKENetModule, family: str, n: int = 6) -> dict[str, float]:
    """Kernel L1 on fresh training crops (eval mode): tells under- from over-fitting beside the val/test scores."""
    dm = SRDataModule(patch_size=128, batch_size=8, degradation=degradation(family), seed=123)
    dm.setup("fit")
    vals: list[float] = []
    for i, b in enumerate(dm.train_dataloader()):
        if i >= n:
            break
        b = dm.degrade(b, training=True)
        with torch.no_grad():
            vals += kernel_l1(module(b["lr"], b["depth_lr"]), b["kernel"]).tolist()
    return bootstrap_ci(vals).as_dict()


def score(module: DKENetModule, family: str) -> dict[str, object]:
    mean_kernel = mean_training_kernel(family)
    out: dict[str, object] = {"train_crops": training_fit(module, family)}
    for split in ("val", "test"):
        rows: dict[str, list[float]] = {"ke": [], "mean_kernel": [], "per_image_mean": [], "names": []}
        for b in split_batches(family, split):
            gt = b["kernel"]
            with torch.no_grad():
                rows["ke"] += kernel_l1(module(b["lr"], b["depth_lr"]), gt).tolist()
            rows["mean_kernel"] += kernel_l1(mean_kernel.view(1, -1, 1, 1).expand_as(gt), gt).tolist()
            rows["per_image_mean"] += kernel_l1(gt.mean(dim=(2, 3), keepdim=True).expand_as(gt), gt).tolist()
            rows["names"] += [str(x) for x in b["name"]]
        out[split] = {"per_image": rows, **{k: bootstrap_ci(v).as_dict() for k, v in rows.items() if k != "names"}}
    return out


def run(name: str, family: str = "default", steps: int = 1600, seed: int = 0, patch_size: int = 128,
        batch_size: int = 8, lr: float = 3e-3, **kw: object) -> dict[str, object]:
    spec = {"name": name, "family": family, "steps": steps, "seed": seed, "patch_size": patch_size,
            "batch_size": batch_size, "lr": lr, **kw}
    torch.manual_seed(seed)
    dm = SRDataModule(patch_size=patch_size, val_size=128, batch_size=batch_size, num_val=4, seed=seed,
                      degradation=degradation(family))
    kw = {"global_kernel": True, **kw}
    module = stage_module(DKENetModule, DKENet, TINY, fit=FitConfig(learning_rate=lr, min_learning_rate=1e-5,
                                                                    warmup_steps=50), **kw)
    cpu0 = time.process_time()
    secs = quick_fit(module, dm, steps)
    return {"name": name, "family": family, "steps": steps, "seed": seed, "patch_size": patch_size,
            "batch_size": batch_size, "lr": lr, "kw": kw, "train_s": round(secs),
            "train_cpu_s": round(time.process_time() - cpu0), **score(module, family),
            "command": f"python tools/ke_depth_study.py '{json.dumps(spec)}'", "provenance": environment()}


def _short(row: dict[str, object]) -> str:
    return json.dumps({"name": row["name"], "family": row["family"], "seed": row["seed"], "train_s": row["train_s"],
                       **{f"{s}/{k}": round(row[s][k]["mean"], 4) for s in ("val", "test")  # type: ignore[index]
                          for k in ("ke", "mean_kernel", "per_image_mean")}})


def main(argv: list[str]) -> None:
    """``SPEC_JSON [OUT.jsonl]`` runs one variant; ``--specs FILE.jsonl OUT.jsonl`` runs every spec of a file that
    OUT does not hold yet (resumable), one after the other."""
    if argv and argv[0] == "--specs":
        specs = [json.loads(line) for line in Path(argv[1]).read_text().splitlines() if line.strip()]
        out = Path(argv[2])
        done = set()
        if out.is_file():
            done = {(r["name"], r["family"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    else:
        specs, out, done = [json.loads(argv[0])], Path(argv[1] if len(argv) > 1 else "ke_depth_study.jsonl"), set()
    for spec in specs:
        if (spec["name"], spec.get("family", "default"), spec.get("seed", 0)) in done:
            continue
        row = run(**spec)
        print(_short(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
