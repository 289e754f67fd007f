"""Plan expansion: cells = rows × datasets × seeds; each cell's stage trainings, keyed by content hashes.

A stage training's key is the sha256 of the canonical JSON of what determines its result: the stage name, the
content of its config file (and of the config fragments it names), its CLI overrides with file arguments replaced
by their content digest and `{stage:X}` references replaced by X's key, and the seed. Keys do not depend on
where the repository or the output folder lives, so several machines sharing one results folder agree on them,
and a stage that two cells share is trained once (`<out>/artifacts/<stage>-<key12>/`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.study import (
    EvalSpec,
    Study,
    StudyError,
    check_keys,
    parse_eval_spec,
    safe_name,
    slug,
    value_key,
)
from ssr_lightning.files import YAMLFileError, load_yaml

__all__ = ["STAGE_REF", "Cell", "Plan", "StageRun", "expand", "file_digest", "run_name", "shard_cells", "slug"]

# `{stage:NAME}` (the stage's checkpoint), `{stage:NAME:last}`, `{stage:NAME:dir}` (its artifact folder).
STAGE_REF = re.compile(r"\{stage:([A-Za-z0-9_.-]+)(?::(ckpt|best|last|dir))?\}")
_BIG = 1 << 20  # files above 1 MiB (checkpoints) are identified by name and size, not read whole


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_digest(path: Path, _seen: frozenset[Path] = frozenset()) -> str:
    """Content digest of a file; for YAML configs, also of the config fragments it names (`trainer/cpu.yaml`).

    A YAML config that cannot be read (invalid, binary, an alias bomb) is a StudyError naming it: every stage that
    uses it would fail, so the plan stops before anything runs."""
    shown, path = path, path.resolve()
    if not path.is_file():
        return f"missing:{path.name}"
    try:
        if path.stat().st_size > _BIG:
            return f"big:{path.name}:{path.stat().st_size}"
        data = path.read_bytes()
    except OSError as err:
        raise StudyError(f"{shown}: cannot read it ({err.strerror or err})") from None
    parts = [hashlib.sha256(data).hexdigest()]
    if path.suffix in (".yaml", ".yml") and path not in _seen:
        try:
            doc = load_yaml(shown, data)  # bounded alias expansion: the walk below stays small
        except YAMLFileError as err:
            raise StudyError(f"config {err}") from None
        for text in _strings(doc):
            ref = path.parent / text  # jsonargparse resolves nested config paths relative to the parent config
            if text.endswith((".yaml", ".yml")) and ref.is_file():
                parts.append(file_digest(ref, _seen | {path}))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


@dataclass(frozen=True)
class StageRun:
    """One stage training: `ssr fit --config <config> <args>`; `args` may hold `{stage:X}` references."""

    stage: str
    config: str
    args: tuple[str, ...]
    seed: int
    deps: tuple[tuple[str, str], ...]  # (stage name, key) of the stages its args reference
    key: str

    @property
    def artifact(self) -> str:
        """Folder name under `<out>/artifacts`."""
        return f"{self.stage}-{self.key[:12]}"


@dataclass
class Cell:
    """One table cell group: a row on one dataset with one seed, the stages it needs and how it is scored."""

    cell_id: str
    row: int
    label: str
    settings: dict[str, Any]
    dataset: str
    seed: int
    stages: list[str]  # stage keys, dependencies first
    stage_names: dict[str, str]  # stage name -> key
    evaluate: EvalSpec
    eval_config: str
    eval_args: tuple[str, ...]
    metrics: list[str]
    key: str


@dataclass
class Plan:
    """The expanded study: cells in table order and every distinct stage training."""

    study: Study
    cells: list[Cell]
    stages: dict[str, StageRun] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _norm_args(args: tuple[str, ...], keys: dict[str, str], cwd: Path) -> list[str]:
    """Arguments as hashed: file paths → content digests, `{stage:X}` → `{stage:<key of X>}`."""
    out = []
    for a in args:
        a = STAGE_REF.sub(lambda m: f"{{stage:{keys.get(m.group(1), m.group(1))}:{m.group(2) or 'ckpt'}}}", a)
        p = cwd / a
        out.append(f"file:{file_digest(p)}" if ("/" in a or a.endswith((".yaml", ".yml"))) and p.is_file() else a)
    return out


def _refs(args: tuple[str, ...] | list[str]) -> list[str]:
    return [m.group(1) for a in args for m in STAGE_REF.finditer(a)]


class _Expander:
    """Builds the stage trainings of one cell, memoising them by key across the whole plan."""

    def __init__(self, study: Study, cwd: Path, plan: Plan) -> None:
        self.study, self.cwd, self.plan = study, cwd, plan

    def stage_args(self, stage: str, per_stage: dict[str, tuple[str, ...]], seed: int) -> tuple[str, ...]:
        # "*" holds a row's overrides for every stage (e.g. a degradation switch that training and test share)
        args = [*self.study.common_overrides, *self.study.stage_overrides.get(stage, ()), *per_stage.get("*", ()),
                *per_stage.get(stage, ()), *self.study.seed_args]
        return tuple(a.replace("{seed}", str(seed)) for a in args)

    def stage(self, name: str, per_stage: dict[str, tuple[str, ...]], seed: int, keys: dict[str, str],
              chain: tuple[str, ...] = ()) -> str:
        """Key of stage `name` in this cell (building its dependencies first); adds it to the plan."""
        if name in keys:
            return keys[name]
        if name in chain:
            raise StudyError(f"stage dependency cycle: {' -> '.join([*chain, name])}")
        if name not in self.study.base_configs:
            raise StudyError(f"{{stage:{name}}} is referenced but {name!r} is not in base_configs")
        first = self.study.seeds[0]
        if name in self.study.shared_stages and seed != first:
            # trained once, with the first seed (and that seed's dependencies), for the cells of every seed
            keys[name] = self.stage(name, per_stage, first, {}, chain)
            return keys[name]
        args = self.stage_args(name, per_stage, seed)
        deps = []
        for dep in dict.fromkeys(_refs(args)):
            deps.append((dep, self.stage(dep, per_stage, seed, keys, (*chain, name))))
        config = self.study.base_configs[name]
        if not (self.cwd / config).is_file():
            problem = f"stage {name}: config {config} not found (cells using it will fail)"
            if problem not in self.plan.problems:
                self.plan.problems.append(problem)
        try:
            digest = file_digest(self.cwd / config)
        except StudyError as err:
            raise StudyError(f"stage {name}: {err}") from None
        key = _sha({"stage": name, "config": digest, "seed": seed,
                    "args": _norm_args(args, keys, self.cwd), "deps": sorted(deps)})
        keys[name] = key
        self.plan.stages.setdefault(key, StageRun(name, config, args, seed, tuple(deps), key))
        return key


def _row_changes(study: Study, settings: dict[str, Any]) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Per-stage args and evaluate changes that a row's factor values select."""
    per_stage: dict[str, tuple[str, ...]] = {}
    evaluate: dict[str, Any] = {}
    for factor, value in settings.items():
        for stage, args in study.overrides.get(factor, {}).get(value_key(value), {}).items():
            if stage == "evaluate":
                evaluate.update(args)  # type: ignore[arg-type]
            else:
                per_stage[stage] = (*per_stage.get(stage, ()), *args)  # type: ignore[misc]
    return per_stage, evaluate


