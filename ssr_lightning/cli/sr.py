"""``ssr sr INPUT... -o OUT``: super-resolve image files with the full SSR pipeline (PNG out).

INPUT is image files and/or folders (their images, sorted, not recursive). Every file is decoded with
``ssr_lightning.data.image_io.load_image`` (grayscale, palette, RGBA composited on white, 16-bit), odd sizes are
reflect-padded and cropped back.

Before any model is loaded, the options, the inputs and the outputs are checked: an output that would replace an
input, or an earlier result without ``--overwrite``, or an output folder that cannot be written, stops the command
with exit status 2; a missing, undecodable or too small input (< 8×8 px) is reported and the other files still
complete (exit status 1 if any failed). Every file is written atomically (temporary file + rename).

Output: ``OUT/<stem>.png``; inputs that share a stem (``a.jpg``, ``a.png``) get ``OUT/<stem>_<ext>.png`` each. With
one input file, ``-o result.png`` names the file itself. ``--save-maps`` writes ``<stem>_depth.png`` (SVKR's D_T,
16-bit, black = near), ``<stem>_kernel_var.png`` (per-pixel kernel variance, magma colour map) and
``<stem>_maps.npz`` (both as float arrays) beside it.

Memory: UNet activations follow the tile size; SVKR on the whole LR image (its 441-channel kernel field: ~1.8 kB per
LR pixel), the latents, the per-tile condition features and the output grow with the image (docs/EXPERIMENTS.md,
issue 12, measures a 2000×1500 input). Large inputs show a per-step tile progress bar.

Large images: SVKR runs once on the whole image; the diffusion runs in overlapping tiles (``--tile``/``--overlap``,
LR pixels) fused at every denoising step. ``--start``, ``--strength``, ``--guidance`` and ``--color-fix`` override
the model's sampling settings (docs/DESIGN.md §4). ``--from DIR`` takes every checkpoint from a results folder of
``ssr-ablate ablations/pipeline.yaml`` (or any study with one finished cell).

Examples::

    ssr sr photo.png -o photo_x4.png --ckpt runs/ssrdiffusion/version_0/checkpoints/best.ckpt
    ssr sr lr_folder/ -o sr_folder/ --save-maps --tile 32 --overlap 8 --steps 20
    ssr sr photo.png -o out/ --from results/my_pipeline --color-fix wavelet --guidance 0.5
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image
from tqdm.auto import tqdm

from ssr_lightning.data.image_io import IMAGE_EXTENSIONS, load_image, save_image
from ssr_lightning.files import atomic_write

__all__ = ["build_parser", "collect_inputs", "main", "output_path", "plan_outputs"]

MIN_SIDE = 8  # LR pixels: below this the depth and diffusion networks have no spatial extent left


def build_parser() -> ArgumentParser:
    """The ``ssr sr`` parser (jsonargparse: ``--config``, ``--print_config``, typed options)."""
    p = ArgumentParser(prog="ssr sr", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("inputs", nargs="+", type=str, help="LR image files and/or folders of images")
    p.add_argument("-o", "--output", type=str, required=True,
                   help="output folder (or a .png file name for a single input)")
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="diffusion checkpoint (default: the newest runs/ssrdiffusion run's best.ckpt)")
    p.add_argument("--from", dest="from_dir", type=str | None, default=None,
                   help="an ssr-ablate results folder with one finished cell (ablations/pipeline.yaml): its ssr, "
                        "dkenet, nbsr and depth checkpoints (explicit --ckpt/--*-ckpt flags win)")
    p.add_argument("--dkenet-ckpt", type=str | None, default=None, help="KE checkpoint for SVKR (default: the model's)")
    p.add_argument("--nbsr-ckpt", type=str | None, default=None, help="NBSR checkpoint for SVKR (default: the model's)")
    p.add_argument("--depth", type=Literal["learned", "midas", "dpt"] | None, default=None,
                   help="SVKR depth estimator (default: the model's)")
    p.add_argument("--depth-ckpt", type=str | None, default=None, help="depth weights for SVKR (default: the model's)")
    p.add_argument("--iterations", type=int | None, default=None,
                   help="SVKR's T, refinement steps after the first DE -> KE -> NBSR pass (default: 3)")
    p.add_argument("--steps", type=int | None, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--strength", type=float | None, default=None,
                   help="1: sample from pure noise; <1: start from the noised LR latent at t=strength*T "
                        "(default: the model's)")
    p.add_argument("--start", type=Literal["noise", "lr", "frontend"] | None, default=None,
                   help="start image for --strength < 1: lr (bicubic LR) or frontend (SVKR's I_T); noise needs "
                        "strength 1 (default: the model's)")
    p.add_argument("--guidance", type=float | None, default=None,
                   help="kernel-aware guidance step (BlindDiff; 0 = off, 1 = a full line-search step; default: the "
                        "model's)")
    p.add_argument("--color-fix", type=Literal["none", "wavelet", "adain"] | None, default=None,
                   help="colour correction from the condition image (default: the model's)")
    # 32/8: twice the tiny default's training patch (16 LR px); whole images far larger than the training patches
    # show stripes 15 LR rows from each edge with that model (docs/EXPERIMENTS.md, issue 12)
    p.add_argument("--tile", type=int, default=32, help="diffusion tile side in LR pixels (0: whole image at once)")
    p.add_argument("--overlap", type=int, default=8, help="tile overlap in LR pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--save-maps", action="store_true", help="also write depth and kernel-variance maps")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the inputs)")
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


def output_path(src: Path, output: Path, single: bool, tag: str = "") -> Path:
    """Where the SR of ``src`` goes: ``output`` itself for one input with a .png name, else ``output/<stem><tag>.png``."""
    if single and output.suffix.lower() == ".png":
        return output
    return output / f"{src.stem}{tag}.png"


def _map_paths(dst: Path) -> list[Path]:
    return [dst.with_name(f"{dst.stem}_{k}") for k in ("depth.png", "kernel_var.png", "maps.npz")]


def plan_outputs(files: list[Path], output: Path, single: bool) -> dict[Path, Path]:
    """``input -> output`` with distinct outputs: inputs sharing a stem get ``_<ext>`` (``a_jpg.png``, ``a_png.png``)."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {f: output_path(f, output, single, f"_{f.suffix.lstrip('.').lower()}" if stems[f.stem] > 1 else "")
            for f in files}


