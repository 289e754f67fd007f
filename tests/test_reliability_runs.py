"""Reliability catalogue, round two (issue 23), runs half: checkpoints, run folders and the `ssr` command.

Each case asserts the message a user gets, the exit status and that nothing they had was lost (file digests before
and after). Tiny fits; one trained run (`trained`) is copied by the tests that need one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_diffusion import _save_ckpt, tiny_module

from ssr_lightning.cli.main import RUN_LOCK
from ssr_lightning.cli.main import main as ssr_main
from ssr_lightning.cli.sr import main as sr_main
from ssr_lightning.files import file_lock
from ssr_lightning.inference.checkpoints import (
    CheckpointError,
    find_checkpoint,
    load_model,
    read_checkpoint,
)
from ssr_lightning.modules import DKENetModule, checkpointing
from ssr_lightning.modules.checkpointing import RunCheckpointIO, TrainingError

REPO = Path(__file__).resolve().parents[1]
DKENET = str(REPO / "configs/dkenet.yaml")
TINY_FIT = ["--trainer", str(REPO / "configs/trainer/debug.yaml"), "--data", str(REPO / "configs/data/tiny.yaml"),
            "--model.init_args.net.init_args.channels", "4", "--data.num_train", "4", "--data.num_val", "2"]
CKPTS = "runs/dkenet/version_0/checkpoints"


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def _ssr(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`ssr ARGS` run in ``tmp_path``: (exit status, stderr)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ssr_main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


def _fit(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    return _ssr(tmp_path, capsys, "fit", "--config", DKENET, *TINY_FIT, *extra)


def _one_line(err: str) -> str:
    """The `ssr:` lines of stderr (Lightning's own warnings aside); asserts there is exactly one."""
    lines = [line for line in err.splitlines() if line.startswith("ssr")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny DKENet run (4 steps, last.ckpt every step, validation at steps 2 and 4) in ``DIR/runs``."""
    folder = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        ssr_main(["fit", "--config", DKENET, *TINY_FIT, "--root", "runs", "--model.init_args.fit.ckpt_every_n_steps",
                  "1"])
    finally:
        os.chdir(cwd)
    assert {p.name for p in (folder / CKPTS).iterdir()} == {"best.ckpt", "last.ckpt", "last.prev.ckpt"}
    return folder


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run in this test's folder (``tmp_path/runs``)."""
    shutil.copytree(trained / "runs", tmp_path / "runs")
    return tmp_path


def _nan_copy(src: Path, dst: Path, key: str | None = None) -> Path:
    ckpt = torch.load(src, weights_only=True)
    key = key or next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    torch.save(ckpt, dst)
    return dst


# --- 1: a checkpoint names only classes of this package ---------------------------------------------------------
@pytest.mark.parametrize(("where", "value"), [
    ("_class_path", "evilmod.Model"),  # what LightningCLI would import to rebuild the model
    ("fit", {"class_path": "evilmod.Model", "init_args": {}}),  # a nested class path in the hyper-parameters
    ("_instantiator", "evilmod.build"),
])
def test_a_checkpoint_naming_a_foreign_class_imports_nothing(run: Path, capsys, monkeypatch, where, value) -> None:
    marker = run / "imported"
    (run / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: ...\ndef build(): ...\n")
    monkeypatch.syspath_prepend(str(run))
    ckpt = torch.load(run / CKPTS / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"][where] = value
    torch.save(ckpt, run / "evil.ckpt")
    for sub in ("test", "fit"):
        code, err = _ssr(run, capsys, sub, "--config", DKENET, *TINY_FIT, "--root", "runs", "--ckpt_path", "evil.ckpt")
        line = _one_line(err)
        assert code == 2 and "evil.ckpt: refused" in line and "evilmod." in line, line
    assert not marker.exists() and "evilmod" not in sys.modules
    with pytest.raises(CheckpointError, match="evil.ckpt: refused.*a class outside ssr_lightning"):
        read_checkpoint(run / "evil.ckpt")


# --- 2: --name is one folder name ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".."])
def test_run_name_cannot_leave_the_root(tmp_path: Path, capsys, name: str) -> None:
    (tmp_path / "work").mkdir()
    code, err = _fit(tmp_path / "work", capsys, "--root", "runs", "--name", name)
    line = _one_line(err)
    assert code == 2 and f"--name {name!r}" in line and "one folder name" in line
    assert [p.name for p in tmp_path.rglob("*")] == ["work"]  # nothing created, inside or outside


# --- 5: divergence ------------------------------------------------------------------------------------------------
def test_a_nan_loss_stops_training_and_every_checkpoint_stays_finite(tmp_path: Path, capsys, monkeypatch) -> None:
    step = DKENetModule.training_step

    def diverging(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(DKENetModule, "training_step", diverging)
    code, err = _fit(tmp_path, capsys, "--root", "runs", "--model.init_args.fit.ckpt_every_n_steps", "1")
    line = _one_line(err)
    assert code == 1 and "the loss is nan at step 3" in line, line
    ckpts = tmp_path / CKPTS
    assert {p.name for p in ckpts.iterdir()} == {"best.ckpt", "last.ckpt", "last.prev.ckpt"}
    assert [read_checkpoint(ckpts / n)["global_step"] for n in ("last.prev.ckpt", "last.ckpt")] == [2, 3]
    read_checkpoint(ckpts / "best.ckpt")  # finite (read_checkpoint refuses NaN/inf)


def test_nonfinite_weights_are_never_saved_over_finite_ones(tmp_path: Path, capsys, monkeypatch) -> None:
    calls = []
    original = DKENetModule.optimizer_step

    def poisoning(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(self.parameters()).fill_(float("inf"))

    monkeypatch.setattr(DKENetModule, "optimizer_step", poisoning)
    code, err = _fit(tmp_path, capsys, "--root", "runs", "--model.init_args.fit.ckpt_every_n_steps", "1")
    line = _one_line(err)
    assert code == 1 and "the weights are not finite at step 3" in line and "last.ckpt was not written" in line
    ckpts = tmp_path / CKPTS
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 2 and not list(ckpts.glob(".*"))


def test_a_nonfinite_checkpoint_is_refused_everywhere(run: Path, capsys, caplog) -> None:
    ckpts = run / CKPTS
    bad = _nan_copy(ckpts / "best.ckpt", run / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"nan\.ckpt: refused: its weights are not finite \(model\."):
        load_model(bad, "dkenet")
    code, err = _ssr(run, capsys, "test", "--config", DKENET, *TINY_FIT, "--root", "runs", "--ckpt_path", str(bad))
    assert code == 2 and "nan.ckpt: refused: its weights are not finite" in _one_line(err)
    # resuming: a NaN last.ckpt is passed over for the finite last.prev.ckpt, with a message
    _nan_copy(ckpts / "last.ckpt", ckpts / "last.ckpt")
    nan_bytes = (ckpts / "last.ckpt").read_bytes()
    code, err = _fit(run, capsys, "--root", "runs", "--ckpt_path", "last", "--trainer.max_steps", "5")
    assert code == 0 and "last.ckpt holds non-finite weights; resuming from the previous checkpoint" in caplog.text
    # the NaN file is kept aside (never becomes last.prev.ckpt); both resume files are finite
    assert (ckpts / "last.ckpt.unusable").read_bytes() == nan_bytes
    assert [read_checkpoint(ckpts / n)["global_step"] for n in ("last.prev.ckpt", "last.ckpt")] == [4, 5]


def test_ssr_sr_refuses_a_nonfinite_checkpoint_and_writes_nothing(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = _save_ckpt(tiny_module(use_depth=False, use_kernel=False), tmp_path / "ssr.ckpt")
    _nan_copy(ckpt, ckpt)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (12, 10), (120, 60, 30)).save(tmp_path / "in" / "a.png")
    code = sr_main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpt), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "ssr.ckpt: refused: its weights are not finite" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- 6: a resumed run keeps updating best.ckpt --------------------------------------------------------------------
def _set_best_score(best: Path, score: float) -> None:
    """Rewrite the score best.ckpt records for itself (what a resumed run must beat)."""
    ckpt = torch.load(best, weights_only=True)
    key = next(k for k in ckpt["callbacks"] if "val/" in k)
    ckpt["callbacks"][key]["best_model_score"] = torch.tensor(score)
    torch.save(ckpt, best)


@pytest.mark.parametrize(("score", "replaced"), [(1e9, True), (0.0, False)])
def test_resume_updates_best_ckpt_itself_and_only_with_a_better_score(run: Path, capsys, score, replaced) -> None:
    ckpts = run / CKPTS
    _set_best_score(ckpts / "best.ckpt", score)
    before = (ckpts / "best.ckpt").read_bytes()
    # an absolute --root for a run trained with a relative one: Lightning saw "another folder" and wrote best-v1.ckpt
    code, err = _fit(run, capsys, "--root", str(run / "runs"), "--ckpt_path", "last", "--trainer.max_steps", "6")
    assert code == 0, err[-2000:]
    assert {p.name for p in ckpts.iterdir()} == {"best.ckpt", "last.ckpt", "last.prev.ckpt"}
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 6
    assert ((ckpts / "best.ckpt").read_bytes() != before) == replaced
    if replaced:
        assert read_checkpoint(ckpts / "best.ckpt")["global_step"] == 6


# --- 7: a kill or a full disk during a save ------------------------------------------------------------------------
def _disk_full(path: Path, data: memoryview) -> None:
    """The checkpoint file write on a full disk: part of the bytes land, then ENOSPC."""
    path.write_bytes(bytes(data[:100]))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_checkpoint_writes_are_atomic_and_keep_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    writer, last = RunCheckpointIO(), tmp_path / "last.ckpt"
    first = {"state_dict": {"w": torch.zeros(2)}, "global_step": 1}
    writer.save_checkpoint(first, last)
    writer.save_checkpoint({**first, "global_step": 2}, last)
    assert [torch.load(tmp_path / n)["global_step"] for n in ("last.prev.ckpt", "last.ckpt")] == [1, 2]
    before = _digest(tmp_path)
    monkeypatch.setattr(checkpointing, "_write_file", _disk_full)
    with pytest.raises(TrainingError, match=r"cannot write .*last\.ckpt: No space left on device; the checkpoints"):
        writer.save_checkpoint({**first, "global_step": 3}, last)
    assert _digest(tmp_path) == before  # both files intact, no temporary file left
    with pytest.raises(TrainingError, match="weights are not finite at step 4"):
        writer.save_checkpoint({"state_dict": {"w": torch.tensor([float("nan")])}, "global_step": 4}, last)
    assert _digest(tmp_path) == before


def test_a_full_disk_keeps_last_ckpt_and_ends_in_one_line(run: Path, capsys, monkeypatch) -> None:
    ckpts = run / CKPTS
    before = _digest(ckpts)
    monkeypatch.setattr(checkpointing, "_write_file", _disk_full)
    code, err = _fit(run, capsys, "--root", "runs", "--ckpt_path", "last", "--trainer.max_steps", "6")
    line = _one_line(err)
    assert code == 1 and "last.ckpt: No space left on device" in line and "resume with --ckpt_path last" in line
    assert _digest(ckpts) == before


def test_a_kill_between_renames_resumes_from_last_prev(run: Path, capsys, caplog) -> None:
    ckpts = run / CKPTS
    (ckpts / "last.ckpt").unlink()  # killed after last.ckpt moved away, before the new one was in place
    stale = ckpts / ".last.ckpt.host.1.0000.tmp.ckpt"
    stale.write_bytes(b"half a checkpoint")  # killed while writing the temporary file
    assert find_checkpoint("dkenet", run / "runs", "newest") != stale
    code, err = _fit(run, capsys, "--root", "runs", "--ckpt_path", "last", "--trainer.max_steps", "6")
    assert code == 0, err[-2000:]
    assert "last.ckpt is missing; resuming from the previous checkpoint" in caplog.text
    assert not (run / "runs/dkenet/version_1").exists() and not stale.exists()
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 6


# --- 9: one fit per run folder -------------------------------------------------------------------------------------
def test_a_second_fit_of_the_same_run_is_refused(run: Path, capsys) -> None:
    before = _digest(run / "runs", skip=(RUN_LOCK,))
    lock = run / "runs/dkenet" / RUN_LOCK
    with file_lock(lock, blocking=False) as held:
        assert held
        lock.write_text("4242\n")  # the holder records its pid
        for extra in (["--ckpt_path", "last"], []):  # a resume, and a fresh run under the same name
            code, err = _fit(run, capsys, "--root", "runs", "--trainer.max_steps", "6", *extra)
            line = _one_line(err)
            assert code == 2 and "runs/dkenet is in use by another `ssr fit` (pid 4242)" in line, line
    assert _digest(run / "runs", skip=(RUN_LOCK,)) == before


# --- 12: folders that cannot be written, files that are not configs -------------------------------------------------
def test_a_root_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    code, err = _fit(tmp_path, capsys, "--root", "afile/runs")
    line = _one_line(err)
    assert code == 2 and "cannot write the run folder afile/runs" in line and "afile is a file" in line
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("where", ["root", "checkpoints"])
def test_a_read_only_folder_is_found_before_any_work(run: Path, capsys, monkeypatch, where: str) -> None:
    target = run / "ro" if where == "root" else run / CKPTS
    target.mkdir(exist_ok=True)
    mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == target.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target.chmod(0o555)
    before = _digest(run)
    try:
        args = ["--root", "ro/runs"] if where == "root" else ["--root", "runs", "--ckpt_path", "last"]
        code, err = _fit(run, capsys, *args)
    finally:
        target.chmod(0o755)
    line = _one_line(err)
    assert code == 2 and "cannot write the run folder" in line and "Permission denied" in line, line
    assert _digest(run) == before and not (run / "ro/runs").exists()


# --- 13: config files and options, one line each ------------------------------------------------------------------
@pytest.mark.parametrize(("content", "message"), [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "bad.yaml: a binary file, not YAML text"),
    (b"model:\n  init_args: [\n", "bad.yaml: not valid YAML (line 3, column 1)"),
    (b"model:\n  init_args:\n    chanels: 4\n",
     "bad.yaml: model.init_args.chanels: DKENetModule has no such option (did you mean "
     "model.init_args.net.init_args.channels?)"),
    (b"model:\n  init_args:\n    net:\n      init_args: {chanels: 4}\n",
     "bad.yaml: model.init_args.net.init_args.chanels: DKENet has no such option (did you mean "
     "model.init_args.net.init_args.channels?)"),
])
def test_a_bad_config_file_is_named_in_one_line(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    code, err = _ssr(tmp_path, capsys, "fit", "--config", DKENET, "--config", "bad.yaml")
    line = _one_line(err)
    assert code == 2 and message in line, line
    assert (tmp_path / "bad.yaml").read_bytes() == content and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("option", "suggestion"), [
    ("--model.init_args.chanels", "did you mean --model.init_args.net.init_args.channels?"),
    ("--model.init_args.channels", "it moved: --model.init_args.net.init_args.channels"),  # a pre-0.4 name
    ("--model.init_args.fit.learnin_rate", "did you mean --model.init_args.fit.learning_rate?"),
    ("--data.num_trian", "did you mean --data.num_train?"),
])
def test_an_unknown_option_is_one_line_with_a_suggestion(tmp_path: Path, capsys, option: str, suggestion: str) -> None:
    code, err = _ssr(tmp_path, capsys, "fit", "--config", DKENET, option, "4")
    line = _one_line(err)
    assert code == 2 and line.startswith(f"ssr fit: {option}:") and suggestion in line, line
    assert len(err.strip().splitlines()) <= 3  # no usage block (Lightning may add a warning line)


def test_kernel_basis_usage_errors_exit_2_and_success_exits_0(tmp_path: Path) -> None:
    entry = "import sys; from ssr_lightning.cli.kernel_basis import main; sys.exit(main())"  # the console script
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-c", entry, "--components", "0"], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "ssr-kernel-basis: need --components >= 1, --samples >= --components and --heldout >= 1 (got 0, 20000, 20000)"]
    out = tmp_path / "basis.pt"
    ok = subprocess.run([sys.executable, "-c", entry, "--components", "2", "--samples", "20", "--heldout", "4",
                         "--out", str(out)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert ok.returncode == 0 and out.is_file() and ok.stderr == "", ok.stderr[-2000:]
