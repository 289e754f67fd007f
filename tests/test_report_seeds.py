"""Statistics that include training, in `ssr-ablate` reports and the `ssr-frontend` ladder: the two-level CI (seeds,
then images), the Holm mark beside the raw one, photos resampled by source, and the bicubic reference row (MATLAB's
by default); the ladder's JSON keeps the keys old readers use."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.report import to_json, to_latex, to_markdown
from ssr_lightning.ablate.runner import collect_metrics
from ssr_lightning.ablate.study import StudyError, parse_study
from ssr_lightning.ablate.table import build_table
from ssr_lightning.ablate.writer import EvalWriter
from ssr_lightning.degradation.resize import bicubic_upsample
from ssr_lightning.frontend.ladder import (
    BICUBIC,
    BLIND,
    GT_DEPTH,
    GT_KERNEL,
    K0,
    NODEPTH,
    ZEROED,
    Ladder,
    evaluate_ladder,
    format_markdown,
    ladder_figure,
    merge_seeds,
    summarize,
)
from ssr_lightning.metrics import psnr_y
from ssr_lightning.metrics.stats import (
    bootstrap_ci,
    bootstrap_seeds,
    paired_difference,
    paired_difference_seeds,
    source_clusters,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import _write_configs  # noqa: E402
from test_svkr import S, _make_svkr  # noqa: E402
from test_svkr import batch as svkr_batch  # noqa: E402,F401  (a fixture: test_svkr's tiny batch)

N = 24
NAMES = [f"img{i:02d}" for i in range(N)]
IMAGES = 25.0 + np.random.default_rng(11).normal(0.0, 1.5, N)


def _table(tmp_path: Path, rows: dict[str, np.ndarray], seeds: list[int], names: list[str] = NAMES,
           sources: dict[str, str] | None = None, reference: str | None = None, **study: Any) -> Any:
    """A table from per-image values ``rows[label]`` of shape (seeds, images); every row has its own trainings."""
    _write_configs(tmp_path)
    raw = {"name": "seeds", "base_configs": {"b": "configs/b.yaml"}, "metrics": ["psnr_y"], "seeds": seeds,
           "evaluate": {"stage": "b"},
           "rows": [{"label": lab, "overrides": {"b": ["--variant", str(i)]}} for i, lab in enumerate(rows)],
           **({"report": {"reference": reference}} if reference else {}), **study}
    plan = expand(parse_study(raw), cwd=tmp_path)
    records = {}
    for cell in plan.cells:
        values = rows[cell.label][seeds.index(cell.seed)]
        records[cell.cell_id] = {
            "cell_id": cell.cell_id, "key": cell.key, "status": "ok", "label": cell.label, "seed": cell.seed,
            "metrics": {"psnr_y": float(values.mean())}, "per_image": {"psnr_y": dict(zip(names, values.tolist()))},
            **({"sources": sources} if sources else {})}
    return build_table(plan, records)


def _entry(table: Any, label: str, kind: str = "value") -> Any:
    return table.entry(label, next(c for c in table.columns if c.kind == kind))


def test_seed_spread_widens_the_ci_and_turns_an_image_level_star_into_ns(tmp_path: Path) -> None:
    noise = np.random.default_rng(5).normal(0.0, 0.2, (3, N))
    ref = IMAGES + np.array([0.1, 0.6, -0.9])[:, None] + noise  # three seeds whose means differ
    row = IMAGES + 0.3 + np.array([0.0, 0.8, -0.5])[:, None] + noise[::-1]
    table = _table(tmp_path, {"reference": ref, "variant": row}, [0, 1, 2], reference="reference")
    value, image_level = _entry(table, "reference"), bootstrap_ci(ref.mean(0))
    assert value.boot_seeds == 3 and value.images == N
    expected = bootstrap_seeds(ref)
    assert (value.lo, value.hi) == pytest.approx((expected.lo, expected.hi))
    assert value.hi - value.lo > 1.5 * (image_level.hi - image_level.lo), "the seed spread enters the CI"
    before = paired_difference(row.mean(0), ref.mean(0))  # seeds averaged per image, then images resampled
    assert before.significant, "precondition: the image-only CI excludes 0"
    delta = _entry(table, "variant", "delta")
    assert delta.lo < 0 < delta.hi and not delta.significant and delta.mark == "n.s."
    assert delta.paired_seeds is False, "other trainings: each row's seeds resampled on their own"
    md = to_markdown(table)
    assert "95 % CI, two-level bootstrap over 3 training seeds then 24 images (2000 resamples)" in md
    line = next(x for x in md.splitlines() if x.startswith("| variant"))
    assert line.rstrip(" |").endswith("] n.s."), "bold (**) is the best mean; the Δ carries no star"


def test_holm_mark_beside_the_raw_one(tmp_path: Path) -> None:
    z = np.random.default_rng(7).normal(0.0, 1.0, N)
    z -= z.mean()
    rows = {"reference": IMAGES, "strong": IMAGES + 2.0 + z, "weak": IMAGES + 0.36 + z,
            "null a": IMAGES + z, "null b": IMAGES - z}
    table = _table(tmp_path, {k: v[None] for k, v in rows.items()}, [0], reference="reference")
    strong, weak = _entry(table, "strong", "delta"), _entry(table, "weak", "delta")
    assert weak.significant and 0.0125 < weak.p < 0.05, "precondition: raw *, but not at 0.05 / 4 tests"
    assert weak.mark == "* (Holm n.s.)" and weak.corrected is False and weak.p_adjusted >= 0.05
    assert strong.mark == "* (Holm *)" and strong.corrected
    assert _entry(table, "null a", "delta").mark == "n.s."
    assert table.correction == "corrected mark: Holm across the 4 Δ tests of this table (family-wise error 0.05)"
    md, tex = to_markdown(table), to_latex(table)
    assert table.correction in md and "* (Holm n.s.)" in md and r"{\scriptsize (Holm n.s.)}" in tex
    entry = to_json(table)["rows"][2]["entries"][1]
    assert entry["mark"] == "* (Holm n.s.)" and entry["significant"] and not entry["significant_corrected"]
    assert to_json(table)["rows"][0]["entries"][1]["text"] == "reference"


PHOTOS = [f"photo{p}_v{k}" for p in range(5) for k in range(5)]
PHOTO_VALUES = np.repeat([24.0, 27.5, 22.0, 30.0, 25.5], 5) + np.tile([0.1, -0.1, 0.05, -0.05, 0.0], 5)


@pytest.mark.parametrize("recorded", [True, False])
def test_kernel_draws_of_one_photo_are_resampled_as_one_source(tmp_path: Path, recorded: bool) -> None:
    # recorded: EvalWriter wrote each image's source; else the RealPhotos names {photo}_v{k} give it
    names = [f"p{i // 5}_draw{i % 5}" for i in range(25)] if recorded else PHOTOS
    sources = {n: f"p{i // 5}" for i, n in enumerate(names)} if recorded else None
    table = _table(tmp_path, {"photos": PHOTO_VALUES[None]}, [0], names=names, sources=sources)
    e = _entry(table, "photos")
    expected = bootstrap_seeds(PHOTO_VALUES, clusters=source_clusters(PHOTOS))
    assert e.units == 5 and e.images == 25 and (e.lo, e.hi) == pytest.approx((expected.lo, expected.hi))
    naive = bootstrap_ci(PHOTO_VALUES)
    assert e.hi - e.lo > 1.5 * (naive.hi - naive.lo), "25 draws of 5 photos are not 25 independent images"
    assert "95 % CI, bootstrap over 5 sources (25 images)" in to_markdown(table)


def test_eval_writer_records_sources_and_the_cell_keeps_them(tmp_path: Path) -> None:
    module = type("M", (), {"hparams": {"scale": 4}, "device": torch.device("cpu")})()
    hr = torch.rand(2, 3, 32, 32)
    photos = {"hr": hr, "lr": hr[..., ::4, ::4], "name": ["a_v0", "a_v1"], "source": ["a", "a"]}
    writer = EvalWriter(str(tmp_path / "cell"), metrics=["psnr_y"], num_samples=0)
    writer.on_predict_start(None, module)  # type: ignore[arg-type]
    writer.on_predict_batch_end(None, module, hr.flip(-1), photos, 0)  # type: ignore[arg-type]
    writer.on_predict_end(None, module)  # type: ignore[arg-type]
    result = collect_metrics(tmp_path / "cell", "b", ["psnr_y"])
    assert result["sources"] == {"a_v0": "a", "a_v1": "a"} and set(result["per_image"]["psnr_y"]) == {"a_v0", "a_v1"}


def _bicubic_writer(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    module = type("M", (), {"hparams": {"scale": 4}, "device": torch.device("cpu")})()
    hr = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    writer = EvalWriter(str(tmp_path / "cell"), metrics=["psnr_y"], source="bicubic", num_samples=0, **kwargs)
    writer.on_predict_start(None, module)  # type: ignore[arg-type]
    writer.on_predict_batch_end(None, module, None, {"hr": hr, "lr": lr, "name": ["x"]}, 0)  # type: ignore[arg-type]
    writer.on_predict_end(None, module)  # type: ignore[arg-type]
    report = json.loads((tmp_path / "cell" / "predict_metrics.json").read_text())
    method = kwargs.get("bicubic", "matlab")
    expected = float(psnr_y(bicubic_upsample(lr, 4, method).clamp(0, 1), hr, crop_border=4))
    return {"report": report, "expected": expected}


def test_bicubic_row_is_matlab_imresize_unless_torch_is_asked(tmp_path: Path) -> None:
    matlab = _bicubic_writer(tmp_path / "m")
    torch_ = _bicubic_writer(tmp_path / "t", bicubic="torch")
    assert matlab["report"]["bicubic"] == "matlab" and torch_["report"]["bicubic"] == "torch"
    assert matlab["report"]["summary"]["psnr_y"] == pytest.approx(matlab["expected"], abs=1e-9)
    assert torch_["report"]["summary"]["psnr_y"] == pytest.approx(torch_["expected"], abs=1e-9)
    assert abs(matlab["expected"] - torch_["expected"]) > 1e-3, "the two kernels read different numbers"
    with pytest.raises(ValueError, match="bicubic must be"):
        EvalWriter(str(tmp_path), source="bicubic", bicubic="pil")  # type: ignore[arg-type]


def test_study_bicubic_option_reaches_the_writer_the_key_and_the_caption(tmp_path: Path) -> None:
    _write_configs(tmp_path)

    def plan(bicubic: str | None) -> Any:
        row = {"label": "Bicubic", "evaluate": {"ckpt": None, "source": "bicubic",
                                               **({"bicubic": bicubic} if bicubic else {})}}
        raw = {"name": "bic", "base_configs": {"b": "configs/b.yaml"}, "metrics": ["psnr_y"],
               "evaluate": {"stage": "b"}, "rows": [row, {"label": "model"}]}
        return expand(parse_study(raw), cwd=tmp_path)

    default, torch_ = plan(None), plan("torch")
    assert default.cells[0].evaluate.bicubic == "matlab" and torch_.cells[0].evaluate.bicubic == "torch"
    assert default.cells[0].key != torch_.cells[0].key, "a MATLAB bicubic cell is not a torch one"
    assert default.cells[1].key == torch_.cells[1].key, "model rows keep their keys"
    records = {c.cell_id: {"key": c.key, "status": "ok", "metrics": {"psnr_y": 20.0}} for c in default.cells}
    assert "Bicubic: MATLAB imresize bicubic (A = −0.5) of the LR input" in build_table(default, records).caption()
    with pytest.raises(StudyError, match="bicubic: 'matlab'"):
        parse_study({"name": "x", "base_configs": {"b": "configs/b.yaml"}, "metrics": ["psnr_y"],
                     "rows": [{"label": "x"}], "evaluate": {"stage": "b", "source": "bicubic", "bicubic": "pil"}})


# --- the front-end ladder (ssr-frontend) ------------------------------------------------------------------------
SCENES = [f"scene{i:02d}" for i in range(N)]
BASE = 24.0 + np.random.default_rng(2).normal(0.0, 1.5, N)
OFFSETS = np.array([0.0, 0.9, -0.7])  # seed means differ (one NBSR per seed)


def _ladder(seed: int, names: list[str] = SCENES, base: np.ndarray = BASE) -> Ladder:
    noise = np.random.default_rng(10 + seed).normal(0.0, 0.05, len(names))
    zero = base + OFFSETS[seed]
    lad = Ladder(names=list(names), invariant=[False] * len(names), sources=source_clusters(names))
    for row, values in {BICUBIC: base - 2.0, ZEROED: zero, K0: zero + 0.3 + noise, GT_KERNEL: zero + 1.0}.items():
        lad.rows[row] = {"psnr_y": values.tolist()}
    return lad


def _pooled() -> tuple[dict, np.ndarray, np.ndarray]:
    ladders = [_ladder(s) for s in range(3)]
    merged, seeds = merge_seeds(ladders)
    merged.rows.setdefault(BLIND, {"psnr_y": (BASE + 0.2).tolist()})  # a single-seed row, as ssr-frontend adds it
    zero = np.array([lad.rows[ZEROED]["psnr_y"] for lad in ladders])
    k0 = np.array([lad.rows[K0]["psnr_y"] for lad in ladders])
    return summarize(merged, seeds), zero, k0


def test_pooled_rows_use_the_two_level_bootstrap_and_keep_their_keys() -> None:
    summary, zero, k0 = _pooled()
    row = summary["rows"][ZEROED]["psnr_y"]
    expected = bootstrap_seeds(zero)
    assert (row["lo"], row["hi"]) == pytest.approx((expected.lo, expected.hi)) and row["seeds"] == 3
    averaged = bootstrap_ci(zero.mean(0))  # what merging the seeds per image first claimed
    assert row["hi"] - row["lo"] > 1.5 * (averaged.hi - averaged.lo)
    delta = summary["rows"][K0]["delta_vs_zeroed"]
    joint = paired_difference_seeds(k0, zero, paired_seeds=True)  # seed s of both rows: the same NBSR
    assert (delta["mean"], delta["lo"], delta["hi"]) == pytest.approx((joint.mean, joint.lo, joint.hi))
    assert {"mean", "lo", "hi", "n", "significant"} <= set(delta), "the keys old readers use stay"
    assert summary["rows"][K0]["seeds"]["psnr_y"]["n"] == 3 and "recovered_fraction" in summary["rows"][K0]
    frac = summary["rows"][K0]["recovered_fraction"]
    assert frac["lo"] < 0.3 < frac["hi"], "(0.3 dB) / (1 dB oracle gap)"
    blind = summary["rows"][BLIND]["psnr_y"]
    assert blind["seeds"] == 1 and (blind["lo"], blind["hi"]) == pytest.approx(
        tuple(getattr(bootstrap_ci(BASE + 0.2), k) for k in ("lo", "hi"))), "one seed: the image bootstrap"
    assert summary["statistics"]["ci_text"] == ("two-level bootstrap over 3 training seeds then 24 images "
                                                f"({BLIND}: bootstrap over 24 images)")


def test_delta_column_gets_holm_marks_in_json_and_markdown() -> None:
    summary, _, _ = _pooled()
    mark = summary["rows"][K0]["delta_vs_zeroed_mark"]
    assert mark["raw"] == "*" and mark["corrected"] == "*" and mark["text"] == "* (Holm *)"
    assert mark["p_adjusted"] >= mark["p"] > 0
    tests = [r for r in summary["rows"].values() if "delta_vs_zeroed" in r]
    assert summary["statistics"]["correction_note"] == (
        f"corrected mark: Holm across the {len(tests)} Δ tests of this table (family-wise error 0.05)")
    md = format_markdown(summary)
    head = md.splitlines()[0]
    assert "95 % CI, two-level bootstrap over 3 training seeds then 24 images" in head
    assert "Holm across the" in head and "bicubic: MATLAB imresize (A = −0.5)" in head
    k0_line = next(line for line in md.splitlines() if line.startswith(f"| {K0}"))
    assert "* (Holm *)" in k0_line


def test_gt_depth_minus_nodepth_is_paired_per_seed_and_per_image() -> None:
    """Does depth help the KE: the GT-depth row minus the depth-free row, with its share of the oracle gap."""
    ladders = [_ladder(s) for s in range(3)]
    for s, lad in enumerate(ladders):
        zero = np.array(lad.rows[ZEROED]["psnr_y"])
        lad.rows[NODEPTH] = {"psnr_y": (zero + 0.2).tolist(), "kernel_l1": [0.6] * N}
        lad.rows[GT_DEPTH] = {"psnr_y": (zero + 0.5 + 0.01 * s).tolist(), "kernel_l1": [0.5] * N}
    merged, seeds = merge_seeds(ladders)
    contrast = summarize(merged, seeds)["gt_depth_minus_nodepth"]
    a, b = (np.array([lad.rows[r]["psnr_y"] for lad in ladders]) for r in (GT_DEPTH, NODEPTH))
    joint = paired_difference_seeds(a, b, paired_seeds=True)
    assert (contrast["psnr_y"]["mean"], contrast["psnr_y"]["lo"]) == pytest.approx((joint.mean, joint.lo))
    assert contrast["kernel_l1"]["mean"] == pytest.approx(-0.1) and contrast["kernel_l1"]["significant"] is True
    assert contrast["share"]["mean"] == pytest.approx(0.31) and contrast["share"]["lo"] > 0.25, "(0.31 dB) / (1 dB)"
    assert "DKENet, GT depth − w/o depth (paired): PSNR-Y +0.310" in format_markdown(summarize(merged, seeds))
    assert "+31 [" in format_markdown(summarize(merged, seeds))
    merged.per_seed[("rows", NODEPTH, "psnr_y")] = [ladders[0].rows[NODEPTH]["psnr_y"]]  # one seed: no share
    assert "share" not in summarize(merged, seeds)["gt_depth_minus_nodepth"]


def test_kernel_draws_of_one_photo_are_one_source() -> None:
    names = [f"photo{p}_v{k}" for p in range(5) for k in range(5)]
    base = np.repeat([24.0, 27.5, 22.0, 30.0, 25.5], 5) + np.tile([0.1, -0.1, 0.05, -0.05, 0.0], 5)
    lad = _ladder(0, names, base)
    summary = summarize(lad)
    row = summary["rows"][ZEROED]["psnr_y"]
    clustered = bootstrap_seeds(base, clusters=source_clusters(names))
    assert row["units"] == 5 and (row["lo"], row["hi"]) == pytest.approx((clustered.lo, clustered.hi))
    assert row["hi"] - row["lo"] > 1.5 * (bootstrap_ci(base).hi - bootstrap_ci(base).lo)
    assert summary["statistics"]["sources"] == 5
    assert "25 test images (5 sources, a photo's kernel draws resampled together" in format_markdown(summary)
    summary["test"] = {"split": "val"}  # what ssr-frontend --split val writes: the header names the split
    assert format_markdown(summary).startswith("Front-end ladder: 25 validation images (5 sources")
    one = summarize(_ladder(0))  # distinct scenes, one seed: exactly the image bootstrap of before
    plain = paired_difference(_ladder(0).rows[K0]["psnr_y"], _ladder(0).rows[ZEROED]["psnr_y"])
    assert one["rows"][K0]["delta_vs_zeroed"]["lo"] == plain.lo and one["statistics"]["sources"] is None


def test_ladder_bicubic_row_is_matlab_by_default_and_named(svkr_batch: dict[str, torch.Tensor],  # noqa: F811
                                                           tmp_path: Path) -> None:
    batch = svkr_batch
    svkr = _make_svkr(iterations=1)
    hr, lr = batch["hr"], batch["lr"]
    rows = {}
    for method in ("matlab", "torch"):
        lad = evaluate_ladder([batch], svkr, scale=S, **({} if method == "matlab" else {"bicubic": "torch"}))
        expected = psnr_y(bicubic_upsample(lr, S, method).clamp(0, 1), hr, crop_border=S).double().tolist()
        assert lad.bicubic == method and lad.rows[BICUBIC]["psnr_y"] == pytest.approx(expected, abs=1e-9)
        rows[method] = lad.rows[BICUBIC]["psnr_y"]
    assert rows["matlab"] != pytest.approx(rows["torch"], abs=1e-4)
    summary = summarize(lad)
    assert summary["bicubic"] == "torch" and "bicubic: torch F.interpolate (A = −0.75)" in format_markdown(summary)
    assert ladder_figure(summary, tmp_path / "ladder.png").stat().st_size > 10_000
