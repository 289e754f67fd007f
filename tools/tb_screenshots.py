"""Draw what TensorBoard shows from its event files, as PNGs (no browser needed): the README's dashboard images.

    python tools/tb_screenshots.py grid results/table2/artifacts/dkenet-*/runs/dkenet__*/version_0 \
        "val/lr|depth|gt_spread|est_spread|abs_err" -o docs/img/tb_dkenet_grid.png
    python tools/tb_screenshots.py hparams results/table2/tensorboard -o docs/img/tb_hparams.png

`grid` takes the newest image of a tag exactly as logged (the IMAGES tab shows these pixels) under a header with
the run, tag and step. `hparams` reads the experiment (columns and their types) and every session (a cell's
factors, row, dataset, seed and metrics) the way TensorBoard's hparams plugin does, and draws its table view.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from ssr_lightning.files import atomic_write


def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None}))


def grid(run: Path, tag: str, out: Path, logdir: Path | None = None) -> Path:
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    event = acc.Images(tag)[-1]
    image = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    h, w = image.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100 + 0.45), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, h / (h + 45)))
    ax.imshow(image, interpolation="nearest")
    ax.axis("off")
    name = str(run.relative_to(logdir)) if logdir else run.name
    fig.text(0.01, 1 - 12 / (h + 45), f"IMAGES · {tag}", fontsize=10, weight="bold", va="top")
    fig.text(0.01, 1 - 30 / (h + 45), f"run {name}   step {event.step}   {w}×{h} px", fontsize=8, va="top",
             color="#555555")
    _save(fig, out)
    return out


def _value(v: object) -> str:
    kind = v.WhichOneof("kind")  # type: ignore[attr-defined]
    if kind == "bool_value":
        return "true" if v.bool_value else "false"  # type: ignore[attr-defined]
    if kind == "number_value":
        x = v.number_value  # type: ignore[attr-defined]
        return f"{x:g}"
    return str(getattr(v, kind)) if kind else ""


def hparams(logdir: Path, out: Path) -> Path:
    root = EventAccumulator(str(logdir))
    root.Reload()
    experiment = metadata.parse_experiment_plugin_data(root.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
    names = [h.name for h in experiment.hparam_infos]
    kinds = {h.name: {1: "string", 2: "bool", 3: "float"}.get(h.type, "?") for h in experiment.hparam_infos}
    metrics = [(m.name.tag, m.display_name or m.name.tag) for m in experiment.metric_infos]
    rows = []
    for run in sorted(p for p in logdir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams").get(metadata.SESSION_START_INFO_TAG)
        except KeyError:  # the _report run: no session
            content = None
        if content is None:
            continue
        start = metadata.parse_session_start_info_plugin_data(content)
        scalars = set(acc.Tags()["scalars"])
        values = [_value(start.hparams[n]) if n in start.hparams else "" for n in names]
        values += [f"{acc.Scalars(tag)[-1].value:.4g}" if tag in scalars else "" for tag, _ in metrics]
        rows.append(values)
    header = [f"{n}\n({kinds[n]})" for n in names] + [label for _, label in metrics]
    height = 0.27 * len(rows) + 1.25
    fig = Figure(figsize=(max(8.0, 1.2 * len(header)), height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.02, 0.98, 1 - 0.75 / height))
    ax.axis("off")
    widths = [2.2 if n == "row" else 1.0 for n in names] + [1.0] * len(metrics)
    widths = [w / sum(widths) for w in widths]
    table = ax.table(cellText=rows, colLabels=header, cellLoc="center", colWidths=widths, bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor("#e8eaf6")
    study = logdir.resolve().parent.name if logdir.name == "tensorboard" else logdir.name
    fig.text(0.01, 1 - 0.1 / height, f"HPARAMS · table view · {len(rows)} sessions (study {study})", fontsize=10,
             weight="bold", va="top")
    fig.text(0.01, 1 - 0.38 / height, "every factor is a column (bools typed as bool); metrics are the cells' means; "
             "per-image curves under SCALARS per_image/*", fontsize=7, color="#555555", va="top")
    _save(fig, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("grid", help="the newest image of a tag in a run folder")
    g.add_argument("run", type=Path)
    g.add_argument("tag")
    g.add_argument("-o", "--out", type=Path, required=True)
    g.add_argument("--logdir", type=Path, default=None, help="shown run names are relative to this folder")
    h = sub.add_parser("hparams", help="the HPARAMS table of an ssr-ablate <out>/tensorboard folder")
    h.add_argument("logdir", type=Path)
    h.add_argument("-o", "--out", type=Path, required=True)
    for sp in (g, h):
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args()
    if args.out.exists() and not args.overwrite:
        p.error(f"{args.out} exists: pass --overwrite to replace it")
    path = grid(args.run, args.tag, args.out, args.logdir) if args.what == "grid" else hparams(args.logdir, args.out)
    print(path)


if __name__ == "__main__":
    main()
