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

Output names (``ssr_lightning.cli.sr_output_names``): ``OUT/<stem>.png``; inputs whose names would coincide (maps
included) are named apart by extension, folder, then number (``a_jpg.png``, ``a_d1.png``, ``a_1.png``). With one
input file, ``-o result.png`` names the file itself. ``--save-maps`` writes ``<stem>_depth.png`` (SVKR's D_T,
16-bit, black = near), ``<stem>_kernel_var.png`` (per-pixel kernel variance, magma colour map) and
``<stem>_maps.npz`` (both as float arrays) beside it.

Memory: SVKR keeps per LR pixel its kernel codes, moments and depths (never a 441-channel kernel field), KE and NBSR
run in tiles (``--frontend-tile``), the diffusion in fused tiles with one band of predictions, and the PNG is written
in bands: what grows with the image is the per-pixel state (the stepped latent, the condition latent and the maps the
UNet reads), estimated by ``MEMORY_FORMULA`` (``ssr_lightning.cli.sr_inputs``, fitted to results/large_images) and
printed for the largest input. SVKR's stages and the tiles of every denoising step show progress bars.

The model's settings are used unless a flag overrides one: the sampling it was validated with (its checkpoint's
``ssr.sampling``; ``--sampler``, ``--steps``, ``--strength``, ``--start``, ``--guidance``, ``--color-fix``, ``--seed``,
``--tile``, ``--overlap``: one flag per ``SamplingConfig`` field, generated from it) and the SVKR its stage named
(``ssr.svkr``; ``--dkenet-ckpt``, ``--nbsr-ckpt``, ``--depth``, ``--depth-ckpt``, ``--iterations``, ``--gamma``: one per
``SVKRConfig`` field). A flag replaces only its own field (docs/DESIGN.md §4). Large images: DE sees the whole
image at its working size, KE and NBSR run in tiles with a halo; the diffusion runs in overlapping tiles
(``--tile``/``--overlap``, LR pixels) fused at every denoising step. ``--from DIR`` takes every checkpoint from a
results folder of ``ssr-ablate ablations/pipeline.yaml`` (or any study with one finished cell).

Examples::

    ssr sr photo.png -o photo_x4.png --ckpt runs/ssrdiffusion/version_0/checkpoints/best.ckpt
    ssr sr lr_folder/ -o sr_folder/ --save-maps --tile 64 --overlap 16 --steps 20
    ssr sr photo.png -o out/ --from results/my_pipeline --color-fix wavelet --guidance 0.5
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from PIL import Image
from tqdm.auto import tqdm

from ssr_lightning.cli.parsing import dataclass_flags, flag, flag_values
from ssr_lightning.cli.sr_inputs import (
    MAX_PIXELS,
    MEMORY_FORMULA,
    InputError,
    check_inputs,
    collect_inputs,
    estimate_memory,
    memory_note,
)
from ssr_lightning.cli.sr_output_names import (
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
from ssr_lightning.data.png_stream import PNGStream
from ssr_lightning.diffusion.config import ComputeConfig, SamplingConfig, SamplingError
from ssr_lightning.files import atomic_path, atomic_write
from ssr_lightning.inference.svkr import SVKRConfig

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
    # one flag per field of the front end's and the sampler's settings; None keeps the model's value
    dataclass_flags(p, SVKRConfig, "left out: the model's SVKR setting")
    dataclass_flags(p, SamplingConfig, "left out: the model's sampling")
    dataclass_flags(p, ComputeConfig, "left out: the default")
    p.add_argument("--save-maps", action="store_true", help="also write depth and kernel-variance maps")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the inputs)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse inputs with more LR pixels than this, read from the file header before any model "
                        f"loads (default {MAX_PIXELS:,} = 4000x3000). Peak memory is estimated as "
                        f"{MEMORY_FORMULA} (fitted to the record results/large_images; about "
                        f"{estimate_memory(4000, 3000) / 1e9:.0f} GB at the default)")
    return p


def _usage(message: str) -> int:
    print(f"ssr sr: {message}", file=sys.stderr)
    return 2


def _sampling(args: Any, base: SamplingConfig | None) -> tuple[SamplingConfig | None, str | None]:
    """``base`` (the model's sampling) with the sampling flags given, validated by ``SamplingConfig`` (the one
    check), or a problem naming the flags. ``base`` None: the flags alone, before the model is read (a problem that
    involves a setting no flag gave waits for the model's)."""
    given = flag_values(args, SamplingConfig)
    try:
        return (base or SamplingConfig()).replace(**given), None
    except SamplingError as err:
        if set(err.fields) <= set(given):
            return None, err.spelled(flag)
        if base is None:
            return None, None
        if err.fields[0] in given:
            theirs = ", ".join(f"{f} {getattr(base, f)}" for f in err.fields if f not in given)
            return None, f"{err.spelled(flag)} (the model's {theirs})"
        field = next(f for f in err.fields if f in given)  # a flag made a setting of the model's invalid
        return None, (f"{flag(field)} {given[field]} makes the model's {err.fields[0]} {err.value} invalid: "
                      f"{err.detail}")


