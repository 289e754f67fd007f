"""DepthModule: trains the project's monocular depth network DepthNet (DE, docs/DESIGN.md §3)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ssr_lightning.inference.depth import normalize_depth_map, resize_depth
from ssr_lightning.metrics import align_scale_shift, aligned_depth_metrics, ssi_loss
from ssr_lightning.modules.base import FitConfig, StageModule, as_network
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.visualize import Panel

InputKind = Literal["lr", "hr"]


class DepthModule(StageModule):
    """Depth-estimation stage: image -> relative depth (0 nearest), trained on degraded LR and on HR images.

    SVKR runs DE on the LR image first and on the SR estimates afterwards, so by default (``input="both"``)
    every step trains on the batch's LR images (target: ``depth_lr``, the GT depth at the LR sample positions)
    and on its HR images (target: ``depth``). Loss: the MiDaS scale-and-shift-invariant loss (per-image
    least-squares alignment, then L1 or MSE, plus an optional multi-scale gradient-matching term).
    Validation/test report AbsRel and δ<1.25 of the aligned prediction against the GT mapped to
    ``z = 1 + 9·d``, per input kind (``val/absrel_lr``, ``val/absrel_hr`` ...) and averaged (``val/absrel``,
    which picks ``best.ckpt``). Samples whose ``has_depth`` is False (folders without depth files) are skipped.
    """

    monitor = "val/absrel"
    monitor_mode = "min"

    def __init__(
        self,
        net: DepthNet,
        input: Literal["lr", "hr", "both"] = "both",
        loss: Literal["l1", "mse"] = "l1",
        alignment: Literal["scale_shift", "none"] = "scale_shift",
        grad_weight: float = 0.5,
        grad_scales: int = 4,
        fit: FitConfig = FitConfig(learning_rate=1e-3, min_learning_rate=1e-5),  # noqa: B008 (never mutated)
    ) -> None:
        """
        Args:
            net: The depth network (``DepthNet``: width, levels, working size, output activation, ...).
            input: Train/evaluate on ``lr`` images, ``hr`` images or ``both`` (default; SVKR needs both).
            loss: Per-pixel term of the SSI loss: ``l1`` or ``mse``.
            alignment: ``scale_shift`` (MiDaS SSI loss, for data whose depth has no common scale) or ``none``
                (regress the data's normalised depth directly: the embedded scenes share one convention,
                0 = nearest, 1 = horizon/background, so the absolute value is learnable).
            grad_weight: Weight of the gradient-matching term (MiDaS: 0.5; 0 disables it).
            grad_scales: Scales of the gradient-matching term.
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        if input not in ("lr", "hr", "both"):
            raise ValueError(f"DepthModule: input must be 'lr', 'hr' or 'both', got {input!r}")
        net = as_network(net, DepthNet)  # a class_path/init_args block (load_from_checkpoint) is built
        self.save_stage_hparams()
        self.model = net

    @property
    def kinds(self) -> list[InputKind]:
        """The input kinds trained and evaluated on."""
        mode = self.hparams.input
        return ["lr", "hr"] if mode == "both" else [mode]

    def forward(self, image: Tensor) -> Tensor:
        """Raw relative depth ``(B, 1, H, W)`` (affine-ambiguous; see ``ssr_lightning.inference.LearnedDepth``)."""
        return self.model(image)

    # --- batch plumbing -----------------------------------------------------------------------------------------
    @staticmethod
    def _pair(batch: dict[str, Any], kind: InputKind) -> tuple[Tensor, Tensor]:
        """(image, target depth at the image's size) for one input kind."""
        if "depth" not in batch:
            raise ValueError(
                "DepthModule needs GT depth: use the embedded data or HR folders with depth files "
                "(data.dataset: embedded/folder), not paired LR/HR folders."
            )
        image = batch[kind]
        depth_lr = batch.get("depth_lr")
        if kind == "lr" and depth_lr is not None and depth_lr.shape[-2:] == image.shape[-2:]:
            return image, depth_lr  # the data module's exact LR sampling of the GT depth
        return image, resize_depth(batch["depth"], image.shape[-2:])

    @staticmethod
    def _valid(batch: dict[str, Any], n: int, device: torch.device) -> Tensor:
        """Per-sample bool: the sample carries real depth (folders without depth files get a 0.5 placeholder)."""
        has = batch.get("has_depth")
        if has is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        return torch.as_tensor(has, device=device).reshape(n).bool()

    # --- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        losses = []
        for kind in self.kinds:
            image, target = self._pair(batch, kind)
            pred = self(image)
            valid = self._valid(batch, image.shape[0], image.device).float()
            per = ssi_loss(
                pred, target, kind=hp.loss, grad_weight=hp.grad_weight, grad_scales=hp.grad_scales,
                align=hp.get("alignment", "scale_shift") == "scale_shift",
            )
            # masked mean rather than indexing: the graph (and DDP's gradient sync) survives a batch without depth
            kind_loss = (per * valid).sum() / valid.sum().clamp_min(1.0)
            self.log(f"train/loss_{kind}", kind_loss, batch_size=image.shape[0])
            losses.append(kind_loss)
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["hr"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor, Tensor]]]:
        """Per-sample metrics ``{absrel_<kind>, delta1_<kind>, absrel, delta1}`` and (image, target, pred) per kind."""
        metrics: dict[str, Tensor] = {}
        outputs: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for kind in self.kinds:
            image, target = self._pair(batch, kind)
            pred = self(image)
            for name, value in aligned_depth_metrics(pred, target).items():
                metrics[f"{name}_{kind}"] = value
            outputs[kind] = (image, target, pred)
        for name in ("absrel", "delta1"):
            metrics[name] = torch.stack([metrics[f"{name}_{k}"] for k in self.kinds]).mean(dim=0)
        return metrics, outputs

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        metrics, outputs = self._evaluate(batch)
        valid = self._valid(batch, batch["hr"].shape[0], batch["hr"].device)
        if not bool(valid.any()):
            return
        n = int(valid.sum())
        for name, value in metrics.items():
            self.log(f"val/{name}", value[valid].mean(), prog_bar=name in ("absrel", "delta1"), batch_size=n,
                     sync_dist=True)
        if batch_idx == 0:
            self._log_images(outputs)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        metrics, _ = self._evaluate(batch)
        valid = self._valid(batch, batch["hr"].shape[0], batch["hr"].device)
        if not bool(valid.any()):
            return
        names = batch.get("name")
        keep = valid.nonzero().flatten().tolist()
        self.record_test({k: v[valid] for k, v in metrics.items()},
                         [names[i] for i in keep] if names is not None else None)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Normalised depth (project convention) of every available input kind: ``depth_lr``/``depth_hr``."""
        return {f"depth_{kind}": normalize_depth_map(self(batch[kind])) for kind in ("lr", "hr") if kind in batch}

    # --- images -------------------------------------------------------------------------------------------------
    def _log_images(self, outputs: dict[str, tuple[Tensor, Tensor, Tensor]]) -> None:
        """image | GT depth | prediction aligned to the GT (same colour scale), one grid per input kind."""
        n = self.fit_args.num_log_images
        for kind, (image, target, pred) in outputs.items():
            aligned, _, _ = align_scale_shift(pred[:n], target[:n])
            columns = [Panel(kind.upper(), image[:n]),
                       Panel.map("GT depth", target[:n], "viridis", 0.0, 1.0, "0 = near, 1 = far"),
                       Panel.map("prediction (aligned)", aligned.clamp(0, 1), "viridis", 0.0, 1.0, "0 = near, 1 = far")]
            self.log_grid(f"val/{kind}|gt_depth|pred_depth", columns, max_rows=n)
