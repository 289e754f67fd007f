"""The one checkpoint policy: which file is used, what each failure says, and first-format checkpoints still load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ssr_lightning.inference.checkpoints import (
    CheckpointError,
    find_checkpoint,
    load_model,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.modules import DKENetModule
from ssr_lightning.networks import DKENet


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_policy_newest_version_then_best_then_last(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "dkenet"
    best0 = _touch(run / "version_0/checkpoints/best.ckpt", 100)
    last0 = _touch(run / "version_0/checkpoints/last.ckpt", 300)
    step0 = _touch(run / "version_0/checkpoints/step=5.ckpt", 400)
    assert find_checkpoint("dkenet", tmp_path / "runs") == best0
    assert find_checkpoint("dkenet", tmp_path / "runs", "last") == last0
    assert find_checkpoint("dkenet", tmp_path / "runs", "newest") == step0
    last10 = _touch(run / "version_10/checkpoints/last.ckpt", 50)  # version 10 > 2 > 0, whatever the mtimes
    assert find_checkpoint("dkenet", tmp_path / "runs") == last10  # no best yet in the newest run: its last
    assert resolve_checkpoint(run, "dkenet") == last10  # a run folder resolves the same way
    assert find_checkpoint("nbsr", tmp_path / "runs") is None
    with pytest.raises(FileNotFoundError, match="configs/nbsr.yaml"):
        resolve_checkpoint(None, "nbsr", root=tmp_path / "runs")


def _dkenet_ckpt(tmp_path: Path) -> tuple[Path, DKENetModule]:
    torch.manual_seed(0)
    module = DKENetModule(net=DKENet(channels=4))
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    path = tmp_path / "dkenet.ckpt"
    torch.save(ckpt, path)
    return path, module


def test_missing_corrupt_foreign_and_wrong_stage_each_get_their_message(tmp_path: Path) -> None:
    path, _ = _dkenet_ckpt(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"NBSR checkpoint not found: .*nope\.ckpt.*configs/nbsr\.yaml"):
        read_checkpoint(tmp_path / "nope.ckpt", "nbsr")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: not a readable checkpoint.*NBSR"):
        read_checkpoint(truncated, "nbsr")
    with pytest.raises(CheckpointError, match=r"is a checkpoint of stage 'dkenet'.*'nbsr' \(NBSR\)"):
        read_checkpoint(path, "nbsr")
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="weights.pt: not a Lightning checkpoint"):
        read_checkpoint(plain, "dkenet")


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as fh:
        pickle.dump({"state_dict": {}, "payload": _RunsCode()}, fh)
    with pytest.raises(CheckpointError, match="evil.ckpt: refused to load"):
        read_checkpoint(evil, "dkenet")


def test_checkpoint_to_ready_network(tmp_path: Path) -> None:
    path, module = _dkenet_ckpt(tmp_path)
    net = load_model(path, "dkenet")
    assert isinstance(net, DKENet) and not net.training
    lr, depth = torch.rand(1, 3, 9, 11), torch.rand(1, 1, 9, 11)
    torch.testing.assert_close(net(lr, depth), module.eval()(lr, depth), rtol=0, atol=0)


def test_first_format_checkpoint_still_loads(tmp_path: Path) -> None:
    """ssr_lightning 0.1 wrote flat hparams and `net.*` weights, without `global_context` in early runs."""
    torch.manual_seed(0)
    net = DKENet(channels=4, global_context=False).eval()
    old = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
           "hyper_parameters": {"_class_path": "ssr_lightning.modules.DKENetModule", "channels": 4,
                                "blocks_per_stage": 1, "use_depth": True, "kernel_size": 21, "scale": 4,
                                "lr": 3e-3, "min_lr": 1e-5, "warmup_steps": 50, "ckpt_every_n_steps": 100,
                                "num_log_images": 4}}
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    loaded = load_model(path, "dkenet")
    lr, depth = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(loaded(lr, depth), net(lr, depth), rtol=0, atol=0)
    hp = read_checkpoint(path, "dkenet")["hyper_parameters"]
    assert hp["fit"] == {"learning_rate": 3e-3, "min_learning_rate": 1e-5, "warmup_steps": 50,
                         "ckpt_every_n_steps": 100, "num_log_images": 4} and "lr" not in hp
