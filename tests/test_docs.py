"""The docs quote results only from records (results/README.md), through the regions `tools/render_docs.py` fills.

- README.md and docs/*.md are what their records give (`python tools/render_docs.py --check`);
- no measurement (a number with a unit such as dB, s, min, GB, %, or an estimate with its interval) is quoted
  outside a record region; docs/EXPERIMENTS.md quotes no decimal number outside one either. A number that is not a
  result (a size, a version, a setting, a paper's value) goes into ``ALLOWED`` of tools/render_docs.py, with its
  reason, or into a ``<!-- not-results: WHY -->`` block;
- the renderer itself: block and inline regions, placeholders for records not written yet, formatters, errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import render_docs  # noqa: E402
from record_formats import FORMATTERS, RecordError  # noqa: E402


def test_the_docs_are_what_their_records_give() -> None:
    diffs, _ = render_docs.check(render_docs.docs())
    assert not diffs, ("these docs differ from their records; run `python tools/render_docs.py` (and commit), or fix "
                       "the record:\n" + "\n".join(diffs))


def test_no_result_is_quoted_outside_a_record_region() -> None:
    findings = [f for p in render_docs.docs()
                for f in render_docs.scan_numbers(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8"))]
    assert not findings, "numbers quoted outside record regions:\n" + "\n".join(map(str, findings)) + "\n" + \
        render_docs.HINT


def test_the_scan_covers_the_readme_and_every_doc_but_not_history() -> None:
    names = {p.relative_to(REPO).as_posix() for p in render_docs.docs()}
    assert {"README.md", "docs/EXPERIMENTS.md", "docs/DESIGN.md", "docs/METRICS.md"} <= names
    assert not any(n.startswith("docs/history/") for n in names)
    assert (REPO / "docs/history/EXPERIMENTS_issues_2-13.md").is_file(), "the log of issues 2-13 stays, as history"


def _repo(tmp_path: Path) -> Path:
    rec = tmp_path / "results" / "x"
    rec.mkdir(parents=True)
    (rec / "table.md").write_text("caption\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n| c |\n| --- |\n| 3 |\n")
    (rec / "r.json").write_text(json.dumps({"summary": {"psnr": {"mean": 23.04, "lo": 22.2, "hi": 23.8, "n": 24},
                                                        "d": {"mean": -0.5, "lo": -0.9, "hi": -0.1, "n": 24}},
                                            "caption": "95 % CI", "list": [1.5, 2.25]}))
    return tmp_path


def test_block_and_inline_regions_are_filled_and_placeholders_name_the_record(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    doc = ("A\n<!-- record: results/x/table.md#table(2) -->\nold\n<!-- /record -->\n"
           "PSNR <!-- record: results/x/r.json#ci(summary.psnr) -->?<!-- /record --> dB, "
           "Δ <!-- record: results/x/r.json#ci(summary.d, 2, signed) --><!-- /record -->, "
           "<!-- record: results/x/r.json#value(list.1, .1f) --><!-- /record -->\n"
           "<!-- record: results/y/missing.md -->\n<!-- /record -->\n")
    out, regions = render_docs.render(doc, root)
    assert "\n| c |\n| --- |\n| 3 |\n" in out and "old" not in out
    assert "PSNR <!-- record: results/x/r.json#ci(summary.psnr) -->23.04 [22.20, 23.80]<!-- /record --> dB" in out
    assert "−0.50 [−0.90, −0.10]" in out and ">2.2<" in out
    assert "To be regenerated: no record at `results/y/missing.md`" in out
    assert [found for _, found in regions] == [True, True, True, True, False]
    assert render_docs.render(out, root)[0] == out, "rendering is idempotent"


@pytest.mark.parametrize("spec, message", [
    ("results/x/r.json", "needs a formatter"),
    ("results/x/r.json#nope", "unknown formatter"),
    ("results/x/r.json#value(summary.ssim)", "no 'ssim'"),
    ("results/x/table.md#table(3)", "has 2 tables"),
    ("/etc/passwd", "relative to the repository root"),
])
def test_a_bad_region_is_an_error_naming_the_doc_and_line(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(RecordError, match=message) as err:
        render_docs.render(f"x\n<!-- record: {spec} -->\n<!-- /record -->\n", _repo(tmp_path), "doc.md")
    assert str(err.value).startswith("doc.md:2:")


def test_an_inline_region_at_a_line_start_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="must not start a line"):
        render_docs.render("text\n<!-- record: results/x/r.json#ci(summary.psnr) -->1<!-- /record -->\n",
                           _repo(tmp_path))


def test_check_reports_a_stale_doc_with_a_diff(tmp_path: Path, monkeypatch) -> None:
    root = _repo(tmp_path)
    doc = root / "doc.md"
    doc.write_text("v <!-- record: results/x/r.json#value(list.0) -->1.0<!-- /record -->\n")
    diffs, missing = render_docs.check([doc], root)
    assert len(diffs) == 1 and "+v <!-- record: results/x/r.json#value(list.0) -->1.5<!-- /record -->" in diffs[0]
    assert missing == []
    monkeypatch.setattr(render_docs, "REPO", root)
    assert render_docs.main([str(doc), "--check"]) == 1
    assert render_docs.main([str(doc)]) == 0 and render_docs.main([str(doc), "--check"]) == 0


def test_the_scan_finds_measurements_and_honours_regions_code_and_allowed_phrases() -> None:
    text = ("Table 2 took 17 min 18 s and 1.2 GB; PSNR +0.13 [+0.07, +0.19] dB; 93.6 % covered.\n"
            "the 95 % CI; `make run  # ~18 min`; 24 scenes, 3 seeds, T = 3, γ = 0.9\n"
            "<!-- record: results/t.json#timing -->5 min<!-- /record --> and\n"
            "<!-- not-results: the paper's value -->\nSSR at 32 s per image\n<!-- /not-results -->\n"
            "```bash\nmake test   # 5 min 19 s\n```\n")
    found = [(f.line, f.number) for f in render_docs.scan_numbers("README.md", text)]
    assert found == [(1, "+0.13 [+0.07, +0.19]"), (1, "17 min"), (1, "18 s"), (1, "1.2 GB"), (1, "93.6 %")]
    decimals = [f.number for f in render_docs.scan_numbers("docs/EXPERIMENTS.md", "PSNR-Y 24.3, 3 seeds\n")]
    assert decimals == ["24.3"], "a results doc quotes no decimal outside a region"


def test_every_formatter_named_in_the_docs_is_registered() -> None:
    used = {render_docs.parse_spec(m.group("spec"))[1] for p in render_docs.docs()
            for m in render_docs.REGION.finditer(p.read_text(encoding="utf-8"))}
    assert used - {None} <= set(FORMATTERS)


def test_the_version_the_docs_name_is_the_package_version() -> None:
    """pyproject's version, ``ssr_lightning.__version__`` and the newest release the README names ("renamed in 0.4",
    "... (0.4)") agree."""
    import re

    import ssr_lightning

    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert ssr_lightning.__version__ == version, "pyproject.toml and ssr_lightning/__init__.py name other versions"
    readme = (REPO / "README.md").read_text()
    named = {tuple(map(int, v.split("."))) for v in re.findall(r"(?:renamed in|added in|\()(\d+\.\d+)\b", readme)}
    assert named, "the README no longer names the release of its option changes"
    assert max(named) == tuple(map(int, version.split(".")[:2])), \
        f"README's newest release {max(named)} is not the package's {version}: bump the version or the docs"


def test_every_file_the_docs_and_configs_name_exists() -> None:
    """Paths of the repository named in the docs, the studies and the configs' comments (`configs/...`, `tools/...`,
    ``docs/...``; a `*.py` in backticks, read from the repository root or from ssr_lightning/) exist. Records under
    results/ are left out: a doc may name one that is to be regenerated."""
    import glob
    import re

    files = ["README.md", "ablations/README.md", "results/README.md", *glob.glob("docs/*.md", root_dir=REPO),
             *glob.glob("configs/**/*.yaml", root_dir=REPO, recursive=True), *glob.glob("ablations/*.yaml", root_dir=REPO)]
    named = re.compile(r"(?<![\w/.-])((?:configs|ablations|tools|benchmarks|docs|tests|ssr_lightning)/[\w./-]+)")
    module = re.compile(r"`([\w/]+\.py)`")
    missing = []
    for f in files:
        text = (REPO / f).read_text(encoding="utf-8")
        for m in named.finditer(text):
            path = m.group(1).rstrip(".,:;)")
            if not path.startswith("ablations/results") and not (REPO / path).exists():
                missing.append(f"{f}: {path}")
        for m in module.finditer(text):
            path = m.group(1)
            if not any((REPO / base / path).exists() for base in ("", "ssr_lightning")):
                missing.append(f"{f}: `{path}`")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def test_the_formatters_read_what_the_tools_write(tmp_path: Path) -> None:
    """`ladder` on a real `ssr-frontend` summary, `timing` on a `tools/timed.py` record."""
    from record_formats import ladder, timing

    from ssr_lightning.frontend.ladder import Ladder, merge_seeds, summarize

    def one(shift: float) -> Ladder:
        return Ladder(names=[f"s{i}" for i in range(6)], invariant=[False] * 6, sources=[f"s{i}" for i in range(6)],
                      rows={"NBSR, kernel zeroed": {"psnr_y": [20.0 + i % 3 + shift for i in range(6)]},
                            "NBSR + GT kernel": {"psnr_y": [20.5 + i % 3 + shift for i in range(6)],
                                                 "kernel_l1": [0.0] * 6}})

    merged, seeds = merge_seeds([one(0.0), one(0.1)])
    summary = json.loads(json.dumps(summarize(merged, seeds), default=float))
    table = ladder(summary, tmp_path / "frontend.json").splitlines()
    assert table[0].startswith("| method | PSNR-Y (dB) |") and len(table) == 4
    assert table[3].startswith("| NBSR + GT kernel | 21.") and "+0.50 [+0.50, +0.50] *" in table[3]
    assert "100 %" not in table[2] and table[2].split(" | ")[2] == "–", "the zeroed row is the Δ reference"
    record = {"summary": {"exit_status": 0, "wall_seconds": 1038.4, "cpu_seconds": 59.0,
                          "load_average_before": [0.25, 0.1, 0.0]}}
    assert timing(record, tmp_path / "t.json") == "17 min 18 s wall, 59 s CPU (exit status 0, load average 0.2 before)"


def test_the_ke_rows_formatter_gives_the_three_ke_rows_and_the_contrast(tmp_path: Path) -> None:
    from record_formats import ke_rows

    def est(m: float) -> dict[str, float]:
        return {"mean": m, "lo": m - 0.1, "hi": m + 0.1}

    rows = {name: {"recovered_fraction": est(f), "kernel_l1": est(k), "psnr_y": est(27.0)}
            for name, f, k in [("NBSR + DKENet w/o depth", 0.5, 0.4), ("NBSR + DKENet, depth from LR (K0)", 0.2, 0.5),
                               ("NBSR + DKENet, GT depth", 0.6, 0.3)]}
    text = ke_rows({"rows": rows}, tmp_path / "frontend.json")
    assert text.splitlines()[2] == "| NBSR + DKENet w/o depth | 50 [40, 60] % | 0.400 [0.300, 0.500] | 27.00 [26.90, 27.10] |"
    assert "paired" not in text, "no contrast in the record: none rendered"
    record = {"rows": rows, "gt_depth_minus_nodepth": {"psnr_y": est(0.1), "kernel_l1": est(-0.1), "share": est(0.1)}}
    assert ke_rows(record, tmp_path / "f.json").splitlines()[-1] == (
        "GT depth − w/o depth, paired: PSNR-Y +0.100 [+0.000, +0.200] dB, kernel L1 −0.100 [−0.200, +0.000], "
        "+10 [+0, +20] points of the oracle gap.")
    with pytest.raises(RecordError, match="ke_rows needs"):
        ke_rows({"rows": {}}, tmp_path / "frontend.json")


def test_the_premise_formatter_names_each_input_and_the_k0_row(tmp_path: Path) -> None:
    from record_formats import premise

    est = {"mean": 0.3, "lo": 0.25, "hi": 0.35}
    record = {"depth_premise_absrel": {"from HR": est, "from LR": {**est, "mean": 0.4}},
              "rows": {"NBSR + DKENet, depth from LR (K0)": {"psnr_y": {"mean": 26.5, "lo": 26.0, "hi": 27.0}}}}
    line = premise(record, tmp_path / "frontend.json")
    assert line == ("AbsRel from HR 0.300 [0.250, 0.350]; AbsRel from LR 0.400 [0.250, 0.350]; "
                    "K0 PSNR-Y 26.50 [26.00, 27.00] dB")
    with pytest.raises(RecordError):
        premise({"rows": {}}, tmp_path / "frontend.json")
