"""``ssr-frontend``: the blind-SR front-end ladder with 95 % CIs, saved as JSON, Markdown and a PNG.

Evaluate checkpoints you trained::

    ssr-frontend --dkenet runs/dkenet/version_0/checkpoints/best.ckpt --nbsr runs/nbsr/version_0/checkpoints/best.ckpt \\
                 --depth-ckpt runs/depth/version_0/checkpoints/best.ckpt [--dkenet-nodepth ...] [--blind ...] [--cmos ...]

or train every stage the ladder needs and evaluate it over training seeds (the front-end study)::

    ssr-frontend --train --seeds "[0, 1, 2]" --out results/frontend_default

``--train`` runs ``ssr fit`` for each stage (``--stages``) and seed into ``<out>/runs/seed_<s>/<stage>``, resuming
what a kill interrupted; the headline stages (DKENet, NBSR, DepthNet) run for every seed, the others
(``--single-seed-stages``) for the first seed only. Checkpoints left out default to the newest ``runs/<stage>`` run.
Rows and summaries: ``ssr_lightning.frontend.ladder``.

``<out>`` is a record folder (results/README.md): ``frontend.{json,md,png}``, ``frontend_seed<s>.json``,
``per_image.json`` (every row's per-image values, ``(seeds, images)``) and ``RECORD.json`` (this command, the code
that ran it and the provenance of every stage training); the trainings themselves stay in ``<out>/runs/`` (ignored by
git).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from ssr_lightning.ablate.provenance import (
    cpu_children,
    relative_command,
    stale,
    training,
    write_manifest,
)
from ssr_lightning.ablate.runner import CLIRunner, CommandFailed
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.frontend.ladder import (
    Ladder,
    evaluate_invariant_ke,
    evaluate_ladder,
    format_markdown,
    ladder_figure,
    make_test_batches,
    merge_seeds,
    response_figure,
    response_row,
    summarize,
)
from ssr_lightning.inference.checkpoints import (
    find_checkpoint,
    load_model,
    resolve_checkpoint,
)
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.registry import STAGES

__all__ = ["STAGE_RUNS", "build_parser", "main", "run", "stage_config"]

_DATA_CONFIG = "configs/data/embedded.yaml"


def _thin_lens_ke(lens_loss: str | None = None, **net: str) -> tuple[str, list[str]]:
    """A DKENet run with the thin-lens head on absolute depth: ``net`` are further network options (flag order
    kept as given), ``lens_loss`` the module's lens supervision."""
    opts = {"thin_lens": "true", "normalize_depth": "false", **net}
    args = [a for k, v in opts.items() for a in (f"--model.init_args.net.init_args.{k}", v)]
    return "dkenet", args + (["--model.init_args.lens_loss", lens_loss] if lens_loss is not None else [])


_LONG = ["--trainer.max_steps", "6400"]  # 4x the KE's 1600 (configs/trainer/cpu_long.yaml); its LR schedule follows

