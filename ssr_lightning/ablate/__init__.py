"""`ssr-ablate`: ablation studies over the `ssr` stages (plan, shared stage artifacts, per-cell results, reports).

study.py (YAML schema) → plan.py (cells, hashed stage trainings) → execute.py (artifacts, locks, cell JSONs)
with runner.py (the `ssr` command lines; pluggable `Runner`) or cluster.py (the same as submitit job arrays on
SLURM) → report.py (the report as Markdown, CSV, LaTeX and JSON of the numbers table.py computes with CIs and
paired Δ; figures.py draws them, dashboard.py logs them for TensorBoard). provenance.py records code, versions,
configs and machine per cell; writer.py is the Lightning callback that scores `ssr predict` outputs.
"""

from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import Cell, Plan, StageRun, expand, shard_cells
from ssr_lightning.ablate.runner import (
    CLIRunner,
    CommandFailed,
    EvalJob,
    Runner,
    StageJob,
)
from ssr_lightning.ablate.study import Study, StudyError, load_study, parse_study

__all__ = [
    "CLIRunner", "Cell", "CommandFailed", "EvalJob", "Executor", "Layout", "Plan", "Runner", "StageJob", "StageRun",
    "Study", "StudyError", "expand", "load_study", "parse_study", "shard_cells",
]
