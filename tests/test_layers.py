"""The layers of docs/ARCHITECTURE.md: the Lightning-free packages never import Lightning, and imports go one way.

Both rules read the import graph of tools/architecture_map.py (every import, function-local ones included), the
graph the diagram is drawn from; the Lightning check also imports the packages in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import architecture_map as amap  # noqa: E402

GRAPH = amap.module_graph()
LIGHTNING_FREE = ("networks", "diffusion", "inference", "degradation", "metrics")
LEAVES = {"files", "visualize"}  # leaf modules: every layer may import them, they import no project module
# Each layer may import only the layers listed for it (besides itself and the leaves).
ALLOWED = {
    "files": set(),
    "visualize": set(),
    "degradation": set(),
    "metrics": set(),
    "networks": {"degradation"},
    "diffusion": {"networks", "degradation", "metrics"},
    "inference": {"diffusion", "networks", "degradation", "metrics"},
    "data": {"degradation"},
    "modules": {"inference", "diffusion", "networks", "degradation", "metrics", "data"},
    "ablate": {"modules", "inference", "diffusion", "networks", "degradation", "metrics", "data"},
    "frontend": {"inference", "diffusion", "networks", "degradation", "metrics", "data"},
    "cli": {"ablate", "frontend", "modules", "inference", "diffusion", "networks", "degradation", "metrics", "data"},
}


def _modules(package: str) -> list[str]:
    return sorted(m for m in GRAPH if amap.layer_of(m) == package)


@pytest.mark.parametrize("package", LIGHTNING_FREE)
def test_lightning_free_packages_never_import_lightning(package: str) -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {_modules(package)!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print('LOADED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{package} imports Lightning: {proc.stdout[-600:]} {proc.stderr[-1500:]}"


def test_every_layer_has_a_rule() -> None:
    assert set(ALLOWED) == set(amap.LAYERS)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_go_one_way(layer: str) -> None:
    allowed = ALLOWED[layer] | (set() if layer in LEAVES else LEAVES)
    upward = {f"{b} ({', '.join(where[:3])})" for (a, b), where in amap.layer_graph(GRAPH).items()
              if a == layer and b not in allowed}
    assert not upward, f"{layer} imports {sorted(upward)}: an upward import (docs/ARCHITECTURE.md)"


@pytest.mark.parametrize("layer", LIGHTNING_FREE + tuple(sorted(LEAVES)))
def test_lightning_free_layers_reach_no_lightning_import(layer: str) -> None:
    # static and transitive, so an import inside a function counts too (the subprocess check sees only import time)
    direct = {other: amap.imports_lightning(GRAPH, other) for other in amap.LAYERS}
    assert layer in amap.lightning_free(GRAPH), f"{layer} reaches Lightning: {({k: v for k, v in direct.items() if v})}"
