"""`EvalWriter`: a Lightning callback that scores `ssr predict` outputs with `MetricSuite` and saves sample PNGs.

The ablation runner adds it to `ssr predict` (`--trainer.callbacks+=...`), so the cell's SR images are produced by
the same LightningCLI code path, data module and degradation as training and `ssr test`. Per batch it takes the
stage's prediction (an SR tensor `(B, 3, H, W)`, or a dict holding one under `sr`/`image`/`final_image`), scores it
against `batch["hr"]` and keeps the first `num_samples` images as `<out_dir>/samples/{name}_{lr,sr,hr}.png`;
at the end it writes `<out_dir>/predict_metrics.json` (`summary`, `available`, `per_sample`).

`source="bicubic"` ignores the model and scores the bicubic upsampling of `batch["lr"]` (the "Bicubic" row):
MATLAB's `imresize` (A = −0.5, the bicubic of SR papers' tables) unless `bicubic="torch"` (`F.interpolate`,
A = −0.75; docs/METRICS.md "Which bicubic"). A batch whose items name their `source` (several kernel draws of one
photo: `RealPhotos`) has it recorded per image, so the report resamples sources, not draws.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchvision.utils import save_image

from ssr_lightning.ablate.runner import SAMPLES_ENV
from ssr_lightning.degradation.resize import bicubic_upsample
from ssr_lightning.files import atomic_write, atomic_write_json
from ssr_lightning.metrics.iqa import PAPER_METRICS, MetricSuite

__all__ = ["SAMPLES_ENV", "EvalWriter", "sample_paths"]

_SR_KEYS = ("sr", "image", "final_image", "images")


def sample_paths(samples_dir: Path, name: str) -> dict[str, Path]:
    """The three PNGs of one sample: `{name}_lr.png`, `{name}_sr.png`, `{name}_hr.png`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sample"
    return {kind: samples_dir / f"{safe}_{kind}.png" for kind in ("lr", "sr", "hr")}


def _extract_sr(outputs: Any, hr: Tensor) -> Tensor | None:
    """The SR image in a predict_step output, or None when the stage predicts something else (kernels, depth)."""
    if isinstance(outputs, dict):
        for key in _SR_KEYS:
            if key in outputs:
                return _extract_sr(outputs[key], hr)
        return None
    if isinstance(outputs, (list, tuple)) and outputs:
        return _extract_sr(outputs[-1], hr)  # a list of iterates: the final one
    if isinstance(outputs, Tensor) and outputs.shape == hr.shape:
        return outputs
    return None


class EvalWriter(Callback):
    """Score SR predictions against HR with the paper metrics; save a few samples as PNG.

    Args:
        out_dir: the cell folder; results go to `predict_metrics.json` and `samples/` inside it.
        metrics: metric names for `MetricSuite` (default: the paper's six).
        crop_border: pixels cropped for PSNR/SSIM; None: the model's scale (its network's `scale`, or the module's own
            `scale` hyper-parameter; else 4).
        source: "model": the stage's prediction; "bicubic": bicubic upsampling of the LR input.
        num_samples: how many samples are saved as PNG.
        bicubic: which bicubic a "bicubic" source is: "matlab" (imresize, A = −0.5) or "torch" (A = −0.75).
    """

    def __init__(self, out_dir: str, metrics: list[str] | None = None, crop_border: int | None = None,
                 source: Literal["model", "bicubic"] = "model", num_samples: int = 4,
                 bicubic: Literal["matlab", "torch"] = "matlab") -> None:
        super().__init__()
        if bicubic not in ("matlab", "torch"):
            raise ValueError(f"EvalWriter: bicubic must be 'matlab' or 'torch', got {bicubic!r}")
        self.bicubic = bicubic
        self.out_dir = Path(out_dir)
        self.metric_names = list(metrics) if metrics else list(PAPER_METRICS)
        self.crop_border = crop_border
        self.source = source
        self.num_samples = num_samples
        self._suite: MetricSuite | None = None
        self._rows: list[dict[str, Any]] = []
        self._saved = 0
        self._skipped = False

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        crop = self.crop_border
        if crop is None:
            hp = getattr(pl_module, "hparams", {})
            crop = int(((hp.get("net") or {}).get("init_args") or {}).get("scale") or hp.get("scale") or 4)
        self._suite = MetricSuite(self.metric_names, crop_border=crop, device=pl_module.device)
        self._rows, self._saved, self._skipped = [], 0, False

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(batch, dict) or "hr" not in batch or "lr" not in batch:
            self._skipped = True
            return
        hr, lr = batch["hr"], batch["lr"]
        if self.source == "bicubic":
            scale = hr.shape[-1] // lr.shape[-1]
            if tuple(hr.shape[-2:]) != (lr.shape[-2] * scale, lr.shape[-1] * scale):
                raise ValueError(f"bicubic source: HR {tuple(hr.shape[-2:])} is not an integer multiple of LR "
                                 f"{tuple(lr.shape[-2:])}")
            sr = bicubic_upsample(lr.float(), scale, self.bicubic).clamp(0, 1)
        else:
            sr = _extract_sr(outputs, hr)
        if sr is None:
            self._skipped = True  # this stage predicts no image: only `ssr test`'s own metrics apply
            return
        assert self._suite is not None
        scores = self._suite(sr, hr)
        names = batch.get("name") or [f"b{batch_idx}_{i}" for i in range(hr.shape[0])]
        sources = batch.get("source")
        for i in range(hr.shape[0]):
            row: dict[str, Any] = {"name": str(names[i])}
            if isinstance(sources, (list, tuple)) and len(sources) == hr.shape[0]:
                row["source"] = str(sources[i])
            for key, value in scores.items():
                row[key] = value if isinstance(value, str) else float(value[i])
            self._rows.append(row)
            if self._saved < self.num_samples:
                self._save(str(names[i]), lr[i], sr[i], hr[i])

    def _save(self, name: str, lr: Tensor, sr: Tensor, hr: Tensor) -> None:
        paths = sample_paths(self.out_dir / "samples", name)
        paths["sr"].parent.mkdir(parents=True, exist_ok=True)
        for kind, img in (("lr", lr), ("sr", sr), ("hr", hr)):
            pixels = img.detach().float().clamp(0, 1).cpu()
            atomic_write(paths[kind], lambda tmp, pixels=pixels: save_image(pixels, tmp, format="png"))
        self._saved += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._rows:
            return
        summary: dict[str, float | str] = {}
        for key in self.metric_names:
            values = [r[key] for r in self._rows]
            text = next((v for v in values if isinstance(v, str)), None)
            finite = [v for v in values if not isinstance(v, str) and math.isfinite(v)]
            # identical SR/HR pairs give PSNR = inf; the mean over the finite ones stays a usable number
            summary[key] = text if text is not None else (sum(finite) / len(finite) if finite else float("nan"))
        assert self._suite is not None
        report = {"summary": summary, "available": self._suite.available(), "source": self.source,
                  **({"bicubic": self.bicubic} if self.source == "bicubic" else {}),
                  "num_samples": len(self._rows), "per_sample": self._rows}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "predict_metrics.json", report)