# run name -> (registered stage, extra ssr fit arguments); the config that trains it is the stage's (STAGES)
STAGE_RUNS: dict[str, tuple[str, list[str]]] = {
    "dkenet": ("dkenet", []),
    "dkenet_nodepth": ("dkenet", ["--model.init_args.net.init_args.use_depth", "false"]),
    "nbsr": ("nbsr", []),
    "blind": ("nbsr", ["--model.init_args.kernel_source", "none"]),
    "depth": ("depth", []),
    # DE at other working sizes: the SVKR premise (does depth from a sharper image get better?), issue 21
    "depth_ws128": ("depth", ["--model.init_args.net.init_args.working_size", "128"]),
    "depth_native": ("depth", ["--model.init_args.net.init_args.working_size", "0"]),
    # DepthNet's levels, chosen again on the validation split (issue 19: issue 11 chose 4 on the test split)
    "depth_l3": ("depth", ["--model.init_args.net.init_args.levels", "3"]),
    "depth_l5": ("depth", ["--model.init_args.net.init_args.levels", "5"]),
    # KE with the thin-lens head (absolute depth -> per-pixel Gaussian prior): the KE that uses depth on the defocus
    # family (results/ke_depth, issue 21)
    "dkenet_thinlens": _thin_lens_ke(),
    # the same head supervised with the lens that made each sample (lens_loss 0.1, chosen on validation in
    # results/ke_depth): the KE chosen for the defocus family
    "dkenet_lens": _thin_lens_ke(lens_loss="0.1"),
    # the same with the prior's form made the thin lens's own (results/lens_reading: at the defaults the form with
    # the true lens is as far from the GT kernel as a depth-free KE): sharp softplus, low tap floor
    "dkenet_lens_sharp": _thin_lens_ke(lens_sharpness="10", lens_floor="-10", lens_loss="0.1"),
    # ... and its lens supervised at full weight: with the exact form the true lens is the kernel, so the head is
    # told the answer; at the old form lens_loss 1 pulled the prior away from the kernel (results/lens_reading)
    "dkenet_lens_sharp_sup": _thin_lens_ke(lens_sharpness="10", lens_floor="-10", lens_loss="1.0"),
    # ... reading the focal depth from the LR's sharpness (focal_plane: d_f = the sharpness-weighted depth, shifted
    # by the head): the term whose reading limits the exact-form KEs (results/lens_reading)
    "dkenet_lens_sharp_focal": _thin_lens_ke(focal_plane="true", lens_sharpness="10", lens_floor="-10",
                                             lens_loss="1.0"),
    # a softer exact-ish form (β 4: the form's own error with the true lens stays small, results/lens_reading)
    # whose gradients still reach d_f where the sharp form's do not
    "dkenet_lens_mid": _thin_lens_ke(lens_sharpness="4", lens_floor="-10", lens_loss="0.1"),
    # the sharp softplus with the first KEs' tap floor: every exact-form KE above (floor −10) failed on validation,
    # and a low floor lets a wrong lens saturate the softmax, out of the per-pixel logits' reach
    "dkenet_lens_sharp_floor6": _thin_lens_ke(lens_sharpness="10", lens_loss="0.1"),
    # the default KE with its per-pixel kernels pooled in soft depth bins (confidence-weighted): pixels at one
    # depth share one kernel, which needs no focal depth (the thin-lens KEs could not read it, results/lens_reading)
    "dkenet_pool": ("dkenet", ["--model.init_args.net.init_args.depth_pool_bins", "16"]),
    "cmos": ("cmos", []),
}
# the chosen KE and the depth-free KE at 4x the training steps: does the stage budget (<= 10 CPU-minutes at 1600
# steps) limit what depth can add? A diagnosis, not a ladder default (--ke-run / --nodepth-run pick them)
STAGE_RUNS.update({f"{run}_x4": (STAGE_RUNS[run][0], [*STAGE_RUNS[run][1], *_LONG])
                   for run in ("dkenet_lens", "dkenet_nodepth")})


def stage_config(run: str) -> str:
    """The config that trains run ``run`` of the ladder (its registered stage's)."""
    return STAGES[STAGE_RUNS[run][0]].config


