"""Where ``ssr sr`` writes: one naming rule for every file it produces, and the checks that nothing is lost.

Input ``a.png`` gives ``OUT/a.png``; with ``--save-maps`` also ``OUT/a_depth.png``, ``OUT/a_kernel_var.png`` and
``OUT/a_maps.npz``. Names are compared ignoring case (as macOS and Windows file systems do). When names of
different inputs (maps included) would coincide, every input involved is named apart, step by step, each step
only for the inputs still colliding:

1. by extension: ``a.jpg``, ``a.png`` -> ``a_jpg.png``, ``a_png.png``;
2. by folder: ``d1/a.png``, ``d2/a.png`` -> ``a_d1.png``, ``a_d2.png``;
3. by both: ``a_d1_png.png``;
4. by number: ``a_1.png``, ``a_2.png`` (the first free one, in input order).

One input file with ``-o NAME.png`` writes that file, its maps beside it (``NAME_depth.png`` ...).
Before anything runs, :func:`check_outputs` refuses an output that is one of the inputs and, without
``--overwrite``, one that exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ssr_lightning.data.image_io import IMAGE_EXTENSIONS

__all__ = ["MAP_SUFFIXES", "check_output_name", "check_outputs", "is_file_output", "map_path", "outputs_of",
           "plan_outputs", "renamed"]

MAP_SUFFIXES = ("_depth.png", "_kernel_var.png", "_maps.npz")


def map_path(dst: Path, suffix: str) -> Path:
    """The map file of the SR output ``dst``: ``suffix`` is one of :data:`MAP_SUFFIXES`."""
    return dst.with_name(dst.stem + suffix)


def outputs_of(dst: Path, save_maps: bool) -> list[Path]:
    """Every file written for the input whose SR output is ``dst``."""
    return [dst, *(map_path(dst, s) for s in MAP_SUFFIXES)] if save_maps else [dst]


def is_file_output(output: Path) -> bool:
    """``-o`` names a file rather than a folder: an image file name that is not an existing folder."""
    return output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir()


def check_output_name(output: Path, files: list[Path], folder_given: bool) -> str | None:
    """A usage problem with ``-o`` as a file name, or None."""
    if not is_file_output(output):
        return None
    if output.suffix.lower() != ".png":
        return (f"-o {output}: ssr sr writes PNG files; name the output {output.with_suffix('.png').name}, or give "
                "a folder")
    if folder_given or len(files) != 1:
        what = "an input is a folder" if folder_given else f"there are {len(files)} inputs"
        return f"-o {output} names one file, but {what}: give an output folder (e.g. -o {output.stem}/)"
    return None


def _tag(text: str) -> str:
    return text or "x"


_STEPS: tuple[Callable[[Path], str], ...] = (
    lambda f: f.stem,
    lambda f: f"{f.stem}_{_tag(f.suffix.lstrip('.').lower())}",
    lambda f: f"{f.stem}_{_tag(f.resolve().parent.name)}",
    lambda f: f"{f.stem}_{_tag(f.resolve().parent.name)}_{_tag(f.suffix.lstrip('.').lower())}",
)


def _names(stem: str, save_maps: bool) -> list[str]:
    return [n.casefold() for n in [stem + ".png", *((stem + s) for s in MAP_SUFFIXES if save_maps)]]


def plan_outputs(files: list[Path], output: Path, single: bool, save_maps: bool = False) -> dict[Path, Path]:
    """``input -> SR output`` by the rule of the module doc: all outputs distinct, maps included (``save_maps``).
    ``files`` are distinct files (``collect_inputs`` drops repeats)."""
    if single and is_file_output(output):
        return {files[0]: output}
    level = [0] * len(files)
    while True:  # every pass moves at least one input a step on: at most 4 passes per input
        named = [i for i in range(len(files)) if level[i] < len(_STEPS)]
        names = {i: _names(_STEPS[level[i]](files[i]), save_maps) for i in named}
        counts = Counter(n for i in named for n in names[i])
        clash = [i for i in named if any(counts[n] > 1 for n in names[i])]
        if not clash:
            break
        for i in clash:
            level[i] += 1
    stems = {i: _STEPS[level[i]](files[i]) for i in named}
    used = {n for i in named for n in names[i]}
    for i in range(len(files)):
        if i in stems:
            continue
        k = 1
        while any(n in used for n in _names(f"{files[i].stem}_{k}", save_maps)):
            k += 1
        stems[i] = f"{files[i].stem}_{k}"
        used.update(_names(stems[i], save_maps))
    return {f: output / f"{stems[i]}.png" for i, f in enumerate(files)}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(plan: dict[Path, Path], inputs: list[Path], save_maps: bool, overwrite: bool) -> str | None:
    """A usage problem with the planned outputs, or None: one of them is an input (the same file, whatever its
    name: hard links and case-insensitive file systems included), or exists and ``overwrite`` is off."""
    sources = {ident: f for f in inputs if (ident := _identity(f)) is not None}
    existing = []
    for dst in plan.values():
        for target in outputs_of(dst, save_maps):
            ident = _identity(target)
            if ident is None:
                continue
            if ident in sources:
                return (f"output {target} is one of the inputs ({sources[ident]}): it would be replaced by an SR "
                        "result. Choose another output folder (-o)")
            existing.append(target)
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        return (f"{', '.join(str(e) for e in existing[:3])}{more} already exist: pass --overwrite to replace them, "
                "or choose another output folder (-o)")
    return None


def renamed(plan: dict[Path, Path], single: bool) -> list[str]:
    """``input -> output name`` for the inputs named apart (not a single input's ``-o NAME.png``)."""
    return [] if single else [f"{f} -> {d.name}" for f, d in plan.items() if d.stem != f.stem]
