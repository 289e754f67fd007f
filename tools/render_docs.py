"""Fill the record regions of the docs from the records under results/, and find numbers quoted outside them.

    python tools/render_docs.py                 # rewrite the regions of README.md and docs/*.md from their records
    python tools/render_docs.py --check         # exit 1 with a diff where a doc differs from what its records give
    python tools/render_docs.py --list          # every region, its record, and whether the record exists yet
    python tools/render_docs.py --numbers       # measurements quoted outside regions (what tests/test_docs.py fails on)
    python tools/render_docs.py --check --strict   # also fail on a region whose record does not exist yet

**Regions.** A block region is replaced by its record (see `tools/record_formats.py` for the formatters)::

    <!-- record: results/table2/report/table2.md -->
    (generated: do not edit by hand)
    <!-- /record -->

An inline region sits on one line: ``PSNR-Y <!-- record: results/metrics/luma_conventions.json#ci(summary.psnr_y) -->
23.04 [22.24, 23.83]<!-- /record --> dB``. The spec is ``PATH[#FORMATTER[(ARGS)]]``, PATH relative to the repository
root. A record that does not exist yet renders as a placeholder that names it ("to be regenerated"); results/README.md
lists every record and the one command that writes it.

**Numbers outside regions** (:func:`scan_numbers`). Every doc of :data:`DOCS` is read without its record regions,
``<!-- not-results: WHY -->`` … ``<!-- /not-results -->`` blocks (a paper's values, a worked example), code blocks,
inline code, comments and link targets. What is left may not quote a measurement: a number with a unit of
:data:`UNITS` (dB, s, min, GB, %, …) or an estimate with its interval (``+0.08 [+0.05, +0.11]``); in :data:`RESULTS_DOCS` also any decimal number. Numbers that are not results
(a file size, a version, a setting) are allowed by a phrase in :data:`ALLOWED`, each with its reason. Docs under
docs/history/ are history (numbers of old code, kept for the reasoning) and are not scanned.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_formats import FORMATTERS, RecordError, load  # noqa: E402  (tools/ is not a package)

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/*.md"]
RESULTS_DOCS = {"docs/EXPERIMENTS.md"}  # every decimal number in these is a result
REGION = re.compile(r"<!-- record: (?P<spec>[^>]+?) -->(?P<body>.*?)<!-- /record -->", re.S)
NOT_RESULTS = re.compile(r"<!-- not-results: [^>]+? -->.*?<!-- /not-results -->", re.S)
UNITS = (r"dB|ms|s|sec|seconds?|min|minutes?|h|hours?|CPU-s|CPU-minutes|GB|MB|kB|KB|GiB|MiB|%|levels?"
         r"|s/image|s per image")
NUMBER = re.compile(r"(?<![\w.])[+−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# an estimate with its interval, "−1.29 [−1.35, −1.24]" or "+0.08 dB [+0.05, +0.11]": always a result
CI = re.compile(rf"[+−-]?\d[\d.]*(?:\s?(?:{UNITS}))?\s*\[\s*[+−-]?\d[\d.]*,\s*[+−-]?\d[\d.]*\s*\]")
MEASURE = re.compile(rf"\s?(?:{UNITS})(?![\w/])")
# (doc, phrase, why): a number inside one of these phrases of that doc is not a result
ALLOWED: list[tuple[str, str, str]] = [
    ("*", "95 %", "the confidence level of every CI"),
    ("README.md", "~1.8 kB per LR pixel", "arithmetic: 441 float32 taps"),
    ("README.md", "CI allows 90 minutes", "CI's time limit, not a measurement"),
    ("docs/METRICS.md", "(10.9 KB,", "the size of a committed file"),
    ("docs/METRICS.md", "= 1.32 dB", "analytic: 20·log10(255/219)"),
    ("docs/DESIGN.md", "1 % / 99 % quantiles", "a setting of the depth normalisation"),
    ("docs/DESIGN.md", "1–99 % percentiles", "a setting of the depth normalisation"),
    ("docs/DESIGN.md", "left 60 %", "how the embedded motorcycle photo is split"),
    ("docs/DESIGN.md", "right 40 %", "how the embedded motorcycle photo is split"),
    ("docs/DESIGN.md", "25–45 % from the top", "where the embedded scenes put the horizon"),
]
HINT = ("Put each number in a record region (<!-- record: results/... -->, results/README.md; fill it with "
        "`python tools/render_docs.py`), remove it, or, if it is not a result (a size, a version, a setting, a "
        "paper's value), wrap it in <!-- not-results: WHY --> ... <!-- /not-results --> or add the phrase to "
        "ALLOWED in tools/render_docs.py with its reason.")


@dataclass(frozen=True)
class Finding:
    doc: str
    line: int
    number: str
    context: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.number!r} in: {self.context}"


def docs(root: Path | None = None) -> list[Path]:
    return sorted({p for pattern in DOCS for p in (root or REPO).glob(pattern)})


def parse_spec(spec: str) -> tuple[str, str | None, list[str]]:
    """``PATH#name(a, b)`` → (PATH, name, [a, b]); no ``#``: (PATH, None, [])."""
    path, _, frag = spec.strip().partition("#")
    if not frag:
        return path, None, []
    m = re.fullmatch(r"(\w+)(?:\((.*)\))?", frag)
    if m is None:
        raise RecordError(f"bad formatter {frag!r} (NAME or NAME(ARG, ...))")
    args = [a.strip() for a in m.group(2).split(",")] if m.group(2) else []
    return path, m.group(1), args


