"""Degradation engine: depth-driven spatially variant kernels, blur + x s downsampling in one pass, noise, JPEG.

No Lightning imports here: the DataModule calls :class:`Degrader` inside ``on_after_batch_transfer``.
"""

from .blur import KernelBasis, blur_downsample, blur_downsample_invariant
from .degrader import DegradationConfig, Degrader
from .kernels import (
    KERNEL_SIZE,
    KernelConfig,
    anisotropic_covariance,
    defocus_sigma,
    gaussian_kernels,
    sample_kernel_field,
)
from .noise import add_noise, jpeg
from .resize import bicubic_upsample, imresize

__all__ = [
    "KERNEL_SIZE",
    "DegradationConfig",
    "Degrader",
    "KernelBasis",
    "KernelConfig",
    "add_noise",
    "anisotropic_covariance",
    "bicubic_upsample",
    "blur_downsample",
    "blur_downsample_invariant",
    "defocus_sigma",
    "gaussian_kernels",
    "imresize",
    "jpeg",
    "sample_kernel_field",
]
