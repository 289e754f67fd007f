"""Step 4 of the diffusion-default rule: the shipped default itself at larger tiles (ablations/tiles_default_val.yaml).

    python tools/select_tile.py --val results/tiles_default/val \\
        --stripes results/tiles/stripes_val_shipped.json --out results/tiles_default/val/selection

Reads ``per_image.csv`` of the study record (tools/study_record.py: the default at tiles 32/8 and at one tile of 64 LR
px or more, on the 64 LR px validation scenes and photos) and the tools/tile_stripes.py record of the same model on
the tiled validation photos. A tile of 64-128 LR px passes when its worst stripe excess (border and stripe-row
gradient against the rest of the image, rows and columns) is ≤ 0.10 and its paired ΔPSNR-Y against 32/8 is ≥ −0.05
dB on the scenes, on the photos and on the tiled photos; the largest tile that passes becomes the default (overlap ¼),
else 32/8 stays. Writes ``selection.json`` and ``selection.md``. ``--split test`` computes the same measures on the
test record (ablations/tiles_default_test.yaml and the test photos), read once after the choice:

    python tools/select_tile.py --split test --val results/tiles_default/test \
        --stripes results/tiles/stripes_test_shipped.json --out results/tiles_default/test/check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from select_default import delta, read  # noqa: E402

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite  # noqa: E402
from ssr_lightning.files import atomic_write_json, atomic_write_text  # noqa: E402
from ssr_lightning.metrics.stats import paired_difference_seeds, source_clusters  # noqa: E402

BASE = "C (shipped) from I_T 0.2, tiles 32/8"
WHOLE = "C (shipped) from I_T 0.2, tiles 64/16"  # one tile on the 64 LR px scenes and photos
TILES = ("64/16", "96/24", "128/32")
STRIPE_BOUND, PSNR_BOUND = 0.10, -0.05


def tiled_delta(per_image: dict[str, Any], tile: str) -> dict[str, float]:
    """Paired PSNR-Y of ``tile`` − 32/8 on the tiled photos (kernel draws of one photo: one cluster)."""
    names = sorted(per_image)
    est = paired_difference_seeds([per_image[n][tile]["psnr_y"] for n in names],
                                  [per_image[n]["32/8"]["psnr_y"] for n in names], clusters=source_clusters(names))
    return {"delta": est.mean, "lo": est.lo, "hi": est.hi, "images": len(names), "clusters": est.units}


def select(data: dict[str, Any], stripes: dict[str, Any]) -> dict[str, Any]:
    """The rule applied: per tile its stripe measure, its quality deltas and whether it passes; the chosen tile."""
    if len(stripes["models"]) != 1:
        raise SystemExit(f"--stripes: expected the record of one model, got {sorted(stripes['models'])}")
    (cell, model), = stripes["models"].items()
    whole = {ds: delta(data[ds], WHOLE, BASE) for ds in data if WHOLE in data[ds] and BASE in data[ds]}
    if not whole:
        raise SystemExit(f"--val: no dataset holds both {BASE!r} and {WHOLE!r}")
    tiles: dict[str, Any] = {}
    for t in TILES:
        if t not in model["summary"]:
            continue
        quality = {**whole, f"photos {stripes['size']} px": tiled_delta(model["per_image"], t)}
        excess = model["summary"][t]["worst_excess"]
        ok = excess <= STRIPE_BOUND and all(q["delta"] >= PSNR_BOUND for q in quality.values())
        tiles[t] = {"worst_excess": excess, "quality": quality, "passes": bool(ok)}
    passing = [t for t in TILES if tiles.get(t, {}).get("passes")]
    chosen = passing[-1] if passing else "32/8"
    return {"model": cell, "base_worst_excess": model["summary"].get("32/8", {}).get("worst_excess"),
            "tiles": tiles, "passing": passing, "chosen": chosen}


def render(sel: dict[str, Any]) -> str:
    test = sel.get("split") == "test"
    split = "test split, scored once after the choice on the validation split" if test else "validation split"
    sets = list(next(iter(sel["tiles"].values()))["quality"])
    lines = [f"# Diffusion default, step 4: the shipped model at larger tiles ({split})", "",
             f"Model: `{sel['model']}`; at tiles 32/8 its worst stripe excess is {sel['base_worst_excess']:.3f}. "
             f"A tile passes with a worst excess ≤ {STRIPE_BOUND:.2f} and a paired ΔPSNR-Y vs 32/8 ≥ "
             f"{PSNR_BOUND:+.2f} dB on every data set (mean [95 % CI]; photos: kernel draws of one photo resampled "
             "together).", "",
             "| tile | worst stripe excess | " + " | ".join(f"ΔPSNR-Y {k}" for k in sets) + " | passes |",
             "| --- | ---: | " + " | ".join("---:" for _ in sets) + " | --- |"]
    for t, e in sel["tiles"].items():
        q = " | ".join(f"{v['delta']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for v in e["quality"].values())
        lines.append(f"| {t} | {e['worst_excess']:.3f} | {q} | {'yes' if e['passes'] else 'no'} |")
    if test:
        lines += ["", f"Within the rule's bounds on this split: {', '.join(sel['passing']) or 'none'} (the tile is "
                  "chosen on the validation split, not here)."]
    else:
        none = "" if sel["passing"] else " (no larger tile passes)"
        lines += ["", f"**Chosen tile**: {sel['chosen']}{none}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--val", type=Path, required=True, help="the study record folder (per_image.csv)")
    p.add_argument("--stripes", type=Path, required=True, help="tools/tile_stripes.py record of the same model")
    p.add_argument("--out", type=Path, required=True, help="output stem (.json and .md)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: choose the tile; test: the same measures on the test record, read once after the choice")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_overwrite(p, args.overwrite, args.out.with_suffix(".json"), args.out.with_suffix(".md"))
    sel = {"command": "python tools/select_tile.py " + " ".join(argv), "rule": "ablations/tiles_default_val.yaml",
           "split": args.split,
           **select(read(args.val / "per_image.csv"), json.loads(args.stripes.read_text()))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), sel)
    atomic_write_text(args.out.with_suffix(".md"), render(sel))
    print(render(sel))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
