"""Ablation study files: load the YAML, merge a profile, validate it into a `Study` (schema: ablations/README.md)."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.files import YAMLFileError, check_name, load_yaml

__all__ = [
    "Dataset", "EvalSpec", "Row", "Study", "StudyError", "check_keys", "deep_merge", "load_study", "parse_eval_spec",
    "parse_study", "safe_name", "slug", "value_key",
]

_TOP_KEYS = {
    "name", "description", "out", "base_configs", "common_overrides", "stage_overrides", "factors", "rows",
    "overrides", "datasets", "metrics", "seeds", "seed_args", "shared_stages", "evaluate", "report", "profiles",
    "variables",
}
_EVAL_KEYS = {"stage", "ckpt", "commands", "source", "overrides", "num_samples", "bicubic"}
_ROW_KEYS = {"label", "settings", "overrides", "evaluate", "seeds"}
_REPORT_KEYS = {"title", "row_header", "factor_columns", "factor_labels", "metrics", "decimals", "qualitative",
                "reference", "delta_metrics", "reference_lines", "perception_distortion"}
_PD_KEYS = {"distortion", "perception"}
_DATASET_KEYS = {"name", "path", "overrides"}


def check_keys(given: Any, allowed: set[str] | list[str], where: str) -> None:
    """Raise a StudyError for every key of ``given`` not in ``allowed``, with "did you mean" suggestions."""
    unknown = [str(k) for k in given if str(k) not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, [str(a) for a in allowed], n=1, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise StudyError(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(map(str, allowed)))}")
_COMMANDS = ("test", "predict")


class StudyError(ValueError):
    """A study file that does not follow the schema; the message names the key."""


def safe_name(value: Any, where: str) -> str:
    """``value`` if it is one safe file or folder name (``files.check_name``), else a StudyError naming ``where``."""
    try:
        return check_name(str(value), where)
    except ValueError as err:
        raise StudyError(str(err)) from None


def slug(text: str, limit: int = 64) -> str:
    """File-name-safe form of a label: lower case, runs of other characters become '_', no leading '.'/'-', no '..';
    longer than ``limit``: cut, with a hash of the whole text, so distinct labels stay distinct."""
    out = re.sub(r"\.{2,}", ".", re.sub(r"[^a-z0-9.-]+", "_", str(text).lower())).strip("_").lstrip(".-_") or "row"
    if len(out) > limit:
        out = out[:limit - 9].rstrip("._-") + "-" + hashlib.sha256(str(text).encode()).hexdigest()[:8]
    return out


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
    bicubic: str = "matlab"  # a bicubic source: MATLAB imresize (SR papers' row) or "torch" (F.interpolate)


@dataclass(frozen=True)
class Row:
    """One table row: its label, factor settings, extra per-stage overrides and evaluation changes."""

    label: str
    settings: dict[str, Any]
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None  # None: the study's seeds; a row without seed-dependent training needs one


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
    shared_stages: tuple[str, ...] = ()  # trained once with the first seed and used by every seed's cells
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def _args(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise StudyError(f"{where}: expected a list of CLI arguments, got {value!r}")
    flat: list[Any] = []
    for v in value:  # nested lists are flattened, so YAML anchors of argument lists compose: [*common, [--x, 1]]
        flat.extend(_args(v, where) if isinstance(v, list) else [v])
    # YAML turns `false`/`8` into bool/int; the CLI wants the text jsonargparse parses
    return tuple(("true" if v else "false") if isinstance(v, bool) else str(v) for v in flat)


def _datasets(raw: Any) -> list[Dataset]:
    out: list[Dataset] = []
    for i, item in enumerate(raw or ["embedded"]):
        if item == "embedded":
            out.append(Dataset("embedded"))
        elif isinstance(item, str):  # a bare path: a folder of HR images
            out.append(Dataset(Path(item).name or item, ("--data.dataset", "folder", "--data.test_root", item)))
        elif isinstance(item, dict) and "name" in item:
            check_keys(item, _DATASET_KEYS, f"datasets[{i}]")
            extra = _args(item.get("overrides"), f"datasets[{i}].overrides")
            if "path" in item:
                extra = ("--data.dataset", "folder", "--data.test_root", str(item["path"]), *extra)
            out.append(Dataset(str(item["name"]), extra))
        else:
            raise StudyError(f"datasets[{i}]: give 'embedded', a folder path or {{name, path|overrides}}, got {item!r}")
    _check_unique([d.name for d in out], "dataset name", "give each data set a distinct name (datasets[i].name)")
    return out


def parse_eval_spec(raw: dict[str, Any], where: str) -> EvalSpec:
    check_keys(raw, _EVAL_KEYS, where)
    if "stage" not in raw:
        raise StudyError(f"{where}: 'stage' (the config whose `ssr test` scores a cell) is required")
    commands = tuple(raw.get("commands") or _COMMANDS)
    if not set(commands) <= set(_COMMANDS):
        raise StudyError(f"{where}.commands: choose from {list(_COMMANDS)}, got {list(commands)}")
    source = raw.get("source", "model")
    if source not in ("model", "bicubic"):
        raise StudyError(f"{where}.source: 'model' or 'bicubic', got {source!r}")
    bicubic = raw.get("bicubic", "matlab")
    if bicubic not in ("matlab", "torch"):
        raise StudyError(f"{where}.bicubic: 'matlab' (imresize, A = -0.5) or 'torch' (A = -0.75), got {bicubic!r}")
    stage = str(raw["stage"])
    ckpt = raw.get("ckpt", f"{{stage:{stage}}}")
    return EvalSpec(stage, None if ckpt is None else str(ckpt), commands, source,
                    _args(raw.get("overrides"), f"{where}.overrides"), int(raw.get("num_samples", 4)), bicubic)


def _rows(raw: dict[str, Any], factors: dict[str, list[Any]]) -> list[Row]:
    if raw.get("rows"):
        rows = []
        for i, r in enumerate(raw["rows"]):
            if not isinstance(r, dict) or "label" not in r:
                raise StudyError(f"rows[{i}]: each row needs a 'label' (and optional settings/overrides/evaluate)")
            check_keys(r, _ROW_KEYS, f"rows[{i}] ({r['label']!r})")
            settings = dict(r.get("settings") or {})
            per_stage = {str(k): _args(v, f"rows[{i}].overrides.{k}") for k, v in (r.get("overrides") or {}).items()}
            seeds = None
            if r.get("seeds") is not None:
                seeds = tuple(_seeds(r["seeds"], f"rows[{i}] ({r['label']!r}).seeds"))
            rows.append(Row(str(r["label"]), settings, per_stage, dict(r.get("evaluate") or {}), seeds))
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


def _check_settings(rows: list[Row], factors: dict[str, list[Any]],
                    overrides: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Every row's factor names and values must select something: a typo would silently drop its overrides."""
    known = set(factors) | set(overrides)
    for row in rows:
        if known:
            check_keys(row.settings, known, f"row {row.label!r} settings")
        for name, value in row.settings.items():
            values = overrides.get(name)
            declared = [value_key(v) for v in factors.get(name, [])]
            if values and value_key(value) not in values and value_key(value) not in declared:
                choices = ", ".join(sorted(values))
                raise StudyError(f"row {row.label!r}: {name}={value_key(value)} has no entry in overrides.{name} "
                                 f"(values there: {choices})")