def expand(study: Study, cwd: str | Path = ".") -> Plan:
    """All cells (rows × datasets × seeds, in table order) and the distinct stage trainings they need; a StudyError
    names the study file."""
    try:
        return _expand(study, Path(cwd))
    except StudyError as err:
        where = f"{study.path}: " if study.path is not None and not str(err).startswith(str(study.path)) else ""
        raise StudyError(f"{where}{err}") from None


def _expand(study: Study, cwd: Path) -> Plan:
    plan = Plan(study, [])
    exp = _Expander(study, cwd, plan)
    base_eval = {k: v for k, v in vars(study.evaluate).items()}
    for r, row in enumerate(study.rows):
        per_stage, eval_changes = _row_changes(study, row.settings)
        for stage, args in row.overrides.items():
            per_stage[stage] = (*per_stage.get(stage, ()), *args)
        check_keys(per_stage, [*study.base_configs, "*"], f"row {row.label!r} overrides (stage names)")
        merged = {**base_eval, **eval_changes, **row.evaluate}
        if "stage" in {**eval_changes, **row.evaluate} and "ckpt" not in {**eval_changes, **row.evaluate}:
            merged["ckpt"] = f"{{stage:{merged['stage']}}}"  # a new evaluation stage brings its own checkpoint
        merged["commands"], merged["overrides"] = list(merged["commands"]), list(merged["overrides"])
        spec = parse_eval_spec(merged, f"row {row.label!r} evaluate")
        if spec.stage not in study.base_configs:
            raise StudyError(f"row {row.label!r}: evaluate.stage {spec.stage!r} is not in base_configs")
        for ds in study.datasets:
            for seed in row.seeds or study.seeds:
                keys: dict[str, str] = {}
                eval_args = (*exp.stage_args(spec.stage, per_stage, seed), *ds.overrides,
                             *(a.replace("{seed}", str(seed)) for a in spec.overrides))
                needed = _refs(eval_args) + (_refs([spec.ckpt]) if spec.ckpt else [])
                for name in dict.fromkeys(needed):
                    exp.stage(name, per_stage, seed, keys)
                order = _topo(keys, plan)
                # a file name (<out>/cells/<id>.json): slugs of the label and dataset, checked as one name
                cell_id = safe_name(f"{slug(row.label, 60)}__{slug(ds.name, 30)}__s{seed}",
                                    f"cell id of row {row.label!r} on {ds.name!r} (seed {seed})")
                key = _sha({"eval": _norm_args(eval_args, keys, cwd),
                            "ckpt": spec.ckpt and _norm_args((spec.ckpt,), keys, cwd),
                            "config": file_digest(cwd / study.base_configs[spec.stage]), "commands": spec.commands,
                            "source": spec.source, "metrics": study.metrics, "stages": sorted(keys.values()),
                            # MATLAB's bicubic is a new result; torch's keeps the key cells had before the option
                            **({"bicubic": spec.bicubic} if spec.source == "bicubic" and spec.bicubic != "torch"
                               else {})})
                plan.cells.append(Cell(cell_id, r, row.label, dict(row.settings), ds.name, seed, order, dict(keys),
                                       spec, study.base_configs[spec.stage], eval_args, list(study.metrics), key))
    ids = [c.cell_id for c in plan.cells]
    if len(set(ids)) != len(ids):  # parse_study checks labels, datasets and seeds: this is only a guard
        clashes = sorted({i for i in ids if ids.count(i) > 1})
        raise StudyError(f"two cells would share one result file: {clashes}; make the row labels, dataset names "
                         "or seeds distinct")
    return plan


