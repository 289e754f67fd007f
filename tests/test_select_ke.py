"""tools/select_ke.py: the defocus ladder's KE chosen on validation ladders (issue 21)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import select_ke  # noqa: E402


def _est(mean: float) -> dict:
    return {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": 24}


def _ladder(folder: Path, run: str, share: float, split: str = "val") -> Path:
    folder.mkdir(parents=True)
    rows = {select_ke.GT_DEPTH: {"recovered_fraction": _est(share), "kernel_l1": _est(0.5), "psnr_y": _est(27.0),
                                 "seeds": {"psnr_y": {"mean": 27.0, "std": 0.1, "n": 3}}},
            select_ke.K0: {"recovered_fraction": _est(0.0)}, select_ke.NODEPTH: {"recovered_fraction": _est(0.3)}}
    (folder / "frontend.json").write_text(json.dumps({"rows": rows, "test": {"split": split, "ke_run": run}}))
    values = {"psnr_y": [[27.0, 27.5]], "kernel_l1": [[0.5, 0.4]]}
    per = {name: values for name in (select_ke.GT_DEPTH, select_ke.ZEROED, select_ke.GT_KERNEL)}
    (folder / "per_image.json").write_text(json.dumps({"names": ["a", "b"], "seeds": [0], "rows": per}))
    return folder


def test_the_larger_validation_share_wins_and_a_tie_keeps_the_ke_in_use(tmp_path: Path) -> None:
    a = _ladder(tmp_path / "a", "ke_a", 0.40)
    b = _ladder(tmp_path / "b", "ke_b", 0.55)
    c = _ladder(tmp_path / "c", "ke_c", 0.40)
    out = tmp_path / "choice"
    assert select_ke.main(["--val", f"ke_a={a}", f"ke_b={b}", "--out", str(out)]) == 0
    assert json.loads((out / "selection.json").read_text())["chosen"] == "ke_b"
    assert "**ke_b**" in (out / "selection.md").read_text()
    assert json.loads((out / "per_image.json").read_text())["ke_b"][select_ke.GT_DEPTH]["psnr_y"] == [[27.0, 27.5]]
    assert select_ke.main(["--val", f"ke_a={a}", f"ke_b={b}", "--out", str(out)]) == 2, "no silent overwrite"
    assert select_ke.select([select_ke.candidate("ke_a", a), select_ke.candidate("ke_c", c)]) == "ke_a"


def test_a_test_split_ladder_or_another_ke_is_refused(tmp_path: Path) -> None:
    t = _ladder(tmp_path / "t", "ke_a", 0.4, split="test")
    with pytest.raises(ValueError, match="split 'test'"):
        select_ke.candidate("ke_a", t)
    with pytest.raises(ValueError, match="KE 'ke_a'"):
        select_ke.candidate("ke_b", _ladder(tmp_path / "v", "ke_a", 0.4))
    with pytest.raises(FileNotFoundError, match="no frontend.json"):
        select_ke.candidate("ke_a", tmp_path / "missing")
