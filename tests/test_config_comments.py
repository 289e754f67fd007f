"""What a comment says a setting is, the setting is: configs/**/*.yaml, the README's tables and DESIGN.md's defaults.

The convention (configs/README is this docstring): a comment that quotes a sampling or SVKR setting writes the
option's name, then its value, as ``NAME VALUE``, ``NAME: VALUE`` or ``NAME = VALUE``:

==============================  =============================================================================
name in the comment             the value it is checked against
==============================  =============================================================================
``start``                       ``sampling.start`` (noise, bicubic, frontend)
``strength``                    ``sampling.strength``
``steps``                       ``sampling.steps``
``tile``, ``overlap``           ``sampling.tile``, ``sampling.overlap`` (LR px)
``guidance``, ``η``             ``sampling.guidance``
``iterations``, ``T``           SVKR's ``iterations`` (``svkr.*`` of the SVKR stage, ``conditions.*`` of diffusion)
``gamma``, ``γ``                SVKR's ``gamma`` (same places)
==============================  =============================================================================

Each statement in a YAML comment is checked against the value that file sets (``model.init_args.sampling``,
``model.init_args.svkr`` or ``model.init_args.conditions``), or, where the file does not set it, the code's default
(``SamplingConfig``, ``SVKRConfig``). A comment line that names another config (``configs/ssr.yaml's ...``) is about
that config and is checked against it. Command examples (a comment line with `` --``) set values rather than quote
them and are not checked. In README.md, a table row that names a config (`` `svkr.yaml` ``) is checked against that
config; DESIGN.md's stated defaults are checked against the code (:data:`DESIGN_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssr_lightning.diffusion.config import SamplingConfig
from ssr_lightning.inference.svkr import SVKRConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
NUM = r"[0-9]+(?:\.[0-9]+)?"
# comment name -> (group: "sampling" or "svkr", field, value pattern)
NAMES: dict[str, tuple[str, str, str]] = {
    "start": ("sampling", "start", r"noise|bicubic|frontend"),
    "strength": ("sampling", "strength", NUM),
    "steps": ("sampling", "steps", NUM),
    "tile": ("sampling", "tile", NUM),
    "overlap": ("sampling", "overlap", NUM),
    "guidance": ("sampling", "guidance", NUM),
    "η": ("sampling", "guidance", NUM),
    "iterations": ("svkr", "iterations", NUM),
    "T": ("svkr", "iterations", NUM),
    "gamma": ("svkr", "gamma", NUM),
    "γ": ("svkr", "gamma", NUM),
}
STATEMENT = re.compile(r"(?<![\w.\-/`])(" + "|".join(map(re.escape, NAMES)) + r")\s*[:=]?\s*(" +
                       "|".join(sorted({v for _, _, v in NAMES.values()})) + r")(?!\w|\.\d)")
OTHER_CONFIG = re.compile(r"configs/[\w/]+\.yaml")
# (doc, sentence pattern with one group, group, field): DESIGN.md's stated defaults against the code
DESIGN_DEFAULTS = [
    (r"Defaults: T = (\d+) \(`iterations`\)", "svkr", "iterations"),
    (r"γ = ([0-9.]+) \(`gamma`\)", "svkr", "gamma"),
    (r"`overlap` in LR\s+pixels, (\d+) and \d+ by default", "sampling", "tile"),
    (r"`overlap` in LR\s+pixels, \d+ and (\d+) by default", "sampling", "overlap"),
]


def _defaults(group: str) -> dict[str, Any]:
    return dataclasses.asdict(SamplingConfig() if group == "sampling" else SVKRConfig())


def settings(path: Path) -> dict[str, dict[str, Any]]:
    """The sampling and SVKR values a config sets, over the code's defaults."""
    doc = yaml.safe_load(path.read_text()) or {}
    init = ((doc.get("model") or {}).get("init_args") or {}) if isinstance(doc, dict) else {}
    svkr = {**(init.get("conditions") or {}), **(init.get("svkr") or {})}
    return {"sampling": {**_defaults("sampling"), **(init.get("sampling") or {})},
            "svkr": {**_defaults("svkr"), **svkr}}


