"""The record of issue 21's question "does DKENet use depth?": KE variants × kernel families × training seeds.

    OMP_NUM_THREADS=1 python tools/ke_depth_report.py --run      # trains what is missing, then writes the record
    python tools/ke_depth_report.py                              # the record from the runs already on disk

The variants (``ablations/ke_depth_<family>.jsonl``, one line per training: tools/ke_depth_study.py's specs) are
DKENet without depth, with depth through SFT (normalised per image: the shipped configs/dkenet.yaml) and with the
thin-lens head (absolute depth, per-image lens parameters turned into a per-pixel Gaussian prior). Each trains 1600
steps noise-free and is scored with GT depth on 24 validation and 24 test crops of its family (kernel L1, lower is
better). The rule, fixed before any test number is read: per family, the variant with the lowest validation mean is
chosen; the test split is then reported once for every variant, with each row's paired difference to "no depth"
(two-level bootstrap over seeds then images; Holm across the table's Δ column).

Writes ``results/ke_depth/``: ``summary.md`` (rendered into docs/EXPERIMENTS.md), ``summary.json``, ``per_image.json``
(every training's per-image values) and ``RECORD.json`` (command, provenance). The trainings' raw lines stay in
``results/ke_depth/artifacts/`` (ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.metrics.stats import (
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
)

FAMILIES = ("defocus", "default")
OUT = REPO / "results" / "ke_depth"
REFERENCE = "nodepth"
LABELS = {"nodepth": "KE w/o depth", "depth": "KE + GT depth, SFT (normalised; configs/dkenet.yaml)",
          "thin_lens": "KE + GT depth, thin-lens head (absolute)",
          "thin_lens_sup": "KE + GT depth, thin-lens head supervised with the lens (lens_loss 1)",
          "thin_lens_sup01": "KE + GT depth, thin-lens head supervised with the lens (lens_loss 0.1)"}
COMMAND = "python tools/ke_depth_report.py --run"


def specs(family: str) -> Path:
    return REPO / "ablations" / f"ke_depth_{family}.jsonl"


def runs_file(family: str) -> Path:
    return OUT / "artifacts" / f"{family}.jsonl"


def train_missing() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    import ke_depth_study

    for family in FAMILIES:
        ke_depth_study.main(["--specs", str(specs(family)), str(runs_file(family))])


def load_runs(family: str) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> run row, for the specs of ``ablations/ke_depth_<family>.jsonl`` found in the runs file."""
    wanted = {(s["name"], s.get("seed", 0)) for s in map(json.loads, specs(family).read_text().splitlines()) if s}
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    path = runs_file(family)
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        if (r["name"], r["seed"]) in wanted:
            rows.setdefault(r["name"], {})[r["seed"]] = r
    return rows


def _matrix(runs: dict[int, dict[str, Any]], split: str, key: str = "ke") -> np.ndarray:
    return np.array([runs[s][split]["per_image"][key] for s in sorted(runs)], dtype=float)


def family_table(family: str, runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    names = [n for n in LABELS if n in runs]
    any_run = next(iter(next(iter(runs.values())).values()))
    out: dict[str, Any] = {"family": family, "rows": {}, "references": {}}
    for split in ("val", "test"):
        for ref in ("mean_kernel", "per_image_mean"):  # the same for every training: GT-only references
            out["references"].setdefault(ref, {})[split] = bootstrap_seeds(
                np.array([any_run[split]["per_image"][ref]])).as_dict()
    for n in names:
        out["rows"][n] = {"seeds": sorted(runs[n]), "label": LABELS[n],
                          **{s: bootstrap_seeds(_matrix(runs[n], s)).as_dict() for s in ("val", "test")}}
    out["chosen_on_val"] = min(names, key=lambda n: out["rows"][n]["val"]["mean"])
    if REFERENCE in runs:
        deltas = {n: paired_difference_seeds(_matrix(runs[n], "test"), _matrix(runs[REFERENCE], "test"))
                  for n in names if n != REFERENCE}
        marks = mark_deltas(list(deltas.values()))
        for (n, d), m in zip(deltas.items(), marks):
            out["rows"][n]["test_delta"] = {**d.as_dict(), "mark": m.text if m else ""}
        out["correction"] = correction_note(marks)
    return out


def _ci(e: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(e['mean'])} [{f.format(e['lo'])}, {f.format(e['hi'])}]".replace("-", "−")


def markdown(tables: list[dict[str, Any]]) -> str:
    lines = []
    for t in tables:
        seeds = max(len(r["seeds"]) for r in t["rows"].values())
        n = next(iter(t["rows"].values()))["test"]["n"]
        lines += [(f"**{t['family']} family** (kernel L1 × 100 of the per-pixel 21×21 kernel, lower is better; "
                   f"95 % CI: {ci_phrase(seeds, n)}; chosen on the validation split: "
                   f"{LABELS[t['chosen_on_val']]})"), "",
                  "| KE | seeds | val | test | Δ test vs w/o depth | mark |", "| --- | --- | --- | --- | --- | --- |"]
        for r in t["rows"].values():
            d = r.get("test_delta")
            lines.append(f"| {r['label']} | {len(r['seeds'])} | {_ci(r['val'])} | {_ci(r['test'])} | "
                         f"{_ci(d, True) if d else '—'} | {d['mark'] if d else ''} |")
        for ref, label in (("mean_kernel", "the training set's mean kernel (reads nothing)"),
                           ("per_image_mean", "each image's own mean GT kernel (best invariant estimate)")):
            e = t["references"][ref]
            lines.append(f"| *{label}* | — | {_ci(e['val'])} | {_ci(e['test'])} | | |")
        if t.get("correction"):
            lines += ["", f"Δ: paired per-image difference, marked * where its CI excludes 0; {t['correction']}."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="store_true", help="train the specs that have no run yet, then write the record")
    args = p.parse_args(argv)
    if args.run:
        train_missing()
    tables, per_image = [], {}
    for family in FAMILIES:
        runs = load_runs(family)
        if not runs:
            print(f"ke_depth_report: no runs of {family} in {runs_file(family).relative_to(REPO)}; "
                  f"run `{COMMAND}`", file=sys.stderr)
            return 1
        # the KE's kernel L1 ×100 reads better in a table; per_image.json keeps the raw values
        scaled = {n: {s: {sp: {"per_image": {k: [100 * v for v in r[sp]["per_image"][k]]
                                             for k in ("ke", "mean_kernel", "per_image_mean")}}
                          for sp in ("val", "test")} for s, r in by_seed.items()} for n, by_seed in runs.items()}
        tables.append(family_table(family, scaled))
        per_image[family] = {n: {str(s): {"train_cpu_s": r["train_cpu_s"], "kw": r["kw"],
                                          **{sp: r[sp]["per_image"] for sp in ("val", "test")},
                                          "provenance": r["provenance"]} for s, r in by_seed.items()}
                             for n, by_seed in runs.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "summary.md", markdown(tables))
    atomic_write_json(OUT / "summary.json", {"command": COMMAND, "what": "KE with/without depth (issue 21)",
                                             "tables": tables, "provenance": environment()})
    atomic_write_json(OUT / "per_image.json", per_image)
    atomic_write_json(OUT / "RECORD.json", {"command": COMMAND, "provenance": environment()})
    print(markdown(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
