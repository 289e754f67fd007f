"""Apply the diffusion-default selection rule of ablations/diffusion_default_val.yaml to its validation record.

    python tools/select_default.py --val results/diffusion_default/val [--tiles results/tiles/stripes_val.json] \\
        --out results/diffusion_default/val/selection

Reads ``per_image.csv`` of the validation record (tools/study_record.py) and, for the stripe step, the
tools/tile_stripes.py record of the validation photos. Writes ``selection.json`` and ``selection.md``: every
candidate's means on the 24 validation scenes, the four targets (pass / fail with the margin), the winner of step 2
with its paired ΔPSNR-Y [95 % CI] against the current default, and step 3 for each stripe fix (stripe measure per tile,
targets, paired ΔPSNR-Y against the default as configured on the validation scenes, the validation photos and the
tiled photos of the stripe record). The rule itself is stated in the study file, before any row was scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite  # noqa: E402
from ssr_lightning.files import atomic_write_json, atomic_write_text  # noqa: E402
from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference_seeds, source_clusters  # noqa: E402

BICUBIC, FRONTEND = "Bicubic", "NBSR + SVKR"
CURRENT = "D from I_T 0.3"
AS_CONFIGURED = "D (issue-12 default) I_T 0.3, tiles 32/8 as configured"
PROCESS = ("D", "B", "R", "C")  # step 2's candidates (label prefixes)
FIXES = ("P", "L")  # step 3's stripe fixes
TILES = ("64/16", "96/24", "128/32")


def read(path: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{dataset: {label: {metric: {image: value}}}}`` of seed 0 from a per_image.csv."""
    out: dict[str, Any] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    with path.open() as f:
        for row in csv.DictReader(f):
            if int(row["seed"]) != 0:
                continue
            for k, v in row.items():
                if k not in ("label", "dataset", "seed", "image", "source") and v not in ("", None):
                    out[row["dataset"]][row["label"]][k][row["image"]] = float(v)
    return out


def delta(data: dict[str, Any], a: str, b: str, metric: str = "psnr_y") -> dict[str, float]:
    """Paired ``a − b`` per image; the kernel draws of one photo (``{photo}_v{k}``) are resampled as one cluster."""
    names = sorted(set(data[a][metric]) & set(data[b][metric]))
    est = paired_difference_seeds([data[a][metric][n] for n in names], [data[b][metric][n] for n in names],
                                  clusters=source_clusters(names))
    return {"delta": est.mean, "lo": est.lo, "hi": est.hi, "images": len(names), "clusters": est.units}


def means(data: dict[str, Any], label: str) -> dict[str, float]:
    return {m: float(np.mean(list(v.values()))) for m, v in data[label].items()}


def targets(m: dict[str, float], bic: dict[str, float], fe: dict[str, float]) -> dict[str, Any]:
    checks = {"psnr_vs_bicubic": (m["psnr_y"] - bic["psnr_y"], 1.0, ">="),
              "psnr_vs_frontend": (m["psnr_y"] - fe["psnr_y"], -0.5, ">="),
              "niqe_below_frontend": (fe["niqe"] - m["niqe"], 1.0, ">="),
              "color_shift": (m["color_shift"], 2.0, "<=")}
    out = {k: {"value": v, "target": t, "pass": bool(v >= t if op == ">=" else v <= t)} for k, (v, t, op) in checks.items()}
    out["all"] = all(c["pass"] for c in out.values())
    return out


def step2(val: dict[str, Any]) -> dict[str, Any]:
    bic, fe = means(val, BICUBIC), means(val, FRONTEND)
    table = {}
    for label in val:
        if label in (BICUBIC, FRONTEND):
            continue
        m = means(val, label)
        ci = bootstrap_ci(list(val[label]["psnr_y"].values()))
        table[label] = {"means": m, "psnr_y_ci": [ci.lo, ci.hi], "targets": targets(m, bic, fe),
                        "vs_current": delta(val, label, CURRENT) if label != CURRENT else None}
    passing = [lab for lab, r in table.items() if lab.split(" ")[0] in PROCESS and r["targets"]["all"]]
    best = max(passing, key=lambda lab: table[lab]["means"]["psnr_y"]) if passing else None
    keep = best is None or best == CURRENT or table[best]["vs_current"]["lo"] <= 0
    return {"bicubic": bic, "frontend": fe, "rows": table, "passing": passing, "best": best,
            "winner": CURRENT if keep else best,
            "why": ("the current default stays: " + ("no candidate meets the targets" if best is None else
                    f"the best, {best!r}, is not better with a CI above 0") if keep else
                    f"{best!r}: the best PSNR-Y among those meeting the targets, its ΔPSNR-Y vs the current default "
                    f"has a 95 % CI above 0")}


