"""Console commands, all on jsonargparse: ``ssr`` (LightningCLI: fit/validate/test/predict, and ``ssr sr``),
``ssr-ablate``, ``ssr-frontend`` and ``ssr-kernel-basis``; each has ``--config``, ``--print_config`` and ``--help``."""