def _floats(text: str | None, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()] if text else []


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="ssr-frontend", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("--dkenet", type=str | None, default=None, help="DKENet (with depth) checkpoint")
    p.add_argument("--dkenet-nodepth", type=str | None, default=None, help="DKENet use_depth=false checkpoint")
    p.add_argument("--nbsr", type=str | None, default=None, help="kernel-conditioned NBSR checkpoint")
    p.add_argument("--blind", type=str | None, default=None, help="blind RRDB checkpoint (NBSR, kernel_source none)")
    p.add_argument("--cmos", type=str | None, default=None, help="CMOS checkpoint (ssr fit --config configs/cmos.yaml)")
    p.add_argument("--depth", type=Literal["gt", "learned", "midas", "dpt"], default="learned", help="DE for SVKR")
    p.add_argument("--depth-ckpt", type=str | None, default=None, help="DE weights (DepthModule ckpt, MiDaS .pt, DPT folder)")
    p.add_argument("--T", dest="T", type=int, default=3, help="SVKR iterations of the main rows (paper: 3)")
    p.add_argument("--gamma", type=float, default=0.9, help="SVKR γ of the main rows (paper: 0.9)")
    p.add_argument("--gammas", type=str | None, default=None, help="sweep: comma-separated γ values, e.g. 0.5,0.9,1.0")
    p.add_argument("--iterations", type=str | None, default=None, help="sweep: comma-separated T values, e.g. 1,3,5")
    p.add_argument("--response", type=str | None, default=None,
                   help="kernel-quality response: comma-separated α in (0, 1), e.g. 0.25,0.5,0.75; each adds a row "
                        "NBSR given α·GT + (1 − α)·the GT-depth KE's kernel field (and frontend_response.png)")
    p.add_argument("--data-config", type=str, default=_DATA_CONFIG, help="data fragment of the test split")
    p.add_argument("--dataset", type=str | None, default=None, help="data.dataset override (e.g. photos)")
    p.add_argument("--test-size", type=int | None, default=None, help="HR test crop (default: the config's val_size; 0: whole)")
    p.add_argument("--batch-size", type=int, default=8, help="test batch size")
    p.add_argument("--limit-batches", type=int | None, default=None, help="evaluate only this many batches")
    p.add_argument("--degradation", type=list[str], default=[],
                   help="data.degradation fragments (configs/degradation/*.yaml) for the test data and, with --train, "
                        "for every stage's training, e.g. '[configs/degradation/defocus.yaml]'")
    p.add_argument("--split", type=Literal["val", "test"], default="test",
                   help="score the validation scenes (to choose settings) or the test split (once, afterwards)")
    p.add_argument("--no-noise", action="store_true", help="test data without additive noise")
    p.add_argument("--no-jpeg", action="store_true", help="test data without JPEG")
    p.add_argument("--bicubic", type=Literal["matlab", "torch"], default="matlab",
                   help="the bicubic row: MATLAB imresize (A = -0.5, SR papers' row) or torch F.interpolate (A = -0.75)")
    p.add_argument("--invariant-ke", type=bool, default=True,
                   help="also score KE on the test images with every kernel spatially invariant")
    p.add_argument("--train", action="store_true", help="train the stages first (ssr fit), per seed, resumable")
    p.add_argument("--seeds", type=list[int], default=[0], help="training seeds of the headline stages")
    p.add_argument("--stages", type=list[str], default=["dkenet", "dkenet_nodepth", "nbsr", "blind", "depth", "cmos"],
                   help=f"stages --train trains (of {', '.join(STAGE_RUNS)})")
    p.add_argument("--runs", type=str | None, default=None,
                   help="folder of the stage trainings (default: <out>/runs); give the same one to several ladders")
    p.add_argument("--depth-run", type=str, default="depth",
                   help="with --train: the trained DE run SVKR uses (depth, depth_ws128, depth_native)")
    p.add_argument("--ke-run", type=str, default="dkenet",
                   help="with --train: the trained KE run the depth rows and SVKR use (a KE of --stages' list: "
                        "dkenet, dkenet_thinlens, dkenet_lens..., dkenet_pool)")
    p.add_argument("--nodepth-run", type=str, default="dkenet_nodepth",
                   help="with --train: the trained depth-free KE run of the 'w/o depth' row (dkenet_nodepth, "
                        "dkenet_nodepth_x4)")
    p.add_argument("--single-seed-stages", type=list[str], default=["dkenet_nodepth", "blind", "cmos"],
                   help="stages trained for the first seed only")
    p.add_argument("--fit-args", type=list[str], default=[], help="extra ssr fit arguments for every stage")
    p.add_argument("--jobs", type=int, default=1,
                   help="stage trainings run at once (each gets cores/jobs threads; 2 on a 2-core machine)")
    p.add_argument("--out", type=str, default="results/frontend",
                   help="folder for frontend.{json,md,png} and runs/ (a --split val ladder needs its own --out; share "
                        "the trainings with --runs)")
    p.add_argument("--overwrite", action="store_true", help="replace a ladder already in --out (its record)")
    return p


def runs_dir(args: Any, out: Path) -> Path:
    """Where ``--train`` keeps the stage trainings: ``--runs``, else ``<out>/runs`` (so a validation ladder and the
    test ladder, written to two record folders, share one set of trainings)."""
    return Path(args.runs) if args.runs else out / "runs"


