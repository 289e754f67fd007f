"""How the luma convention and 8-bit rounding move PSNR on the same pairs (docs/METRICS.md, "Conventions").

    OMP_NUM_THREADS=1 python tools/luma_conventions.py      # writes results/metrics/luma_conventions.json

Pairs: the "Bicubic" row of Table 2 (torch bicubic ×4 of the LR, clamped, as `EvalWriter(source="bicubic")`)
against HR on the 24 embedded test scenes (tools/embedded_pairs.py). Per image:
- ``psnr_y``: the suite's PSNR-Y (BT.601 studio swing on [0, 255], 4 px cropped, float images);
- ``psnr_y_8bit``: the same after rounding both images to 8 bit (``quantize=True``, BasicSR's ``tensor2img``);
- ``pyiqa_psnry_crop4``: pyiqa's ``psnry`` (YIQ luma 0.299 R + 0.587 G + 0.114 B on [0, 1]) with the same crop;
- ``pyiqa_psnry``: pyiqa's ``psnry`` as created by default (no crop);
and the paired differences to ``psnr_y`` with 95 % bootstrap CIs. Studio swing spans 219 of 255 levels, so the
same error reads 20·log10(255/219) dB higher than on full-swing luma.
"""

from __future__ import annotations

import math

import pyiqa
import torch
import torch.nn.functional as F
from embedded_pairs import DATA, test_pairs, write_record  # tools/ is the script's folder, first on sys.path

from ssr_lightning.metrics import psnr_y
from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference

SCALE = 4


def main() -> None:
    torch.set_num_threads(1)
    iqa_crop = pyiqa.create_metric("psnry", device="cpu", crop_border=SCALE)
    iqa_default = pyiqa.create_metric("psnry", device="cpu")
    rows: dict[str, list] = {"name": [], "psnr_y": [], "psnr_y_8bit": [], "pyiqa_psnry_crop4": [], "pyiqa_psnry": []}
    for b in test_pairs("default"):
        hr = b["hr"].float()
        sr = F.interpolate(b["lr"].float(), size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            rows["psnr_y"] += psnr_y(sr, hr, crop_border=SCALE).tolist()
            rows["psnr_y_8bit"] += psnr_y(sr, hr, crop_border=SCALE, quantize=True).tolist()
            rows["pyiqa_psnry_crop4"] += iqa_crop(sr, hr).flatten().tolist()
            rows["pyiqa_psnry"] += iqa_default(sr, hr).flatten().tolist()
        rows["name"] += [str(n) for n in b["name"]]
    summary: dict[str, object] = {k: bootstrap_ci(v).as_dict() for k, v in rows.items() if k != "name"}
    for k in ("psnr_y_8bit", "pyiqa_psnry_crop4", "pyiqa_psnry"):
        summary[f"{k} - psnr_y"] = paired_difference(rows[k], rows["psnr_y"]).as_dict()
    summary["20*log10(255/219)"] = 20 * math.log10(255 / 219)
    write_record("results/metrics/luma_conventions.json", {
        "what": "PSNR of the Bicubic row (torch bicubic x4, clamped) vs HR under four luma/rounding conventions",
        "data": DATA + ", default degradation (noise + JPEG)",
        "summary": summary,
        "per_image": [dict(zip(rows, v)) for v in zip(*rows.values())],
    })


if __name__ == "__main__":
    main()
