"""What ``ssr sr`` reads: the input files, every folder entry it does not take (with the reason), and the checks made
from file headers alone, before any model loads: readable, at least ``MIN_SIDE`` px, at most ``--max-pixels``.

Memory: the peak host memory of one image is estimated as ``MEMORY_BASE + MEMORY_PER_LR_PIXEL`` × LR pixels plus
the diffusion's cache of per-tile condition features (``FEATURE_BYTES_PER_LR_PIXEL`` × LR pixels, at most
``ComputeConfig.feature_cache_mb``), fitted to the large-image records (results/large_images). Up to
``STORAGE_AUTO_PIXELS`` the state is float32; what grows with the picture is the stepped latent (192 B per LR pixel),
the condition latent (192 B), a kernel projection (128 B, only with the kernel modality), D_T, the kernel-variance map
and the LR (~24 B); the output is written in bands. That part of the estimate was fitted to the issue-12 default (all
modalities) and stays above every measurement of the re-made default (2000×1500: 3.6 GB estimated, 3.1 GB measured).
Above ``STORAGE_AUTO_PIXELS`` (``ComputeConfig.storage`` auto) both latents and the projection are float16:
``MEMORY_BASE_FLOAT16`` and ``MEMORY_PER_LR_PIXEL_FLOAT16`` are fitted to the two-thread records of the shipped
default at 2000×1500 (float16 with a float32 stepped latent, less its 96 B per pixel) and 4000×3000 (4.6 GB
measured, 4.75 GB estimated), rounded up; the kernel modality (``configs/diffusion/ssr_amf.yaml``) adds ~70 B per LR
pixel there (its projection and D_T), not measured at that size.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssr_lightning.data.image_io import IMAGE_EXTENSIONS, ImageReadError, read_size
from ssr_lightning.diffusion.config import STORAGE_AUTO_PIXELS

__all__ = ["MAX_PIXELS", "MEMORY_FORMULA", "MIN_SIDE", "InputError", "check_inputs", "collect_inputs",
           "estimate_memory", "memory_note"]

MIN_SIDE = 8  # LR pixels: below this the depth and diffusion networks have no spatial extent left
MAX_PIXELS = 12_000_000  # LR pixels (4000×3000): about 4.75 GB by the estimate below (4.6 GB measured)
MEMORY_BASE = 1.3e9
MEMORY_PER_LR_PIXEL = 600
MEMORY_BASE_FLOAT16 = 1.45e9  # above STORAGE_AUTO_PIXELS: the latents and maps stored as float16
MEMORY_PER_LR_PIXEL_FLOAT16 = 230
FEATURE_BYTES_PER_LR_PIXEL = 760
FEATURE_CACHE_BYTES = 512 * 2**20  # ComputeConfig.feature_cache_mb's default
MEMORY_FORMULA = (f"1.3 GB + 0.6 kB per LR pixel (above {STORAGE_AUTO_PIXELS:,}, where the latents are float16: "
                  "1.45 GB + 0.23 kB per LR pixel) + cached tile features (0.76 kB per LR pixel, at most 512 MB)")


class InputError(ValueError):
    """An input folder that cannot be listed (a usage error)."""


def estimate_memory(width: int, height: int) -> float:
    """Estimated peak bytes of ``ssr sr`` (with SVKR, default compute settings) for one ``width × height`` LR image."""
    pixels = width * height
    base, per_pixel = ((MEMORY_BASE_FLOAT16, MEMORY_PER_LR_PIXEL_FLOAT16) if pixels > STORAGE_AUTO_PIXELS
                       else (MEMORY_BASE, MEMORY_PER_LR_PIXEL))
    return base + per_pixel * pixels + min(FEATURE_BYTES_PER_LR_PIXEL * pixels, FEATURE_CACHE_BYTES)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _not_taken(entry: Path) -> str | None:
    """Why a folder entry is not read as an input, or None."""
    if entry.name.startswith("."):
        return "hidden"
    if entry.is_dir():
        return "a folder: input folders are not searched recursively"
    if not entry.is_file():
        return "not a regular file"
    if entry.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({entry.suffix or 'none'})"
    return None


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files named directly (kept even if missing, to be reported) plus the images inside named folders, each once;
    and every entry not taken, as ``"path (reason)"``. Raises :class:`InputError` for a folder it cannot list."""
    files: list[Path] = []
    skipped: list[str] = []
    seen: set[Path] = set()

    def take(f: Path) -> None:
        key = f.resolve()
        if key in seen:
            skipped.append(f"{f} (given twice: read once)")
        else:
            seen.add(key)
            files.append(f)

    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            take(p)
            continue
        try:
            entries = sorted(p.iterdir())
        except OSError as err:
            raise InputError(f"cannot list the input folder {p}: {err.strerror or err}; check its permissions") from None
        for entry in entries:
            why = _not_taken(entry)
            if why:
                skipped.append(f"{entry} ({why})")
            else:
                take(entry)
    return files, skipped


def check_inputs(files: list[Path], max_pixels: int) -> tuple[dict[Path, str], dict[Path, tuple[int, int]]]:
    """From headers only (no pixel decoded): ``(problems, sizes)``, the reason each bad input cannot be used
    (missing, unreadable and why, too small, above ``max_pixels``) and ``(width, height)`` of the others."""
    bad: dict[Path, str] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for f in files:
        if not f.exists():
            bad[f] = "no such file"
            continue
        try:
            w, h = read_size(f)
        except (ImageReadError, OSError) as err:
            bad[f] = str(err)
            continue
        if w * h > max_pixels:
            bad[f] = (f"{w}x{h} = {w * h:,} LR pixels is above --max-pixels {max_pixels:,}: it would need about "
                      f"{_gb(estimate_memory(w, h))} of memory ({MEMORY_FORMULA}). Downscale it, or raise "
                      "--max-pixels if this machine has that memory")
        elif min(w, h) < MIN_SIDE:
            bad[f] = f"{w}x{h} px is too small: ssr sr needs at least {MIN_SIDE}x{MIN_SIDE} LR pixels"
        else:
            sizes[f] = (w, h)
    return bad, sizes


def _physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_note(sizes: dict[Path, tuple[int, int]]) -> str:
    """One line: the estimated peak memory of the largest input (and a warning when it exceeds this machine's)."""
    f, (w, h) = max(sizes.items(), key=lambda item: item[1][0] * item[1][1])
    need, ram = estimate_memory(w, h), _physical_memory()
    over = f"; more than this machine's {_gb(ram)}" if ram and need > ram else ""
    return (f"memory: about {_gb(need)} for the largest input, {f.name} ({w}x{h} LR px; estimate: "
            f"{MEMORY_FORMULA}){over}")
