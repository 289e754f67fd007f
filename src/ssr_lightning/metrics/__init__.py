"""Metrics shared by the stages and the reports."""

from ssr_lightning.metrics.image import kernel_l1, psnr

__all__ = ["kernel_l1", "psnr"]