def _svkr(args: Any, base: SVKRConfig) -> tuple[SVKRConfig | None, str | None]:
    """``base`` with the SVKR flags given (validated by ``SVKRConfig``), or a problem naming the flags."""
    given = flag_values(args, SVKRConfig)
    try:
        return dataclasses.replace(base, **given), None
    except ValueError as err:
        return None, f"{' / '.join(f'{flag(k)} {v}' for k, v in given.items())}: {err}"


def _compute(args: Any) -> tuple[ComputeConfig | None, str | None]:
    """``ComputeConfig`` with the layout flags given, or a problem naming them."""
    given = flag_values(args, ComputeConfig)
    try:
        return ComputeConfig().replace(**given), None
    except ValueError as err:
        return None, f"{' / '.join(f'{flag(k)} {v}' for k, v in given.items())}: {err}"


def _check_options(args: Any) -> str | None:
    """The flags alone (before any checkpoint is read): each checked by the dataclass that declares it."""
    if args.max_pixels < 1:
        return f"--max-pixels {args.max_pixels}: must be >= 1"
    problem = _compute(args)[1]
    if problem:
        return problem
    if args.depth == "gt":
        return "--depth gt: a user's image has no ground-truth depth; use learned, midas or dpt"
    return _sampling(args, None)[1] or _svkr(args, SVKRConfig())[1]


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


def _check_tile(args: Any, sampling: SamplingConfig, geometry: Any) -> str | None:
    """The tile and overlap used (a flag, else the model's sampling setting) against the model's sizes (a
    ``ModelGeometry``), or None."""
    if not sampling.tile:
        return None
    name = f"--tile {sampling.tile}" if args.tile is not None else f"the model's sampling tile {sampling.tile}"
    tile = geometry.tile(sampling.tile)
    if tile < geometry.min_tile:
        return (f"{name}: this model needs tiles of at least {geometry.min_tile} LR px (sides are "
                f"multiples of {geometry.multiple}; its UNet's deepest level needs 2 latent px): use --tile "
                f"{geometry.min_tile} or more, or --tile 0 (the whole image at once)")
    if sampling.overlap >= tile:
        overlap = f"--overlap {sampling.overlap}" if args.overlap is not None else (
            f"the model's sampling overlap {sampling.overlap}")
        return (f"{overlap} must be smaller than the tile, {tile} LR px ({name} rounded down to a multiple of "
                f"{geometry.multiple})")
    return None


def _read_model(args: Any) -> tuple[Any, Any, SamplingConfig | None, str | None]:
    """The diffusion checkpoint read (no network built), its geometry and the sampling used (the model's, with the
    flags), or a usage problem."""
    from ssr_lightning.inference.checkpoints import (
        CheckpointError,
        read_checkpoint,
        resolve_checkpoint,
    )
    from ssr_lightning.inference.pipeline import checkpoint_geometry, model_sampling, model_svkr

    try:
        data = read_checkpoint(resolve_checkpoint(args.ckpt, "ssrdiffusion"), "ssrdiffusion")
        geometry, own = checkpoint_geometry(data), model_sampling(data)
        svkr_problem = _svkr(args, model_svkr(data))[1]
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError, KeyError, TypeError) as err:
        return None, None, None, f"cannot load the models: {err}"
    sampling, problem = _sampling(args, own)
    return data, geometry, sampling, problem or svkr_problem


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


def _to_uint8(band: torch.Tensor) -> np.ndarray:
    """``(1, 3, n, W)`` float in [0, 1] → ``(n, W, 3)`` uint8, rounded as ``save_image`` rounds."""
    return (np.clip(band[0].permute(1, 2, 0).numpy().astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _write_output(pipe: Any, lr: torch.Tensor, dst: Path, save_maps: bool) -> None:
    """Super-resolve ``lr`` straight into ``dst`` (a PNG written band by band into a temporary file); the maps are
    written before the SR file is renamed into place, so an SR output exists only once its input is complete."""
    s, (h, w) = pipe.scale, lr.shape[-2:]
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        png = PNGStream(fh, s * w, s * h)
        result = pipe(lr, out=lambda _row, band: png.write(_to_uint8(band)))
        png.close()
        if save_maps:
            _save_maps(dst, result.depth, result.kernel_var)


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
    data = geometry = sampling = None
    if sizes:  # the model's size needs and sampling, from its checkpoint's ssr block: no network is built yet
        data, geometry, sampling, problem = _read_model(args)
        problem = problem or (_check_tile(args, sampling, geometry) if geometry is not None else None)
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

        # the model's SVKR and sampling settings, each flag replacing only its own field
        pipe = SSRPipeline.from_checkpoint(data, svkr=flag_values(args, SVKRConfig), sampling=sampling,
                                           device=device, progress=True, compute=_compute(args)[0]) if todo else None
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as err:
        if not existed:
            _remove_if_empty(folder)
        return _usage(f"cannot load the models: {err}")
    problem = (_check_tile(args, pipe.sampling, pipe.geometry) if pipe is not None and geometry is None
               else None)  # pretrained backbone: its sizes are known once loaded
    if problem:
        return _usage(problem)
    failed: list[str] = [str(f) for f in bad]
    with tqdm(todo, desc="ssr sr", unit="img", disable=len(todo) < 2) as bar:
        for src in bar:
            try:
                lr = torch.from_numpy(_read(src, args.max_pixels)).permute(2, 0, 1)[None]
                _write_output(pipe, lr, plan[src], args.save_maps)
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
