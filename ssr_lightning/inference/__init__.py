"""Inference without Lightning: the checkpoint policy and loader, depth estimators, SVKR and the SR pipeline."""

from ssr_lightning.inference.checkpoints import (
    STAGES,
    CheckpointError,
    build_model,
    find_checkpoint,
    load_model,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.inference.depth import (
    DepthEstimator,
    GroundTruthDepth,
    LearnedDepth,
    build_depth_estimator,
)
from ssr_lightning.inference.pipeline import SRResult, SSRPipeline
from ssr_lightning.inference.svkr import SVKR, SVKRConfig, SVKRResult, load_depth

__all__ = [
    "STAGES", "SVKR", "CheckpointError", "DepthEstimator", "GroundTruthDepth", "LearnedDepth", "SRResult",
    "SSRPipeline", "SVKRConfig", "SVKRResult", "build_depth_estimator", "build_model", "find_checkpoint",
    "load_depth", "load_model", "read_checkpoint", "resolve_checkpoint",
]