def placeholder(path: str, inline: bool) -> str:
    if inline:
        return f"(to be regenerated: `{path}`)"
    return (f"*To be regenerated: no record at `{path}` yet (results/README.md names the command that writes "
            "it; then run `python tools/render_docs.py`).*")


def render_spec(spec: str, root: Path, inline: bool) -> tuple[str, bool]:
    """The text of one region and whether its record exists."""
    rel, name, args = parse_spec(spec)
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise RecordError(f"{rel}: a record path is relative to the repository root, inside it")
    path = root / rel
    if name is not None and name not in FORMATTERS:
        raise RecordError(f"unknown formatter {name!r} (known: {', '.join(sorted(FORMATTERS))})")
    if not path.is_file():
        return placeholder(rel, inline), False
    data = load(path)
    if name is None:
        if not isinstance(data, str):
            raise RecordError(f"{rel}: a JSON record needs a formatter (#value(...), #ci(...), ...)")
        text = data.rstrip("\n")
    else:
        text = FORMATTERS[name](data, path, *args)
    if inline and "\n" in text:
        raise RecordError(f"{spec}: gives several lines; use a block region (the marker on its own line)")
    return text, True


def render(text: str, root: Path | None = None, where: str = "") -> tuple[str, list[tuple[str, bool]]]:
    """``text`` with every region filled; also each region's spec and whether its record exists."""
    regions: list[tuple[str, bool]] = []
    root = root or REPO

    def fill(m: re.Match[str]) -> str:
        inline = not m.group("body").startswith("\n")
        starts_line = m.start() == 0 or text[m.start() - 1] == "\n"
        try:
            if inline and starts_line:  # Markdown reads a line that opens with <!-- as an HTML block
                raise RecordError("an inline region must not start a line (it would end the paragraph): put a word "
                                  "before it, or make it a block region")
            body, found = render_spec(m.group("spec"), root, inline)
        except (RecordError, OSError) as err:
            line = text.count("\n", 0, m.start()) + 1
            raise RecordError(f"{where}:{line}: {err}") from None
        regions.append((m.group("spec").strip(), found))
        inner = body if inline else f"\n{body}\n"
        return f"<!-- record: {m.group('spec').strip()} -->{inner}<!-- /record -->"

    return REGION.sub(fill, text), regions


