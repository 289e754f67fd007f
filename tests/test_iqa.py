"""`MetricSuite`: real NIQE offline from the committed weights, "n/a (weights missing)" without them, no network."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssr_lightning.metrics import psnr_y, ssim_y
from ssr_lightning.metrics import iqa
from ssr_lightning.metrics.iqa import (
    HIGHER_IS_BETTER,
    LABELS,
    OFFLINE_METRICS,
    PAPER_METRICS,
    MetricSuite,
    WeightsMissing,
    _create_pyiqa,
    clip_importable,
)

# A TORCH_HOME holding hub/pyiqa/niqe_modelparameters.mat: the committed copy (tests/assets/torch_hub, see its
# README) unless SSR_TEST_TORCH_HOME names another
ASSETS_TORCH_HOME = Path(__file__).resolve().parent / "assets" / "torch_hub"
NIQE_FILE = "hub/pyiqa/niqe_modelparameters.mat"


def niqe_torch_home() -> Path:
    return Path(os.environ.get("SSR_TEST_TORCH_HOME") or ASSETS_TORCH_HOME)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every socket connection attempt is recorded and fails."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    def no_lookup(host: object, *args: object, **kwargs: object) -> None:
        attempts.append(host)
        raise OSError(f"name lookup attempted: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return attempts


def _astronaut() -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255.0


def test_directions_cover_the_paper_metrics() -> None:
    assert set(PAPER_METRICS) <= set(HIGHER_IS_BETTER)
    assert [HIGHER_IS_BETTER[m] for m in PAPER_METRICS] == [True, True, False, True, True, False]


def test_fidelity_metrics_match_the_basicsr_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 40, 40, generator=g)
    sr = (hr + 0.05 * torch.randn(2, 3, 40, 40, generator=g)).clamp(0, 1)
    out = MetricSuite(["psnr_y", "ssim_y", "psnr", "ssim"], crop_border=4)(sr, hr)
    assert torch.allclose(out["psnr_y"], psnr_y(sr, hr, crop_border=4))
    assert torch.allclose(out["ssim_y"], ssim_y(sr, hr, crop_border=4))
    assert all(v.shape == (2,) for v in out.values())


def test_missing_weights_read_na_and_nothing_is_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           no_network: list[object]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(iqa, "REPO_HUB", tmp_path / "no_repo_copy")  # as in an installed wheel
    suite = MetricSuite(["psnr_y", "lpips", "musiq", "clipiqa", "niqe"], crop_border=4)
    avail = suite.available()
    assert avail["psnr_y"] is True
    assert avail["lpips"] == "n/a (weights missing: pyiqa/LPIPS_v0.1_alex-df73285e.pth)"
    assert avail["musiq"] == "n/a (weights missing: pyiqa/musiq_koniq_ckpt-e95806b9.pth)"
    assert avail["clipiqa"] == "n/a (weights missing: clip/RN50.pt)"
    assert avail["niqe"] == "n/a (weights missing: pyiqa/niqe_modelparameters.mat)"
    hr = torch.rand(2, 3, 32, 32)
    out = suite(hr.flip(-1), hr)
    assert out["psnr_y"].shape == (2,)
    for name in ("lpips", "musiq", "clipiqa", "niqe"):
        assert out[name] == avail[name], "never a number without the weights"
    assert no_network == []
    assert not any(tmp_path.rglob("*.pth")), "no file was fetched"


def test_niqe_falls_back_to_the_repositorys_copy_when_the_hub_lacks_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       no_network: list[object]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub
    assert (iqa.REPO_HUB / "pyiqa/niqe_modelparameters.mat").is_file()
    suite = MetricSuite(["niqe", "lpips"])
    assert suite.available()["niqe"] is True and suite.available()["lpips"].startswith("n/a")
    hr = _astronaut()[..., :128, :128]
    value = suite(hr, hr)["niqe"]
    assert isinstance(value, torch.Tensor) and torch.isfinite(value).all() and no_network == []
    explicit = MetricSuite(["niqe"], weights_root=tmp_path)  # a root the caller names is the only place looked at
    assert explicit.available()["niqe"].startswith("n/a")


def test_weight_free_metrics_give_numbers_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_network: list[object]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub: nothing to read, nothing may be fetched
    suite = MetricSuite(["psnr_y", *OFFLINE_METRICS, "lpips"], crop_border=4)
    assert all(suite.available()[m] is True for m in OFFLINE_METRICS)
    hr = _astronaut()[..., :176, :176]
    blurred = F.interpolate(F.interpolate(hr, scale_factor=0.25, mode="bicubic"), scale_factor=4,
                            mode="bicubic").clamp(0, 1)
    out = suite(torch.cat([hr, blurred]), torch.cat([hr, hr]))
    for name in OFFLINE_METRICS:
        value = out[name]
        assert isinstance(value, torch.Tensor) and value.shape == (2,) and torch.isfinite(value).all(), name
    assert out["fsim"][0] == pytest.approx(1.0, abs=1e-4) and out["fsim"][1] < 0.95, "FR: identity scores 1"
    assert out["gmsd"][0] == pytest.approx(0.0, abs=1e-4) and out["gmsd"][1] > 0.05
    assert out["ms_ssim"][0] == pytest.approx(1.0, abs=1e-4) and out["vif"][1] < out["vif"][0]
    assert out["piqe"][1] > out["piqe"][0], "NR: blur raises PIQE (lower is better)"
    assert out["lpips"].startswith("n/a (weights missing"), "the paper's learned metric still needs its files"
    small = suite(hr[..., :128, :128], hr[..., :128, :128])
    assert small["ms_ssim"] == "n/a (image 128x128 smaller than MS-SSIM's 176x176)"
    assert LABELS["fsim"] == "FSIM (FR)" and LABELS["piqe"] == "PIQE (NR)", "labelled as what they are"
    assert HIGHER_IS_BETTER["gmsd"] is False and HIGHER_IS_BETTER["vif"] is True
    assert no_network == [] and not [p for p in tmp_path.rglob("*") if p.is_file()], "no file was fetched"


def test_pyiqa_downloads_are_refused_even_past_the_file_check(tmp_path: Path, no_network: list[object]) -> None:
    # LPIPS' own file is there but torchvision's AlexNet backbone is not: pyiqa would download it; the guard refuses
    (tmp_path / "pyiqa").mkdir()
    (tmp_path / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth").write_bytes(b"")
    suite = MetricSuite(["lpips"], weights_root=tmp_path)
    assert suite.available()["lpips"] == "n/a (weights missing: checkpoints/alexnet-owt-7be5be79.pth)"
    with pytest.raises(WeightsMissing, match="alexnet-owt-7be5be79.pth"):
        _create_pyiqa("lpips", tmp_path, torch.device("cpu"))
    assert no_network == []
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert torch.hub.get_dir() != str(tmp_path), "the caller's torch hub folder is restored"


def test_clipiqa_code_imports_without_pkg_resources() -> None:
    # pyiqa's CLIP-IQA imports OpenAI clip, which wants pkg_resources (absent from setuptools >= 81)
    with clip_importable():
        import pyiqa.archs.clipiqa_arch as arch
    assert hasattr(arch, "CLIPIQA")


def test_real_niqe_offline_from_the_committed_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      no_network: list[object]) -> None:
    source = niqe_torch_home()
    assert (source / NIQE_FILE).is_file(), (f"{source / NIQE_FILE} is missing: SSR_TEST_TORCH_HOME must name a "
                                            f"TORCH_HOME holding it (default: the committed {ASSETS_TORCH_HOME})")
    home = tmp_path / "torch_home"
    shutil.copytree(source, home)  # a copy: whatever pyiqa does in its hub folder stays out of the repository
    # read at MetricSuite construction (torch.hub.get_dir() follows $TORCH_HOME), so no pyiqa reload is needed
    monkeypatch.setenv("TORCH_HOME", str(home))
    suite = MetricSuite(["niqe", "lpips"], crop_border=4)
    assert suite.available() == {"niqe": True, "lpips": "n/a (weights missing: pyiqa/LPIPS_v0.1_alex-df73285e.pth)"}
    hr = _astronaut()
    down_up = F.interpolate(F.interpolate(hr, scale_factor=0.25, mode="bicubic"), scale_factor=4, mode="bicubic")
    out = suite(torch.cat([hr, down_up.clamp(0, 1)]), torch.cat([hr, hr]))
    niqe = out["niqe"]
    assert isinstance(niqe, torch.Tensor) and niqe.shape == (2,)
    assert niqe[0].item() == pytest.approx(3.06, abs=0.02), "weights README: astronaut gives 3.06"
    assert niqe[1].item() == pytest.approx(7.35, abs=0.05), "and 7.35 after bicubic x4 down-up"
    assert niqe[1] > niqe[0], "NIQE is lower for the natural image"
    small = suite(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))["niqe"]
    assert isinstance(small, str) and small.startswith("n/a (image 64x64")
    assert no_network == []
