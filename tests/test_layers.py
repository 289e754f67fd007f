"""The layers of docs/ARCHITECTURE.md: its diagram is the import graph, imports go one way, no package holds a
module cycle, and the Lightning-free layers never import Lightning.

Every check reads the import graph of tools/architecture_map.py (every import, function-local ones included), the
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
LEAVES = {"files", "visualize", "registry"}  # leaf modules: every layer may import them, they import no project module
# Each layer may import only the layers listed for it (besides itself and the leaves).
ALLOWED = {
    "files": set(),
    "visualize": set(),
    "registry": set(),
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


# --- the map --------------------------------------------------------------------------------------------------
def test_committed_map_is_the_generated_one() -> None:
    _, committed, _ = amap.split(amap.DOC.read_text())
    assert committed == amap.render(GRAPH), "docs/ARCHITECTURE.md's map is stale: run python tools/architecture_map.py"


def test_check_fails_on_a_stale_map_and_a_rewrite_fixes_it(tmp_path: Path, monkeypatch, capsys) -> None:
    doc, committed = tmp_path / "ARCHITECTURE.md", amap.DOC.read_text()
    stale = committed.replace("    networks --> degradation\n", "    networks --> data\n")
    assert stale != committed
    doc.write_text(stale)
    monkeypatch.setattr(amap, "DOC", doc)
    assert amap.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "-    networks --> data" in out and "+    networks --> degradation" in out
    assert "the map differs from the imports" in out and doc.read_text() == stale  # --check writes nothing
    assert amap.main([]) == 0 and doc.read_text() == committed  # only the block changes
    assert amap.main(["--check"]) == 0


def test_markers_are_required(tmp_path: Path, monkeypatch) -> None:
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text(amap.DOC.read_text().replace(amap.END, ""))
    monkeypatch.setattr(amap, "DOC", doc)
    with pytest.raises(ValueError, match="architecture-map:end"):
        amap.main(["--check"])


def test_every_arrow_has_an_import_and_every_import_an_arrow() -> None:
    edges = amap.layer_graph(GRAPH)
    drawn = {tuple(line.strip().split(" --> ")) for line in amap.render(GRAPH).splitlines() if " --> " in line}
    assert drawn == set(edges)
    # spot checks against the source: a function-local import and a module-level one
    assert ("cli", "visualize") in edges  # cli/sr.py imports visualize inside a function only
    assert any(w.startswith("ssr_lightning/diffusion/") for w in edges[("diffusion", "networks")])
    assert ("modules", "data") not in edges and ("ablate", "modules") not in edges


def test_imports_resolve_relative_function_local_and_submodule_forms(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "ssr_lightning"
    for rel, text in {
        "__init__.py": "", "a/__init__.py": "from .x import f\n", "a/y.py": "", "b/__init__.py": "", "b/z.py": "",
        "a/x.py": "import os\nfrom . import y\nfrom ssr_lightning.b import z, VALUE\n\n"
                  "def f():\n    from ..b.z import g\n    import ssr_lightning.b\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(amap, "PKG", pkg)
    found = {name for name, _ in amap.imports(pkg / "a" / "x.py")}
    assert found == {"os", "ssr_lightning.a.y", "ssr_lightning.b.z", "ssr_lightning.b"}
    assert {name for name, _ in amap.imports(pkg / "a" / "__init__.py")} == {"ssr_lightning.a.x"}
    (pkg / "a" / "bad.py").write_text("from ...... import q\n")
    with pytest.raises(SyntaxError, match="beyond the top-level package"):
        amap.imports(pkg / "a" / "bad.py")


def test_a_layer_without_a_label_is_refused() -> None:
    with pytest.raises(KeyError, match="no label"):
        amap.layer_of("ssr_lightning.newpackage.thing")
    assert amap.layer_of("ssr_lightning") is None and amap.layer_of("torch.nn") is None


def test_cycles_finds_circles_and_only_circles() -> None:
    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": [], "d": []}, "e": {"a": []}}
    assert amap.cycles(graph, graph) == [["a", "b", "c"], ["d"]]
    assert amap.cycles(graph, ["a", "b", "e"]) == []  # the circle closes through c, which is left out


@pytest.mark.parametrize("layer", [name for name in amap.LAYERS if (amap.PKG / name).is_dir()])
def test_no_module_cycle_inside_a_package(layer: str) -> None:
    found = amap.cycles(GRAPH, _modules(layer))
    detail = "; ".join(" ↔ ".join(c) for c in found)
    assert not found, f"{layer}/ holds a cycle of imports: {detail} (move what both need into a module of its own)"


def test_the_layers_form_no_cycle() -> None:
    layer_graph = {a: {} for a in amap.LAYERS}
    for a, b in amap.layer_graph(GRAPH):
        layer_graph[a][b] = []
    assert amap.cycles(layer_graph, layer_graph) == []
