"""The layer map of docs/ARCHITECTURE.md, computed from the imports of ``ssr_lightning/``.

    python tools/architecture_map.py           # rewrite the mermaid block between the markers
    python tools/architecture_map.py --check   # exit 1 with a diff when the committed block differs

A layer is a package of ``ssr_lightning/`` (``networks``, ``ablate``, …) or a leaf module (``files.py``,
``visualize.py``, ``registry.py``). Every ``import`` and ``from … import`` of every file counts, at module level or
inside a function (relative imports resolved, ``from pkg import submodule`` read as an import of the submodule): the
diagram has one arrow per pair of layers with at least one import between them, no more and no fewer. A layer is green when no module
in it, nor in any layer it reaches, imports Lightning. Imports by name at run time (``importlib.import_module`` of a
``class_path``) are not imports here. ``tests/test_layers.py`` checks the committed block and, on the same
graph, the layer rules and that no package has a module cycle.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ssr_lightning"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
BEGIN, END = "<!-- architecture-map:begin -->", "<!-- architecture-map:end -->"
LIGHTNING = ("lightning", "pytorch_lightning")

# Top to bottom: the order of nodes and arrows in the diagram. A new package needs a line here (the tool refuses
# to draw a layer it has no label for).
LAYERS: dict[str, str] = {
    "cli": "cli/ — ssr (LightningCLI), ssr sr, ssr-ablate, ssr-frontend, ssr-kernel-basis (all jsonargparse)",
    "ablate": "ablate/ — studies, plans, runner, SLURM executor (submitit), tables with CIs, reports, figures, "
              "dashboards",
    "frontend": "frontend/ — the blind-SR front-end ladder of ssr-frontend: rows, scores, paired summaries, figure",
    "modules": "modules/ — one thin LightningModule per stage: optimiser, schedule, losses, logging, checkpoint hooks",
    "data": "data/ — image I/O, embedded scenes, folder data sets, SRDataModule",
    "inference": "inference/ — checkpoint policy + loader, depth estimators, SVKR, SSRPipeline",
    "diffusion": "diffusion/ — VAELatents, space-to-depth, GaussianDiffusion (schedule, Eq. 5, sampling, step hooks), "
                 "guidance, colour fix, fused tiles, LatentDiffusionSR",
    "networks": "networks/ — every nn.Module: DKENet, NBSR + KernelCodec, DepthNet, MiDaS DPT, VAE builders, AMF, "
                "encoders, SSRUNet",
    "degradation": "degradation/ — kernel families, blur + ↓s, noise, JPEG, Degrader",
    "metrics": "metrics/ — PSNR/SSIM-Y, kernel L1, depth metrics, pyiqa suite, bootstrap CIs",
    "registry": "registry.py — the stages: name, label, config, network class, module (register_stage)",
    "visualize": "visualize.py — colour maps, kernel spread, labelled grids",
    "files": "files.py — atomic writes, file locks, safe names, bounded YAML",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel.with_suffix(".py")).is_file() or (PKG.parent / rel / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, as ``(absolute dotted name, line)``; names inside the project are resolved to
    the module that defines them where it is a submodule (``from ssr_lightning import files``)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise SyntaxError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if base.split(".")[0] == PKG.name and _is_module(sub) else base, node.lineno))
    return out


def layer_of(module: str) -> str | None:
    """The layer of a project module (``ssr_lightning.networks.nbsr`` → ``networks``); None outside the project and
    for the package root, which holds only the version and a logging filter."""
    parts = module.split(".")
    if parts[0] != PKG.name or len(parts) < 2:
        return None
    if parts[1] not in LAYERS:
        raise KeyError(f"{module}: layer {parts[1]!r} has no label in tools/architecture_map.py LAYERS")
    return parts[1]


def module_graph() -> dict[str, dict[str, list[str]]]:
    """``{module: {imported module: ["file:line", …]}}`` for every module of the project (external ones included)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sources():
        edges = graph.setdefault(module_name(path), {})
        for target, line in imports(path):
            where = edges.setdefault(target, [])
            if f"{path.relative_to(PKG.parent)}:{line}" not in where:  # `from m import a, b` is one import of m
                where.append(f"{path.relative_to(PKG.parent)}:{line}")
    return graph


def layer_graph(graph: dict[str, dict[str, list[str]]]) -> dict[tuple[str, str], list[str]]:
    """``{(layer, imported layer): where}`` for every pair of distinct layers with at least one import."""
    edges: dict[tuple[str, str], list[str]] = {}
    for source, targets in graph.items():
        a = layer_of(source)
        for target, where in targets.items():
            b = layer_of(target) if target.split(".")[0] == PKG.name else None
            if a and b and a != b:
                edges.setdefault((a, b), []).extend(where)
    return edges


def imports_lightning(graph: dict[str, dict[str, list[str]]], layer: str) -> list[str]:
    """Where a module of ``layer`` itself imports Lightning (``file:line``)."""
    return [w for m, ts in graph.items() if layer_of(m) == layer
            for t, where in ts.items() if t.split(".")[0] in LIGHTNING for w in where]


def lightning_free(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """Layers from which no chain of imports, function-local ones included, reaches Lightning."""
    edges = layer_graph(graph)
    reach = {layer: {layer} for layer in LAYERS}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            if not reach[b] <= reach[a]:
                reach[a] |= reach[b]
                changed = True
    direct = {layer for layer in LAYERS if imports_lightning(graph, layer)}
    return [layer for layer in LAYERS if not reach[layer] & direct]


def cycles(graph: dict[str, dict[str, list[str]]], nodes: Iterable[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself) among ``nodes``."""
    nodes = sorted(set(nodes))
    inside = set(nodes)
    succ = {n: sorted(t for t in graph.get(n, {}) if t in inside) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has a few hundred modules, recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in succ[v]:
                found.append(sorted(comp))

    for n in nodes:
        if n not in index:
            visit(n)
    return sorted(found)


def render(graph: dict[str, dict[str, list[str]]]) -> str:
    """The mermaid block: one node per layer, one arrow per importing pair, green for Lightning-free layers."""
    edges = layer_graph(graph)
    order = list(LAYERS)
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {layer}["{label}"]' for layer, label in LAYERS.items()]
    lines += [f"    {a} --> {b}" for a, b in sorted(edges, key=lambda e: (order.index(e[0]), order.index(e[1])))]
    lines += ["    classDef free fill:#e8f4ea,stroke:#3a7d44", f"    class {','.join(lightning_free(graph))} free"]
    lines += ["```"]
    return "\n".join(lines) + "\n"


def split(text: str) -> tuple[str, str, str]:
    """The document as (before the block, the block, after it); the markers stay outside the block."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{os.path.relpath(DOC)} needs one {BEGIN} line and one {END} line after it")
    head, rest = text.split(BEGIN + "\n", 1)
    block, tail = rest.split(END, 1)
    return head + BEGIN + "\n", block, END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when the committed block differs")
    args = parser.parse_args(argv)
    head, old, tail = split(DOC.read_text())
    new = render(module_graph())
    if args.check:
        if old == new:
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   "committed", "generated"))
        print(f"{os.path.relpath(DOC)}: the map differs from the imports; run python tools/architecture_map.py")
        return 1
    if old != new:
        DOC.write_text(head + new + tail)
        print(f"rewrote the map in {os.path.relpath(DOC)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
