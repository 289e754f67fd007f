"""The defocus ladder's KE, chosen on the validation split (issue 21): the rule of docs/EXPERIMENTS.md applied by code.

    python tools/select_ke.py --val dkenet_lens=results/frontend_defocus_lens_val \\
        dkenet_lens_sharp=results/frontend_defocus_sharp_val ... --out results/frontend_defocus_ke_choice

Each ``RUN=FOLDER`` is an ``ssr-frontend --split val --ke-run RUN`` record (the same stages, seeds and validation
crops; only the KE differs). The rule, written before the candidates were scored: the KE whose "NBSR + DKENet, GT
depth" row recovers the larger mean share of the oracle gap on the validation ladder becomes the ladder's KE; the
first candidate (the KE in use) is kept on a tie. Writes ``selection.md`` / ``selection.json``, ``per_image.json``
(the per-image values the shares rest on) and ``RECORD.json``
into ``--out``, refusing to replace them without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.files import atomic_write_json, atomic_write_text

from record_formats import estimate, share  # tools/ is the script's folder, first on sys.path

GT_DEPTH, K0, NODEPTH = "NBSR + DKENet, GT depth", "NBSR + DKENet, depth from LR (K0)", "NBSR + DKENet w/o depth"
ZEROED, GT_KERNEL = "NBSR, kernel zeroed", "NBSR + GT kernel"


def _ci(e: dict[str, Any] | None, digits: int = 3) -> str:
    return estimate(e, digits) if e else "–"


def _pct(e: dict[str, Any] | None) -> str:
    return share(e) if e else "–"


def candidate(run: str, folder: Path, lens_reading: Path | None = None) -> dict[str, Any]:
    """The validation figures of one KE's ladder record (and, from ``lens_reading/<run>/summary.json`` where it
    exists, the head's focal-depth error beside that of a constant guess)."""
    path = folder / "frontend.json"
    if not path.is_file():
        raise FileNotFoundError(f"--val {run}={folder}: no frontend.json there; run ssr-frontend --split val "
                                f"--ke-run {run} --out {folder}")
    data = json.loads(path.read_text())
    test = data.get("test") or {}
    if test.get("split") != "val" or test.get("ke_run") != run:
        raise ValueError(f"--val {run}={folder}: the record is split {test.get('split')!r}, KE {test.get('ke_run')!r}; "
                         "the rule reads validation ladders of the named KE")
    rows = data["rows"]
    gt = rows[GT_DEPTH]
    reading = lens_reading / run / "summary.json" if lens_reading else None
    errors = json.loads(reading.read_text())["lens_errors"] if reading and reading.is_file() else {}
    return {"run": run, "record": folder.as_posix(), "share": gt["recovered_fraction"], "kernel_l1": gt["kernel_l1"],
            "psnr_y": gt["psnr_y"], "seed_std": (gt.get("seeds") or {}).get("psnr_y", {}).get("std"),
            "seeds": (gt.get("seeds") or {}).get("psnr_y", {}).get("n"),
            "k0_share": rows[K0].get("recovered_fraction"), "nodepth_share": rows[NODEPTH].get("recovered_fraction"),
            "focus_error": errors.get("focus"), "focus_error_constant": errors.get("focus_constant")}


def per_image(pairs: list[tuple[str, Path]]) -> dict[str, Any]:
    """What the shares rest on: each candidate's per-image (seeds × images) PSNR-Y and kernel L1 of the GT-depth row,
    with the zeroed-code and GT-kernel rows that make the gap, from each ladder's ``per_image.json``."""
    out: dict[str, Any] = {}
    for run, folder in pairs:
        data = json.loads((folder / "per_image.json").read_text())
        rows = data["rows"]
        out[run] = {"names": data["names"], "seeds": data["seeds"],
                    **{name: rows[name] for name in (GT_DEPTH, ZEROED, GT_KERNEL)}}
    return out


def select(cands: list[dict[str, Any]]) -> str:
    best = cands[0]
    for c in cands[1:]:
        if c["share"]["mean"] > best["share"]["mean"]:
            best = c
    return best["run"]


def markdown(cands: list[dict[str, Any]], chosen: str) -> str:
    lines = ["The defocus ladder's KE on the validation split (24 crops; 95 % CI: two-level bootstrap over a "
             "candidate's training seeds then images). Rule: the larger mean share of the oracle gap of the GT-depth row; "
             f"chosen: **{chosen}**.", "",
             "| KE run | GT depth: share of oracle gap | GT depth: kernel L1 | GT depth: PSNR-Y (dB) | seeds: n, std (dB) | "
             "K0 (DE depth): share | head's d_f error |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in cands:
        std = "–" if c["seed_std"] is None else f"{c.get('seeds') or '?'}, {c['seed_std']:.2f}"
        lines.append(f"| {c['run']}{' (chosen)' if c['run'] == chosen else ''} | "
                     f"{_pct(c['share'])} | {_ci(c['kernel_l1'])} | {_ci(c['psnr_y'], 2)} | {std} | "
                     f"{_pct(c['k0_share'])} | {_ci(c.get('focus_error'))} |")
    ref = cands[0]["nodepth_share"]
    lines += ["", f"The depth-free KE on the same crops: share {_pct(ref)}."]
    const = next((c["focus_error_constant"] for c in cands if c.get("focus_error_constant")), None)
    if const:
        lines[-1] += (" Head's d_f error: mean |d_f − GT d_f| on the 0–1 depth scale (tools/lens_reading.py); the "
                      f"constant 0.5, which reads nothing, is {_ci(const)} from the GT d_f.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val", nargs="+", required=True, metavar="RUN=FOLDER", help="validation ladders, the KE in use "
                   "first")
    p.add_argument("--lens-reading", type=Path, default=None,
                   help="folder of tools/lens_reading.py records, one per run (adds the head's d_f error)")
    p.add_argument("--out", type=Path, default=Path("results/frontend_defocus_ke_choice"))
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    pairs = []
    for item in args.val:
        run, sep, folder = item.partition("=")
        if not sep:
            p.error(f"--val {item}: expected RUN=FOLDER")
        pairs.append((run, Path(folder)))
    if (args.out / "selection.json").is_file() and not args.overwrite:
        print(f"select_ke: {args.out} already holds a selection; pass --overwrite to replace it", file=sys.stderr)
        return 2
    cands = [candidate(run, folder, args.lens_reading) for run, folder in pairs]
    chosen = select(cands)
    md = markdown(cands, chosen)
    command = "python tools/select_ke.py --val " + " ".join(f"{r}={f.as_posix()}" for r, f in pairs) + \
        (f" --lens-reading {args.lens_reading.as_posix()}" if args.lens_reading else "") + f" --out {args.out.as_posix()}"
    meta = {"command": command, "what": "the defocus ladder's KE chosen on the validation split (issue 21)",
            "provenance": environment()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "selection.md", md)
    atomic_write_json(args.out / "selection.json", {**meta, "chosen": chosen, "candidates": cands})
    atomic_write_json(args.out / "per_image.json", per_image(pairs))
    atomic_write_json(args.out / "RECORD.json", meta)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
