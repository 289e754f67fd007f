"""GPU mode of ``benchmarks/large_image.py``: seconds per 768² output with batched tiles and autocast (issue 20).

Two models, each with its front end: the tiny default (``configs/ssr.yaml``'s network and the tiny KE/NBSR/DE,
untrained: time does not depend on weight values) and the Stable-Diffusion-1.5-sized stage (``sd_backbone.py``:
random weights shaped by the published configs, the paper-size front end of ``configs/*_paper.yaml``). For each, the
build + load time (networks built, moved to the device) and the first call (kernels compiled, autotuning) are
reported apart from the steady state, the median of ``--repeats`` full ``SSRPipeline`` calls (SVKR in code space +
diffusion + decode, output kept on the device's side until the end) at each of ``--gpu-steps`` steps from pure
noise (strength 1: every step runs; the paper's Table 4 setting), with ``SVKR.coded`` timed alone too. Diffusion
tiles: the tiny model samples in ``--gpu-tile`` LR px tiles (default 32, as ``ssr sr``) batched ``--tile-batch`` per
UNet call; the SD model samples its 96² latent whole (the size its UNet was trained at). ``--autocast`` (auto: bf16 on
CUDA) covers the UNet, the condition encoders, KE and NBSR; the scheduler, kernel normalisation and accumulators stay
float32.

On a CPU (``--device cpu --sd-size tiny --gpu-output 64``) the same code runs in seconds: a dry run of this path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCALE = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _models(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(name, builder)``: a builder returns ``(diffusion model, SVKR, tile)``."""
    from sr_speed import _net, build_svkr

    out: list[tuple[str, Any]] = [("tiny", lambda: (_net("ssr.yaml").eval(), build_svkr(), args.gpu_tile))]
    if args.sd_size != "none":
        from sd_backbone import build_sd_model

        out.append((f"sd15-{args.sd_size}" if args.sd_size != "sd15" else "sd15",
                    lambda: (build_sd_model(args.sd_size), build_svkr(paper=args.sd_size == "sd15"), 0)))
    return out


def gpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """One row per (model, steps): load, first call, steady-state seconds per output, SVKR alone, peak memory."""
    from sr_speed import real_lr

    from ssr_lightning.diffusion.config import ComputeConfig, SamplingConfig
    from ssr_lightning.inference.pipeline import SSRPipeline

    device = torch.device(args.device)
    compute = ComputeConfig(tile_batch=args.tile_batch, autocast=args.autocast)
    rows = []
    for name, build in _models(args):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        model, svkr, tile = build()
        lr = real_lr(args.gpu_output // SCALE).to(device)
        pipe = SSRPipeline(model.requires_grad_(False), svkr, SamplingConfig(start="noise", strength=1.0), device,
                           compute=compute)
        _sync(device)
        load_s = time.perf_counter() - t0
        for steps in args.gpu_steps:
            sampling = SamplingConfig(steps=steps, start="noise", strength=1.0, tile=tile, overlap=8 if tile else 0)
            first = _timed(lambda: pipe(lr, sampling), device)  # noqa: B023
            runs = [_timed(lambda: pipe(lr, sampling), device) for _ in range(args.repeats)]  # noqa: B023
            svkr_s = statistics.median(_timed(lambda: pipe.svkr.coded(  # noqa: B023
                lr, tile=compute.frontend_tile, dtype=compute.dtype(device)), device) for _ in range(args.repeats))
            row = {"model": name, "steps": steps, "output": f"{args.gpu_output}x{args.gpu_output}",
                   "tile": tile, "tile_batch": compute.tile_batch, "autocast": str(compute.dtype(device)),
                   "load_s": round(load_s, 2), "first_call_s": round(first, 3),
                   "steady_s_per_output": round(statistics.median(runs), 3), "svkr_s": round(svkr_s, 3)}
            if device.type == "cuda":
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
            rows.append(row)
            print(row, flush=True)
        del pipe, model, svkr
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    return {"mode": "gpu", "device": name, "torch": torch.__version__, "repeats": args.repeats,
            "weights": "random (timing depends on the architecture only)", "rows": rows}
