"""``ssr sr INPUT... -o OUT``: super-resolve image files with the full SSR pipeline (PNG out).

INPUT is image files and/or folders (their images, sorted, not recursive). Every file is decoded with
``ssr_lightning.data.image_io.load_image`` (grayscale, palette, RGBA composited on white, 16-bit), odd sizes are
reflect-padded and cropped back. A missing path or a file that cannot be decoded prints one clear line and the
other files still complete; the exit code is 1 if any file failed (2 if the models could not be loaded).

Output: ``OUT/<stem>.png``; with one input file, ``-o result.png`` names the file itself. ``--save-maps`` writes
``<stem>_depth.png`` (SVKR's D_T, 16-bit, black = near), ``<stem>_kernel_var.png`` (per-pixel kernel variance,
magma colour map) and ``<stem>_maps.npz`` (both as float arrays) beside it.

Examples::

    ssr sr photo.png -o photo_x4.png --ckpt runs/ssrdiffusion/version_0/checkpoints/best.ckpt
    ssr sr lr_folder/ -o sr_folder/ --save-maps --tile 64 --overlap 16 --steps 20
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image
from tqdm.auto import tqdm

from ssr_lightning.data.image_io import IMAGE_EXTENSIONS, load_image, save_image

__all__ = ["build_parser", "collect_inputs", "main", "output_path"]


def build_parser() -> ArgumentParser:
    """The ``ssr sr`` parser (jsonargparse: ``--config``, ``--print_config``, typed options)."""
    p = ArgumentParser(prog="ssr sr", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("inputs", nargs="+", type=str, help="LR image files and/or folders of images")
    p.add_argument("-o", "--output", type=str, required=True,
                   help="output folder (or a .png file name for a single input)")
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="diffusion checkpoint (default: the newest runs/ssrdiffusion run's best.ckpt)")
    p.add_argument("--dkenet-ckpt", type=str | None, default=None, help="KE checkpoint for SVKR (default: the model's)")
    p.add_argument("--nbsr-ckpt", type=str | None, default=None, help="NBSR checkpoint for SVKR (default: the model's)")
    p.add_argument("--depth", type=Literal["learned", "midas", "dpt"] | None, default=None,
                   help="SVKR depth estimator (default: the model's)")
    p.add_argument("--depth-ckpt", type=str | None, default=None, help="depth weights for SVKR (default: the model's)")
    p.add_argument("--steps", type=int | None, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--strength", type=float | None, default=None,
                   help="1: sample from pure noise; <1: start from the noised LR latent at t=strength*T "
                        "(default: the model's)")
    p.add_argument("--tile", type=int, default=64, help="tile side in LR pixels (0: whole image at once)")
    p.add_argument("--overlap", type=int, default=16, help="tile overlap in LR pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--save-maps", action="store_true", help="also write depth and kernel-variance maps")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    return p


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files named directly (kept even if missing, to be reported) plus the images inside named folders."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files.append(p)
    return files


def output_path(src: Path, output: Path, single: bool) -> Path:
    """Where the SR of ``src`` goes: ``output`` itself for one input with a .png name, else ``output/<stem>.png``."""
    if single and output.suffix.lower() == ".png":
        return output
    return output / f"{src.stem}.png"


def _save_maps(dst: Path, depth: torch.Tensor | None, kvar: torch.Tensor | None) -> None:
    from ssr_lightning.visualize import heatmap

    arrays: dict[str, np.ndarray] = {}
    if depth is not None:
        d = depth[0, 0].clamp(0, 1).numpy()
        arrays["depth"] = d
        Image.fromarray((d * 65535.0 + 0.5).astype(np.uint16)).save(dst.with_name(f"{dst.stem}_depth.png"))
    if kvar is not None:
        arrays["kernel_var"] = kvar[0, 0].numpy()
        save_image(dst.with_name(f"{dst.stem}_kernel_var.png"), heatmap(kvar)[0].permute(1, 2, 0).numpy())
    if arrays:
        np.savez_compressed(dst.with_name(f"{dst.stem}_maps.npz"), **arrays)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 all done, 1 some file failed, 2 models not loadable)."""
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        from ssr_lightning.inference.pipeline import SSRPipeline
        from ssr_lightning.inference.svkr import SVKRConfig

        svkr = None
        if args.depth is not None or args.dkenet_ckpt or args.nbsr_ckpt or args.depth_ckpt:
            svkr = SVKRConfig(dkenet_ckpt=args.dkenet_ckpt, nbsr_ckpt=args.nbsr_ckpt, depth=args.depth or "learned",
                              depth_ckpt=args.depth_ckpt)
        pipe = SSRPipeline.from_checkpoint(
            args.ckpt, svkr=svkr, device=device, tile=args.tile, overlap=args.overlap,
            num_inference_steps=args.steps, seed=args.seed, strength=args.strength,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"ssr sr: cannot load the models: {err}", file=sys.stderr)
        return 2
    files = collect_inputs(args.inputs)
    if not files:
        print(f"ssr sr: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    output = Path(args.output)
    single = len(files) == 1 and not Path(args.inputs[0]).is_dir()
    failed: list[str] = []
    for src in tqdm(files, desc="ssr sr", unit="img"):
        try:
            img = load_image(src)  # raises FileNotFoundError / ImageReadError with a clear message
            lr = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            result = pipe(lr)
            dst = output_path(src, output, single)
            save_image(dst, result.sr[0].permute(1, 2, 0).numpy())
            if args.save_maps:
                _save_maps(dst, result.depth, result.kernel_var)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            tqdm.write(f"ssr sr: FAILED {src}: {err}", file=sys.stderr)
            failed.append(str(src))
    done = len(files) - len(failed)
    print(f"ssr sr: {done}/{len(files)} images written to {output}" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
