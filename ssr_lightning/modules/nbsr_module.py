"""NBSRModule: trains the kernel-conditioned non-blind SR network NBSR of SVKR (paper §3.2, docs/DESIGN.md §3)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.inference.checkpoints import (
    load_model,
    read_checkpoint,
    require_file,
)
from ssr_lightning.metrics import psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import FitConfig, StageModule, as_network
from ssr_lightning.networks.kernel_codec import code_std, load_or_fit_basis
from ssr_lightning.networks.nbsr import KernelConditionedSR
from ssr_lightning.visualize import Panel

__all__ = ["NBSRModule"]

KernelSource = Literal["gt", "dkenet", "none"]


class NBSRModule(StageModule):
    """Non-blind SR stage: ``(LR, kernel field) -> SR``, the kernel field entering as a PCA code map.

    ``self.model`` is the :class:`KernelConditionedSR` it is given (``net``): NBSR plus its :class:`KernelCodec`, whose
    basis comes from the artifact of ``ssr_lightning.networks.kernel_codec`` (fitted and saved on first use when
    missing) and is kept in buffers, so checkpoints carry it. Trained with GT kernels (``kernel_source="gt"``) or
    fine-tuned on the estimates of a frozen, trained DKENet (``"dkenet"``). Loss: L1 between SR and HR.
    Validation/test: PSNR/SSIM on Y with ``scale`` px cropped.
    """

    monitor = "val/psnr_y"
    monitor_mode = "max"

    def __init__(
        self,
        net: KernelConditionedSR,
        kernel_source: KernelSource = "gt",
        dkenet_ckpt: str | None = None,
        init_ckpt: str | None = None,
        basis_path: str | None = None,
        basis_samples: int = 20000,
        fit: FitConfig = FitConfig(),  # noqa: B008 (never mutated)
    ) -> None:
        """
        Args:
            net: The SR network (``KernelConditionedSR``: trunk sizes, code length, condition options, scale).
            kernel_source: "gt": condition on the batch's GT kernel field; "dkenet": on a frozen DKENet's estimate;
                "none": never (the zeroed code): a blind RRDB of the same size and budget, the no-kernel baseline.
            dkenet_ckpt: DKENet checkpoint (`runs/dkenet/version_N/checkpoints/best.ckpt`), for "dkenet".
            init_ckpt: NBSR checkpoint whose weights (and basis) start a new fit, e.g. the GT-kernel model that
                a "dkenet" fine-tune starts from. Loaded in `setup("fit")`, so `--ckpt_path` resuming still wins.
            basis_path: Kernel-basis artifact; None: `artifacts/kernel_basis_c{code_channels}_{key}.pt` (or under
                $SSR_ARTIFACTS). Fitted from the data's kernel distribution and saved there when missing.
            basis_samples: Kernels the basis is fitted on when it has to be fitted.
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        net = as_network(net, KernelConditionedSR)  # a class_path/init_args block (load_from_checkpoint) is built
        self.save_stage_hparams()
        if kernel_source not in ("gt", "dkenet", "none"):
            raise ValueError(f"model.init_args.kernel_source must be 'gt', 'dkenet' or 'none', got {kernel_source!r}")
        if kernel_source == "dkenet":
            # Fail at construction, before any data is built or a step is run.
            if dkenet_ckpt is None:
                raise FileNotFoundError(
                    "kernel_source='dkenet' needs dkenet_ckpt: train DKENet first "
                    "(ssr fit --config configs/dkenet.yaml) and pass its checkpoint, e.g. "
                    "--model.init_args.dkenet_ckpt runs/dkenet/version_0/checkpoints/best.ckpt"
                )
            require_file(dkenet_ckpt, "dkenet")
        self.model = net
        self._basis_checked = False
        # A plain list keeps the frozen DKENet out of this module's parameters, state_dict and train()/eval().
        self._dkenet: list[Any] = []

    # --- kernel code ------------------------------------------------------------------------------------------
    def _kernel_config(self) -> KernelConfig:
        """The kernel distribution of the attached data module's degradation, else the default one."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        deg = getattr(dm, "degradation_config", None)
        kernel = getattr(deg, "kernel", None)
        if isinstance(kernel, KernelConfig):
            return kernel
        return KernelConfig(size=self.model.config.kernel_size)

    def _ensure_basis(self) -> None:
        """Fill the codec from the artifact (fit + save it when missing) unless a checkpoint already did."""
        if self._basis_checked:
            return
        codec = self.model.codec
        if not bool(codec.ready):
            cfg = self._kernel_config()
            k = self.model.config.kernel_size
            if cfg.size != k:
                raise ValueError(f"data kernels are {cfg.size}x{cfg.size}; model.init_args.net.init_args.kernel_size "
                                 f"is {k}: make them agree")
            basis = load_or_fit_basis(self.hparams.basis_path, cfg, self.model.config.code_channels,
                                      n_samples=self.hparams.basis_samples, log=rank_zero_info)
            codec.set_basis(basis, code_std(basis, cfg))
        self._basis_checked = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A restored checkpoint carries its own basis: re-read the flag on next use instead of trusting the cache.
        self._basis_checked = False

    def encode(self, kernel: Tensor) -> Tensor:
        """Kernel field (B, k², h, w) -> whitened code map (B, code_channels, h, w)."""
        self._ensure_basis()
        return self.model.encode(kernel)

    def forward(self, lr: Tensor, kernel: Tensor | None = None) -> Tensor:
        """SR (B, 3, s·h, s·w) of ``lr`` under the kernel field (B, k², h, w); None = zero code (mean kernel)."""
        if kernel is not None:
            self._ensure_basis()
        return self.model(lr, kernel)

    # --- kernel sources ---------------------------------------------------------------------------------------
    def _dkenet_model(self) -> Any:
        if not self._dkenet:
            self._dkenet.append(load_model(self.hparams.dkenet_ckpt, "dkenet"))
            rank_zero_info(f"NBSR conditions on DKENet estimates from {self.hparams.dkenet_ckpt} (frozen)")
        est = self._dkenet[0]
        return est.to(self.device)

    def _kernel(self, batch: dict[str, Any]) -> Tensor | None:
        if self.hparams.kernel_source == "none":
            return None
        if self.hparams.kernel_source == "dkenet":
            with torch.no_grad():
                ke = self._dkenet_model()
                return ke(batch["lr"], batch.get("depth_lr") if ke.use_depth else None).float()
        if "kernel" not in batch:
            raise ValueError(
                "NBSR with kernel_source='gt' needs GT kernel fields: use an HR data set (data.dataset: embedded or "
                "folder), or set model.init_args.kernel_source=dkenet with a DKENet checkpoint for paired LR/HR data."
            )
        return batch["kernel"]

    def _sr(self, batch: dict[str, Any]) -> Tensor:
        return self(batch["lr"], self._kernel(batch))

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        sr = self._sr(batch)
        loss = F.l1_loss(sr, batch["hr"])
        self.log("train/loss", loss, prog_bar=True, batch_size=sr.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        sr = self._sr(batch)
        hr, s = batch["hr"], self.model.config.scale
        metrics = {
            "psnr_y": psnr_y(sr, hr, crop_border=s),
            "ssim_y": ssim_y(sr, hr, crop_border=s),
            "psnr": psnr(sr.clamp(0, 1), hr, crop_border=s),
            "l1": (sr.float() - hr.float()).abs().mean(dim=(1, 2, 3)),
        }
        return sr, metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        sr, metrics = self._evaluate(batch)
        bs = sr.shape[0]
        for key, prog in (("psnr_y", True), ("ssim_y", True), ("psnr", False)):
            self.log(f"val/{key}", metrics[key].mean(), prog_bar=prog, batch_size=bs, sync_dist=True)
        self.log("val/loss", metrics["l1"].mean(), batch_size=bs, sync_dist=True)
        if batch_idx == 0:
            n = self.fit_args.num_log_images
            # every tile is drawn at one size with nearest interpolation: the LR column shows its pixels
            self.log_grid("val/lr|sr|hr", [Panel("LR", batch["lr"][:n]), Panel("SR", sr[:n]),
                                           Panel("HR", batch["hr"][:n])], max_rows=n, names=batch.get("name"))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._evaluate(batch)
        self.record_test({k: metrics[k] for k in ("psnr_y", "ssim_y", "psnr")}, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._sr(batch).clamp(0, 1)

    # --- hooks ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        # setup runs before Lightning restores --ckpt_path, so a resumed fine-tune keeps its own weights.
        if stage == "fit" and self.hparams.init_ckpt is not None:
            ckpt = read_checkpoint(self.hparams.init_ckpt, "nbsr")
            self.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
            self._basis_checked = False
            rank_zero_info(f"NBSR weights and kernel basis initialised from {self.hparams.init_ckpt}")

    # Resolve the basis before the first batch (after any checkpoint restore), so the "fitted" message comes first.
    def on_fit_start(self) -> None:
        self._ensure_basis()

    def on_test_start(self) -> None:
        self._ensure_basis()

    def on_predict_start(self) -> None:
        self._ensure_basis()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._ensure_basis()
        super().on_save_checkpoint(checkpoint)