def _train(args: Any, out: Path) -> dict[int, dict[str, Path]]:
    """``ssr fit`` every requested stage per seed (skipping finished runs); returns their best checkpoints.

    Stages are independent (SVKR combines them only at evaluation), so ``--jobs N`` trains N at once, each
    with ``cores // N`` threads: on a small CPU two one-thread runs beat one two-thread run.
    """
    if args.jobs < 1:
        raise SystemExit(f"ssr-frontend: --jobs must be >= 1, got {args.jobs}")
    unknown = [s for s in args.stages if s not in STAGE_RUNS]
    if unknown:
        raise SystemExit(f"ssr-frontend: unknown stage {unknown[0]!r} in --stages; choose from {sorted(STAGE_RUNS)}")
    runner = CLIRunner(cwd=Path.cwd())
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {"OMP_NUM_THREADS": str(threads)} if args.jobs > 1 else {}
    todo: list[tuple[int, str]] = []
    for i, seed in enumerate(args.seeds):
        for stage in args.stages:
            if i > 0 and stage in args.single_seed_stages:
                continue
            if not Path(stage_config(stage)).is_file():
                print(f"ssr-frontend: {stage_config(stage)} not found: stage {stage} skipped", file=sys.stderr)
                continue
            todo.append((seed, stage))

    def fit(seed: int, stage: str) -> None:
        root = runs_dir(args, out) / f"seed_{seed}"
        done = root / stage / "DONE"
        if done.is_file():
            _warn_stale(done, stage, seed)
            return
        config, extra = stage_config(stage), STAGE_RUNS[stage][1]
        t0, cpu0 = time.time(), cpu_children()
        print(f"ssr-frontend: training {stage} (seed {seed}) -> {root / stage}", file=sys.stderr)
        family = [a for f in args.degradation for a in ("--data.degradation", str(f))]
        cmd = ["fit", "--config", config, *extra, *family, *args.fit_args, "--seed_everything", str(seed),
               "--root", str(root), "--name", stage, "--ckpt_path", "last"]
        try:
            runner.execute(cmd, root / f"{stage}.log", env)
        except CommandFailed as err:
            raise SystemExit(f"ssr-frontend: training {stage} failed; see {root / f'{stage}.log'}:\n"
                             f"{err.tail[-2000:]}") from None
        # concurrent trainings (--jobs > 1) share the children's CPU count: CPU time only for one at a time
        prov = training(time.time() - t0, cpu_children() - cpu0)
        if args.jobs > 1:
            prov["time"]["cpu_seconds"] = None
        atomic_write_json(done, {"stage": stage, "seed": seed, "seconds": round(time.time() - t0, 1),
                                 "provenance": prov})
        print(f"ssr-frontend: {stage} (seed {seed}) trained in {time.time() - t0:.0f} s", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(fit, seed, stage) for seed, stage in todo]:
            future.result()
    ckpts: dict[int, dict[str, Path]] = {seed: {} for seed in args.seeds}
    for seed, stage in todo:
        found = find_checkpoint(stage, runs_dir(args, out) / f"seed_{seed}", "best")
        if found is not None:
            ckpts[seed][stage] = found
    return ckpts


def _warn_stale(done: Path, stage: str, seed: int) -> None:
    """Say when a finished training is reused although it was trained at other code (or its DONE predates
    provenance records)."""
    try:
        record = json.loads(done.read_text())
    except ValueError:
        record = {}  # an older DONE: its seconds as text, no provenance
    why = stale(record.get("provenance") if isinstance(record, dict) else None)
    if why is not None:
        print(f"ssr-frontend: warning: reusing {stage} (seed {seed}, {done.parent}) trained at {why}; remove "
              f"that folder to train it again", file=sys.stderr)


def _evaluate(args: Any, stage_ckpts: dict[str, str | Path | None], batches: list[dict[str, Any]],
              scale: int, invariant_batches: list[dict[str, Any]] | None = None) -> Ladder:
    depth_ckpt = stage_ckpts.get(args.depth_run if args.train else "depth")
    if args.train and depth_ckpt is None:
        raise ValueError(f"--depth-run {args.depth_run}: no trained run of that name; add it to --stages")
    ke_ckpt = stage_ckpts.get(args.ke_run if args.train else "dkenet")
    if args.train and ke_ckpt is None:
        raise ValueError(f"--ke-run {args.ke_run}: no trained run of that name; add it to --stages")
    nodepth_run = args.nodepth_run if args.train else "dkenet_nodepth"
    if args.train and nodepth_run not in stage_ckpts and nodepth_run != "dkenet_nodepth":  # the row is optional
        raise ValueError(f"--nodepth-run {nodepth_run}: no trained run of that name; add it to --stages")
    svkr = SVKR.from_config(SVKRConfig(dkenet_ckpt=ke_ckpt, nbsr_ckpt=stage_ckpts.get("nbsr"),
                                       depth=args.depth, depth_ckpt=depth_ckpt, iterations=args.T,
                                       gamma=args.gamma))

    def optional(key: str, stage: str) -> Any:
        path = stage_ckpts.get(key)
        return load_model(resolve_checkpoint(path, stage), stage) if path else None

    gammas, iters = _floats(args.gammas, float), _floats(args.iterations, int)
    if bool(gammas) != bool(iters):  # a sweep needs both axes; fill the missing one with the main setting
        gammas, iters = gammas or [args.gamma], iters or [args.T]
    nodepth = optional(nodepth_run, "dkenet")
    ladder = evaluate_ladder(batches, svkr, blind=optional("blind", "nbsr"), dkenet_nodepth=nodepth,
                             cmos=optional("cmos", "cmos"), scale=scale, gammas=gammas, sweep=iters, progress=True,
                             bicubic=args.bicubic, response=_floats(args.response, float))
    if invariant_batches:
        ladder.invariant_ke = evaluate_invariant_ke(invariant_batches, svkr, dkenet_nodepth=nodepth)
    return ladder


