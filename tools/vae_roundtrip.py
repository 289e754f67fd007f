"""Round trip (encode → decode) of latent spaces on the embedded test split and on real photos (issue 12).

    python tools/vae_roundtrip.py runs/vae/version_0/checkpoints/best.ckpt [OTHER.ckpt ...] [--space-to-depth]
        [--photo-size 512] [--out results/vae_roundtrip.json]

Per latent space: PSNR-Y (4 px border cropped) and colour shift (largest per-channel mean difference, 8-bit levels)
of the posterior-mean reconstruction, on the 24 whole 256² embedded test scenes and on the real photographs that
installed packages ship (``data.photos``; whole, longer side ``--photo-size``), each as mean with a bootstrap 95 % CI;
with two or more checkpoints, the paired difference of each to the first. Prints a Markdown table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite
from ssr_lightning.data.photos import RealPhotos
from ssr_lightning.data.scenes import EmbeddedScenes
from ssr_lightning.diffusion.space_to_depth import SpaceToDepthLatents
from ssr_lightning.inference.checkpoints import load_model
from ssr_lightning.metrics import color_shift, psnr_y
from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference


def images(photo_size: int) -> dict[str, list[torch.Tensor]]:
    test = EmbeddedScenes("test", size=256, num_test=24)
    photos = RealPhotos(size=photo_size, variants=1)
    return {"embedded_test": [test[i]["hr"][None] for i in range(len(test))],
            "photos": [photos[i]["hr"][None] for i in range(len(photos))]}


@torch.no_grad()
def scores(ae: torch.nn.Module, imgs: list[torch.Tensor]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"psnr_y": [], "color_shift": []}
    for hr in imgs:
        f = ae.factor
        hr = hr[..., : hr.shape[-2] // f * f, : hr.shape[-1] // f * f]
        rec = ae.decode(ae.encode(hr)).clamp(0, 1)
        out["psnr_y"].append(float(psnr_y(rec, hr, crop_border=4)))
        out["color_shift"].append(float(color_shift(rec, hr)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpts", nargs="*", help="VAE stage checkpoints")
    p.add_argument("--space-to-depth", action="store_true", help="also the space-to-depth latent (factor 4)")
    p.add_argument("--photo-size", type=int, default=512)
    p.add_argument("--out", default="results/vae_roundtrip.json")
    add_overwrite_flag(p)
    args = p.parse_args()
    refuse_overwrite(p, args.overwrite, args.out)
    torch.set_num_threads(1)
    spaces = {Path(c).parent.parent.parent.name + "/" + Path(c).parent.parent.name: load_model(c, "vae")
              for c in args.ckpts}
    if args.space_to_depth:
        spaces["space_to_depth"] = SpaceToDepthLatents(4).eval()
    data = images(args.photo_size)
    results: dict[str, dict[str, dict[str, list[float]]]] = {n: {d: scores(ae, im) for d, im in data.items()}
                                                             for n, ae in spaces.items()}
    first = next(iter(results))
    report: dict[str, object] = {"per_image": results, "summary": {}}
    print("| latent space | data | PSNR-Y (dB) | colour shift (levels) | Δ PSNR-Y vs first |")
    print("| --- | --- | --- | --- | --- |")
    for name, by_data in results.items():
        for d, sc in by_data.items():
            psnr_ci, shift_ci = bootstrap_ci(np.array(sc["psnr_y"])), bootstrap_ci(np.array(sc["color_shift"]))
            diff = (paired_difference(np.array(sc["psnr_y"]), np.array(results[first][d]["psnr_y"]))
                    if name != first else None)
            report["summary"][f"{name}/{d}"] = {"psnr_y": psnr_ci.as_dict(), "color_shift": shift_ci.as_dict(),
                                                "delta_psnr_y": diff.as_dict() if diff else None,
                                                "n": len(sc["psnr_y"])}
            print(f"| {name} | {d} (n={len(sc['psnr_y'])}) | {psnr_ci.format()} | {shift_ci.format()} | "
                  f"{diff.format(signed=True) if diff else '-'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
