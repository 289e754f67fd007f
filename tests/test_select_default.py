"""tools/select_default.py: the diffusion-default selection rule applied to a validation record.

The rule (ablations/diffusion_default_val.yaml): candidates must meet four targets; the best by PSNR-Y replaces the
current default only when its paired ΔPSNR-Y has a CI above 0; photo rows are paired by source photo (the kernel
draws of one photo are one cluster).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import select_default  # noqa: E402

SCENES = [f"scene{i:02d}" for i in range(24)]
PHOTOS = [f"{p}_v{k}" for p in ("street", "beach") for k in range(5)]


def _write(path: Path, rows: dict[str, tuple[float, float, float]], photo_rows: dict[str, float]) -> None:
    """``rows``: label -> (PSNR-Y offset, NIQE, colour shift) on the scenes; ``photo_rows``: label -> PSNR-Y offset."""
    rng = np.random.default_rng(0)
    base = 25 + rng.normal(0, 1.5, len(SCENES))
    noise = {label: rng.normal(0, 0.02, len(SCENES)) for label in rows}
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["label", "dataset", "seed", "image", "source", "psnr_y", "niqe", "color_shift"])
        w.writeheader()
        for label, (off, niqe, shift) in rows.items():
            for i, name in enumerate(SCENES):
                w.writerow({"label": label, "dataset": "val", "seed": 0, "image": name, "source": name,
                            "psnr_y": base[i] + off + noise[label][i], "niqe": niqe, "color_shift": shift})
        for label, off in photo_rows.items():
            for k, name in enumerate(PHOTOS):
                w.writerow({"label": label, "dataset": "photos-val", "seed": 0, "image": name,
                            "source": name.split("_v")[0], "psnr_y": 24 + off + 0.1 * k, "niqe": 5.0,
                            "color_shift": 1.0})


def test_a_better_candidate_wins_and_one_missing_a_target_does_not(tmp_path: Path) -> None:
    cur, conf = select_default.CURRENT, select_default.AS_CONFIGURED
    _write(tmp_path / "per_image.csv", {
        "Bicubic": (0.0, 9.0, 0.5), "NBSR + SVKR": (2.0, 8.0, 0.5),
        cur: (1.8, 6.0, 1.0), conf: (1.8, 6.0, 1.0),
        "B bicubic condition from LR 0.3": (1.9, 6.0, 1.0),   # better by 0.1 dB on every scene: wins
        "R residual off from I_T 0.3": (2.5, 7.5, 1.0),       # best PSNR but NIQE not 1.0 below the front end
        "P reflect padding from I_T 0.3": (1.8, 6.0, 1.0)},
        {cur: 0.0, conf: 0.0, "P reflect padding from I_T 0.3": 0.01})
    out = tmp_path / "sel" / "selection"
    assert select_default.main(["--val", str(tmp_path), "--out", str(out)]) == 0
    sel = json.loads(out.with_suffix(".json").read_text())
    s2 = sel["step2"]
    assert "R residual off from I_T 0.3" not in s2["passing"]
    assert not s2["rows"]["R residual off from I_T 0.3"]["targets"]["niqe_below_frontend"]["pass"]
    assert s2["winner"] == "B bicubic condition from LR 0.3"
    assert s2["rows"][s2["winner"]]["vs_current"]["lo"] > 0
    # the winner is not D's process: the stripe fixes (trained on D) are not applied to it
    assert "note" in sel["step3"] and not sel["step3"]["fixes"]
    assert "Winner: **B bicubic condition from LR 0.3**" in out.with_suffix(".md").read_text()


def test_the_current_default_stays_without_a_significant_gain_and_photos_are_paired_by_source(tmp_path: Path) -> None:
    cur, conf = select_default.CURRENT, select_default.AS_CONFIGURED
    fix = "P reflect padding from I_T 0.3"
    _write(tmp_path / "per_image.csv", {
        "Bicubic": (0.0, 9.0, 0.5), "NBSR + SVKR": (2.0, 8.0, 0.5),
        cur: (1.8, 6.0, 1.0), conf: (1.8, 6.0, 1.0), fix: (1.8, 6.0, 1.0)},
        {cur: 0.0, conf: 0.0, fix: -0.2})
    out = tmp_path / "selection"
    select_default.main(["--val", str(tmp_path), "--out", str(out)])
    sel = json.loads(out.with_suffix(".json").read_text())
    assert sel["step2"]["winner"] == cur
    entry = sel["step3"]["fixes"]["P"]
    photos = entry["quality"]["photos-val"]
    assert photos["images"] == 10 and photos["clusters"] == 2  # 2 photos x 5 kernel draws: 2 units
    assert photos["delta"] < -0.05
    assert entry["adopted"] is False  # below the default by more than 0.05 dB, and no stripe record


def test_step4_picks_the_largest_tile_without_stripe_or_psnr_loss(tmp_path: Path) -> None:
    """tools/select_tile.py: a tile passes only with stripe excess ≤ 0.10 and ΔPSNR-Y ≥ −0.05 dB everywhere."""
    import select_tile

    base, whole = select_tile.BASE, select_tile.WHOLE
    _write(tmp_path / "per_image.csv", {base: (1.8, 6.0, 1.0), whole: (1.79, 6.0, 1.0)}, {base: 0.0, whole: -0.02})
    names = [f"{p}_v{k}" for p in ("street", "beach") for k in range(2)]
    # 64/16: clean and −0.03 dB; 96/24: a stripe; 128/32: clean but −0.2 dB on the tiled photos
    offsets = {"32/8": 0.0, "64/16": -0.03, "96/24": 0.0, "128/32": -0.2}
    per_image = {n: {t: {"psnr_y": 28.0 + 0.3 * i + off} for t, off in offsets.items()} for i, n in enumerate(names)}
    summary = {"32/8": {"worst_excess": 0.05}, "64/16": {"worst_excess": 0.04}, "96/24": {"worst_excess": 0.3},
               "128/32": {"worst_excess": 0.06}}
    stripes = tmp_path / "stripes.json"
    stripes.write_text(json.dumps({"size": 1024, "models": {"c_cell": {"summary": summary, "per_image": per_image}}}))
    out = tmp_path / "sel"
    assert select_tile.main(["--val", str(tmp_path), "--stripes", str(stripes), "--out", str(out)]) == 0
    sel = json.loads(out.with_suffix(".json").read_text())
    assert sel["passing"] == ["64/16"] and sel["chosen"] == "64/16"
    assert not sel["tiles"]["96/24"]["passes"] and not sel["tiles"]["128/32"]["passes"]
    assert abs(sel["tiles"]["128/32"]["quality"]["photos 1024 px"]["delta"] + 0.2) < 1e-9
    assert sel["tiles"]["64/16"]["quality"]["photos-val"]["clusters"] == 2
    # the same data with the scenes 0.1 dB worse as one tile: no tile passes and 32/8 stays
    _write(tmp_path / "per_image.csv", {base: (1.8, 6.0, 1.0), whole: (1.7, 6.0, 1.0)}, {base: 0.0, whole: 0.0})
    sel = select_tile.select(select_default.read(tmp_path / "per_image.csv"), json.loads(stripes.read_text()))
    assert sel["passing"] == [] and sel["chosen"] == "32/8"
