"""The paper's six image metrics behind one entry point, with an offline-only weights policy.

`MetricSuite(["psnr_y", "ssim_y", "lpips", "musiq", "clipiqa", "niqe"], crop_border=4, device="cpu")` scores
SR against HR images per sample. PSNR/SSIM are the project's BasicSR-convention functions (Y channel, `crop_border`
pixels cropped per side); LPIPS, MUSIQ, CLIP-IQA and NIQE come from pyiqa on the whole image (pyiqa's defaults,
as the papers that report them).

`OFFLINE_METRICS` are pyiqa measures that need no weight file at all (checked with the network blocked and an
empty torch hub), so perceptual columns carry numbers on any machine: the full-reference FSIM, VIF, GMSD and
MS-SSIM and the no-reference PIQE. They are not the paper's learned metrics; their labels say FR / NR.

Nothing is ever downloaded. Each pyiqa metric's weight files are listed in `WEIGHT_FILES` (paths relative to the
torch hub folder, `$TORCH_HOME/hub`, where pyiqa, torchvision and CLIP cache them); a metric whose files are not
all present reports the string "n/a (weights missing: FILE)" instead of a number, and pyiqa is created with
explicit local paths while every downloader it could reach is replaced by one that raises.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor

from ssr_lightning.metrics.image import color_shift, psnr, psnr_y, ssim, ssim_y

__all__ = [
    "HIGHER_IS_BETTER", "LABELS", "NO_REFERENCE", "OFFLINE_METRICS", "PAPER_METRICS", "WEIGHT_FILES", "MetricSuite",
    "WeightFile", "WeightsMissing", "hub_dir", "missing_weights",
]

PAPER_METRICS: tuple[str, ...] = ("psnr_y", "ssim_y", "lpips", "musiq", "clipiqa", "niqe")
# pyiqa measures without any weight file (full-reference FSIM, VIF, GMSD, MS-SSIM; no-reference PIQE)
OFFLINE_METRICS: tuple[str, ...] = ("fsim", "vif", "gmsd", "ms_ssim", "piqe")
NO_REFERENCE: frozenset[str] = frozenset({"musiq", "clipiqa", "niqe", "piqe"})  # scored on SR alone

# Direction of every metric the suite and the stage test reports produce (the reports put ↑/↓ and bold from this).
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr_y": True, "ssim_y": True, "psnr": True, "ssim": True,
    "lpips": False, "musiq": True, "clipiqa": True, "niqe": False,
    "fsim": True, "vif": True, "gmsd": False, "ms_ssim": True, "piqe": False,
    "kernel_l1": False, "resynth_psnr": True, "l1": False,
    "color_shift": False, "psnr_y_raw": True, "ssim_y_raw": True, "psnr_raw": True, "color_shift_raw": False,
}

LABELS: dict[str, str] = {
    "psnr_y": "PSNR", "ssim_y": "SSIM", "psnr": "PSNR (RGB)", "ssim": "SSIM (RGB)", "lpips": "LPIPS",
    "musiq": "MUSIQ", "clipiqa": "CLIP-IQA", "niqe": "NIQE", "kernel_l1": "Kernel L1", "resynth_psnr": "Re-synth PSNR",
    "fsim": "FSIM (FR)", "vif": "VIF (FR)", "gmsd": "GMSD (FR)", "ms_ssim": "MS-SSIM (FR)", "piqe": "PIQE (NR)",
    "color_shift": "Colour shift", "psnr_y_raw": "PSNR (no colour fix)", "color_shift_raw": "Colour shift (no fix)",
}

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One weight file: its path under the torch hub folder and where it comes from on a networked machine."""

    relpath: str
    url: str