def _check_report(report: dict[str, Any], rows: list[Row], raw: dict[str, Any]) -> None:
    check_keys(report, _REPORT_KEYS, "report")
    seen = {k for r in rows for k in r.settings}
    check_keys(report.get("factor_columns") or [], seen, "report.factor_columns")
    check_keys(report.get("factor_labels") or {}, seen, "report.factor_labels")
    metrics = [str(m) for m in (raw.get("metrics") or ["psnr_y", "ssim_y"])]
    check_keys(report.get("metrics") or [], metrics, "report.metrics (must be among the study's metrics)")
    check_keys(report.get("decimals") or {}, metrics, "report.decimals")
    shown = [str(m) for m in (report.get("metrics") or metrics)]
    check_keys(report.get("delta_metrics") or [], shown, "report.delta_metrics (must be among the table's metrics)")
    labels = [r.label for r in rows]
    if "reference" in report:
        check_keys([str(report["reference"])], labels, "report.reference (a row label)")
    if report.get("delta_metrics") and "reference" not in report:
        raise StudyError("report.delta_metrics needs report.reference (the row the Δ columns compare against)")
    lines = report.get("reference_lines") or []
    if not isinstance(lines, list):
        raise StudyError(f"report.reference_lines: a list of row labels, got {lines!r}")
    check_keys([str(x) for x in lines], labels, "report.reference_lines (row labels)")
    pd = report.get("perception_distortion")
    if pd is not None:
        if not isinstance(pd, dict):
            raise StudyError("report.perception_distortion: {distortion: METRIC, perception: [METRIC, ...]}")
        check_keys(pd, _PD_KEYS, "report.perception_distortion")
        perception = pd.get("perception") or []
        perception = [perception] if isinstance(perception, str) else list(perception)
        check_keys([str(pd.get("distortion", "psnr_y")), *map(str, perception)], metrics,
                   "report.perception_distortion (must be among the study's metrics)")
        if not perception:
            raise StudyError("report.perception_distortion.perception: name at least one metric (e.g. [niqe, piqe])")


