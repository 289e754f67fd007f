"""Ablation study files: load the YAML, merge a profile, validate it into a `Study` (schema: ablations/README.md)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Dataset", "EvalSpec", "Row", "Study", "StudyError", "deep_merge", "load_study", "parse_eval_spec", "parse_study",
    "value_key",
]

_TOP_KEYS = {
    "name", "description", "out", "base_configs", "common_overrides", "stage_overrides", "factors", "rows",
    "overrides", "datasets", "metrics", "seeds", "seed_args", "evaluate", "report", "profiles",
}
_EVAL_KEYS = {"stage", "ckpt", "commands", "source", "overrides", "num_samples"}
_COMMANDS = ("test", "predict")


class StudyError(ValueError):
    """A study file that does not follow the schema; the message names the key."""


def value_key(value: Any) -> str:
    """Canonical text of a factor value, so YAML `false`, `False` and a row's `false` all match one override."""
    return json.dumps(value, sort_keys=True)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged onto `base`: mappings merge key by key, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Dataset:
    """One evaluation data set: a name for tables and the CLI arguments that select its test split."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalSpec:
    """How a cell is scored: `ssr test`/`ssr predict` with the config of `stage`, from checkpoint `ckpt`."""

    stage: str
    ckpt: str | None
    commands: tuple[str, ...] = _COMMANDS
    source: str = "model"
    overrides: tuple[str, ...] = ()
    num_samples: int = 4


@dataclass(frozen=True)
class Row:
    """One table row: its label, factor settings, extra per-stage overrides and evaluation changes."""

    label: str
    settings: dict[str, Any]
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """A validated study: everything `plan.expand` needs."""

    name: str
    path: Path | None
    base_configs: dict[str, str]
    rows: list[Row]
    factors: dict[str, list[Any]]
    overrides: dict[str, dict[str, dict[str, tuple[str, ...] | dict[str, Any]]]]
    common_overrides: tuple[str, ...]
    stage_overrides: dict[str, tuple[str, ...]]
    datasets: list[Dataset]
    metrics: list[str]
    seeds: list[int]
    seed_args: tuple[str, ...]
    evaluate: EvalSpec
    report: dict[str, Any]
    out: str
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def _args(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise StudyError(f"{where}: expected a list of CLI arguments, got {value!r}")
    # YAML turns `false`/`8` into bool/int; the CLI wants the text jsonargparse parses
    return tuple(("true" if v else "false") if isinstance(v, bool) else str(v) for v in value)


def _datasets(raw: Any) -> list[Dataset]:
    out: list[Dataset] = []
    for i, item in enumerate(raw or ["embedded"]):
        if item == "embedded":
            out.append(Dataset("embedded"))
        elif isinstance(item, str):  # a bare path: a folder of HR images
            out.append(Dataset(Path(item).name or item, ("--data.dataset", "folder", "--data.test_root", item)))
        elif isinstance(item, dict) and "name" in item:
            extra = _args(item.get("overrides"), f"datasets[{i}].overrides")
            if "path" in item:
                extra = ("--data.dataset", "folder", "--data.test_root", str(item["path"]), *extra)
            out.append(Dataset(str(item["name"]), extra))
        else:
            raise StudyError(f"datasets[{i}]: give 'embedded', a folder path or {{name, path|overrides}}, got {item!r}")
    if len({d.name for d in out}) != len(out):
        raise StudyError(f"datasets: names must be unique, got {[d.name for d in out]}")
    return out


def parse_eval_spec(raw: dict[str, Any], where: str) -> EvalSpec:
    unknown = set(raw) - _EVAL_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(_EVAL_KEYS)}")
    if "stage" not in raw:
        raise StudyError(f"{where}: 'stage' (the config whose `ssr test` scores a cell) is required")
    commands = tuple(raw.get("commands") or _COMMANDS)
    if not set(commands) <= set(_COMMANDS):
        raise StudyError(f"{where}.commands: choose from {list(_COMMANDS)}, got {list(commands)}")
    source = raw.get("source", "model")
    if source not in ("model", "bicubic"):
        raise StudyError(f"{where}.source: 'model' or 'bicubic', got {source!r}")
    stage = str(raw["stage"])
    ckpt = raw.get("ckpt", f"{{stage:{stage}}}")
    return EvalSpec(stage, None if ckpt is None else str(ckpt), commands, source,
                    _args(raw.get("overrides"), f"{where}.overrides"), int(raw.get("num_samples", 4)))


def _rows(raw: dict[str, Any], factors: dict[str, list[Any]]) -> list[Row]:
    if raw.get("rows"):
        rows = []
        for i, r in enumerate(raw["rows"]):
            if not isinstance(r, dict) or "label" not in r:
                raise StudyError(f"rows[{i}]: each row needs a 'label' (and optional settings/overrides/evaluate)")
            settings = dict(r.get("settings") or {})
            per_stage = {str(k): _args(v, f"rows[{i}].overrides.{k}") for k, v in (r.get("overrides") or {}).items()}
            rows.append(Row(str(r["label"]), settings, per_stage, dict(r.get("evaluate") or {})))
        return rows
    if not factors:
        raise StudyError("a study needs 'factors' (a full grid) or explicit 'rows'")
    grid: list[dict[str, Any]] = [{}]
    for name, values in factors.items():  # the last factor varies fastest, as in the paper's tables
        grid = [{**g, name: v} for g in grid for v in values]
    return [Row(", ".join(f"{k}={json.dumps(v)}" for k, v in g.items()), g) for g in grid]


def _validate_overrides(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for factor, by_value in (raw or {}).items():
        if not isinstance(by_value, dict):
            raise StudyError(f"overrides.{factor}: expected {{value: {{stage: [args]}}}}, got {by_value!r}")
        out[str(factor)] = {}
        for value, by_stage in by_value.items():
            where = f"overrides.{factor}.{value}"
            if not isinstance(by_stage, dict):
                raise StudyError(f"{where}: expected {{stage: [args]}}, got {by_stage!r}")
            out[str(factor)][value_key(value)] = {
                str(s): (dict(a) if s == "evaluate" else _args(a, f"{where}.{s}")) for s, a in by_stage.items()
            }
    return out


def parse_study(raw: dict[str, Any], path: Path | None = None, profile: str | None = None) -> Study:
    """Validate a study mapping (with `profiles[profile]` merged on top) into a `Study`."""
    if not isinstance(raw, dict):
        raise StudyError("a study file must hold a mapping")
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise StudyError(f"profile {profile!r} not in this study; available: {sorted(profiles)}")
        raw = deep_merge(raw, profiles[profile])
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise StudyError(f"unknown top-level key(s) {sorted(unknown)}; allowed {sorted(_TOP_KEYS)}")
    for key in ("name", "base_configs", "evaluate"):
        if key not in raw:
            raise StudyError(f"'{key}' is required")
    base = {str(k): str(v) for k, v in raw["base_configs"].items()}
    factors = {str(k): list(v) for k, v in (raw.get("factors") or {}).items()}
    rows = _rows(raw, factors)
    if len({r.label for r in rows}) != len(rows):
        raise StudyError(f"row labels must be unique, got {[r.label for r in rows]}")
    evaluate = parse_eval_spec(dict(raw["evaluate"]), "evaluate")
    overrides = _validate_overrides(raw.get("overrides"))
    stage_overrides = {str(k): _args(v, f"stage_overrides.{k}") for k, v in (raw.get("stage_overrides") or {}).items()}
    for name in [evaluate.stage, *stage_overrides]:
        if name not in base:
            raise StudyError(f"stage {name!r} is used but not in base_configs ({sorted(base)})")
    seeds = [int(s) for s in (raw.get("seeds") or [0])]
    return Study(
        name=str(raw["name"]), path=path, base_configs=base, rows=rows, factors=factors, overrides=overrides,
        common_overrides=_args(raw.get("common_overrides"), "common_overrides"), stage_overrides=stage_overrides,
        datasets=_datasets(raw.get("datasets")), metrics=[str(m) for m in (raw.get("metrics") or ["psnr_y", "ssim_y"])],
        seeds=seeds, seed_args=_args(raw.get("seed_args", ["--seed_everything", "{seed}"]), "seed_args"),
        evaluate=evaluate, report=dict(raw.get("report") or {}),
        out=str(raw.get("out") or f"ablations/results/{raw['name']}"),
        description=str(raw.get("description") or ""), raw=raw,
    )


def load_study(path: str | Path, profile: str | None = None) -> Study:
    """Read and validate a study YAML file, optionally with one of its `profiles` merged on top."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"study file not found: {path}") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_study(raw, path, profile)
    except StudyError as err:
        raise StudyError(f"{path}: {err}") from None
