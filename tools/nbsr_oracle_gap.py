"""NBSR oracle-gap experiment: train one NBSR variant, report PSNR-Y(GT kernel) − PSNR-Y(zeroed code) with CIs.

    OMP_NUM_THREADS=1 python tools/nbsr_oracle_gap.py \
        '{"name": "default", "steps": 1600, "clean_prob": 0.3, "input_condition": true, "sft_init": 0.01,
          "noise_condition": true}' [results.jsonl]

Keys: name, steps, train_noise (noise + JPEG at training), clean_prob, and any NBSRModule argument. Evaluates on
the embedded test split (24 scenes, 128 px crops) without and with noise + JPEG; appends one JSON line.
"""
import json
import sys

import torch
from quick_fit import quick_fit, stage_module  # tools/ is the script's folder, first on sys.path

from ssr_lightning.data import SRDataModule
from ssr_lightning.degradation import DegradationConfig
from ssr_lightning.metrics import psnr_y
from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference
from ssr_lightning.modules import FitConfig, NBSRModule
from ssr_lightning.networks import KernelConditionedSR


def eval_batches(noise: bool):
    deg = DegradationConfig(noise=noise, jpeg=noise)
    dm = SRDataModule(val_size=128, test_size=128, test_batch_size=8, degradation=deg)
    dm.setup("test")
    return [dm.degrade(b) for b in dm.test_dataloader()]

def run(name, steps, train_noise=True, clean_prob=0.0, **kw):
    torch.manual_seed(0)
    deg = DegradationConfig(noise=train_noise, jpeg=train_noise, clean_prob=clean_prob)
    dm = SRDataModule(patch_size=96, val_size=128, batch_size=8, degradation=deg, num_val=4)
    m = stage_module(NBSRModule, KernelConditionedSR, fit=FitConfig(learning_rate=1e-3, min_learning_rate=1e-5,
                                                                    warmup_steps=50), **kw)
    secs = quick_fit(m, dm, steps)
    out = {"name": name, "steps": steps, "train_noise": train_noise, "clean_prob": clean_prob, "kw": kw, "train_s": round(secs)}
    for noise in (False, True):
        gt, zero = [], []
        with torch.no_grad():
            for b in eval_batches(noise):
                gt += psnr_y(m(b["lr"], b["kernel"]).clamp(0, 1), b["hr"], crop_border=4).tolist()
                zero += psnr_y(m(b["lr"], None).clamp(0, 1), b["hr"], crop_border=4).tolist()
        tag = "clean" if not noise else "noisy"
        out[f"{tag}_gt"] = bootstrap_ci(gt).mean
        out[f"{tag}_gap"] = paired_difference(gt, zero).as_dict()
    print(json.dumps(out), flush=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(out) + "\n")

if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    RESULTS = sys.argv[2] if len(sys.argv) > 2 else "nbsr_oracle_gap.jsonl"
    run(**spec)
