"""Every shipped stage config and ablation study parses (litgpt style), and configs are built from fragments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.study import load_study
from ssr_lightning.cli.main import main

REPO = Path(__file__).resolve().parents[1]
STAGE_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
STUDIES = sorted((REPO / "ablations").glob("*.yaml"))
DIFFUSION_FRAGMENTS = sorted((REPO / "configs" / "diffusion").glob("*.yaml"))


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.name)
def test_stage_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = "test" if config.name == "svkr.yaml" else "fit"
    with pytest.raises(SystemExit) as exc:
        main([sub, "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("ssr_lightning.modules.")
    assert resolved["trainer"]["max_steps"] > 0 and resolved["data"]["scale"] == 4


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.name)
def test_stage_configs_name_fragments_instead_of_restating_blocks(config: Path) -> None:
    raw = yaml.safe_load(config.read_text())
    for block in ("trainer", "data"):
        assert isinstance(raw[block], str), f"{config.name}: `{block}:` must name a fragment file, not restate it"
        assert (config.parent / raw[block]).is_file(), f"{config.name}: fragment {raw[block]} is missing"


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_study_and_its_profiles_parse_and_expand(study: Path) -> None:
    raw = yaml.safe_load(study.read_text())
    # required variables (null defaults) get a value, as `ssr-ablate --var NAME=VALUE` gives them
    variables = {k: "some/folder" for k, v in (raw.get("variables") or {}).items() if v is None}
    for profile in [None, *(raw.get("profiles") or {})]:
        plan = expand(load_study(study, profile=profile, variables=variables), cwd=REPO)
        assert plan.cells, f"{study.name} ({profile}) has no cells"
        assert not [p for p in plan.problems if "not found" in p], plan.problems


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("fragment", DIFFUSION_FRAGMENTS, ids=lambda p: p.name)
def test_diffusion_option_fragments_compose_with_the_stage_config(fragment: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`--config configs/ssr.yaml --config configs/diffusion/X.yaml` parses and sets exactly what X says."""
    assert set(yaml.safe_load(fragment.read_text())) == {"model"}, "a fragment only sets model options"
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / "configs" / "ssr.yaml"), "--config", str(fragment), "--print_config"])
    assert exc.value.code in (0, None)
    resolved = _leaves(yaml.safe_load(capsys.readouterr().out)["model"]["init_args"])
    wanted = _leaves(yaml.safe_load(fragment.read_text())["model"]["init_args"])
    assert wanted and {k: resolved.get(k) for k in wanted} == wanted


def test_a_study_variable_without_a_value_is_named() -> None:
    from ssr_lightning.ablate.study import StudyError

    with pytest.raises(StudyError, match="--var images=VALUE"):
        load_study(REPO / "ablations" / "pipeline.yaml")
    with pytest.raises(StudyError, match="did you mean 'images'"):
        load_study(REPO / "ablations" / "pipeline.yaml", variables={"image": "x"})
    study = load_study(REPO / "ablations" / "pipeline.yaml", variables={"images": "my/photos"})
    assert "my/photos" in study.stage_overrides["dkenet"] and study.datasets[0].overrides[3] == "my/photos"
