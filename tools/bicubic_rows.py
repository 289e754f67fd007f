"""The "Bicubic" reference row with torch's bicubic (A = −0.75) and with MATLAB's `imresize` (A = −0.5).

    OMP_NUM_THREADS=1 python tools/bicubic_rows.py      # writes results/metrics/bicubic_rows.json

Same LR images (the 24 embedded test scenes of Table 2, tools/embedded_pairs.py), upsampled ×4 by
`bicubic_upsample(lr, 4, "torch")` (what `EvalWriter(source="bicubic")` scores today) and by
`bicubic_upsample(lr, 4, "matlab")`, clamped to [0, 1], scored with the suite's PSNR-Y / SSIM-Y (4 px crop). Per
image values, the paired difference matlab − torch with its 95 % bootstrap CI and p, for the default degradation
(noise + JPEG) and the noise-free one (configs/degradation/clean.yaml).
"""

from __future__ import annotations

import torch
from embedded_pairs import DATA, test_pairs, write_record  # tools/ is the script's folder, first on sys.path

from ssr_lightning.degradation.resize import bicubic_upsample
from ssr_lightning.metrics import psnr_y, ssim_y
from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference_seeds

SCALE = 4


def main() -> None:
    torch.set_num_threads(1)
    summary: dict[str, object] = {}
    per_image: dict[str, list[dict[str, object]]] = {}
    for degradation in ("default", "clean"):
        rows: dict[str, list] = {"name": [], "psnr_y_torch": [], "psnr_y_matlab": [], "ssim_y_torch": [],
                                 "ssim_y_matlab": []}
        for b in test_pairs(degradation):
            hr = b["hr"].float()
            for method in ("torch", "matlab"):
                sr = bicubic_upsample(b["lr"].float(), SCALE, method).clamp(0, 1)
                rows[f"psnr_y_{method}"] += psnr_y(sr, hr, crop_border=SCALE).tolist()
                rows[f"ssim_y_{method}"] += ssim_y(sr, hr, crop_border=SCALE).tolist()
            rows["name"] += [str(n) for n in b["name"]]
        part: dict[str, object] = {k: bootstrap_ci(v).as_dict() for k, v in rows.items() if k != "name"}
        for metric in ("psnr_y", "ssim_y"):
            part[f"{metric} matlab - torch"] = paired_difference_seeds(rows[f"{metric}_matlab"],
                                                                       rows[f"{metric}_torch"]).as_dict()
        summary[degradation] = part
        per_image[degradation] = [dict(zip(rows, v)) for v in zip(*rows.values())]
    write_record("results/metrics/bicubic_rows.json", {
        "what": "Bicubic x4 reference row: torch F.interpolate (A = -0.75) vs MATLAB imresize (A = -0.5)",
        "data": DATA + "; degradations: default (noise + JPEG), clean (configs/degradation/clean.yaml)",
        "summary": summary,
        "per_image": per_image,
    })


if __name__ == "__main__":
    main()
