"""``ssr sr INPUT... -o OUT``: super-resolve image files with the full SSR pipeline (PNG out).

INPUT is image files and/or folders (their images, sorted, not recursive; every other entry of a folder is reported
as skipped, with its reason). Every file is decoded with ``ssr_lightning.data.image_io.load_image`` (EXIF
orientation applied; grayscale, palette, RGBA composited on white, 16-bit, float TIFFs by their range; the first
frame of an animation, with a note), odd sizes are reflect-padded and cropped back.

Before any model is built, the options, the inputs (from their headers: readable, at least 8×8, at most
``--max-pixels``), the outputs and ``--tile`` (against the checkpoint's config) are checked: a bad option, an output
that would replace an input, or an earlier result without ``--overwrite``, or an output folder that cannot be
written, stops the command with one line and exit status 2; a missing, unreadable, too small or too large input is
reported and the other files still complete (exit status 1 if any failed). Every file is written atomically
(temporary file + rename); Ctrl-C stops with one line and exit status 130, keeping the finished outputs.

Output names (``ssr_lightning.cli.sr_outputs``): ``OUT/<stem>.png``; inputs whose names would coincide (maps
included) are named apart by extension, folder, then number (``a_jpg.png``, ``a_d1.png``, ``a_1.png``). With one
input file, ``-o result.png`` names the file itself. ``--save-maps`` writes ``<stem>_depth.png`` (SVKR's D_T,
16-bit, black = near), ``<stem>_kernel_var.png`` (per-pixel kernel variance, magma colour map) and
``<stem>_maps.npz`` (both as float arrays) beside it.

Memory: UNet activations follow the tile size; SVKR on the whole LR image (its 441-channel kernel field: ~1.8 kB per
LR pixel), the latents, the per-tile condition features and the output grow with the image: about 1.2 GB + 6 kB per
LR pixel with SVKR (``ssr_lightning.cli.sr_inputs``; docs/EXPERIMENTS.md, issue 12, measures a 2000×1500 input).
SVKR's stages and the tiles of every denoising step show progress bars.

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
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image
from tqdm.auto import tqdm

from ssr_lightning.cli.sr_inputs import (
    MAX_PIXELS,
    MEMORY_FORMULA,
    InputError,
    check_inputs,
    collect_inputs,
    memory_note,
)
from ssr_lightning.cli.sr_outputs import (
    check_output_name,
    check_outputs,
    is_file_output,
    map_path,
    plan_outputs,
    renamed,
)
from ssr_lightning.data.image_io import (
    IMAGE_EXTENSIONS,
    ImageReadWarning,
    load_image,
    save_image,
)
from ssr_lightning.files import atomic_write

__all__ = ["build_parser", "main"]


def build_parser() -> ArgumentParser:
    """The ``ssr sr`` parser (jsonargparse: ``--config``, ``--print_config``, typed options)."""
    p = ArgumentParser(prog="ssr sr", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("inputs", nargs="+", type=str, help="LR image files and/or folders of images")
    p.add_argument("-o", "--output", type=str, required=True,
                   help="output folder (or a .png file name for a single input file)")
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
    p.add_argument("--tile", type=int, default=32,
                   help="diffusion tile side in LR pixels (0: whole image at once); rounded down to the model's size "
                        "multiple, and at least the model's smallest tile (checked from the checkpoint)")
    p.add_argument("--overlap", type=int, default=8, help="tile overlap in LR pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--save-maps", action="store_true", help="also write depth and kernel-variance maps")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the inputs)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse inputs with more LR pixels than this, read from the file header before any model "
                        f"loads (default {MAX_PIXELS:,} = 2000x2000). Peak memory with SVKR is estimated as "
                        f"{MEMORY_FORMULA} (fitted to docs/EXPERIMENTS.md issue 12; ~25 GB at the default)")
    return p


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
    if args.max_pixels < 1:
        return f"--max-pixels {args.max_pixels}: must be >= 1"
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


def _check_tile(args: Any, geometry: Any) -> str | None:
    """``--tile``/``--overlap`` against the model's sizes (a ``ModelGeometry``), or None."""
    if not args.tile:
        return None
    tile = geometry.tile(args.tile)
    if tile < geometry.min_tile:
        return (f"--tile {args.tile}: this model needs tiles of at least {geometry.min_tile} LR px (sides are "
                f"multiples of {geometry.multiple}; its UNet's deepest level needs 2 latent px): use --tile "
                f"{geometry.min_tile} or more, or --tile 0 (the whole image at once)")
    if args.overlap >= tile:
        return (f"--overlap {args.overlap} must be smaller than the tile, {tile} LR px (--tile {args.tile} rounded down "
                f"to a multiple of {geometry.multiple})")
    return None


def _read_model(args: Any) -> tuple[Any, Any, str | None]:
    """The diffusion checkpoint read (no network built) and its geometry, or a usage problem."""
    from ssr_lightning.inference.checkpoints import (
        CheckpointError,
        read_checkpoint,
        resolve_checkpoint,
    )
    from ssr_lightning.inference.pipeline import checkpoint_geometry

    try:
        data = read_checkpoint(resolve_checkpoint(args.ckpt, "ssrdiffusion"), "ssrdiffusion")
        return data, checkpoint_geometry(data), None
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError, KeyError, TypeError) as err:
        return None, None, f"cannot load the models: {err}"


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
        atomic_write(map_path(dst, "_depth.png"), lambda tmp: depth16.save(tmp, format="PNG"))
    if kvar is not None:
        arrays["kernel_var"] = kvar[0, 0].numpy()
        save_image(map_path(dst, "_kernel_var.png"), heatmap(kvar)[0].permute(1, 2, 0).numpy())
    if arrays:
        atomic_write(map_path(dst, "_maps.npz"), lambda tmp: np.savez_compressed(tmp, **arrays))