def check(paths: list[Path], root: Path | None = None) -> tuple[list[str], list[str]]:
    """(unified diffs of the docs that differ from their records, the records that do not exist yet)."""
    diffs, missing, root = [], [], root or REPO
    for path in paths:
        rel = path.relative_to(root).as_posix()
        old = path.read_text(encoding="utf-8")
        new, regions = render(old, root, rel)
        missing += [f"{rel}: {spec}" for spec, found in regions if not found]
        if new != old:
            diffs.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{rel} (now)",
                                                      f"{rel} (from its records)")))
    return diffs, missing


def _blank(m: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", m.group(0))


def visible(text: str) -> str:
    """``text`` with regions, not-results blocks, code, comments and link targets blanked (lines kept)."""
    for pattern in (REGION, NOT_RESULTS, re.compile(r"^(```|~~~).*?^\1", re.S | re.M), re.compile(r"<!--.*?-->", re.S),
                    re.compile(r"`[^`\n]*`"), re.compile(r"\]\([^)]*\)"), re.compile(r"https?://\S+")):
        text = pattern.sub(_blank, text)
    return text


def scan_numbers(rel: str, text: str) -> list[Finding]:
    """Measurements quoted in ``text`` (the doc ``rel``) outside regions, code and allowed phrases."""
    found = []
    results_doc = rel in RESULTS_DOCS
    raw_lines = text.splitlines()
    for i, line in enumerate(visible(text).splitlines()):
        allowed = [(m.start(), m.end()) for doc, phrase, _ in ALLOWED if doc in ("*", rel)
                   for m in re.finditer(re.escape(phrase), raw_lines[i])]
        for m in CI.finditer(line):
            if not any(a <= m.start() and m.end() <= b for a, b in allowed):
                found.append(Finding(rel, i + 1, m.group(0), raw_lines[i].strip()[:160]))
        for m in NUMBER.finditer(CI.sub(_blank, line)):
            measured = MEASURE.match(line, m.end()) is not None
            if not (measured or (results_doc and "." in m.group(0))):
                continue
            if any(a <= m.start() and m.end() <= b for a, b in allowed):
                continue
            found.append(Finding(rel, i + 1, m.group(0) + (MEASURE.match(line, m.end()).group(0) if measured
                                                           else ""), raw_lines[i].strip()[:160]))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="Markdown files (default: README.md and docs/*.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff when a doc is out of date")
    p.add_argument("--strict", action="store_true", help="with --check: also fail on records that do not exist yet")
    p.add_argument("--list", action="store_true", help="list every region and whether its record exists")
    p.add_argument("--numbers", action="store_true", help="list measurements quoted outside record regions")
    args = p.parse_args(argv)
    paths = [Path(f).resolve() for f in args.files] or docs()
    try:
        if args.numbers:
            findings = [f for path in paths for f in scan_numbers(path.relative_to(REPO).as_posix(),
                                                                   path.read_text(encoding="utf-8"))]
            print("\n".join(map(str, findings)) + (f"\n{HINT}" if findings else "no numbers outside regions"))
            return int(bool(findings))
        if args.list:
            for path in paths:
                for spec, found in render(path.read_text(encoding="utf-8"), REPO, str(path))[1]:
                    print(f"{path.relative_to(REPO)}: {spec}: {'ok' if found else 'awaiting its record'}")
            return 0
        diffs, missing = check(paths, REPO)
    except RecordError as err:
        print(f"render_docs: {err}", file=sys.stderr)
        return 2
    if args.check:
        print("".join(diffs), end="")
        for m in missing:
            print(f"awaiting its record: {m}", file=sys.stderr)
        return int(bool(diffs) or (args.strict and bool(missing)))
    for path in paths:
        old = path.read_text(encoding="utf-8")
        new = render(old, REPO, str(path))[0]
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"rendered {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