def run_name(plan: Plan, key: str, limit: int = 100) -> str:
    """Run name of a stage training after its stage and the cells that use it: `ssr__row-a--row-b__seed0`.

    TensorBoard lists runs by folder, so `tensorboard --logdir <out>` shows which rows each training serves
    (`all-rows` when every row does; `shared` when the cells of several seeds use it). The name is what `ssr fit
    --name` accepts (`files.check_name`: letters, digits, '.', '_', '-', at most 100 characters): row slugs are
    joined by `--`, and rows that do not fit are counted (`--3-more`).
    """
    run = plan.stages[key]
    users = [c for c in plan.cells if key in c.stages]
    rows = list(dict.fromkeys(slug(c.label) for c in users))
    # rows without any training (bicubic) cannot use a stage: "all-rows" means every row that trains something
    every = {slug(c.label) for c in plan.cells if c.stages}
    shared = "_shared" if len({c.seed for c in users}) > 1 else ""
    head, tail = f"{run.stage}__", f"__seed{run.seed}{shared}"
    room = limit - len(head) - len(tail)
    part = "all-rows" if len(rows) > 1 and set(rows) == every else "--".join(rows) or "unused"
    if len(part) > room:
        kept: list[str] = []
        for r in rows:
            if len("--".join([*kept, r])) > room - 12:
                break
            kept.append(r)
        more = f"{len(rows) - len(kept)}-more"
        part = "--".join([*kept, more]) if kept else f"{rows[0][: room - 12]}--{len(rows) - 1}-more"
    return f"{head}{part}{tail}"


def _topo(keys: dict[str, str], plan: Plan) -> list[str]:
    """Stage keys of one cell with every dependency before its dependants."""
    order: list[str] = []

    def visit(key: str) -> None:
        if key in order:
            return
        for _, dep in plan.stages[key].deps:
            visit(dep)
        order.append(key)

    for key in keys.values():
        visit(key)
    return order


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Cells of shard `i` of `n`: the i-th, (i+n)-th, … cell by sorted cell id (0-based), whatever the row order."""
    if shard is None:
        return list(cells)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")
    mine = {cid for k, cid in enumerate(sorted(c.cell_id for c in cells)) if k % n == i}
    return [c for c in cells if c.cell_id in mine]