def _read(src: Path, max_pixels: int) -> np.ndarray:
    """``load_image``, its notes (first frame only, float range) printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageReadWarning)
        img = load_image(src, max_pixels=max_pixels)
    for w in caught:
        if issubclass(w.category, ImageReadWarning):
            tqdm.write(f"ssr sr: NOTE {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return img


class _Progress:
    """What a Ctrl-C message needs: how far the run got."""

    def __init__(self) -> None:
        self.done, self.total, self.output, self.made = 0, 0, None, None

    def interrupted(self) -> None:
        if self.made is not None and self.done == 0:
            _remove_if_empty(self.made)
        where = f" to {self.output}" if self.output is not None else ""
        print(f"ssr sr: interrupted (Ctrl-C): {self.done}/{self.total} images written{where} and kept; no partial "
              "file left", file=sys.stderr)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only an empty folder this run made
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 all done, 1 some file failed, 2 usage error or models not loadable,
    130 interrupted)."""
    progress = _Progress()
    try:
        return _run(build_parser().parse_args(argv), progress)
    except KeyboardInterrupt:
        progress.interrupted()
        return 130


def _run(args: Any, progress: _Progress) -> int:
    problem = _check_options(args) or _from_folder(args)
    if problem:
        return _usage(problem)
    try:
        files, skipped = collect_inputs(args.inputs)
    except InputError as err:
        return _usage(str(err))
    if skipped:
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        print(f"ssr sr: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the input folders: "
              f"{', '.join(skipped[:10])}{more}", file=sys.stderr)
    if not files:
        return _usage(f"no images found in {' '.join(args.inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    output = Path(args.output)
    folder_given = any(Path(i).is_dir() for i in args.inputs)
    problem = check_output_name(output, files, folder_given)
    if problem:
        return _usage(problem)
    single = len(files) == 1 and not folder_given
    plan = plan_outputs(files, output, single, args.save_maps)
    bad, sizes = check_inputs(files, args.max_pixels)
    problem = check_outputs({f: d for f, d in plan.items() if f not in bad}, files, args.save_maps, args.overwrite)
    if problem:
        return _usage(problem)
    data = geometry = None
    if sizes:  # the model's size needs, from its checkpoint's config: no network is built yet
        data, geometry, problem = _read_model(args)
        problem = problem or (_check_tile(args, geometry) if geometry is not None else None)
        if problem:
            return _usage(problem)
        for f, (w, h) in list(sizes.items()):
            if geometry is not None and min(w, h) < geometry.min_side:
                bad[f] = f"{w}x{h} px is too small for this model: it needs at least {geometry.min_side} LR px a side"
                del sizes[f]
    folder = output.parent if single and is_file_output(output) else output
    existed = folder.exists()
    problem = _check_writable(folder)
    if problem:
        return _usage(problem)
    progress.output, progress.total, progress.made = output, len(files), None if existed else folder
    for f, why in bad.items():
        print(f"ssr sr: FAILED {f}: {why}", file=sys.stderr)
    names = renamed(plan, single)
    if names:
        print(f"ssr sr: inputs share a name, so their outputs are named apart: {', '.join(names)}", file=sys.stderr)
    todo = [f for f in files if f in sizes]
    if todo:
        print(f"ssr sr: {memory_note(sizes)}", file=sys.stderr)
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
            data, svkr=svkr, device=device, tile=args.tile, overlap=args.overlap,
            num_inference_steps=args.steps, seed=args.seed, strength=args.strength, progress=True,
            start=args.start, guidance=args.guidance, color_fix=args.color_fix,
        ) if todo else None
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as err:
        if not existed:
            _remove_if_empty(folder)
        return _usage(f"cannot load the models: {err}")
    problem = _check_tile(args, pipe.geometry) if pipe is not None and geometry is None else None  # pretrained
    if problem:
        return _usage(problem)
    failed: list[str] = [str(f) for f in bad]
    with tqdm(todo, desc="ssr sr", unit="img", disable=len(todo) < 2) as bar:
        for src in bar:
            try:
                lr = torch.from_numpy(_read(src, args.max_pixels)).permute(2, 0, 1)[None].float()
                result = pipe(lr)
                dst = plan[src]
                if args.save_maps:  # maps first: an SR output exists only once its input is complete
                    _save_maps(dst, result.depth, result.kernel_var)
                save_image(dst, result.sr[0].permute(1, 2, 0).numpy())
                progress.done += 1
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
                tqdm.write(f"ssr sr: FAILED {src}: {err}", file=sys.stderr)
                failed.append(str(src))
    done = len(files) - len(failed)
    print(f"ssr sr: {done}/{len(files)} images written to {output}" + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; {len(skipped)} skipped (listed above)" if skipped else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
