"""The LR/HR pairs of the tables' embedded test split, and a record writer, for the metric-convention scripts.

Table 2's data (ablations/table2.yaml): configs/data/tiny.yaml with 24 whole 128 px test scenes, ×4, the default
degradation (noise + JPEG) or configs/degradation/clean.yaml's noise-free one. Degradation is seeded per sample,
so the pairs are the same on every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from ssr_lightning.ablate.provenance import code_version, versions
from ssr_lightning.data import SRDataModule
from ssr_lightning.degradation import DegradationConfig
from ssr_lightning.files import atomic_write_json, load_yaml

REPO = Path(__file__).resolve().parents[1]
DATA = "configs/data/tiny.yaml + --data.num_test 24 (ablations/table2.yaml's test split)"


def test_pairs(degradation: str = "default") -> list[dict[str, Any]]:
    """Batches of the test split with ``lr``, ``hr``, ``name``; ``degradation``: ``default`` or ``clean``."""
    data = dict(load_yaml(REPO / "configs/data/tiny.yaml"))
    extra = {} if degradation == "default" else dict(load_yaml(REPO / "configs/degradation" / f"{degradation}.yaml"))
    dm = SRDataModule(**{**data, "num_test": 24, "test_batch_size": 8}, degradation=DegradationConfig(**extra))
    dm.setup("test")
    with torch.no_grad():
        return [dm.degrade(b) for b in dm.test_dataloader()]


def write_record(relpath: str, record: dict[str, Any]) -> None:
    """Write ``record`` to ``relpath`` under the repository root with the command that made it (run from the root;
    the scripts take no arguments) and the code and library versions."""
    script = Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
    out = {"command": f"OMP_NUM_THREADS=1 python {script}", **record,
           "provenance": {"code": code_version(), "versions": versions()}}
    atomic_write_json(REPO / relpath, out)
    print(json.dumps(record.get("summary", {}), indent=1, ensure_ascii=False))