def _usage(message: str) -> int:
    print(f"ssr sr: {message}", file=sys.stderr)
    return 2


def _check_options(args: Any) -> str | None:
    if args.steps is not None and args.steps < 1:
        return f"--steps {args.steps}: must be >= 1 (leave it out for the model's default)"
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        return f"--strength {args.strength}: must be in (0, 1] (1 = from pure noise)"
    if args.tile < 0 or args.overlap < 0:
        return f"--tile {args.tile} / --overlap {args.overlap}: must be >= 0 (--tile 0: no tiling)"
    if args.tile and args.overlap >= args.tile:
        return f"--overlap {args.overlap} must be smaller than --tile {args.tile}"
    if args.iterations is not None and args.iterations < 0:
        return f"--iterations {args.iterations}: must be >= 0 (0 = one DE -> KE -> NBSR pass)"
    if args.guidance is not None and args.guidance < 0:
        return f"--guidance {args.guidance}: must be >= 0 (0 = off)"
    if args.start == "noise" and args.strength is not None and args.strength < 1:
        return f"--start noise runs every step from pure noise: --strength {args.strength} must be 1 (or --start lr)"
    return None


def _from_folder(args: Any) -> str | None:
    """Fill --ckpt and the SVKR checkpoints from ``--from DIR`` (flags given explicitly win); a problem or None."""
    if not args.from_dir:
        return None
    from ssr_lightning.ablate.execute import Layout

    try:
        stages = Layout(args.from_dir).trained_stages()
    except (FileNotFoundError, ValueError) as err:
        return f"--from {args.from_dir}: {err}"
    if "ssr" not in stages:
        return (f"--from {args.from_dir}: its finished cell trained no 'ssr' (diffusion) stage (stages: "
                f"{', '.join(stages) or 'none'}); pass --ckpt")
    args.ckpt = args.ckpt or str(stages["ssr"])
    args.dkenet_ckpt = args.dkenet_ckpt or (str(stages["dkenet"]) if "dkenet" in stages else None)
    args.nbsr_ckpt = args.nbsr_ckpt or (str(stages["nbsr"]) if "nbsr" in stages else None)
    args.depth_ckpt = args.depth_ckpt or (str(stages["depth"]) if "depth" in stages else None)
    return None


def _check_inputs(files: list[Path]) -> dict[Path, str]:
    """Problems of the inputs found without decoding whole images: missing, unreadable, too small."""
    bad: dict[Path, str] = {}
    for f in files:
        if not f.is_file():
            bad[f] = "no such file"
            continue
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as err:  # noqa: BLE001 - any decoder error means "not an image we can read"
            bad[f] = f"not a readable image ({type(err).__name__}); convert it to PNG or JPEG"
            continue
        if min(w, h) < MIN_SIDE:
            bad[f] = f"{w}x{h} px is too small: ssr sr needs at least {MIN_SIDE}x{MIN_SIDE} LR pixels"
    return bad


