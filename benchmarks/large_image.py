"""Large photos through ``ssr sr``: time per phase, CPU time and peak memory against the input size (issue 20).

    python benchmarks/large_image.py [--runs RUNS] [--sizes 500x375 1000x750 2000x1500] [--threads 2]
        [--out results/large_images/large_image.json] [--baseline BEFORE.json]
    python benchmarks/large_image.py --device cuda [--gpu-steps 20 4] [--sd-size sd15]     # GPU mode (below)

CPU mode. One packaged photo (scikit-image's ``coffee``, resized to 500 px wide and mirror-tiled to each size, so its
texture density does not change with the size) is written as an 8-bit PNG and super-resolved by ``ssr sr`` with its
default settings (the checkpoint's sampling and SVKR), each size in a fresh child process with ``--threads`` threads.
``RUNS`` holds ``ssr fit`` runs of the four stages (``RUNS/{ssrdiffusion,dkenet,nbsr,depth}``); time and memory
do not depend on the weight values, so runs of the default configs trained for a few steps serve: without
``--runs`` the benchmark trains them (``configs/{dkenet,nbsr,depth,ssr}.yaml`` with the debug trainer, the default
architectures) into ``runs/`` beside ``--out`` (ignored by git), once. The child reports, in wall and
process CPU seconds: model load (``SSRPipeline.from_checkpoint``), SVKR, diffusion and writing (for the strip path,
writing includes decoding and the colour fix, which the whole-image path counts as diffusion), and the parent its
peak RSS (``os.wait4``: the child's own ``ru_maxrss``) and the tiles per denoising step. ``--code DIR`` runs another
checkout's ``ssr_lightning`` (e.g. the code before a change, for a before/after table). The machine may be shared:
CPU seconds are the comparable figure, wall seconds depend on the load (recorded).

GPU mode (``--device cuda``): seconds per 768² output (LR 192²) for the tiny default model (``configs/ssr.yaml``
architectures, untrained) and the Stable-Diffusion-1.5-sized stage (``benchmarks/sd_backbone.py``, random weights,
paper-size front end), at each of ``--gpu-steps`` DDIM steps (strength 1: every step runs), with tiles batched
(``--tile-batch``) and autocast (``--autocast``); the build and load time is reported apart from the steady state
(the median of ``--repeats`` runs after a warm-up). ``--device cpu --sd-size tiny`` runs the same code on a CPU
(a dry run of the path; ``tests/test_large_image.py`` does it).

Output: the JSON record (``--out``: the command, the code's commit, the machine, one row per size) and a PNG of time
and memory against megapixels beside it (``--baseline`` adds an earlier record's rows to the figure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = {  # phase -> functions whose time it is ("module:Class.method" or "module:function"), whichever exist
    "load": ["ssr_lightning.inference.pipeline:SSRPipeline.from_checkpoint"],
    "svkr": ["ssr_lightning.inference.svkr:SVKR.forward", "ssr_lightning.inference.svkr:SVKR.coded"],
    "diffusion": ["ssr_lightning.diffusion.model:LatentDiffusionSR.super_resolve",
                  "ssr_lightning.diffusion.model:LatentDiffusionSR.sample_latent"],
    "write": ["ssr_lightning.cli.sr:save_image", "ssr_lightning.cli.sr:_save_maps",
              "ssr_lightning.cli.sr:_write_output"],
    "read": ["ssr_lightning.cli.sr:_read"],
}


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=None, help="folder with the ssr fit runs of the four stages (CPU mode)")
    p.add_argument("--sizes", nargs="+", default=["500x375", "1000x750", "2000x1500"], help="LR sizes WxH")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each child")
    p.add_argument("--code", default=str(ROOT), help="checkout whose ssr_lightning runs (default: this one)")
    p.add_argument("--label", default="after", help="name of this code in the record and the figure")
    p.add_argument("--out", default=str(ROOT / "results/large_images/large_image.json"))
    p.add_argument("--baseline", default=None, help="an earlier record drawn beside this one in the figure")
    p.add_argument("--sr-args", nargs="*", default=[], help="extra ssr sr flags (default: none, its defaults)")
    p.add_argument("--device", default="cpu", help="cpu: the ssr sr benchmark; cuda: the GPU mode")
    p.add_argument("--gpu-mode", action="store_true", help="the GPU mode on --device (cpu: a dry run)")
    p.add_argument("--gpu-steps", type=int, nargs="+", default=[20, 4])
    p.add_argument("--sd-size", choices=["sd15", "tiny", "none"], default="sd15",
                   help="GPU mode: the SD-sized row (tiny: its structure at a few channels)")
    p.add_argument("--gpu-output", type=int, default=768, help="GPU mode: output side (LR = side / 4)")
    p.add_argument("--tile-batch", type=int, default=32, help="GPU mode: tiles per UNet call")
    p.add_argument("--autocast", default="auto", help="GPU mode: none, bf16, fp16 or auto")
    p.add_argument("--gpu-tile", type=int, default=32, help="GPU mode: the tiny model's tile (LR px; 0: whole image)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON of one ssr sr run to do
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    if args.child is None:  # the record and its Markdown summary
        refuse_overwrite(p, args.overwrite, args.out, str(Path(args.out).with_suffix(".md")))
    return args


# --- the photo ----------------------------------------------------------------------------------------------------
def photo(width: int, height: int) -> Any:
    """``(height, width, 3)`` uint8: scikit-image's coffee at 500 px wide, mirror-tiled to the size."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from skimage import data

    src = torch.from_numpy(data.coffee()).permute(2, 0, 1)[None].float()
    base_h = round(src.shape[-2] * 500 / src.shape[-1])
    base = F.interpolate(src, size=(base_h, 500), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    rows = []
    for i in range(-(-height // base.shape[0])):
        row = [base[::-1 if i % 2 else 1, ::-1 if j % 2 else 1] for j in range(-(-width // base.shape[1]))]
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:height, :width])


# --- the child: one ssr sr run with phase timers ---------------------------------------------------------------------
class _Timers:
    """Wall and process-CPU seconds spent inside each phase's functions, exclusive: a phase called inside another
    (SVKR inside writing, for the strip path) is charged to itself only; a nested call of the same phase counts once."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {k: 0.0 for k in PHASES}
        self.cpu: dict[str, float] = {k: 0.0 for k in PHASES}
        self.stack: list[list[Any]] = []  # [phase, wall at (re)start, cpu at (re)start, depth]

    def _charge(self) -> None:
        if self.stack:
            top = self.stack[-1]
            w, c = time.perf_counter(), time.process_time()
            self.wall[top[0]] += w - top[1]
            self.cpu[top[0]] += c - top[2]
            top[1], top[2] = w, c

    def wrap(self, phase: str, fn: Any) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            same = bool(self.stack) and self.stack[-1][0] == phase
            if same:
                self.stack[-1][3] += 1
            else:
                self._charge()
                self.stack.append([phase, time.perf_counter(), time.process_time(), 1])
            try:
                return fn(*args, **kw)
            finally:
                top = self.stack[-1]
                top[3] -= 1
                if top[3] == 0:
                    self._charge()
                    self.stack.pop()
                    if self.stack:  # the outer phase resumes now
                        self.stack[-1][1], self.stack[-1][2] = time.perf_counter(), time.process_time()

        return timed

    def install(self) -> list[str]:
        import importlib

        found = []
        for phase, targets in PHASES.items():
            for target in targets:
                module, _, attr = target.partition(":")
                owner: Any = importlib.import_module(module)
                *path, name = attr.split(".")
                for part in path:
                    owner = getattr(owner, part)
                fn = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
                if fn is None:
                    continue
                wrapped = self.wrap(phase, fn.__func__ if isinstance(fn, classmethod) else fn)
                setattr(owner, name, classmethod(wrapped) if isinstance(fn, classmethod) else wrapped)
                found.append(target)
        return found


def _rss_bytes() -> int:
    """This process's resident set now (Linux ``/proc``; 0 where it is not readable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _PhaseMemory:
    """The highest resident set seen during each phase (the innermost running one; ``other`` outside every phase),
    sampled every ``period`` seconds by a thread: where the peak of the run is reached."""

    def __init__(self, timers: _Timers, period: float = 0.02) -> None:
        import threading

        self.timers, self.period = timers, period
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            stack = self.timers.stack
            phase = stack[-1][0] if stack else "other"
            self.peak[phase] = max(self.peak.get(phase, 0), _rss_bytes())

    def __enter__(self) -> _PhaseMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def child(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    timers = _Timers()
    wrapped = timers.install()
    from ssr_lightning.cli import sr

    w0, c0 = time.perf_counter(), time.process_time()
    with _PhaseMemory(timers) as memory:
        code = sr.main(spec["argv"])
    total = {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}
    Path(spec["report"]).write_text(json.dumps({"exit": code, "total": total, "wall": timers.wall, "cpu": timers.cpu,
                                                "timed": wrapped, "peak_rss": memory.peak}))


def _commit(code: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _tiles_per_step(runs: Path, width: int, height: int) -> int:
    """Tiles of the diffusion grid at the model's own sampling tile and overlap."""
    sys.path.insert(0, str(ROOT))
    from ssr_lightning.diffusion.tiling import TileGrid
    from ssr_lightning.inference.checkpoints import find_checkpoint, read_checkpoint
    from ssr_lightning.inference.pipeline import checkpoint_geometry, model_sampling

    data = read_checkpoint(find_checkpoint("ssrdiffusion", str(runs)), "ssrdiffusion")
    geo, sampling = checkpoint_geometry(data), model_sampling(data)
    hp, wp = -(-height // geo.multiple) * geo.multiple, -(-width // geo.multiple) * geo.multiple
    return len(TileGrid(hp, wp, sampling.tile, sampling.overlap, geo.multiple))


def run_size(args: argparse.Namespace, width: int, height: int, tmp: Path) -> dict[str, Any]:
    from PIL import Image

    runs = Path(args.runs).resolve()  # the child runs in another folder
    src = tmp / f"photo_{width}x{height}.png"
    Image.fromarray(photo(width, height)).save(src)
    ckpt = {st: str(runs / st) for st in ("ssrdiffusion", "dkenet", "nbsr", "depth")}
    argv = [str(src), "-o", str(tmp / f"out_{width}x{height}.png"), "--overwrite", "--ckpt", ckpt["ssrdiffusion"],
            "--dkenet-ckpt", ckpt["dkenet"], "--nbsr-ckpt", ckpt["nbsr"], "--depth-ckpt", ckpt["depth"],
            "--max-pixels", str(10**9), *args.sr_args]
    spec = {"argv": argv, "threads": args.threads, "report": str(tmp / "report.json")}
    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve()), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=str(tmp))
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ssr sr failed on {width}x{height} (exit {os.waitstatus_to_exitcode(status)})")
    rep = json.loads((tmp / "report.json").read_text())
    if rep["exit"] != 0:
        raise RuntimeError(f"ssr sr exited {rep['exit']} on {width}x{height}")
    row = {"lr": f"{width}x{height}", "megapixels": round(width * height / 1e6, 4),
           "output": f"{4 * width}x{4 * height}", "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),
           "wall_s": round(rep["total"]["wall"], 1), "cpu_s": round(rep["total"]["cpu"], 1),
           "tiles_per_step": _tiles_per_step(runs, width, height)}
    for phase in PHASES:
        row[f"{phase}_wall_s"] = round(rep["wall"][phase], 1)
        row[f"{phase}_cpu_s"] = round(rep["cpu"][phase], 1)
    # where the peak is reached: the highest resident set sampled inside each phase (GB)
    row["phase_peak_rss_gb"] = {k: round(v / 1e9, 3) for k, v in rep.get("peak_rss", {}).items()}
    row["timed"] = rep["timed"]
    return row


STAGES = (("dkenet", "dkenet"), ("nbsr", "nbsr"), ("depth", "depth"), ("ssr", "ssrdiffusion"))


def train_runs(runs: Path) -> Path:
    """The four default stages, trained a few steps (time and memory do not depend on the weights), once per version
    of their config: a stage trained from another version of its config file is moved aside (``NAME.stale-<digest>``)
    and trained again, so the benchmark always measures the shipped architecture."""
    ssr = Path(sys.executable).with_name("ssr")
    tiny = ["--trainer", str(ROOT / "configs/trainer/debug.yaml"), "--data", str(ROOT / "configs/data/tiny.yaml"),
            "--root", str(runs)]
    for config, name in STAGES:
        path = ROOT / "configs" / f"{config}.yaml"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        done = runs / name / "DONE"
        if done.is_file():
            if digest in done.read_text():
                continue
            words = done.read_text().split()
            old = words[-1][:12] if words and len(words[-1]) == 64 else "unversioned"
            aside, n = runs / f"{name}.stale-{old}", 1
            while aside.exists():
                aside, n = runs / f"{name}.stale-{old}-{n}", n + 1
            print(f"large_image.py: {runs / name} was trained from another version of {path.name}: moved to "
                  f"{aside.name}, training again", flush=True)
            (runs / name).rename(aside)
        extra = ["--model.init_args.conditions.nbsr_ckpt", str(runs / "nbsr")] if config == "ssr" else []
        print(f"large_image.py: training {name} (debug trainer) -> {runs / name}", flush=True)
        subprocess.run([str(ssr), "fit", "--config", str(path), *tiny, "--name", name, *extra], check=True,
                       cwd=str(ROOT))
        done.write_text(f"trained by benchmarks/large_image.py from configs/{config}.yaml sha256 {digest}\n")
    return runs


def _load() -> float:
    return os.getloadavg()[0]


def cpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if not args.runs:
        args.runs = str(train_runs(Path(args.out).resolve().parent / "runs"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssr_large_") as tmp:
        for text in args.sizes:
            w, h = _size(text)
            load0 = _load()
            row = run_size(args, w, h, Path(tmp))
            row["load_avg_before"] = round(load0, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"mode": "cpu", "label": args.label, "code_commit": _commit(Path(args.code)), "threads": args.threads,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "photo": "skimage.data.coffee, 500 px wide, mirror-tiled", "sr_args": args.sr_args, "rows": rows}


def _command(argv: list[str]) -> str:
    """The command line with machine paths replaced by their role (the record names no machine path)."""
    out, skip = ["python", "benchmarks/large_image.py"], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--runs", "--code", "--out", "--baseline") and i + 1 < len(argv):
            role = {"--runs": "<tiny ssr fit runs>", "--code": f"<checkout at {_commit(Path(argv[i + 1]))}>"}
            rel = os.path.relpath(Path(argv[i + 1]).resolve(), ROOT)
            inside = a in ("--out", "--baseline") and not rel.startswith("..")
            out += [a, role.get(a, rel if inside else Path(argv[i + 1]).name)]
            skip = True
        else:
            out.append(a)
    return shlex.join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return {}
    if args.device.startswith("cuda") or args.gpu_mode:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from large_image_gpu import gpu_benchmark

        record = gpu_benchmark(args)
    else:
        record = cpu_benchmark(args)
    record["command"] = _command(argv)
    record["what"] = "time and peak memory of ssr sr on large inputs (issue 20)"
    sys.path.insert(0, str(ROOT))
    from ssr_lightning.ablate.provenance import environment
    from ssr_lightning.files import atomic_write_json, atomic_write_text

    record["provenance"] = environment()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, record)
    if record.get("mode") == "cpu":
        atomic_write_text(out.with_suffix(".md"), summary(record))  # beside its record: several records per folder
        plot(record, json.loads(Path(args.baseline).read_text()) if args.baseline else None, out.with_suffix(".png"))
    print(f"-> {out}")
    return record


def summary(record: dict[str, Any]) -> str:
    """The record as the table docs/EXPERIMENTS.md renders (wall and process-CPU seconds per phase, peak RSS, and where
    a record has it, the peak inside SVKR / the diffusion / writing)."""
    phases = any(r.get("phase_peak_rss_gb") for r in record["rows"])
    extra = " SVKR / diffusion / write peak GB |" if phases else ""
    lines = [(f"`{record['command']}` ({record['threads']} threads, code {record['code_commit']}; wall seconds depend "
              "on the machine's load, recorded per row; CPU seconds are the comparable figure)"), "",
             ("| LR input | output | tiles/step | load s | SVKR s (CPU) | diffusion s (CPU) | write s (CPU) | "
              f"total wall s | total CPU s | peak RSS GB |{extra} load avg |"),
             "| --- " * (11 + bool(phases)) + "|"]
    for r in record["rows"]:
        pk = r.get("phase_peak_rss_gb") or {}
        cell = (" " + " / ".join(f"{pk[k]:.2f}" if k in pk else "–" for k in ("svkr", "diffusion", "write")) + " |"
                if phases else "")
        lines.append(f"| {r['lr']} | {r['output']} | {r['tiles_per_step']} | {r['load_wall_s']} | "
                     f"{r['svkr_wall_s']} ({r['svkr_cpu_s']}) | {r['diffusion_wall_s']} ({r['diffusion_cpu_s']}) | "
                     f"{r['write_wall_s']} ({r['write_cpu_s']}) | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_gb']} |"
                     f"{cell} {r['load_avg_before']} |")
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], baseline: dict[str, Any] | None, path: Path) -> None:
    """Wall / CPU seconds and peak RSS against megapixels, one line per record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for rec, style in ((baseline, "--"), (record, "-")):
        if rec is None:
            continue
        mp = [r["megapixels"] for r in rec["rows"]]
        label = f"{rec['label']} ({rec['code_commit']})"
        axes[0].plot(mp, [r["wall_s"] / 60 for r in rec["rows"]], "o" + style, label=f"{label} wall")
        axes[0].plot(mp, [r["cpu_s"] / 60 for r in rec["rows"]], "s" + style, label=f"{label} CPU")
        axes[1].plot(mp, [r["peak_rss_gb"] for r in rec["rows"]], "o" + style, label=label)
    axes[0].set(xlabel="LR megapixels", ylabel="minutes", title=f"ssr sr time ({record['threads']} threads)")
    axes[1].set(xlabel="LR megapixels", ylabel="GB", title="peak RSS")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
