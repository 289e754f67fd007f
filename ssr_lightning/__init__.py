"""ssr_lightning: a Lightning experiment suite reproducing SSR (depth-informed spatially variant kernels + AMF latent
diffusion) for blind super-resolution. Layers: docs/ARCHITECTURE.md."""

import logging

# pyiqa pulls in bitsandbytes, which warns on import about an optional CPU kernel nobody here uses.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__version__ = "0.4.0"