def _check_outputs(plan: dict[Path, Path], inputs: list[Path], save_maps: bool, overwrite: bool) -> str | None:
    sources = {f.resolve() for f in inputs if f.exists()}
    existing = []
    for dst in plan.values():
        for target in [dst, *(_map_paths(dst) if save_maps else [])]:
            if target.resolve() in sources:
                return (f"output {target} is one of the inputs: it would be replaced by its own SR result. Choose "
                        "another output folder (-o)")
            if target.exists():
                existing.append(target)
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        return (f"{', '.join(str(e) for e in existing[:3])}{more} already exist: pass --overwrite to replace them, "
                "or choose another output folder (-o)")
    return None


def _check_writable(folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ssr_sr_write_test_"):
            pass
    except OSError as err:
        return f"cannot write to the output folder {folder}: {err.strerror or err}. Choose a writable folder (-o)"
    return None


def _save_maps(dst: Path, depth: torch.Tensor | None, kvar: torch.Tensor | None) -> None:
    from ssr_lightning.visualize import heatmap

    arrays: dict[str, np.ndarray] = {}
    if depth is not None:
        d = depth[0, 0].clamp(0, 1).numpy()
        arrays["depth"] = d
        depth16 = Image.fromarray((d * 65535.0 + 0.5).astype(np.uint16))
        atomic_write(dst.with_name(f"{dst.stem}_depth.png"), lambda tmp: depth16.save(tmp, format="PNG"))
    if kvar is not None:
        arrays["kernel_var"] = kvar[0, 0].numpy()
        save_image(dst.with_name(f"{dst.stem}_kernel_var.png"), heatmap(kvar)[0].permute(1, 2, 0).numpy())
    if arrays:
        atomic_write(dst.with_name(f"{dst.stem}_maps.npz"), lambda tmp: np.savez_compressed(tmp, **arrays))


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 all done, 1 some file failed, 2 usage error or models not loadable)."""
    args = build_parser().parse_args(argv)
    problem = _check_options(args) or _from_folder(args)
    if problem:
        return _usage(problem)
    files = collect_inputs(args.inputs)
    if not files:
        return _usage(f"no images found in {' '.join(args.inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    output = Path(args.output)
    single = len(files) == 1 and not Path(args.inputs[0]).is_dir()
    plan = plan_outputs(files, output, single)
    bad = _check_inputs(files)
    problem = (_check_outputs({f: d for f, d in plan.items() if f not in bad}, files, args.save_maps, args.overwrite)
               or _check_writable(output.parent if single and output.suffix.lower() == ".png" else output))
    if problem:
        return _usage(problem)
    for f, why in bad.items():
        print(f"ssr sr: FAILED {f}: {why}", file=sys.stderr)
    renamed = [f"{f.name} -> {d.name}" for f, d in plan.items() if d.stem != f.stem and not single]
    if renamed:
        print(f"ssr sr: inputs share a stem, so their outputs are named apart: {', '.join(renamed)}", file=sys.stderr)
    todo = [f for f in files if f not in bad]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        from ssr_lightning.inference.checkpoints import CheckpointError
        from ssr_lightning.inference.pipeline import SSRPipeline
        from ssr_lightning.inference.svkr import SVKRConfig

        svkr = None
        if (args.depth is not None or args.dkenet_ckpt or args.nbsr_ckpt or args.depth_ckpt
                or args.iterations is not None):
            svkr = SVKRConfig(dkenet_ckpt=args.dkenet_ckpt, nbsr_ckpt=args.nbsr_ckpt, depth=args.depth or "learned",
                              depth_ckpt=args.depth_ckpt, iterations=3 if args.iterations is None else args.iterations)
        pipe = SSRPipeline.from_checkpoint(
            args.ckpt, svkr=svkr, device=device, tile=args.tile, overlap=args.overlap,
            num_inference_steps=args.steps, seed=args.seed, strength=args.strength, progress=True,
            start=args.start, guidance=args.guidance, color_fix=args.color_fix,
        ) if todo else None
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as err:
        return _usage(f"cannot load the models: {err}")
    failed: list[str] = [str(f) for f in bad]
    for src in tqdm(todo, desc="ssr sr", unit="img", disable=len(todo) < 2):
        try:
            img = load_image(src)  # raises FileNotFoundError / ImageReadError with a clear message
            lr = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            result = pipe(lr)
            dst = plan[src]
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