def _seeds(value: Any, where: str) -> list[int]:
    """A non-empty list of distinct integer seeds (a repeated seed would make two cells of one file name)."""
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where}: a non-empty list of integer seeds, got {value!r}")
    out: list[int] = []
    for item in value:
        try:
            seed = int(item)
            if isinstance(item, bool) or seed != float(item):
                raise ValueError
        except (TypeError, ValueError):
            raise StudyError(f"{where}: {item!r} is not an integer seed") from None
        if seed in out:
            raise StudyError(f"duplicate seed {seed} in {where} ({value!r}): list each seed once")
        out.append(seed)
    return out


def _check_unique(names: list[str], what: str, fix: str) -> None:
    """Distinct ``names`` whose slugs (their part of the cell file names) are distinct too."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(slug(name), name)
        if other == name and names.count(name) > 1:
            raise StudyError(f"duplicate {what} {name!r}: {fix}")
        if other != name:
            raise StudyError(f"{what}s {other!r} and {name!r} both become {slug(name)!r} in the cell file names; "
                             f"{fix}")


def _check_seeds(rows: list[Row], seeds: list[int], shared: tuple[str, ...], base: dict[str, str]) -> None:
    for row in rows:
        if row.seeds is not None and not set(row.seeds) <= set(seeds):
            raise StudyError(f"row {row.label!r}: seeds {list(row.seeds)} must be among the study's seeds {seeds}")
    check_keys(shared, list(base), "shared_stages (stage names of base_configs)")


_VAR = re.compile(r"\{var:([A-Za-z0-9_]+)\}")


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    """Every `{var:NAME}` in the strings of `value` replaced by the variable's value."""
    if isinstance(value, str):
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise StudyError(f"{{var:{name}}} is used but 'variables' does not declare {name!r} "
                                 f"(declared: {sorted(variables) or 'none'})")
            return variables[name]
        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    return value


def _variables(raw: dict[str, Any], given: dict[str, str] | None) -> dict[str, str]:
    """The study's `variables` (name -> default, null = required) with `given` (`--var NAME=VALUE`) on top."""
    declared = raw.get("variables") or {}
    if not isinstance(declared, dict):
        raise StudyError(f"variables: expected {{name: default or null}}, got {declared!r}")
    check_keys(given or {}, [str(k) for k in declared], "--var (the study's variables)")
    values = {str(k): v for k, v in declared.items()} | dict(given or {})
    missing = sorted(k for k, v in values.items() if v is None)
    if missing:
        raise StudyError(f"variable(s) {', '.join(missing)} have no value: pass "
                         f"{' '.join(f'--var {k}=VALUE' for k in missing)}")
    return {k: str(v) for k, v in values.items()}