def step3(data: dict[str, Any], s2: dict[str, Any], stripes: dict[str, Any] | None) -> dict[str, Any]:
    winner = s2["winner"]
    strength = winner.rsplit(" ", 1)[-1]
    out: dict[str, Any] = {"process": winner, "fixes": {}}
    process = winner.split(" ")[0]
    for fix in FIXES:
        # a fix on D's process is row "P ..."; on another process X it is row "X+P ..." (trained after step 2)
        tag = fix if process == "D" else f"{process}+{fix}"
        label = next((lab for lab in s2["rows"] if lab.startswith(tag + " ") and lab.endswith(" " + strength)), None)
        if label is None:
            continue
        entry: dict[str, Any] = {"row": label, "targets": s2["rows"][label]["targets"]["all"], "quality": {}}
        for ds in data:
            if label in data[ds] and AS_CONFIGURED in data[ds]:
                entry["quality"][ds] = delta(data[ds], label, AS_CONFIGURED)
        if stripes is not None:
            cell = next((c for c in stripes["models"] if c.startswith(_slug(label))), None)
            base = next((c for c in stripes["models"] if c.startswith(_slug(AS_CONFIGURED))), None)
            if cell is not None:
                summ = stripes["models"][cell]["summary"]
                entry["stripes"] = {t: summ[t]["worst_excess"] for t in summ}
                ok_tiles = [t for t in TILES if t in summ and summ[t]["worst_excess"] <= 0.10]
                entry["stripe_free_tiles"] = ok_tiles
                if base is not None:
                    per_fix, per_base = stripes["models"][cell]["per_image"], stripes["models"][base]["per_image"]
                    names = sorted(per_fix)
                    for t in ok_tiles:
                        est = paired_difference_seeds([per_fix[n][t]["psnr_y"] for n in names],
                                                      [per_base[n]["32/8"]["psnr_y"] for n in names],
                                                      clusters=source_clusters(names))
                        entry["quality"][f"photos {stripes['size']} px, tiles {t} vs 32/8"] = {
                            "delta": est.mean, "lo": est.lo, "hi": est.hi, "images": len(names),
                            "clusters": est.units}
        q_ok = all(v["delta"] >= -0.05 for v in entry["quality"].values())
        entry["adopted"] = bool(entry["targets"] and q_ok and entry.get("stripe_free_tiles"))
        out["fixes"][fix] = entry
    adopted = [f for f, e in out["fixes"].items() if e["adopted"]]
    if adopted:
        best = max(adopted, key=lambda f: (max(TILES.index(t) for t in out["fixes"][f]["stripe_free_tiles"]),
                                           s2["rows"][out["fixes"][f]["row"]]["means"]["psnr_y"]))
        out["adopted"] = best
        out["tile"] = max(out["fixes"][best]["stripe_free_tiles"], key=TILES.index)
    else:
        out["adopted"] = None
    if not out["fixes"]:
        out["note"] = f"no stripe fix was trained on the winner's process ({process}) at its strength"
    return out


def _slug(label: str) -> str:
    from ssr_lightning.ablate.plan import slug

    return slug(label, 60)


def render(sel: dict[str, Any]) -> str:
    s2 = sel["step2"]
    lines = ["# Diffusion default: the selection rule applied to the validation record", "",
             f"Bicubic PSNR-Y {s2['bicubic']['psnr_y']:.2f} dB, NIQE {s2['bicubic']['niqe']:.2f}; front end (NBSR + SVKR) "
             f"{s2['frontend']['psnr_y']:.2f} dB, NIQE {s2['frontend']['niqe']:.2f} (24 validation scenes).", "",
             "| row | PSNR-Y [95 % CI] | NIQE | colour shift | Δ vs bicubic | Δ vs front end | NIQE below front end | "
             "targets | ΔPSNR-Y vs current [95 % CI] |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for label, r in s2["rows"].items():
        m, t, d = r["means"], r["targets"], r["vs_current"]
        lines.append(f"| {label} | {m['psnr_y']:.2f} [{r['psnr_y_ci'][0]:.2f}, {r['psnr_y_ci'][1]:.2f}] | {m['niqe']:.2f} | "
                     f"{m['color_shift']:.2f} | {t['psnr_vs_bicubic']['value']:+.2f} | {t['psnr_vs_frontend']['value']:+.2f} | "
                     f"{t['niqe_below_frontend']['value']:.2f} | {'all met' if t['all'] else 'missed: ' + ', '.join(k for k, v in t.items() if k != 'all' and not v['pass'])} | "
                     + (f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "—") + " |")
    lines += ["", f"**Step 2**: {s2['why']}. Winner: **{s2['winner']}**.", ""]
    s3 = sel.get("step3") or {}
    for fix, e in (s3.get("fixes") or {}).items():
        q = "; ".join(f"{k}: {v['delta']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for k, v in e["quality"].items())
        st = ", ".join(f"{t} {v:.3f}" for t, v in (e.get("stripes") or {}).items())
        lines.append(f"- **{fix}** ({e['row']}): targets {'met' if e['targets'] else 'missed'}; worst stripe excess by "
                     f"tiles: {st or 'not measured'}; stripe-free tiles (≤ 0.10): {e.get('stripe_free_tiles')}; "
                     f"ΔPSNR-Y vs the default as configured: {q}; adopted: {e['adopted']}")
    if s3:
        lines += ["", f"**Step 3**: adopted fix {s3.get('adopted')}, tile {s3.get('tile')}. {s3.get('note', '')}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val", type=Path, required=True, help="the validation record folder (per_image.csv)")
    p.add_argument("--tiles", type=Path, nargs="*", default=[],
                   help="tools/tile_stripes.py records of the validation photos (their models merged)")
    p.add_argument("--out", type=Path, required=True, help="output stem (.json and .md)")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_overwrite(p, args.overwrite, args.out.with_suffix(".json"), args.out.with_suffix(".md"))
    data = read(args.val / "per_image.csv")
    s2 = step2(data["val"])
    stripes = None
    for path in args.tiles:
        part = json.loads(path.read_text())
        if stripes is None:
            stripes = part
        elif part["size"] != stripes["size"] or part["split"] != stripes["split"]:
            raise SystemExit(f"{path}: photos of another size or split than {args.tiles[0]}")
        else:
            stripes["models"].update(part["models"])
    sel = {"command": "python tools/select_default.py " + " ".join(argv), "rule": "ablations/diffusion_default_val.yaml",
           "step2": s2, "step3": step3(data, s2, stripes)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), sel)
    atomic_write_text(args.out.with_suffix(".md"), render(sel))
    print(render(sel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
