"""Speed and peak memory of the SSR inference pipeline (paper Table 4: seconds per 768×768 output).

    python benchmarks/sr_speed.py [--ckpt runs/ssrdiffusion/version_0/checkpoints/best.ckpt] [--dkenet-ckpt ... --nbsr-ckpt ...
        --depth-ckpt ...] [--sizes 256 768] [--steps 20] [--tile 64 --overlap 16] [--out benchmarks/results/sr_speed.json]
        [--fragments configs/diffusion/space_to_depth.yaml ...] [--sd auto|on|off] [--sd-steps 50 4]

For each output size S (LR = S/4, a crop of a real photograph, skimage's astronaut), in one process:
- ``pipeline_s``: the full SSRPipeline (SVKR T=3 → encoders → DDIM ``--steps`` → VAE decode), tiled;
- ``svkr_s``: the SVKR front end alone (DE/KE/NBSR, T=3) on the whole LR image;
- ``nbsr_s``: one NBSR pass alone (the non-diffusion SR of the front end).
Times are medians over ``--repeats`` after a warm-up on the smallest size.

Peak memory (``--memory``, default on): each (size, tile) runs in a fresh subprocess with ``--mem-steps`` sampling
steps (memory does not depend on the step count); on CPU the peak RSS above the RSS after model loading (psutil,
sampled every 2 ms), on GPU ``torch.cuda.max_memory_allocated``. Expect the tiled peak to stay flat with image size
(only the output canvas grows) and the untiled (``tile 0``) peak to grow with it.

Without checkpoints the networks are built untrained from the configs' ``net:`` blocks (``configs/ssr.yaml`` plus
any ``--fragments``, e.g. ``configs/diffusion/vae.yaml``; the front end's ``configs/{dkenet,nbsr,depth}.yaml``): plain
networks of ``networks/`` and ``diffusion/``, no LightningModule. Speed and memory depend on the architecture only;
the JSON records which.

Stable-Diffusion size (``--sd``; ``auto``: when CUDA is available): the paper-size SSR stage on random weights
shaped by the published SD-1.5 UNet and VAE configs (``benchmarks/sd_backbone.py``), with the paper-size front end
(``configs/*_paper.yaml`` architectures, untrained), at one 768² output (LR 192²), in each of ``--sd-dtypes``
(fp16, bf16) at each of ``--sd-steps`` (the paper's 50 DDIM steps and a few-step setting): seconds for SVKR (fp32),
for the diffusion stage (encoders + DDIM + VAE decode) and their sum, and the peak GPU memory, saved to
``--sd-out`` (``benchmarks/results/sr_speed_sd.json``). ``--sd-size tiny`` runs the same code at a few channels
(a CPU check of this path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable without installing the package

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite, write_record
from ssr_lightning.diffusion.config import SamplingConfig
from ssr_lightning.diffusion.model import LatentDiffusionSR
from ssr_lightning.inference import SSRPipeline, load_model
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.registry import network_class

SCALE = 4


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=None, help="diffusion checkpoint (default: untrained configs/ssr.yaml model)")
    p.add_argument("--dkenet-ckpt", default=None)
    p.add_argument("--nbsr-ckpt", default=None)
    p.add_argument("--depth-ckpt", default=None, help="DepthModule checkpoint (learned DE)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 768], help="output sides S (LR = S/4)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--tile", type=int, default=64, help="tile side in LR px")
    p.add_argument("--overlap", type=int, default=16, help="tile overlap in LR px")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mem-steps", type=int, default=2, help="sampling steps in the memory subprocesses")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/sr_speed.json"))
    p.add_argument("--fragments", nargs="*", default=[], help="config fragments merged onto configs/ssr.yaml's model")
    p.add_argument("--cpu-part", action=argparse.BooleanOptionalAction, default=True,
                   help="time the tiny pipeline (the default part)")
    p.add_argument("--sd", choices=["auto", "on", "off"], default="auto",
                   help="Stable-Diffusion-size timing (auto: when CUDA is available)")
    p.add_argument("--sd-size", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--sd-steps", type=int, nargs="+", default=[50, 4])
    p.add_argument("--sd-dtypes", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--sd-output", type=int, default=768, help="output side of the SD timing (LR = side / 4)")
    p.add_argument("--sd-out", default=str(ROOT / "benchmarks/results/sr_speed_sd.json"))
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # memory subprocess: output size
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    if args.child is None:
        refuse_overwrite(p, args.overwrite, args.out if args.cpu_part else None,
                         args.sd_out if args.sd != "off" else None)
    return args


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _net(config: str, fragments: list[str] | None = None) -> torch.nn.Module:
    """The untrained network of a config's ``model.init_args.net`` block (with the fragments' net blocks merged):
    ``class_path`` + ``init_args``, the schema a checkpoint's ``ssr.model_config`` shares."""
    from ssr_lightning.ablate.study import deep_merge

    block = dict(yaml.safe_load((ROOT / "configs" / config).read_text())["model"]["init_args"]["net"])
    for frag in fragments or []:
        block = deep_merge(block, yaml.safe_load(Path(frag).read_text())["model"]["init_args"].get("net") or {})
    return network_class(block["class_path"])(**(block.get("init_args") or {}))