# Read from pyiqa 0.1.16's sources: the default model of each name (lpips: AlexNet v0.1, musiq: KonIQ-10k,
# clipiqa: CLIP RN50 with the hand-made prompts). pyiqa caches its own files in `<hub>/pyiqa` (DEFAULT_CACHE_DIR),
# torchvision its ImageNet backbones in `<hub>/checkpoints`, OpenAI CLIP its models in `<hub>/clip`.
WEIGHT_FILES: dict[str, tuple[WeightFile, ...]] = {
    "niqe": (WeightFile("pyiqa/niqe_modelparameters.mat", _HF + "niqe_modelparameters.mat"),),
    "lpips": (
        WeightFile("pyiqa/LPIPS_v0.1_alex-df73285e.pth", _HF + "LPIPS_v0.1_alex-df73285e.pth"),
        WeightFile("checkpoints/alexnet-owt-7be5be79.pth",
                   "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    ),
    "musiq": (WeightFile("pyiqa/musiq_koniq_ckpt-e95806b9.pth", _HF + "musiq_koniq_ckpt-e95806b9.pth"),),
    "clipiqa": (
        WeightFile(
            "clip/RN50.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        ),
    ),
}

_FIDELITY: dict[str, Callable[..., Tensor]] = {
    "psnr_y": psnr_y, "ssim_y": ssim_y, "psnr": psnr, "ssim": ssim,
    "color_shift": lambda sr, hr, crop_border=0: color_shift(sr, hr),  # whole-image means: no border crop
}
# smallest image side pyiqa's metric accepts: NIQE's 96×96 blocks, MS-SSIM's 11×11 window at 1/16 scale, VIF's
# four scales (measured; smaller inputs raise inside pyiqa)
_MIN_SIDE = {"niqe": 96, "ms_ssim": 176, "vif": 36}
_NAMES = {"ms_ssim": "MS-SSIM"}


# The weight files the repository itself ships (NIQE's parameters, docs/METRICS.md), used when the torch hub lacks
# them: a checkout scores NIQE without any setup; an installed wheel has no such folder and keeps the hub only.
REPO_HUB = Path(__file__).resolve().parents[2] / "tests" / "assets" / "torch_hub" / "hub"


class WeightsMissing(RuntimeError):
    """Raised instead of a download: a weight file is not on disk."""


def hub_dir() -> Path:
    """The torch hub folder as pyiqa/torchvision/CLIP resolve it *now* (`$TORCH_HOME/hub`, or `torch.hub.set_dir`)."""
    return Path(torch.hub.get_dir())


def missing_weights(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Weight files of metric `name` absent under `root` (default: `hub_dir()`); [] for weight-free metrics."""
    base = Path(root) if root is not None else hub_dir()
    return [base / w.relpath for w in WEIGHT_FILES.get(name, ()) if not (base / w.relpath).is_file()]


def _refuse(url: Any = "?", *args: Any, **kwargs: Any) -> None:
    raise WeightsMissing(os.path.basename(str(url)))


@contextlib.contextmanager
def _offline(root: Path) -> Iterator[None]:
    """Point every cache at `root` and make every downloader pyiqa could reach raise instead of fetching."""
    from pyiqa.archs import clip_model
    from pyiqa.utils import download_util

    previous = torch.hub._hub_dir  # set_dir's global; restored so the caller's torch.hub is untouched
    torch.hub.set_dir(str(root))
    original_clip_download = clip_model._download

    def clip_download(url: str, folder: str) -> str:
        # CLIP's own downloader checks the SHA-256 of a present file; only a missing one would hit the network.
        if not (Path(folder) / os.path.basename(url)).is_file():
            _refuse(url)
        return original_clip_download(url, folder)

    try:
        with mock.patch.object(torch.hub, "download_url_to_file", _refuse), \
                mock.patch.object(download_util, "download_url_to_file", _refuse), \
                mock.patch.object(clip_model, "_download", clip_download):
            yield
    finally:
        torch.hub._hub_dir = previous


@contextlib.contextmanager
def clip_importable() -> Iterator[None]:
    """Let OpenAI's `clip` package import without `pkg_resources` (gone from setuptools >= 81).

    `clip/clip.py` runs `from pkg_resources import packaging` only to compare torch versions; while it is imported,
    a stand-in module exposing the `packaging` distribution serves that line. Nothing else is shimmed, and the
    stand-in is removed again, so code that needs the real `pkg_resources` is unaffected.
    """
    try:
        import pkg_resources  # noqa: F401
        yield
        return
    except ImportError:
        pass
    import types

    import packaging.version

    shim = types.ModuleType("pkg_resources")
    shim.packaging = packaging  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def _create_pyiqa(name: str, root: Path, device: torch.device) -> torch.nn.Module:
    """A pyiqa metric built from the local files under `root` (their presence was checked by the caller)."""
    import pyiqa  # imported lazily: ~10 s, and only needed when a learned metric has its weights

    with _offline(root):
        if name in ("niqe", "lpips", "musiq"):
            # the metric's own file, given explicitly: pyiqa's DEFAULT_CACHE_DIR was fixed when pyiqa was imported
            own = str(root / WEIGHT_FILES[name][0].relpath)
            return pyiqa.create_metric(name, device=device, pretrained_model_path=own)
        if name == "clipiqa":
            with clip_importable():
                import pyiqa.archs.clipiqa_arch
            return pyiqa.create_metric("clipiqa", device=device)  # CLIP RN50 read from <root>/clip by _offline
        if name in OFFLINE_METRICS:
            return pyiqa.create_metric(name, device=device)  # hand-crafted: no file to read, none to download
    raise ValueError(f"unknown pyiqa metric {name!r}")


class MetricSuite:
    """Per-sample scores of SR vs HR for a chosen set of metrics; unavailable metrics report why, as text.

    Args:
        names: metric names, any of `psnr_y`, `ssim_y`, `psnr`, `ssim`, `color_shift`, `lpips`, `musiq`, `clipiqa`,
            `niqe` and the weight-free `fsim`, `vif`, `gmsd`, `ms_ssim`, `piqe`.
        crop_border: pixels cropped per side for PSNR/SSIM (the SR scale, BasicSR convention).
        device: where the learned metrics run.
        weights_root: the torch hub folder holding the weights (default: `$TORCH_HOME/hub` at construction).
    """

    def __init__(self, names: list[str] | tuple[str, ...] = PAPER_METRICS, crop_border: int = 0,
                 device: str | torch.device = "cpu", weights_root: str | os.PathLike[str] | None = None) -> None:
        unknown = [n for n in names if n not in _FIDELITY and n not in WEIGHT_FILES and n not in OFFLINE_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: "
                             f"{sorted([*_FIDELITY, *WEIGHT_FILES, *OFFLINE_METRICS])}")
        self.names = list(names)
        self.crop_border = int(crop_border)
        self.device = torch.device(device)
        self.root = Path(weights_root) if weights_root is not None else hub_dir()
        self._status: dict[str, bool | str] = {}
        self._nets: dict[str, torch.nn.Module] = {}
        self._roots: dict[str, Path] = {}
        for name in self.names:
            if name in _FIDELITY:
                self._status[name] = True
                continue
            missing = missing_weights(name, self.root)
            if missing and weights_root is None and WEIGHT_FILES.get(name) and not missing_weights(name, REPO_HUB):
                self._roots[name], missing = REPO_HUB, []  # the repository's own copy
            # the hub-relative path, which is what docs/METRICS.md tells the user to put under $TORCH_HOME/hub
            self._status[name] = f"n/a (weights missing: {missing[0].relative_to(self.root)})" if missing else True

    def available(self) -> dict[str, bool | str]:
        """True per usable metric; the "n/a (weights missing: FILE)" text for the others."""
        return dict(self._status)

    def _net(self, name: str) -> torch.nn.Module:
        if name not in self._nets:
            self._nets[name] = _create_pyiqa(name, self._roots.get(name, self.root), self.device)
        return self._nets[name]

    @torch.no_grad()
    def __call__(self, sr: Tensor, hr: Tensor) -> dict[str, Tensor | str]:
        """`{name: (B,) float tensor on CPU}` for available metrics, `{name: "n/a (...)"}` for the others."""
        if sr.shape != hr.shape or sr.ndim != 4:
            raise ValueError(f"MetricSuite: expected two (B, 3, H, W) images of one shape, got {tuple(sr.shape)} "
                             f"and {tuple(hr.shape)}")
        # pyiqa asserts inputs in [0, 1]; an SR network may overshoot slightly.
        sr = sr.detach().float().clamp(0, 1)
        hr = hr.detach().float().clamp(0, 1)
        out: dict[str, Tensor | str] = {}
        for name in self.names:
            status = self._status[name]
            if status is not True:
                out[name] = str(status)
            elif name in _FIDELITY:
                out[name] = _FIDELITY[name](sr, hr, crop_border=self.crop_border).float().cpu()
            elif name in _MIN_SIDE and min(sr.shape[-2:]) < _MIN_SIDE[name]:
                side, label = _MIN_SIDE[name], _NAMES.get(name, name.upper())
                out[name] = f"n/a (image {sr.shape[-2]}x{sr.shape[-1]} smaller than {label}'s {side}x{side})"
            else:
                try:
                    net = self._net(name)
                except WeightsMissing as err:  # pyiqa wanted a file WEIGHT_FILES does not list: still no download
                    self._status[name] = out[name] = f"n/a (weights missing: {err})"
                    continue
                no_ref = name in NO_REFERENCE
                args = (sr.to(self.device),) if no_ref else (sr.to(self.device), hr.to(self.device))
                out[name] = net(*args).detach().float().cpu().reshape(sr.shape[0])
        return out
