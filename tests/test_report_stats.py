"""Report statistics against known cases: CIs over images, seed std, paired Δ and its significance mark, every
figure, byte-identical `--report-only`, provenance in the records and the TensorBoard HPARAMS entries."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.report import to_csv, to_json, to_latex, to_markdown, write_report
from ssr_lightning.ablate.study import StudyError, parse_study
from ssr_lightning.ablate.table import build_table
from ssr_lightning.cli.ablate import main as ablate_main
from ssr_lightning.metrics.stats import bootstrap_ci, bootstrap_seeds, paired_difference_seeds

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import FakeRunner, _write_configs  # noqa: E402

N = 24
BASE = 20.0 + np.random.default_rng(3).normal(0.0, 2.0, size=N)  # images differ a lot
NAMES = [f"img{i:02d}" for i in range(N)]
SYMMETRIC = np.tile([-0.3, 0.3], N // 2)  # no effect on average


def _raw(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "stats",
        "base_configs": {"a": "configs/a.yaml", "b": "configs/b.yaml"},
        "rows": [{"label": "Bicubic", "seeds": [0], "evaluate": {"stage": "a", "ckpt": None, "source": "bicubic"}},
                 {"label": "full", "settings": {"gain": True}},
                 # scored differently from the same trainings as `full`: seed s of both rows is one replicate
                 {"label": "plus half", "settings": {"gain": True}, "evaluate": {"overrides": ["--x", "1"]}},
                 {"label": "no effect", "settings": {"gain": False}}],
        "overrides": {"gain": {True: {"b": ["--gain", True]}, False: {"b": ["--gain", False]}}},
        "metrics": ["psnr_y", "niqe"], "seeds": [0, 1], "evaluate": {"stage": "b"},
        "report": {"reference": "full", "delta_metrics": ["psnr_y", "niqe"], "reference_lines": ["Bicubic"],
                   "perception_distortion": {"distortion": "psnr_y", "perception": ["niqe"]}},
    }
    raw.update(extra)
    return raw


def _values(label: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR and NIQE of a row: `plus half` = full + 0.5 dB on every image; `no effect` = full ± 0.3."""
    psnr = BASE + 2.0 * seed  # the second seed is 2 dB better on every image: seed std of the means = √2
    psnr = {"Bicubic": BASE - 3.0, "full": psnr, "plus half": psnr + 0.5, "no effect": psnr + SYMMETRIC}[label]
    return psnr, 8.0 - 0.1 * psnr


