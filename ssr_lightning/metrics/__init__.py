"""Metrics shared by the stages and the reports."""

from ssr_lightning.metrics.depth import (
    abs_rel,
    align_scale_shift,
    aligned_depth_metrics,
    delta1,
    ssi_loss,
)
from ssr_lightning.metrics.image import (
    color_shift,
    kernel_l1,
    psnr,
    psnr_y,
    rgb_to_y,
    ssim,
    ssim_y,
)

__all__ = ["color_shift", "kernel_l1", "psnr", "psnr_y", "rgb_to_y", "ssim", "ssim_y"]
__all__ += ["abs_rel", "align_scale_shift", "aligned_depth_metrics", "delta1", "ssi_loss"]
from ssr_lightning.metrics.iqa import (
    HIGHER_IS_BETTER,
    PAPER_METRICS,
    MetricSuite,
    missing_weights,
)

__all__ += ["HIGHER_IS_BETTER", "PAPER_METRICS", "MetricSuite", "missing_weights"]
