"""How a record becomes Markdown: the formatter registry of `tools/render_docs.py`.

A region names a record and, after `#`, a formatter with optional arguments (`NAME` or `NAME(ARG, ARG)`):

- no formatter: the record file's text (a report's `.md`, a `frontend.md`), without its final newline;
- `table(N)`: the N-th Markdown table (1-based) of a `.md` record;
- `value(PATH[, FORMAT])`: one value of a JSON record, PATH dotted (`summary.default.psnr_y_torch.mean`; list items
  by index), FORMAT a Python format spec (`.2f`, `+.3f`);
- `ci(PATH[, DIGITS[, signed]])`: an estimate `{mean, lo, hi}` as `23.04 [22.24, 23.83]` (signed: `+0.08 [+0.05, +0.11]`);
- `caption`: the caption of an `ssr-ablate` report JSON;
- `ladder`: the headline columns of an `ssr-frontend` record (`frontend.json`);
- `ke_rows`: the KE rows of an `ssr-frontend` record (w/o depth, K0, GT depth: share, kernel L1, PSNR-Y) and, where
  the record has it, the paired GT-depth − w/o-depth contrast;
- `response`: the kernel-quality response rows of an `ssr-frontend --response` record, from the GT-depth KE to the
  GT kernel;
- `timing`: a `tools/timed.py` record as "W wall, C CPU (exit status, load average)";
- `bicubic_rows`: `results/metrics/bicubic_rows.json` as the table of docs/METRICS.md "Which bicubic";
- `coverage`: `results/metrics/bootstrap_coverage.json` as a table of the CI coverages.

Add a formatter: a function ``(data, path, *args) -> str`` registered with ``@formatter("name")``; ``data`` is the
parsed JSON (or the text of a non-JSON record). Negative numbers are written with a true minus sign (−).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATTERS: dict[str, Callable[..., str]] = {}


class RecordError(ValueError):
    """A region that cannot be rendered from its record (unknown formatter, missing key, wrong kind of record)."""


def formatter(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        FORMATTERS[name] = fn
        return fn
    return register


def num(x: float, spec: str = ".2f") -> str:
    """``x`` formatted by ``spec`` with a true minus sign."""
    return format(float(x), spec).replace("-", "−")


def load(path: Path) -> Any:
    """A JSON record parsed, any other record as text."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as err:
            raise RecordError(f"{path}: not JSON ({err})") from None
    return text


def lookup(data: Any, dotted: str) -> Any:
    """``data`` followed along ``dotted`` (keys, or list indexes)."""
    for part in dotted.split("."):
        if isinstance(data, list) and part.lstrip("-").isdigit():
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise RecordError(f"no {part!r} at {dotted!r}")
    return data


def _json(data: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"{path}: {what} needs a JSON record")
    return data


@formatter("table")
def table(data: Any, path: Path, n: str = "1") -> str:
    if not isinstance(data, str):
        raise RecordError(f"{path}: table(N) takes a Markdown record")
    tables, current = [], []
    for line in data.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    if not 1 <= int(n) <= len(tables):
        raise RecordError(f"{path}: has {len(tables)} tables, not table {n}")
    return tables[int(n) - 1]


@formatter("value")
def value(data: Any, path: Path, dotted: str, spec: str = "") -> str:
    v = lookup(_json(data, path, "value()"), dotted)
    return num(v, spec) if spec and isinstance(v, (int, float)) else str(v)


def estimate(e: dict[str, Any], digits: int = 2, signed: bool = False) -> str:
    spec = f"{'+' if signed else ''}.{digits}f"
    if e.get("n", 2) < 2 or e.get("lo") is None:
        return num(e["mean"], spec)
    return f"{num(e['mean'], spec)} [{num(e['lo'], spec)}, {num(e['hi'], spec)}]"


@formatter("ci")
def ci(data: Any, path: Path, dotted: str, digits: str = "2", signed: str = "") -> str:
    e = lookup(_json(data, path, "ci()"), dotted)
    if not isinstance(e, dict) or "mean" not in e:
        raise RecordError(f"{path}: {dotted} is not an estimate (mean, lo, hi)")
    return estimate(e, int(digits), signed == "signed")


@formatter("caption")
def caption(data: Any, path: Path) -> str:
    return str(lookup(_json(data, path, "caption"), "caption"))


def share(e: dict[str, Any]) -> str:
    """A share of the oracle gap in per cent with its CI: ``45 [9, 63] %``."""
    return f"{num(100 * e['mean'], '.0f')} [{num(100 * e['lo'], '.0f')}, {num(100 * e['hi'], '.0f')}] %"