def _records(plan: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for cell in plan.cells:
        psnr, niqe = _values(cell.label, cell.seed)
        out[cell.cell_id] = {
            "cell_id": cell.cell_id, "key": cell.key, "status": "ok", "settings": cell.settings, "label": cell.label,
            "finished_at": "t", "samples": None, "seed": cell.seed,
            "metrics": {"psnr_y": float(psnr.mean()), "niqe": float(niqe.mean())},
            "per_image": {"psnr_y": dict(zip(NAMES, psnr.tolist(), strict=True)),
                          "niqe": dict(zip(NAMES, niqe.tolist(), strict=True))}}
    return out


@pytest.fixture
def table(tmp_path: Path) -> Any:
    _write_configs(tmp_path)
    plan = expand(parse_study(_raw()), cwd=tmp_path)
    return build_table(plan, _records(plan))


def _row(table: Any, label: str, metric: str, kind: str = "value") -> Any:
    col = next(c for c in table.columns if c.metric == metric and c.kind == kind)
    return table.entry(label, col)


def test_cell_ci_over_seeds_then_images_and_std_over_seeds_match_the_known_values(table: Any) -> None:
    full = _row(table, "full", "psnr_y")
    expected = bootstrap_seeds(np.stack([BASE, BASE + 2.0]))  # two-level: seeds, then images
    assert full.mean == pytest.approx(BASE.mean() + 1.0) and full.images == N and full.n == 2
    assert (full.lo, full.hi) == pytest.approx((expected.lo, expected.hi)) and full.boot_seeds == 2
    images_only = bootstrap_ci(BASE + 1.0)  # what averaging the seeds per image first would claim
    assert full.hi - full.lo > images_only.hi - images_only.lo
    assert full.std == pytest.approx(np.sqrt(2.0)), "per-seed means differ by 2 dB: sample std √2"
    assert full.lo < full.mean < full.hi
    bicubic = _row(table, "Bicubic", "psnr_y")
    assert bicubic.n == 1 and bicubic.total == 1 and table.seeds["Bicubic"] == [0], "evaluated once"
    one = bootstrap_ci(BASE - 3.0)
    assert (bicubic.lo, bicubic.hi) == (one.lo, one.hi) and bicubic.boot_seeds == 1, "one seed: the image bootstrap"


def test_paired_delta_and_significance(table: Any) -> None:
    half = _row(table, "plus half", "psnr_y", "delta")
    assert (half.mean, half.lo, half.hi) == pytest.approx((0.5, 0.5, 0.5)), "the same +0.5 dB on every image"
    assert half.significant and half.better
    assert half.paired_seeds and half.mark == "* (Holm *)", "the same trainings: seeds resampled jointly"
    none = _row(table, "no effect", "psnr_y", "delta")
    runs = np.stack([BASE, BASE + 2.0])  # other trainings than the reference's: seeds resampled per row
    expected = paired_difference_seeds(runs + SYMMETRIC, runs)
    assert (none.mean, none.lo, none.hi) == pytest.approx((expected.mean, expected.lo, expected.hi))
    assert none.lo < 0 < none.hi and not none.significant and none.better is None and none.paired_seeds is False
    assert none.mark == "n.s." and none.p == pytest.approx(expected.p)
    niqe = _row(table, "plus half", "niqe", "delta")
    assert niqe.mean == pytest.approx(-0.05) and niqe.significant and niqe.better, "lower NIQE is better"
    bicubic = _row(table, "Bicubic", "psnr_y", "delta")
    assert bicubic.mean == pytest.approx(-4.0), "bicubic (one seed) against the seed-averaged reference"
    assert _row(table, "full", "psnr_y", "delta").text == "reference"


def test_every_format_carries_the_statistics(table: Any) -> None:
    md = to_markdown(table)
    assert ("Mean over 24 test images per cell; [lo, hi]: 95 % CI, two-level bootstrap over 2 training seeds then "
            "24 images (Bicubic: bootstrap over 24 images) (2000 resamples)") in md
    assert "± std over 2 training seeds (0, 1)" in md and "evaluated once (no seed-dependent training): Bicubic" in md
    assert "Δ: paired per-image difference row − full" in md and "n.s. not significant" in md
    assert "corrected mark: Holm across the 6 Δ tests of this table (family-wise error 0.05)" in md
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "+0.50 [+0.50, +0.50] * (Holm *)" in lines["plus half"]
    assert " n.s." in lines["no effect"] and " *" not in lines["no effect"].split("|")[-3]
    assert "| reference |" in lines["full"]
    full = _row(table, "full", "psnr_y")
    assert f"{full.mean:.2f} ± 1.41 [{full.lo:.2f}, {full.hi:.2f}]" in lines["full"]
    tex = to_latex(table)
    assert r"$+0.50$ {\scriptsize[+0.50, +0.50]}$^{*}$\,{\scriptsize (Holm *)}" in tex
    assert r"\,{\scriptsize n.s.}" in tex and "two-level bootstrap over 2 training seeds" in tex
    assert r"\caption{stats. Mean over 24 test images" in tex and r"$\Delta$ PSNR" in tex
    rows = {r.split(",")[0]: r.split(",") for r in to_csv(table).splitlines()}
    head = rows["label"]
    sig = head.index("embedded/delta_psnr_y_significant")
    assert rows["plus half"][sig] == "1" and rows["no effect"][sig] == "0"
    assert rows["plus half"][head.index("embedded/delta_psnr_y_significant_corrected")] == "1"
    assert rows["full"][head.index("embedded/psnr_y_ci_seeds")] == "2"
    assert rows["full"][head.index("embedded/psnr_y_images")] == "24"
    js = to_json(table)
    entry = js["rows"][2]["entries"][[c["kind"] for c in js["columns"]].index("delta")]
    assert entry["significant"] is True and entry["better"] is True and entry["display"].endswith("* (Holm *)")
    assert entry["significant_corrected"] is True and 0 < entry["p"] <= entry["p_adjusted"] < 0.05
    stats = js["statistics"]
    assert {k: stats[k] for k in ("ci", "bootstrap_resamples", "seeds", "correction")} == {
        "ci": 0.95, "bootstrap_resamples": 2000, "seeds": [0, 1], "correction": "holm"}
    assert stats["ci_text"].startswith("two-level bootstrap over 2 training seeds then 24 images")


def test_study_validates_the_new_report_keys(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"report.reference.*'ful'.*did you mean 'full'"):
        parse_study(_raw(report={"reference": "ful"}))
    with pytest.raises(StudyError, match=r"delta_metrics.*'psnr'.*did you mean 'psnr_y'"):
        parse_study(_raw(report={"reference": "full", "delta_metrics": ["psnr"]}))
    with pytest.raises(StudyError, match=r"reference_lines.*'Bicubik'.*did you mean 'Bicubic'"):
        parse_study(_raw(report={"reference_lines": ["Bicubik"]}))
    with pytest.raises(StudyError, match=r"shared_stages.*'aa'.*did you mean 'a'"):
        parse_study(_raw(shared_stages=["aa"]))
    raw = _raw()
    raw["rows"][0]["seeds"] = [5]
    with pytest.raises(StudyError, match="seeds \\[5\\] must be among the study's seeds"):
        parse_study(raw)
    with pytest.raises(StudyError, match="perception_distortion.*'niqee'"):
        parse_study(_raw(report={"perception_distortion": {"perception": ["niqee"]}}))


def test_shared_stages_are_trained_once_for_every_seed(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    raw = _raw(stage_overrides={"b": ["--a_ckpt", "{stage:a}"]}, shared_stages=["a"])
    plan = expand(parse_study(raw), cwd=tmp_path)
    stages = [r for r in plan.stages.values() if r.stage == "a"]
    assert len(stages) == 1 and stages[0].seed == 0, "a: one training (first seed) for the cells of both seeds"
    assert len([r for r in plan.stages.values() if r.stage == "b"]) == 2 * 2, "b: per training variant and seed"
    assert len([c for c in plan.cells if c.label == "Bicubic"]) == 1


def _write(tmp_path: Path) -> tuple[Any, Path]:
    """The study on disk, its cells written by FakeRunner-free records plus samples, and the report once."""
    _write_configs(tmp_path)
    study = tmp_path / "stats.yaml"
    study.write_text(yaml.safe_dump(_raw()))
    plan = expand(parse_study(_raw()), cwd=tmp_path)
    layout = Layout(tmp_path / "out")
    rng = np.random.default_rng(0)
    for cell_id, rec in _records(plan).items():
        samples = layout.out / "cells" / cell_id / "samples"
        samples.mkdir(parents=True)
        hr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        for kind, img in (("hr", hr), ("sr", hr // 2 + 60), ("lr", hr[::4, ::4])):
            Image.fromarray(img).save(samples / f"img00_{kind}.png")
        rec["samples"] = str(samples.relative_to(layout.out))
        layout.cell_json(cell_id).write_text(json.dumps(rec))
    return plan, study


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_every_figure_renders_with_fixed_metadata(tmp_path: Path) -> None:
    plan, _ = _write(tmp_path)
    paths = {p.name: p for p in write_report(plan, tmp_path / "out")}
    figures = ["stats_means.png", "stats_delta.png", "stats_perception_distortion.png", "stats_qualitative.png"]
    assert set(figures) <= set(paths)
    for name in figures:
        with Image.open(paths[name]) as img:
            assert img.size[0] > 400 and img.size[1] > 250, name
            assert "Software" not in img.info, "no version string: identical bytes on every machine"
            pixels = np.asarray(img.convert("L"))
            assert pixels.std() > 5, f"{name} has content"


def test_report_only_rewrites_identical_bytes(tmp_path: Path) -> None:
    _, study = _write(tmp_path)
    args = [str(study), "--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--report-only"]
    assert ablate_main(args) == 0
    first = _digests(tmp_path / "out" / "report")
    assert {"stats.md", "stats.csv", "stats.tex", "stats.json", "stats_means.png"} <= set(first)
    for path in (tmp_path / "out" / "report").iterdir():
        path.unlink()  # regenerate from scratch, not a left-over file
    assert ablate_main(args) == 0
    assert _digests(tmp_path / "out" / "report") == first


def test_cell_records_hold_per_image_values_and_provenance(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_raw(seeds=[0])), cwd=tmp_path)

    class PerImage(FakeRunner):
        def execute(self, args: list[str], log: Path, env: dict[str, str]) -> None:
            super().execute(args, log, env)
            if args[0] == "predict":
                out = Path(json.loads(args[-1].split("=", 1)[1])["init_args"]["out_dir"])
                rows = [{"name": n, "psnr_y": 20.0 + i, "niqe": 5.0} for i, n in enumerate(NAMES[:3])]
                (out / "predict_metrics.json").write_text(json.dumps(
                    {"summary": {"psnr_y": 21.0, "niqe": 5.0}, "num_samples": 3, "per_sample": rows}))

    records = Executor(plan, tmp_path / "out", PerImage(tmp_path), progress=False).run(plan.cells)
    rec = records[1]
    assert rec["per_image"]["psnr_y"] == {"img00": 20.0, "img01": 21.0, "img02": 22.0}
    prov = rec["provenance"]
    assert set(prov) == {"code", "versions", "machine", "configs"}
    assert len(prov["code"]["commit"]) == 40 and isinstance(prov["code"]["dirty"], bool)
    assert {"torch", "lightning", "diffusers", "pyiqa"} <= set(prov["versions"])
    assert prov["machine"]["hostname"] and prov["machine"]["cpu_count"] >= 1
    assert set(prov["configs"]) >= {"stage:b", "evaluate"}


def test_tensorboard_hparams_are_typed_and_complete(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    plan, _ = _write(tmp_path)
    write_report(plan, tmp_path / "out")
    board = tmp_path / "out" / "tensorboard"
    root = EventAccumulator(str(board))
    root.Reload()
    content = root.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    infos = {h.name: h for h in experiment.hparam_infos}
    assert {"gain", "row", "dataset", "seed"} <= set(infos) and all(h.differs for h in infos.values())
    assert infos["gain"].type == 2, "DATA_TYPE_BOOL"
    assert [v.bool_value for v in infos["gain"].domain_discrete.values] == [False, True]
    cell = EventAccumulator(str(board / "plus_half__embedded__s0"))
    cell.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        cell.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["gain"].WhichOneof("kind") == "bool_value" and start.hparams["gain"].bool_value is True
    assert len(cell.Scalars("per_image/psnr_y")) == N, "one point per test image: a readable curve"
    report = EventAccumulator(str(board / "_report"), size_guidance={"images": 0, "tensors": 0})
    report.Reload()
    assert "report/means" in report.Tags()["images"]