def per_image(ladder: Ladder, seeds: list[int] | None) -> dict[str, Any]:
    """Every row's per-image values as ``(seeds, images)`` lists (one row of values without seeds), the premise's
    and invariant-KE's alike, with the image names, sources and invariant flags: what the summary is computed from."""
    def part(name: str, key: str, metric: str = "") -> list[list[float]]:
        return ladder.values(name, key, metric).tolist()

    return {"names": ladder.names, "sources": ladder.sources, "invariant": ladder.invariant, "seeds": seeds,
            "rows": {row: {m: part("rows", row, m) for m in metrics} for row, metrics in ladder.rows.items()},
            "premise": {k: part("premise", k) for k in ladder.premise},
            "invariant_ke": {k: part("invariant_ke", k) for k in ladder.invariant_ke}}


def _stage_provenance(runs: Path, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """``{seed: {stage: DONE record}}`` of the trainings under ``runs`` (what the ladder was scored on)."""
    found: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for done in sorted((runs / f"seed_{seed}").glob("*/DONE")):
            try:
                found.setdefault(str(seed), {})[done.parent.name] = json.loads(done.read_text())
            except ValueError:
                found.setdefault(str(seed), {})[done.parent.name] = {"note": "a DONE record without provenance"}
    return found


def run(argv: list[str]) -> dict[str, Any]:
    """Parse ``argv``, (train,) evaluate, print the Markdown ladder and write frontend.{json,md,png}."""
    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    for a in _floats(args.response, float):  # checked before any training or evaluation
        response_row(a)
    if (out / "frontend.json").is_file() and not args.overwrite:  # checked before any training or evaluation
        raise ValueError(f"--out {out} already holds a ladder (frontend.json): pass --overwrite to replace it, or "
                         "give another --out (share the trainings with --runs)")
    overrides = {"dataset": args.dataset} if args.dataset else None
    test = {"test_size": args.test_size, "batch_size": args.batch_size, "limit": args.limit_batches,
            "noise": not args.no_noise, "jpeg": not args.no_jpeg, "overrides": overrides,
            "degradation": args.degradation, "split": args.split}
    batches, scale = make_test_batches(Path(args.data_config), **test)
    # the same test images with every kernel spatially invariant: KE's kernel L1 where depth says nothing
    invariant = make_test_batches(Path(args.data_config), **test, invariant=True)[0] if args.invariant_ke else None
    if args.train:
        per_seed = _train(args, out)
        first = per_seed[args.seeds[0]]
        ladders = [_evaluate(args, {**first, **per_seed[s]} if s != args.seeds[0] else first, batches, scale,
                             invariant) for s in args.seeds]
        for seed, lad in zip(args.seeds, ladders, strict=True):
            atomic_write_json(out / f"frontend_seed{seed}.json", summarize(lad))
        ladder, seeds = merge_seeds(ladders)
        if len(ladders) > 1:  # single-seed rows are the first seed's: merge_seeds keeps rows every seed has
            for name, row in ladders[0].rows.items():
                ladder.rows.setdefault(name, row)
    else:
        ckpts = {"dkenet": args.dkenet, "nbsr": args.nbsr, "depth": args.depth_ckpt, "blind": args.blind,
                 "dkenet_nodepth": args.dkenet_nodepth, "cmos": args.cmos}
        ladder, seeds = _evaluate(args, ckpts, batches, scale, invariant), None
    summary = summarize(ladder, seeds)
    summary["seeds"] = args.seeds if args.train else None
    summary["test"] = {"data_config": args.data_config, "dataset": args.dataset, "noise": not args.no_noise,
                       "jpeg": not args.no_jpeg, "test_size": args.test_size, "degradation": args.degradation,
                       "split": args.split, "depth_run": args.depth_run, "ke_run": args.ke_run,
                       "nodepth_run": args.nodepth_run}
    md = format_markdown(summary)
    print(md)
    atomic_write_json(out / "per_image.json", per_image(ladder, args.seeds if args.train else None))
    again = argv if "--overwrite" in argv else [*argv, "--overwrite"]  # the command that regenerates this record
    write_manifest(out, relative_command("ssr-frontend", again), "blind-SR front-end ladder (frontend.md)",
                   stages=_stage_provenance(runs_dir(args, out), args.seeds) if args.train else None)
    atomic_write_json(out / "frontend.json", summary)
    atomic_write_text(out / "frontend.md", md)
    fig = ladder_figure(summary, out / "frontend.png")
    if args.response:
        fig = f"{fig}, {response_figure(summary, out / 'frontend_response.png')}"
    print(f"-> {out / 'frontend.json'}, {out / 'frontend.md'}, {fig}")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ssr-frontend`` (see :func:`run`)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"ssr-frontend: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