def parse_study(raw: dict[str, Any], path: Path | None = None, profile: str | None = None,
                variables: dict[str, str] | None = None) -> Study:
    """Validate a study mapping (with `profiles[profile]` merged on top and `{var:NAME}` filled in) into a `Study`."""
    if not isinstance(raw, dict):
        raise StudyError("a study file must hold a mapping")
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            close = difflib.get_close_matches(profile, list(profiles), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StudyError(f"profile {profile!r} not in this study{hint}; available: {sorted(profiles)}")
        raw = deep_merge(raw, profiles[profile])
    raw = _substitute(raw, _variables(raw, variables))
    check_keys(raw, _TOP_KEYS, "top level")
    for key in ("name", "base_configs", "evaluate"):
        if key not in raw:
            raise StudyError(f"'{key}' is required")
    study_name = safe_name(raw["name"], "name")  # the report files are <out>/report/<name>.*: never outside <out>
    if not isinstance(raw["base_configs"], dict):
        raise StudyError(f"base_configs: expected {{stage name: config file}}, got {raw['base_configs']!r}")
    # a stage name is a folder name (<out>/artifacts/<stage>-<key>, its run folder)
    base = {safe_name(k, "base_configs stage name"): str(v) for k, v in raw["base_configs"].items()}
    factors = {str(k): list(v) for k, v in (raw.get("factors") or {}).items()}
    rows = _rows(raw, factors)
    _check_unique([r.label for r in rows], "row label", "give each row a distinct label")
    evaluate = parse_eval_spec(dict(raw["evaluate"]), "evaluate")
    overrides = _validate_overrides(raw.get("overrides"))
    stage_overrides = {str(k): _args(v, f"stage_overrides.{k}") for k, v in (raw.get("stage_overrides") or {}).items()}
    for name in [evaluate.stage, *stage_overrides]:
        if name not in base:
            raise StudyError(f"stage {name!r} is used but not in base_configs ({sorted(base)})")
    _check_settings(rows, factors, overrides)
    _check_report(dict(raw.get("report") or {}), rows, raw)
    seeds = _seeds(raw.get("seeds") or [0], "seeds")
    shared = raw.get("shared_stages") or []
    if not isinstance(shared, list):
        raise StudyError(f"shared_stages: a list of stage names, got {shared!r}")
    shared_stages = tuple(str(x) for x in shared)
    _check_seeds(rows, seeds, shared_stages, base)
    return Study(
        name=study_name, path=path, base_configs=base, rows=rows, factors=factors, overrides=overrides,
        common_overrides=_args(raw.get("common_overrides"), "common_overrides"), stage_overrides=stage_overrides,
        datasets=_datasets(raw.get("datasets")), metrics=[str(m) for m in (raw.get("metrics") or ["psnr_y", "ssim_y"])],
        seeds=seeds, seed_args=_args(raw.get("seed_args", ["--seed_everything", "{seed}"]), "seed_args"),
        evaluate=evaluate, report=dict(raw.get("report") or {}),
        out=str(raw.get("out") or f"ablations/results/{study_name}"), shared_stages=shared_stages,
        description=str(raw.get("description") or ""), raw=raw,
    )


def load_study(path: str | Path, profile: str | None = None, variables: dict[str, str] | None = None) -> Study:
    """Read and validate a study YAML file, optionally with one of its `profiles` merged on top and its
    `variables` given values (`{var:NAME}` placeholders)."""
    path = Path(path)
    try:
        raw = load_yaml(path)  # bounded: size, binary, alias expansion; its messages name the file
    except YAMLFileError as err:
        raise StudyError(f"study {err}") from None
    try:
        return parse_study(raw, path, profile, variables)
    except StudyError as err:
        raise StudyError(f"{path}: {err}") from None