def build_svkr(paper: bool = False) -> SVKR:
    """SVKR over untrained DE, KE, NBSR with the architectures of the tiny (or ``*_paper.yaml``) configs."""
    from ssr_lightning.degradation.kernels import KernelConfig
    from ssr_lightning.inference import LearnedDepth
    from ssr_lightning.networks.kernel_codec import code_std, load_or_fit_basis

    tag = "_paper" if paper else ""
    sr = _net(f"nbsr{tag}.yaml")
    kernels = KernelConfig(size=sr.config.kernel_size)
    basis = load_or_fit_basis(None, kernels, sr.config.code_channels)  # the PCA kernel basis artifact
    sr.codec.set_basis(basis, code_std(basis, kernels))
    return SVKR(LearnedDepth(_net(f"depth{tag}.yaml")), _net(f"dkenet{tag}.yaml").eval(), sr.eval())


def build(args: argparse.Namespace, device: torch.device) -> tuple[LatentDiffusionSR, SVKR, str]:
    """The diffusion model and SVKR: trained when checkpoints are given, else untrained tiny configs."""
    if args.ckpt:
        model = load_model(args.ckpt, "ssrdiffusion")
    else:
        model = _net("ssr.yaml", args.fragments).eval()
    if args.dkenet_ckpt and args.nbsr_ckpt and args.depth_ckpt:
        svkr = SVKR.from_config(SVKRConfig(args.dkenet_ckpt, args.nbsr_ckpt, "learned", args.depth_ckpt))
        weights = "trained" if args.ckpt else "trained SVKR, untrained diffusion"
    else:
        svkr = build_svkr()
        weights = "untrained (architecture-only timing)" if not args.ckpt else "trained diffusion, untrained SVKR"
    return model.eval().to(device), svkr.eval().to(device), weights


def real_lr(size: int) -> torch.Tensor:
    """An LR input of side ``size``: skimage's astronaut, area-downsampled."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255.0
    img = F.interpolate(img, size=(size * 2, size * 2), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(img, size=(size, size), mode="area").clamp(0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_time(fn: Any) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _time(fn: Any, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _RSSPeak:
    """Peak RSS of this process during a ``with`` block, sampled by a thread every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> _RSSPeak:
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sampling(args: argparse.Namespace, steps: int) -> SamplingConfig:
    """The sampling timed: the configs' (strength, start, ...) with this run's steps and tiles."""
    ssr = dict(yaml.safe_load((ROOT / "configs" / "ssr.yaml").read_text())["model"]["init_args"]["sampling"])
    for frag in args.fragments:
        ssr.update(yaml.safe_load(Path(frag).read_text())["model"]["init_args"].get("sampling") or {})
    return SamplingConfig.from_dict(ssr).replace(steps=steps, tile=args.tile, overlap=args.overlap)


