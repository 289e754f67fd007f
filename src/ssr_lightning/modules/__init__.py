"""One LightningModule per SSR stage (optimiser, losses, logging); networks live in `ssr_lightning.networks`."""

from ssr_lightning.modules.base import StageModule
from ssr_lightning.modules.dkenet_module import DKENetModule

__all__ = ["StageModule", "DKENetModule"]