def _same(stated: str, value: Any) -> bool:
    if isinstance(value, str):
        return stated == value
    return float(stated) == float(value)


def statements(text: str) -> list[tuple[str, str, str]]:
    """``(name, stated value, the text around it)`` of every ``NAME VALUE`` in ``text``."""
    return [(m.group(1), m.group(2), text[max(0, m.start() - 30): m.end() + 10].strip())
            for m in STATEMENT.finditer(text)]


def comment_problems(path: Path) -> list[str]:
    own, problems = settings(path), []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if "#" not in line:
            continue
        comment = line[line.index("#") + 1:]
        if " --" in comment or comment.lstrip().startswith("--"):
            continue  # a command example sets values
        other = OTHER_CONFIG.search(comment)
        values = settings(REPO / other.group(0)) if other and (REPO / other.group(0)).is_file() else own
        for name, stated, around in statements(comment):
            group, field, _ = NAMES[name]
            if not _same(stated, values[group][field]):
                problems.append(f"{path.relative_to(REPO)}:{i}: the comment says {name} {stated} ({around!r}), the "
                                f"{'config named there' if values is not own else 'file'} sets {group}.{field} = "
                                f"{values[group][field]!r}")
    return problems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_a_config_comment_quotes_the_value_its_file_sets(path: Path) -> None:
    problems = comment_problems(path)
    assert not problems, "\n".join(problems) + "\nfix the comment or the value (tests/test_config_comments.py)"


def test_the_readme_tables_quote_the_values_of_the_configs_they_name() -> None:
    problems = []
    for line in (REPO / "README.md").read_text().splitlines():
        named = re.findall(r"`(\w+\.yaml)`", line)
        if not line.startswith("|") or not named or not (REPO / "configs" / named[0]).is_file():
            continue
        values = settings(REPO / "configs" / named[0])
        for name, stated, around in statements(line):
            group, field, _ = NAMES[name]
            if not _same(stated, values[group][field]):
                problems.append(f"README.md: {around!r} but configs/{named[0]} has {group}.{field} = "
                                f"{values[group][field]!r}")
    rename = re.search(r"`sampling\.tile`, `sampling\.overlap` \((\d+), (\d+)\)", (REPO / "README.md").read_text())
    assert rename, "README's rename table states the tile defaults as `sampling.tile`, `sampling.overlap` (T, O)"
    default = SamplingConfig()
    if (int(rename.group(1)), int(rename.group(2))) != (default.tile, default.overlap):
        problems.append(f"README.md: tiles ({rename.group(1)}, {rename.group(2)}), SamplingConfig has "
                        f"({default.tile}, {default.overlap})")
    assert not problems, "\n".join(problems)


def test_design_states_the_code_defaults() -> None:
    text = (REPO / "docs" / "DESIGN.md").read_text()
    for pattern, group, field in DESIGN_DEFAULTS:
        m = re.search(pattern, text)
        assert m, f"docs/DESIGN.md no longer states {group}.{field} as {pattern!r}: update DESIGN_DEFAULTS"
        assert _same(m.group(1), _defaults(group)[field]), f"docs/DESIGN.md says {field} {m.group(1)}, the code " \
                                                           f"{_defaults(group)[field]}"


def test_the_check_catches_a_wrong_comment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("# sampling from I_T at strength 0.5 (tile 64, overlap 16), γ = 0.9\n"
                   "#   ssr fit --model.init_args.sampling.strength 0.7   # an example: not checked\n"
                   "model:\n  init_args:\n    sampling: {strength: 0.3, start: frontend}  # start bicubic\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        problems = comment_problems(cfg)
    finally:
        REPO = saved
    assert len(problems) == 2 and "strength 0.5" in problems[0] and "start bicubic" in problems[1]