@formatter("ladder")
def ladder(data: Any, path: Path) -> str:
    rows = lookup(_json(data, path, "ladder"), "rows")
    lines = ["| method | PSNR-Y (dB) | Δ PSNR-Y vs zeroed | share of oracle gap | kernel L1 | depth AbsRel |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        delta = r.get("delta_vs_zeroed")
        mark = (r.get("delta_vs_zeroed_mark") or {}).get("text", "")
        frac = r.get("recovered_fraction")
        cells = [estimate(r["psnr_y"]) if "psnr_y" in r else "–",
                 f"{estimate(delta, 2, True)} {mark}".strip() if delta else "–",
                 share(frac) if frac else "–",
                 estimate(r["kernel_l1"], 3) if "kernel_l1" in r else "–",
                 estimate(r["absrel"], 3) if "absrel" in r else "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@formatter("ke_rows")
def ke_rows(data: Any, path: Path) -> str:
    d = _json(data, path, "ke_rows")
    rows = lookup(d, "rows")
    names = ["NBSR + DKENet w/o depth", "NBSR + DKENet, depth from LR (K0)", "NBSR + DKENet, GT depth"]
    if not all(n in rows for n in names):
        raise RecordError(f"{path}: ke_rows needs the rows {names}")
    lines = ["| KE row | share of oracle gap | kernel L1 | PSNR-Y (dB) |", "| --- | ---: | ---: | ---: |"]
    for n in names:
        r = rows[n]
        lines.append(f"| {n} | {share(r['recovered_fraction'])} | {estimate(r['kernel_l1'], 3)} | "
                     f"{estimate(r['psnr_y'])} |")
    c = d.get("gt_depth_minus_nodepth")
    if c:
        parts = [f"PSNR-Y {estimate(c['psnr_y'], 3, True)} dB", f"kernel L1 {estimate(c['kernel_l1'], 3, True)}"]
        if "share" in c:
            parts.append(f"{estimate({k: 100 * c['share'][k] for k in ('mean', 'lo', 'hi')}, 0, True)} points of "
                         "the oracle gap")
        lines += ["", "GT depth − w/o depth, paired: " + ", ".join(parts) + "."]
    return "\n".join(lines)


@formatter("response")
def response(data: Any, path: Path) -> str:
    rows = lookup(_json(data, path, "response"), "rows")
    prefix = "response: GT-depth KE → GT kernel, α="
    walk = [("0 (the GT-depth KE)", "NBSR + DKENet, GT depth")]
    walk += [(k[len(prefix):], k) for k in sorted((k for k in rows if k.startswith(prefix)),
                                                  key=lambda k: float(k[len(prefix):]))]
    walk.append(("1 (the GT kernel)", "NBSR + GT kernel"))
    if len(walk) == 2:
        raise RecordError(f"{path}: no response rows (run ssr-frontend with --response)")
    lines = ["| α | kernel L1 | PSNR-Y (dB) | share of oracle gap |", "| --- | ---: | ---: | ---: |"]
    for alpha, name in walk:
        r = rows[name]
        frac = r.get("recovered_fraction")
        lines.append(f"| {alpha} | {estimate(r['kernel_l1'], 3)} | {estimate(r['psnr_y'])} | "
                     f"{share(frac) if frac else '100 %'} |")
    return "\n".join(lines)


@formatter("premise")
def premise(data: Any, path: Path) -> str:
    """One line of a ladder record: DE's AbsRel from each input (the SVKR premise) and the K0 row's PSNR-Y."""
    d = _json(data, path, "premise")
    absrel = lookup(d, "depth_premise_absrel")
    k0 = lookup(d, "rows").get("NBSR + DKENet, depth from LR (K0)")
    parts = [f"AbsRel {name} {estimate(e, 3)}" for name, e in absrel.items()]
    if k0 is not None:
        parts.append(f"K0 PSNR-Y {estimate(k0['psnr_y'])} dB")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


@formatter("timing")
def timing(data: Any, path: Path) -> str:
    s = lookup(_json(data, path, "timing"), "summary")
    before, after = s.get("load_average_before"), s.get("load_average_after")
    threads = (s.get("threads") or {}).get("OMP_NUM_THREADS")
    load = (f", load average {num(before[0], '.1f')} before, {num(after[0], '.1f')} after" if before and after
            else f", load average {num(before[0], '.1f')} before" if before else "")
    return (f"{_duration(s['wall_seconds'])} wall, {_duration(s['cpu_seconds'])} CPU (exit status {s['exit_status']}"
            + load + (f", OMP_NUM_THREADS={threads}" if threads else "") + ")")


@formatter("bicubic_rows")
def bicubic_rows(data: Any, path: Path) -> str:
    summary = lookup(_json(data, path, "bicubic_rows"), "summary")
    names = {"default": "default (noise + JPEG)", "clean": "clean (no noise, no JPEG)"}
    lines = ["| degradation | torch (A = −0.75) | MATLAB (A = −0.5) | MATLAB − torch, PSNR-Y | MATLAB − torch, SSIM-Y |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for key, part in summary.items():
        lines.append(f"| {names.get(key, key)} | {num(part['psnr_y_torch']['mean'])} | "
                     f"{num(part['psnr_y_matlab']['mean'])} | {estimate(part['psnr_y matlab - torch'], 3, True)} | "
                     f"{estimate(part['ssim_y matlab - torch'], 4, True)} |")
    return "\n".join(lines)


@formatter("coverage")
def coverage(data: Any, path: Path) -> str:
    summary = lookup(_json(data, path, "coverage"), "summary")
    lines = ["| training seeds | seed sd σ_s | two-level bootstrap | seeds averaged, then images |",
             "| ---: | ---: | ---: | ---: |"]
    for c in summary["cells"]:
        lines.append(f"| {c['seeds']} | {c['seed_sd']} | {num(100 * c['two_level'], '.1f')} % | "
                     f"{num(100 * c['image_only'], '.1f')} % |")
    k = summary.get("clusters")
    if k:
        lines += ["", f"{k['sources']} sources × {k['draws']} draws: {num(100 * k['clustered'], '.1f')} % resampled "
                      f"by source, {num(100 * k['images_as_independent'], '.1f')} % as independent images."]
    return "\n".join(lines)
