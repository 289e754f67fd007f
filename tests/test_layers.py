"""The layers of docs/ARCHITECTURE.md: the Lightning-free packages never import Lightning, and imports go one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ssr_lightning"
LIGHTNING_FREE = ("networks", "diffusion", "inference", "degradation", "metrics")
# Each package may import only the packages listed for it (besides itself and leaf modules such as visualize).
ALLOWED = {
    "degradation": set(),
    "metrics": set(),
    "networks": {"degradation"},
    "diffusion": {"networks", "degradation", "metrics"},
    "inference": {"diffusion", "networks", "degradation", "metrics"},
    "data": {"degradation"},
    "modules": {"inference", "diffusion", "networks", "degradation", "metrics", "data"},
    "ablate": {"modules", "inference", "diffusion", "networks", "degradation", "metrics", "data"},
    "cli": {"ablate", "modules", "inference", "diffusion", "networks", "degradation", "metrics", "data"},
}


def _modules(package: str) -> list[str]:
    return sorted(f"ssr_lightning.{package}." + p.relative_to(PKG / package).with_suffix("").as_posix().replace("/", ".")
                  for p in (PKG / package).rglob("*.py") if p.name != "__init__.py") + [f"ssr_lightning.{package}"]


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


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and path.parent != PKG:
            names = [f"ssr_lightning.{path.parent.name}"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ssr_lightning" and len(parts) > 1 and (PKG / parts[1]).is_dir():
                out.add(parts[1])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_one_way(package: str) -> None:
    for path in sorted((PKG / package).rglob("*.py")):
        used = _imported_packages(path) - {package}
        upward = used - ALLOWED[package]
        assert not upward, f"{path.relative_to(PKG.parent)} imports {sorted(upward)}: an upward import (docs/ARCHITECTURE.md)"
