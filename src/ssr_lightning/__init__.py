"""ssr_lightning: a Lightning experiment suite reproducing SSR (depth-informed spatially variant kernels + AMF latent diffusion) for blind super-resolution."""

__version__ = "0.1.0"