def child(args: argparse.Namespace) -> None:
    """Memory subprocess: one pipeline run at output size ``args.child``; prints one JSON line."""
    device = _device(args.device)
    model, svkr, _ = build(args, device)
    pipe = SSRPipeline(model, svkr, _sampling(args, args.mem_steps), device=device)
    lr = real_lr(args.child // SCALE).to(device)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            pipe(lr)
            peak = torch.cuda.max_memory_allocated(device) - base
            kind = "cuda max_memory_allocated above the loaded models"
        else:
            with _RSSPeak() as m:
                pipe(lr)
            peak, kind = m.peak - m.base, "CPU peak RSS above the RSS after model loading"
    print(json.dumps({"output_size": args.child, "tile": args.tile, "peak_mb": round(peak / 2**20, 1), "kind": kind}))


def pipeline_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The tiny (or checkpointed) pipeline: seconds per output size, and peak memory in subprocesses."""
    model, svkr, weights = build(args, device)
    pipe = SSRPipeline(model, svkr, _sampling(args, args.steps), device=device, progress=True)
    sizes = sorted(args.sizes)
    with torch.no_grad():
        pipe(real_lr(min(sizes) // SCALE).to(device))  # warm-up
        rows = []
        for size in sizes:
            lr = real_lr(size // SCALE).to(device)
            result = svkr(lr)
            kernel = result.final_kernel
            row = {
                "output_size": size,
                "pipeline_s": round(_time(lambda: pipe(lr), device, args.repeats), 3),
                # process CPU seconds of one more run: comparable on a machine shared with other jobs
                "pipeline_cpu_s": round(_cpu_time(lambda: pipe(lr)), 2),
                "svkr_s": round(_time(lambda: svkr(lr), device, args.repeats), 3),
                "nbsr_s": round(_time(lambda: svkr.super_resolve(lr, kernel), device, args.repeats), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    memory = []
    if args.memory:
        passthrough = [a for k in ("ckpt", "dkenet_ckpt", "nbsr_ckpt", "depth_ckpt") if getattr(args, k)
                       for a in (f"--{k.replace('_', '-')}", getattr(args, k))]
        passthrough += ["--fragments", *args.fragments] if args.fragments else []
        for tile in (args.tile, 0):
            for size in sizes:
                cmd = [sys.executable, __file__, "--child", str(size), "--tile", str(tile), "--overlap",
                       str(args.overlap), "--mem-steps", str(args.mem_steps), "--device", str(device), *passthrough]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
                memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(memory[-1]), flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "weights": weights,
        "steps": args.steps, "tile": args.tile, "overlap": args.overlap, "scale": SCALE, "repeats": args.repeats,
        "fragments": args.fragments, "autoencoder": model.config.autoencoder,
        "sampling": vars(pipe.sampling),
        "speed": rows, "memory": memory,
        "params": {"diffusion_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "diffusion_total": sum(p.numel() for p in model.parameters()),
                   "svkr": sum(p.numel() for p in svkr.parameters())},
    }
    write_record(Path(args.out), report, "benchmarks/sr_speed.py", sys.argv[1:], "seconds per image and peak memory "
                 "of the SSR pipeline against the NBSR front end")
    print(f"-> {args.out}")
    return report


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def sd_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The paper-size stage (random SD-1.5-shaped weights) at one output size per dtype and step count."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sd_backbone import build_sd_model, count_parameters

    t0 = time.perf_counter()
    base = build_sd_model(args.sd_size)
    build_s = time.perf_counter() - t0
    svkr = build_svkr(paper=args.sd_size == "sd15").to(device)
    lr = real_lr(args.sd_output // SCALE).to(device)
    with torch.no_grad():
        svkr(lr)  # warm-up
        svkr_s = _time(lambda: svkr(lr), device, args.repeats)
        depth, kernel, _ = svkr(lr).final
    rows = []
    for name in args.sd_dtypes:
        model = base.to(device=device, dtype=_DTYPES[name])
        x = lr.to(_DTYPES[name])

        def run(steps: int) -> None:
            model.super_resolve(x, depth, kernel, generator=torch.Generator().manual_seed(0),  # noqa: B023
                                steps=steps, tile=0)

        with torch.no_grad():
            run(1)  # warm-up (kernels, autotuning)
            for steps in args.sd_steps:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                diffusion_s = _time(lambda: run(steps), device, args.repeats)  # noqa: B023
                row = {"dtype": name, "steps": steps, "output_size": args.sd_output, "svkr_fp32_s": round(svkr_s, 3),
                       "diffusion_s": round(diffusion_s, 3), "total_s": round(svkr_s + diffusion_s, 3)}
                if device.type == "cuda":
                    row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "size": args.sd_size, "weights": "random (published SD-1.5 configs)",
              "params": count_parameters(base), "build_s": round(build_s, 1), "repeats": args.repeats, "rows": rows}
    write_record(Path(args.sd_out), report, "benchmarks/sr_speed.py", sys.argv[1:], "seconds per output of the "
                 "SD-1.5-sized diffusion stage (random weights) per dtype and steps")
    print(f"-> {args.sd_out}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.child is not None:
        child(args)
        return {}
    device = _device(args.device)
    report: dict[str, Any] = pipeline_benchmark(args, device) if args.cpu_part else {}
    if args.sd == "on" or (args.sd == "auto" and device.type == "cuda"):
        report["sd"] = sd_benchmark(args, device)
    return report


if __name__ == "__main__":
    main()
