"""benchmarks/large_image.py (issue 20): the GPU mode's code path dry-run on a CPU, the autocast path, the timers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import large_image  # noqa: E402
from large_image_gpu import gpu_benchmark  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_mode_runs_on_a_cpu() -> None:
    args = argparse.Namespace(device="cpu", sd_size="tiny", gpu_output=128, gpu_steps=[1], repeats=1, tile_batch=4,
                              autocast="auto", gpu_tile=32)
    record = gpu_benchmark(args)
    assert record["mode"] == "gpu" and [r["model"] for r in record["rows"]] == ["tiny", "sd15-tiny"]
    for row in record["rows"]:
        assert row["steady_s_per_output"] > 0 and row["load_s"] > 0 and row["svkr_s"] > 0
        assert row["autocast"] == "None", "auto is full precision on a CPU"
    assert record["rows"][0]["tile"] == 32 and record["rows"][1]["tile"] == 0


def test_autocast_keeps_float32_results_and_shapes() -> None:
    """bf16 autocast (what CUDA runs) on the CPU: the UNet, encoders, KE and NBSR in bf16, everything kept float32."""
    from sr_speed import _net, build_svkr, real_lr

    from ssr_lightning.diffusion.config import ComputeConfig, SamplingConfig
    from ssr_lightning.inference.pipeline import SSRPipeline

    torch.manual_seed(0)
    model, svkr, lr = _net("ssr.yaml").eval(), build_svkr(), real_lr(40)
    sampling = SamplingConfig(steps=2, start="frontend", strength=0.5, tile=16, overlap=4)
    full = SSRPipeline(model, svkr, sampling, compute=ComputeConfig(autocast="none", frontend_tile=24))(lr)
    half = SSRPipeline(model, svkr, sampling, compute=ComputeConfig(autocast="bf16", tile_batch=3,
                                                                    frontend_tile=24))(lr)
    for a, b in ((full.sr, half.sr), (full.depth, half.depth), (full.kernel_var, half.kernel_var)):
        assert b.dtype == torch.float32 and b.shape == a.shape and torch.isfinite(b).all()
    assert full.sr.shape == (1, 3, 160, 160)
    assert float((full.sr - half.sr).abs().mean()) < 0.02, "bf16 convolutions, float32 everything else"
    assert ComputeConfig().dtype(torch.device("cuda")) == torch.bfloat16
    assert ComputeConfig().dtype(torch.device("cpu")) is None


def test_phase_timers_are_exclusive() -> None:
    timers = large_image._Timers()
    inner = timers.wrap("svkr", lambda: time.sleep(0.05))
    outer = timers.wrap("write", lambda: (time.sleep(0.05), inner(), inner()))
    again = timers.wrap("write", lambda: outer())  # the same phase nested: counted once
    again()
    assert 0.09 < timers.wall["svkr"] < 0.2 and 0.04 < timers.wall["write"] < 0.09, timers.wall


def test_record_names_no_machine_path() -> None:
    cmd = large_image._command(["--runs", "/tmp/x/runs", "--code", "/somewhere/else", "--out",
                                str(ROOT / "results/benchmarks/a.json"), "--sizes", "500x375"])
    assert "/tmp" not in cmd and "/somewhere" not in cmd and "results/benchmarks/a.json" in cmd
    assert cmd.startswith("python benchmarks/large_image.py")
    img = large_image.photo(130, 90)
    assert img.shape == (90, 130, 3) and img.dtype.name == "uint8"


def test_runs_of_another_config_version_are_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's own stage runs follow their config file: a run trained from an older configs/ssr.yaml is moved
    aside (kept) and trained again; runs of the current version are reused."""
    calls: list[str] = []

    def fake_run(cmd: list[str], **_: object) -> None:
        name = cmd[cmd.index("--name") + 1]
        calls.append(name)
        (tmp_path / name).mkdir(exist_ok=True)

    monkeypatch.setattr(large_image.subprocess, "run", fake_run)
    large_image.train_runs(tmp_path)
    assert calls == ["dkenet", "nbsr", "depth", "ssrdiffusion"]
    calls.clear()
    large_image.train_runs(tmp_path)
    assert calls == [], "current runs are reused"
    (tmp_path / "ssrdiffusion" / "DONE").write_text("trained by benchmarks/large_image.py\n")  # an old marker
    (tmp_path / "ssrdiffusion" / "weights").write_text("old")
    large_image.train_runs(tmp_path)
    assert calls == ["ssrdiffusion"]
    assert (tmp_path / "ssrdiffusion.stale-unversioned" / "weights").read_text() == "old"
    assert "sha256" in (tmp_path / "ssrdiffusion" / "DONE").read_text()


def test_an_existing_record_is_replaced_only_with_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A record is an earlier result: the benchmark stops before any work unless --overwrite is given."""
    out = tmp_path / "large_image.json"
    out.write_text("{}")
    with pytest.raises(SystemExit) as err:
        large_image._parse(["--out", str(out)])
    assert err.value.code == 2 and "pass --overwrite" in capsys.readouterr().err and out.read_text() == "{}"
    assert large_image._parse(["--out", str(out), "--overwrite"]).overwrite
    assert not large_image._parse(["--out", str(tmp_path / "new.json")]).overwrite
