"""One thin LightningModule per SSR stage (optimiser, schedule, losses, logging, checkpoint hooks).

The networks they train live in ``ssr_lightning.networks`` and ``ssr_lightning.diffusion`` (no Lightning there).
"""

from ssr_lightning.modules.base import FitConfig, StageModule
from ssr_lightning.modules.cmos_module import CMOSModule  # noqa: F401 (the CMOS peer row)
from ssr_lightning.modules.depth_module import DepthModule
from ssr_lightning.modules.diffusion_module import ConditionConfig, SSRDiffusionModule
from ssr_lightning.modules.dkenet_module import DKENetModule
from ssr_lightning.modules.nbsr_module import NBSRModule
from ssr_lightning.modules.svkr_module import SVKRModule
from ssr_lightning.modules.vae_module import VAEModule

__all__ = [
    "ConditionConfig", "DKENetModule", "DepthModule", "FitConfig", "NBSRModule", "SSRDiffusionModule", "SVKRModule",
    "StageModule", "VAEModule",
]
