"""One LightningModule per SSR stage (optimiser, losses, logging); networks live in `ssr_lightning.networks`."""

from ssr_lightning.modules.base import StageModule
from ssr_lightning.modules.depth_module import DepthModule
from ssr_lightning.modules.dkenet_module import DKENetModule
from ssr_lightning.modules.nbsr_module import NBSRModule
from ssr_lightning.modules.vae_module import VAEModule
from ssr_lightning.modules.diffusion_module import SSRDiffusionModule
from ssr_lightning.modules.svkr_module import SVKRModule

__all__ = ["StageModule", "DKENetModule", "DepthModule", "NBSRModule", "SVKRModule", "VAEModule", "SSRDiffusionModule"]
