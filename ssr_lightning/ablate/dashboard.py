"""TensorBoard view of a study: an HPARAMS table with every factor (booleans as booleans), per-image curves, the report.

`tensorboard --logdir <out>/tensorboard` shows

- HPARAMS: one session per finished cell; its factors, row, dataset and seed against the cell's means. The
  experiment (the list of columns and their values) is written once at the root, with every factor marked as
  differing so TensorBoard shows all of them (it hides columns it believes constant), bool factors typed as
  bool (`torch`'s `add_hparams` writes them as 1.0/0.0 and one experiment per run);
- SCALARS: `per_image/<metric>` per cell, one point per test image (step = the image's index in name order), so a
  cell is a readable curve rather than a single dot;
- `_report`: the Markdown table (TEXT tab) and the report figures (IMAGES tab).

Stage trainings log into `<out>/artifacts/<stage>-<key>/runs/<stage>__<rows>__seed<N>/` (`plan.run_name`), so
`tensorboard --logdir <out>` lists every training by its stage and the rows that use it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.table import Table, direction
from ssr_lightning.files import atomic_write_text
from ssr_lightning.metrics.iqa import LABELS

__all__ = ["hparam_values", "tensorboard_report"]

REPORT_RUN = "_report"


def hparam_values(plan: Plan, cell_settings: dict[str, Any], label: str, dataset: str, seed: int) -> dict[str, Any]:
    """The HPARAMS entries of one cell: factor values as bool/float/str, then row, dataset and seed."""
    out: dict[str, Any] = {}
    for key, value in cell_settings.items():
        out[key] = value if isinstance(value, (bool, str)) else float(value) if isinstance(value, (int, float)) \
            else str(value)
    return {**out, "row": label, "dataset": dataset, "seed": float(seed)}


def _experiment(plan: Plan, metrics: list[str]) -> Any:
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams.summary_v2 import _summary_pb  # the TF-free protobuf writer of hp.hparams_pb

    domains: dict[str, list[Any]] = {}
    for cell in plan.cells:
        for key, value in hparam_values(plan, cell.settings, cell.label, cell.dataset, cell.seed).items():
            if value not in domains.setdefault(key, []):
                domains[key].append(value)
    infos = []
    fixed = ("row", "dataset", "seed")  # the factors first: they are what the study varies
    for key, values in sorted(domains.items(), key=lambda kv: kv[0] in fixed):
        if all(isinstance(v, bool) for v in values):
            kind, values = api_pb2.DATA_TYPE_BOOL, sorted(values)
        elif all(isinstance(v, float) for v in values):
            kind, values = api_pb2.DATA_TYPE_FLOAT64, sorted(values)
        else:
            kind, values = api_pb2.DATA_TYPE_STRING, [str(v) for v in values]
        domain = struct_pb2.ListValue()
        domain.extend(values)
        # differs=True: TensorBoard hides hparams it believes constant; every factor of a study is worth a column
        infos.append(api_pb2.HParamInfo(name=key, type=kind, domain_discrete=domain, differs=True))
    metric_infos = []
    for m in metrics:
        up = direction(m)
        arrow = "" if up is None else (" ↑" if up else " ↓")
        metric_infos.append(api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"ablate/{m}"),
                                                display_name=LABELS.get(m, m) + arrow))
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=0,
                                    description=f"ssr-ablate study {plan.study.name}")
    return _summary_pb(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def _session_end() -> Any:
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams.summary_v2 import _summary_pb

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=0)
    return _summary_pb(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}


def _write_cells(plan: Plan, records: dict[str, dict[str, Any]], folder: Path) -> int:
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from torch.utils.tensorboard import SummaryWriter

    written = 0
    for cell in plan.cells:
        rec = records.get(cell.cell_id)
        run_dir = folder / cell.cell_id
        if not rec or rec.get("status") != "ok" or rec.get("key") != cell.key:
            continue
        stamp = f"{cell.key}:{rec.get('finished_at')}"
        marker = run_dir / "RESULT_KEY"
        if marker.is_file() and marker.read_text() == stamp:
            continue  # unchanged result: rewriting would pile up duplicate sessions
        shutil.rmtree(run_dir, ignore_errors=True)
        hparams = hparam_values(plan, cell.settings, cell.label, cell.dataset, cell.seed)
        with SummaryWriter(log_dir=str(run_dir)) as writer:
            fw = writer._get_file_writer()
            fw.add_summary(hparams_pb(hparams, trial_id=cell.cell_id, start_time_secs=0))
            for key, value in _numbers(rec.get("metrics", {})).items():
                writer.add_scalar(f"ablate/{key}", value, global_step=0)
            for key, values in (rec.get("per_image") or {}).items():
                for step, name in enumerate(sorted(values)):
                    writer.add_scalar(f"per_image/{key}", values[name], global_step=step)
            fw.add_summary(_session_end())
        atomic_write_text(marker, stamp)
        written += 1
    return written


def tensorboard_report(plan: Plan, table: Table, records: dict[str, dict[str, Any]], folder: Path,
                       figures: list[Path], markdown: str) -> int:
    """(Re)write the study's TensorBoard folder (``markdown``: the report's table, shown in the TEXT tab); returns
    how many cell sessions were (re)written."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):  # one experiment at the root, for the current plan
        old.unlink()
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer._get_file_writer().add_summary(_experiment(plan, list(plan.study.metrics)))
    written = _write_cells(plan, records, folder)
    report = folder / REPORT_RUN
    shutil.rmtree(report, ignore_errors=True)
    with SummaryWriter(log_dir=str(report)) as writer:
        writer.add_text("report/table", markdown, global_step=0)
        for png in figures:
            image = np.asarray(Image.open(png).convert("RGB"))
            writer.add_image(f"report/{png.stem.removeprefix(plan.study.name + '_')}", image, global_step=0,
                             dataformats="HWC")
    return written
