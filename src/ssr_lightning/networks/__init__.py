"""Stage networks of SSR as plain ``nn.Module`` s (no Lightning imports here; see docs/ARCHITECTURE.md)."""

from .blocks import SFT, DABlock, MAConv, split_sizes
from .config import ConfigMixin, init_args, load_network, save_network
from .dkenet import DKENet

__all__ = [
    "SFT",
    "ConfigMixin",
    "DABlock",
    "DKENet",
    "MAConv",
    "init_args",
    "load_network",
    "save_network",
    "split_sizes",
]
