"""One command trains the whole pipeline on a folder of HR images (ablations/pipeline.yaml); `ssr sr --from` uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssr_lightning.ablate.execute import Layout
from ssr_lightning.cli.ablate import main as ablate_main
from ssr_lightning.cli.sr import main as sr_main

REPO = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int = 4, size: int = 96) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([np.sin((3 + i) * xx + c) * np.cos((2 + c) * yy) for c in range(3)], -1)
        img = (0.5 + 0.35 * base + 0.1 * rng.standard_normal((size, size, 3))).clip(0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _fake_results(out: Path, stages: list[str], cells: int = 1) -> None:
    for c in range(cells):
        record = {"cell_id": f"row{c}__images__s0", "status": "ok", "stages": {}}
        for name in stages:
            art = out / "artifacts" / f"{name}-abc{c}"
            ckpt = art / "runs" / name / "version_0" / "checkpoints" / "best.ckpt"
            ckpt.parent.mkdir(parents=True)
            ckpt.write_bytes(b"x")
            (art / "DONE.json").write_text(json.dumps({"ckpt": str(ckpt.relative_to(art)),
                                                       "best": str(ckpt.relative_to(art))}))
            # the cell JSON's absolute path is stale on purpose: DONE.json's relative one must win
            record["stages"][name] = {"artifact": art.name, "ckpt": "/elsewhere/best.ckpt"}
        (out / "cells").mkdir(parents=True, exist_ok=True)
        (out / "cells" / f"{record['cell_id']}.json").write_text(json.dumps(record))


def test_trained_stages_of_a_results_folder(tmp_path: Path) -> None:
    _fake_results(tmp_path / "one", ["vae", "dkenet", "nbsr", "depth", "ssr"])
    stages = Layout(tmp_path / "one").trained_stages()
    assert list(stages) == ["vae", "dkenet", "nbsr", "depth", "ssr"]
    assert all(p.is_file() and p.is_relative_to((tmp_path / "one").resolve()) for p in stages.values())
    _fake_results(tmp_path / "two", ["ssr"], cells=2)
    with pytest.raises(ValueError, match="2 finished cells"):
        Layout(tmp_path / "two").trained_stages()
    with pytest.raises(FileNotFoundError, match="no finished cell"):
        Layout(tmp_path / "none").trained_stages()


def test_sr_from_a_folder_without_a_finished_cell_is_a_usage_error(tmp_path: Path, capsys) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
    assert sr_main([str(img), "-o", str(tmp_path / "o"), "--from", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--from" in err and "nothing" in err and "Traceback" not in err
    _fake_results(tmp_path / "no_ssr", ["dkenet"])
    assert sr_main([str(img), "-o", str(tmp_path / "o"), "--from", str(tmp_path / "no_ssr")]) == 2
    assert "no 'ssr'" in capsys.readouterr().err


@pytest.mark.slow
def test_one_command_trains_every_stage_in_order_and_ssr_sr_uses_them(tmp_path: Path, capsys) -> None:
    images = _photos(tmp_path / "photos")
    out = tmp_path / "results"
    args = ["ablations/pipeline.yaml", "--var", f"images={images}", "--out", str(out), "--profile", "tiny",
            "--workdir", str(REPO), "--no-progress"]
    assert ablate_main(args) == 0
    record = json.loads((out / "cells" / "ssr__images__s0.json").read_text())
    assert record["status"] == "ok", record.get("error")
    stages = list(record["stages"])
    assert sorted(stages) == ["depth", "dkenet", "nbsr", "ssr"], "no VAE stage with the default latent"
    assert stages[-1] == "ssr", "dependency order: the diffusion stage needs NBSR (I_T), DKENet and DE first"
    assert isinstance(record["metrics"]["psnr_y"], float)
    # the same command again: everything is done, nothing retrains
    assert ablate_main(args) == 0
    assert "0 cells ok, 0 failed, 1 already done" in capsys.readouterr().out
    code = sr_main([str(images / "img0.png"), "-o", str(tmp_path / "sr"), "--from", str(out), "--steps", "2",
                    "--color-fix", "wavelet"])
    assert code == 0
    assert Image.open(tmp_path / "sr" / "img0.png").size == (384, 384)
