"""The front-end ladder's rows by name, their statistics and how they are written (Markdown, figure).

Statistics over training seeds and image sources (docs/DESIGN.md §5, `metrics/stats.py`):

A ladder row holds per-image values of one or several training seeds, a ``(seeds, images)`` array. Its CI is the
two-level bootstrap (seeds, then images; one seed: the image bootstrap), and images that are kernel draws of one
photo are resampled as one source. Differences pair the images; the seeds of two rows are resampled together when
both rows have every seed (seed s of every ladder row runs on the NBSR, DKENet and DepthNet of seed s), else on
their own (a row trained for the first seed only). The Δ column's raw marks get the Holm-corrected mark beside them.

:func:`summarize` takes a ``ladder.Ladder`` (any object with its ``rows``, ``names``, ``values()`` ...): this module
does not import ``ladder.py``, which imports it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# _draw_units, _seed_level, _image_level: bootstrap_seeds' replicate draws, so that a ratio of two means is resampled
# exactly as each mean is
from ssr_lightning.metrics.stats import (
    ALPHA,
    N_BOOT,
    Bootstrap,
    Estimate,
    _draw_units,
    _image_level,
    _seed_level,
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
    source_clusters,
)

__all__ = ["BICUBIC", "BLIND", "CMOS", "GT_DEPTH", "GT_KERNEL", "HEADLINE", "K0", "MEAN_KERNEL", "NODEPTH",
           "PER_IMAGE", "RESPONSE", "ZEROED", "ci_text", "clusters", "delta", "estimate", "format_markdown",
           "fraction", "holm_marks", "ladder_figure", "response_figure", "summarize", "svkr_row"]

BICUBIC, BLIND, ZEROED, NODEPTH = "bicubic", "blind RRDB", "NBSR, kernel zeroed", "NBSR + DKENet w/o depth"
K0, GT_DEPTH, CMOS, GT_KERNEL = ("NBSR + DKENet, depth from LR (K0)", "NBSR + DKENet, GT depth",
                                "CMOS (σ map + semantics)", "NBSR + GT kernel")
HEADLINE = (ZEROED, K0, "SVKR_T", GT_KERNEL)  # rows repeated over training seeds ("SVKR_T": the main SVKR row)
MEAN_KERNEL, PER_IMAGE = "training mean kernel (reads nothing)", "oracle: per-image mean kernel"
RESPONSE = "response: GT-depth KE → GT kernel, α="  # diagnostic rows: a share each, no Δ test (not in Holm's family)
BICUBIC_NAMES = {"matlab": "MATLAB imresize (A = −0.5)", "torch": "torch F.interpolate (A = −0.75)"}


def svkr_row(t: int) -> str:
    return f"NBSR + SVKR T={t}"


def clusters(sources: Sequence[str], names: Sequence[str]) -> list[str] | None:
    """One source per image (the data set's, else read from ``{photo}_v{k}`` names), or None when every image is its
    own source (the plain image bootstrap)."""
    labels = list(sources) if len(sources) == len(names) else source_clusters(list(names))
    return labels if len(set(labels)) < len(labels) else None


def _subset(labels: list[str] | None, mask: np.ndarray | None, n: int) -> list[str] | None:
    if labels is None or len(labels) != (len(mask) if mask is not None else n):
        return None  # values of other images than the ladder's (e.g. only those with depth): no clusters
    picked = [c for c, keep in zip(labels, mask, strict=True) if keep] if mask is not None else labels
    return picked if len(set(picked)) < len(picked) else None


def estimate(values: np.ndarray, labels: list[str] | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
    """The mean of ``values (seeds, images)`` (images chosen by ``mask``) with its CI, as a JSON-ready dict."""
    x = values if mask is None else values[:, mask]
    return bootstrap_seeds(x, clusters=_subset(labels, mask, values.shape[1])).as_dict()


def joint(a: np.ndarray, b: np.ndarray) -> bool:
    """Seeds are resampled together: both rows have the same (several) seeds of the same stage trainings."""
    return a.shape[0] == b.shape[0] > 1


def delta(a: np.ndarray, b: np.ndarray, labels: list[str] | None = None) -> Bootstrap:
    """Paired difference a − b over the images (seeds jointly when :func:`joint`), with its p-value."""
    return paired_difference_seeds(a, b, clusters=_subset(labels, None, a.shape[1]), paired_seeds=joint(a, b))


def fraction(row: np.ndarray, zero: np.ndarray, gt: np.ndarray, labels: list[str] | None = None,
             n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """(mean(row) − mean(zero)) / (mean(gt) − mean(zero)) of ``(seeds, images)`` values with a two-level bootstrap
    CI: each replicate draws the images (or sources) once for all three rows, the seeds once when every row has them
    all, else per row. One seed each: the image bootstrap of a ratio of means."""
    mats = [np.where(np.isfinite(m), m, np.nan) for m in (row, zero, gt)]
    means = [float(np.nanmean(np.nanmean(m, axis=0))) for m in mats]
    den = means[2] - means[1]
    ratio = (means[0] - means[1]) / den if den != 0 else math.nan
    n = mats[0].shape[1]
    if n < 2:
        return Estimate(ratio, ratio, ratio, n)
    cl = _subset(labels, None, n)
    codes = None if cl is None else np.unique(cl, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    units = _draw_units(rng, n_boot, n, codes)  # images first, as bootstrap_seeds
    together = len({m.shape[0] for m in mats}) == 1 and mats[0].shape[0] > 1
    r, draws = _seed_level(mats[0], rng, n_boot)
    z, _ = _seed_level(mats[1], rng, n_boot, draws if together else None)
    g, _ = _seed_level(mats[2], rng, n_boot, draws if together else None)
    num, den_b = _image_level(r - z, units), _image_level(g - z, units)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.where(den_b != 0, num / np.where(den_b == 0, 1, den_b), np.nan)
    lo, hi = np.nanquantile(boots, [ALPHA / 2, 1 - ALPHA / 2])
    return Estimate(ratio, float(lo), float(hi), n)


def holm_marks(rows: dict[str, dict[str, Any]], key: str = "delta_vs_zeroed") -> str | None:
    """Give every row's ``key`` difference its marks (``<key>_mark``: raw, corrected, p, p_adjusted, text) with Holm
    across the column; returns the caption's sentence (None: no difference)."""
    names = [name for name, row in rows.items() if key in row]
    if not names:
        return None
    ests = [Bootstrap(**{k: v for k, v in rows[n][key].items() if k != "significant"}) for n in names]
    marks = mark_deltas(ests)
    for name, mark in zip(names, marks, strict=True):
        if mark is not None:
            p = {k: (v if isinstance(v, float) and math.isfinite(v) else None)
                 for k, v in (("p", mark.p), ("p_adjusted", mark.p_adjusted))}
            rows[name][f"{key}_mark"] = {"raw": mark.raw, "corrected": mark.corrected, **p, "text": mark.text}
    return correction_note(marks)


def ci_text(rows: dict[str, dict[str, Any]], metric: str = "psnr_y") -> str:
    """Which CI the rows' ``metric`` carries: the phrase of most rows, then the rows whose CI is another kind."""
    kinds: dict[str, list[str]] = {}
    for name, row in rows.items():
        e = row.get(metric)
        if e and e.get("n", 0) > 1:
            kinds.setdefault(ci_phrase(int(e.get("seeds", 1)), int(e["n"]), int(e.get("units", 0))), []).append(name)
    if not kinds:
        return "no CI (one image)"
    main = max(kinds, key=lambda k: len(kinds[k]))
    others = [f"{', '.join(names)}: {phrase}" for phrase, names in kinds.items() if phrase != main]
    return main + (f" ({'; '.join(others)})" if others else "")


def summarize(lad: Any, seeds: dict[str, dict[str, tuple[float, float, int]]] | None = None) -> dict[str, Any]:
    """Per-row estimates (mean + CI of every metric), paired Δ vs the zeroed code with raw and Holm marks, the oracle
    gap, recovered fractions, SVKR vs the single pass, invariant-sample kernel errors and the depth premise.

    Over several seeds (``ladder.merge_seeds``) every CI is two-level, and kernel draws of one photo are one source;
    with one seed and distinct images the numbers are the image bootstrap's."""
    rows: dict[str, Any] = {}
    labels = clusters(lad.sources, lad.names)
    has = {name: lad.rows.get(name, {}).get("psnr_y") is not None for name in (ZEROED, GT_KERNEL)}
    zero = lad.values("rows", ZEROED, "psnr_y") if has[ZEROED] else None
    gt = lad.values("rows", GT_KERNEL, "psnr_y") if has[GT_KERNEL] else None
    inv = np.asarray(lad.invariant, dtype=bool)
    for name in lad.order():
        vals = lad.rows[name]
        entry: dict[str, Any] = {m: estimate(lad.values("rows", name, m), labels) for m in vals}
        if "psnr_y" in vals and zero is not None and name != ZEROED:
            psnr = lad.values("rows", name, "psnr_y")
            if not name.startswith(RESPONSE):
                entry["delta_vs_zeroed"] = delta(psnr, zero, labels).as_dict()
            if gt is not None and name not in (GT_KERNEL, BICUBIC):
                entry["recovered_fraction"] = fraction(psnr, zero, gt, labels).as_dict()
        if "kernel_l1" in vals and inv.any():
            kl = lad.values("rows", name, "kernel_l1")
            entry["kernel_l1_invariant"] = estimate(kl, labels, inv)
            entry["kernel_l1_variant"] = estimate(kl, labels, ~inv)
        if seeds and name in seeds:
            entry["seeds"] = {m: {"mean": s[0], "std": s[1], "n": s[2]} for m, s in seeds[name].items()}
        rows[name] = entry
    note = holm_marks(rows)
    out: dict[str, Any] = {"rows": rows, "num_images": len(lad.names), "num_invariant": int(inv.sum()),
                           "iterations": lad.iterations, "gamma": lad.gamma, "bicubic": lad.bicubic,
                           "statistics": {"ci": 1 - ALPHA, "ci_text": ci_text(rows),
                                          "sources": len(set(labels)) if labels else None,
                                          "correction": "holm" if note else None, "correction_note": note}}
    if zero is not None and gt is not None:
        out["oracle_gap"] = delta(gt, zero, labels).as_dict()
    if svkr_row(lad.iterations) in lad.rows and K0 in lad.rows:
        out["svkr_minus_single_pass"] = delta(lad.values("rows", svkr_row(lad.iterations), "psnr_y"),
                                              lad.values("rows", K0, "psnr_y"), labels).as_dict()
    if GT_DEPTH in lad.rows and NODEPTH in lad.rows:
        out["gt_depth_minus_nodepth"] = depth_contrast(lad, labels, zero, gt)
    out["depth_premise_absrel"] = {k: estimate(lad.values("premise", k), labels) for k in lad.premise}
    if lad.invariant_ke:
        base = lad.values("invariant_ke", MEAN_KERNEL) if MEAN_KERNEL in lad.invariant_ke else None
        out["invariant_ke"] = {}
        for name in lad.invariant_ke:
            v = lad.values("invariant_ke", name)
            out["invariant_ke"][name] = {"kernel_l1": estimate(v, labels),
                                         **({"delta_vs_mean_kernel": delta(v, base, labels).as_dict()}
                                            if base is not None and name != MEAN_KERNEL else {})}
    return out


def depth_contrast(lad: Any, labels: list[str] | None, zero: np.ndarray | None,
                   gt: np.ndarray | None) -> dict[str, Any]:
    """Does depth help the KE? The GT-depth row minus the depth-free row, paired per image: PSNR-Y, kernel L1 and,
    where both rows have the same seeds, their difference in share of the oracle gap (issue 21's margin)."""
    pairs = {m: (lad.values("rows", GT_DEPTH, m), lad.values("rows", NODEPTH, m)) for m in ("psnr_y", "kernel_l1")
             if lad.rows[GT_DEPTH].get(m) is not None and lad.rows[NODEPTH].get(m) is not None}
    out: dict[str, Any] = {m: delta(a, b, labels).as_dict() for m, (a, b) in pairs.items()}
    a, b = pairs.get("psnr_y", (None, None))
    if a is not None and zero is not None and gt is not None and a.shape == b.shape == zero.shape == gt.shape:
        # mean(a − b) / mean(gt − zero): the share of a minus the share of b, resampled as one ratio
        out["share"] = fraction(a - b + zero, zero, gt, labels).as_dict()
    return out


def _fmt(e: dict[str, Any] | None, digits: int, signed: bool = False, mark: dict[str, Any] | None = None) -> str:
    if e is None or e.get("n", 0) == 0 or not math.isfinite(e["mean"]):
        return "–"
    est = Estimate(e["mean"], e["lo"], e["hi"], e["n"])
    text = est.format(digits, signed)
    if mark is not None:  # the raw mark with the Holm-corrected one beside it
        return f"{text} {mark['text']}"
    return text + (" *" if signed and est.significant else "")


def split_name(summary: dict[str, Any]) -> str:
    """"validation" or "test": the split the ladder was scored on (``summary["test"]["split"]``, written by
    ``ssr-frontend``; ladders from before ``--split`` existed were scored on the test split)."""
    return "validation" if (summary.get("test") or {}).get("split") == "val" else "test"


def format_markdown(summary: dict[str, Any]) -> str:
    """The ladder as Markdown: means with [95 % CI], Δ vs the zeroed code (* = CI excludes 0, Holm mark beside),
    seeds mean ± std; the header says which CI, which correction and which bicubic."""
    n, n_inv = summary["num_images"], summary["num_invariant"]
    stats = summary.get("statistics") or {}
    k = stats.get("sources")
    src = f"{k} sources, a photo's kernel draws resampled together; " if k else ""
    bic = BICUBIC_NAMES.get(summary.get("bicubic", "torch"), summary.get("bicubic"))
    lines = [f"Front-end ladder: {n} {split_name(summary)} images ({src}{n_inv} spatially invariant); mean [95 % CI, "
             f"{stats.get('ci_text', 'bootstrap over images')}]; Δ = paired per-image difference vs the zeroed code "
             "(seeds resampled together where both rows have every seed), * where its CI excludes 0"
             + (f", the Holm mark beside it ({stats['correction_note']})" if stats.get("correction_note") else "")
             + f"; bicubic: {bic}.", "",
             "| method | PSNR-Y (dB) | Δ PSNR-Y vs zeroed | share of oracle gap | SSIM-Y | kernel L1 | "
             "kernel L1 (invariant) | depth AbsRel | seeds: PSNR-Y mean ± std |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in summary["rows"].items():
        seeds = r.get("seeds", {}).get("psnr_y")
        seed_txt = f"{seeds['mean']:.2f} ± {seeds['std']:.2f} (n={seeds['n']})" if seeds else "–"
        frac = r.get("recovered_fraction")
        frac_txt = "–" if frac is None else _fmt({**frac, "mean": 100 * frac["mean"], "lo": 100 * frac["lo"],
                                                    "hi": 100 * frac["hi"]}, 0) + " %"
        delta = _fmt(r.get("delta_vs_zeroed"), 2, True, r.get("delta_vs_zeroed_mark"))
        lines.append(f"| {name} | {_fmt(r.get('psnr_y'), 2)} | {delta} | "
                     f"{frac_txt} | {_fmt(r.get('ssim_y'), 4)} | {_fmt(r.get('kernel_l1'), 3)} | "
                     f"{_fmt(r.get('kernel_l1_invariant'), 3)} | {_fmt(r.get('absrel'), 3)} | {seed_txt} |")
    lines.append("")
    if "oracle_gap" in summary:
        lines.append(f"Oracle gap PSNR(GT kernel) − PSNR(zeroed): {_fmt(summary['oracle_gap'], 2, True)} dB.")
    if "svkr_minus_single_pass" in summary:
        lines.append(f"SVKR T={summary['iterations']} − single pass (K0): "
                     f"{_fmt(summary['svkr_minus_single_pass'], 3, True)} dB.")
    contrast = summary.get("gt_depth_minus_nodepth")
    if contrast:
        parts = [f"PSNR-Y {_fmt(contrast.get('psnr_y'), 3, True)} dB" if "psnr_y" in contrast else "",
                 f"kernel L1 {_fmt(contrast.get('kernel_l1'), 3, True)}" if "kernel_l1" in contrast else ""]
        if "share" in contrast:
            sh = contrast["share"]
            parts.append(_fmt({**sh, **{k: 100 * sh[k] for k in ("mean", "lo", "hi")}}, 0, True) + " points of "
                         "the oracle gap")
        lines.append("DKENet, GT depth − w/o depth (paired): " + ", ".join(p for p in parts if p) + ".")
    if summary.get("depth_premise_absrel"):
        premise = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in summary["depth_premise_absrel"].items())
        lines.append(f"SVKR premise, depth AbsRel of DE applied to: {premise}.")
    inv = summary.get("invariant_ke")
    if inv:
        n_inv = next(iter(inv.values()))["kernel_l1"]["n"]
        lines += ["", f"KE on spatially invariant samples ({n_inv} images, the {split_name(summary)} split with every "
                  "kernel invariant): "
                  "kernel L1; Δ = paired difference vs the training mean kernel (negative = KE reads blur from the "
                  "pixels), * where its CI excludes 0.", "",
                  "| kernel | kernel L1 | Δ vs training mean kernel |", "| --- | ---: | ---: |"]
        for name, r in inv.items():
            lines.append(f"| {name} | {_fmt(r['kernel_l1'], 3)} | {_fmt(r.get('delta_vs_mean_kernel'), 3, True)} |")
    return "\n".join(lines) + "\n"


def ladder_figure(summary: dict[str, Any], path: Path) -> Path:
    """Two panels: PSNR-Y of every row with its 95 % CI (honest axis, reference lines at bicubic, the zeroed code
    and the GT kernel), and the paired per-image Δ vs the zeroed code with its CI, centred on 0 (filled where the
    CI excludes 0): the comparison the unpaired CIs of the left panel cannot show."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ssr_lightning.files import atomic_write

    rows = [(k, v) for k, v in summary["rows"].items() if "psnr_y" in v]
    fig = Figure(figsize=(11, 0.42 * len(rows) + 1.8))
    FigureCanvasAgg(fig)
    ax, ax_d = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.2, 1]})
    ys = np.arange(len(rows))[::-1]

    def bars(axis: Any, key: str) -> None:
        for y, (name, r) in zip(ys, rows, strict=True):
            e = r.get(key)
            if e is None or (key != "psnr_y" and name == BICUBIC):  # bicubic's −2 dB would flatten the Δ axis
                continue
            sig = key != "psnr_y" and (e["lo"] > 0 or e["hi"] < 0)
            axis.errorbar(e["mean"], y, xerr=[[e["mean"] - e["lo"]], [e["hi"] - e["mean"]]], fmt="o",
                          color="#1f4e79", mfc="#1f4e79" if key == "psnr_y" or sig else "white", capsize=3)

    bars(ax, "psnr_y")
    for name, colour in ((BICUBIC, "#c62828"), (ZEROED, "#999999"), (GT_KERNEL, "#2e7d32")):
        if name in summary["rows"]:
            ax.axvline(summary["rows"][name]["psnr_y"]["mean"], ls="--", lw=1, color=colour, label=name)
    ax.set_yticks(ys)
    ax.set_yticklabels([k for k, _ in rows], fontsize=8)
    ci = textwrap.fill((summary.get("statistics") or {}).get("ci_text", "bootstrap over images"), 70)
    ax.set_xlabel(f"PSNR-Y (dB): mean, 95 % CI,\n{ci}", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / max(len(rows), 1)), ncol=3)
    bars(ax_d, "delta_vs_zeroed")
    ax_d.axvline(0.0, color="#999999", lw=1)
    if "oracle_gap" in summary:
        ax_d.axvline(summary["oracle_gap"]["mean"], ls="--", lw=1, color="#2e7d32", label="oracle gap")
        ax_d.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / max(len(rows), 1)))
    ax_d.set_xlabel("Δ PSNR-Y vs zeroed code (dB), paired 95 % CI\n(filled: CI excludes 0, before the Holm "
                    "correction\nof the Markdown table; bicubic left out)", fontsize=8)
    bic = BICUBIC_NAMES.get(summary.get("bicubic", "torch"), summary.get("bicubic"))
    fig.suptitle(f"Front-end ladder ({summary['num_images']} {split_name(summary)} images; bicubic: {bic})", fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", metadata={"Software": None}))


def response_figure(summary: dict[str, Any], path: Path) -> Path:
    """Share of the oracle gap against kernel L1: the response rows (the GT-depth KE's field moved toward the GT
    field) as a curve from the GT-depth KE to the GT kernel (L1 0, share 100 %), the other KE rows as points; both
    axes with their 95 % CIs. Where the curve crosses a share is the kernel error a KE needs to reach it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ssr_lightning.files import atomic_write

    rows = summary["rows"]
    curve = [GT_DEPTH, *sorted((k for k in rows if k.startswith(RESPONSE)), key=lambda k: float(k[len(RESPONSE):]))]
    curve = [k for k in curve if "recovered_fraction" in rows.get(k, {}) and "kernel_l1" in rows[k]]
    fig = Figure(figsize=(6.4, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()

    def point(name: str, **kw: Any) -> tuple[float, float]:
        k, f = rows[name]["kernel_l1"], rows[name]["recovered_fraction"]
        x, y = k["mean"], 100 * f["mean"]
        ax.errorbar(x, y, xerr=[[x - k["lo"]], [k["hi"] - x]], yerr=[[y - 100 * f["lo"]], [100 * f["hi"] - y]],
                    capsize=3, **kw)
        return x, y

    xy = [point(k, fmt="o", color="#1f4e79") for k in curve]
    if xy:
        ax.plot([x for x, _ in xy] + [0.0], [y for _, y in xy] + [100.0], color="#1f4e79", lw=1,
                label="GT-depth KE → GT kernel (α = 0 … 1)")
        for (x, y), name in zip(xy, curve, strict=True):
            ax.annotate("α=0" if name == GT_DEPTH else f"α={name[len(RESPONSE):]}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    for name, colour in ((NODEPTH, "#c62828"), (K0, "#ef6c00")):
        if "recovered_fraction" in rows.get(name, {}) and "kernel_l1" in rows[name]:
            point(name, fmt="s", color=colour, label=name)
    ax.plot([0.0], [100.0], "*", color="#2e7d32", ms=10, label=GT_KERNEL)
    ax.axhline(0.0, color="#999999", lw=1)
    ax.set_xlabel("kernel L1 (per-pixel 21×21 kernel; lower is better), mean and 95 % CI", fontsize=8)
    ax.set_ylabel("share of the oracle gap (%), mean and 95 % CI", fontsize=8)
    ax.set_xlim(left=-0.02)
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"How the NBSR's PSNR-Y follows kernel error ({summary['num_images']} images)", fontsize=10)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", metadata={"Software": None}))
