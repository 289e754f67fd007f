"""Every ``nn.Module`` of SSR (no Lightning here): DKENet, NBSR + the kernel codec, DepthNet, MiDaS/DPT, the VAE
builders, AMF, the condition encoders and the SSR UNet. Top-level networks are diffusers ``ModelMixin`` +
``ConfigMixin`` classes: ``net.config`` holds the arguments that rebuild them (``Class.from_config``)."""

from ssr_lightning.networks.blocks import SFT, DABlock, MAConv, split_sizes
from ssr_lightning.networks.cmos import CMOS  # noqa: F401 (the CMOS peer row)
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.networks.dkenet import DKENet
from ssr_lightning.networks.kernel_codec import KernelCodec
from ssr_lightning.networks.nbsr import NBSR, KernelConditionedSR
from ssr_lightning.networks.ssr_unet import SSRUNet

__all__ = ["NBSR", "SFT", "DABlock", "DKENet", "DepthNet", "KernelCodec", "KernelConditionedSR", "MAConv", "SSRUNet",
           "split_sizes"]
