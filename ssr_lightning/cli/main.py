"""The `ssr` command: LightningCLI over every stage module and the one SR DataModule.

`ssr fit --config configs/dkenet.yaml` trains; `validate`, `test` and `predict` evaluate. Typed constructor
signatures are the schema, so `ssr fit --help` and `ssr fit --model DKENetModule --help` list every option.

Additions to the stock LightningCLI:
- a run folder `runs/<name>/version_N` with TensorBoard logs, checkpoints and the resolved `config.yaml`
  (`--name` picks `<name>`; the default is the stage's own name);
- `--ckpt_path last` finds the newest `last.ckpt` of that run name and resumes it, logging into the same
  version folder, so a killed run continues where it stopped;
- `data.scale` is linked to `model.init_args.scale`;
- with `--ckpt_path`, the checkpoint's hyperparameters rebuild the trained model (stock behaviour), but model
  options given explicitly on the command line still win (test-time switches such as
  `--model.init_args.condition_source svkr`).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from ssr_lightning.data import SRDataModule
from ssr_lightning.inference.checkpoints import STAGES, find_checkpoint, read_checkpoint

_TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def find_last_checkpoint(root: str | os.PathLike, name: str) -> tuple[Path, int] | None:
    """The newest version's ``last.ckpt`` of run ``root/name`` (the checkpoint policy's ``last``), with its version."""
    ckpt = find_checkpoint(name, root, "last")
    if ckpt is None:
        return None
    return ckpt, int(ckpt.parent.parent.name.split("_", 1)[1])


def explicit_model_keys(args: list[str]) -> list[str]:
    """Model options set on the command line (`--model.init_args.a.b X`, `--model.a=X`) as `a.b` keys."""
    keys: list[str] = []
    for arg in args:
        if not arg.startswith("--model."):
            continue
        key = arg[len("--model."):].split("=", 1)[0].removeprefix("init_args.")
        if key and key not in ("class_path", "help") and key not in keys:
            keys.append(key)
    return keys


def _run_name_and_root(cfg: Namespace) -> tuple[str, str]:
    """The run folder `<root>/<name>` of a subcommand's config (`--name`, else the stage name; `--root`)."""
    return cfg.get("name") or _stage_name(cfg.get("model")), cfg.get("root") or "runs"


def _stage_of(model_cfg: Namespace | None) -> str | None:
    """The checkpoint stage of the configured LightningModule class (its ``stage`` attribute), if it has one."""
    class_path = str(getattr(model_cfg, "class_path", "") or "")
    if "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        stage = getattr(importlib.import_module(module), name).stage
    except (ImportError, AttributeError):
        return None
    return stage if stage in STAGES else None


def _stage_name(model_cfg: Namespace | None) -> str:
    class_path = str(getattr(model_cfg, "class_path", "") or "")
    short = class_path.rsplit(".", 1)[-1] or "run"
    return short.removesuffix("Module").lower() or "run"


class SSRCLI(LightningCLI):
    """LightningCLI with SSR's run-folder, resume and argument-link conventions."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="Run name: logs, checkpoints and config land in <root>/<name>/version_N (default: the stage name).",
        )
        parser.add_argument("--root", type=str, default="runs", help="Folder that holds the run folders.")
        parser.link_arguments("data.scale", "model.init_args.scale")

    def parse_arguments(self, parser: LightningArgumentParser, args: object) -> None:
        self._cli_args = [] if isinstance(args, (dict, Namespace)) else [str(a) for a in (sys.argv[1:] if args is None else args)]
        super().parse_arguments(parser, args)  # type: ignore[arg-type]

    def _resolve_ckpt_path(self) -> None:
        """`--ckpt_path last` → the newest last.ckpt of this run name; a missing file is an error, not a fresh run."""
        self._resume_version: int | None = None
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        name, root = _run_name_and_root(cfg)
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path == "last":
            found = find_last_checkpoint(root, name)
            if found is None:
                if sub != "fit":
                    raise FileNotFoundError(
                        f"--ckpt_path last: no last.ckpt under {Path(root) / name}/version_*/checkpoints. "
                        "Train the stage first, or pass --ckpt_path PATH/TO/file.ckpt."
                    )
                rank_zero_info(f"--ckpt_path last: nothing to resume under {Path(root) / name}; starting fresh.")
                cfg.ckpt_path = None
            else:
                ckpt, self._resume_version = found
                rank_zero_info(f"Resuming from {ckpt}")
                cfg.ckpt_path = str(ckpt)
        elif ckpt_path and not Path(ckpt_path).is_file() and ckpt_path not in ("best", "hpc"):
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path!r}: no such checkpoint file. Give the path of a .ckpt "
                f"(runs/<name>/version_N/checkpoints/last.ckpt) or 'last' to resume the newest run."
            )

    def _parse_ckpt_path(self) -> None:
        self._resolve_ckpt_path()
        # Stock LightningCLI overwrites the whole model config with the checkpoint's hyperparameters, silently
        # dropping command-line overrides; re-apply the ones the user typed.
        sub = self.config.get("subcommand")
        before = self.config.clone() if sub else None
        self._load_ckpt_hparams()
        if before is None:
            return
        for key in explicit_model_keys(getattr(self, "_cli_args", [])):
            full = f"{sub}.model.init_args.{key}"
            try:
                value = before[full]
            except KeyError:
                continue
            if self.config.get(full) != value:
                rank_zero_info(f"--model.init_args.{key}: the command line's {value!r} overrides the checkpoint's")
                self.config[full] = value

    def _load_ckpt_hparams(self) -> None:
        """Stock ``_parse_ckpt_path`` through the project's checkpoint reader: weights_only, first-format checkpoints
        upgraded, and a checkpoint of another stage refused with a message naming both stages."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = read_checkpoint(ckpt_path, _stage_of(self.config[sub].get("model")))
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing the hyper-parameters of {ckpt_path} failed (see above)\n")
            raise

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name, root = _run_name_and_root(cfg)
        version = getattr(self, "_resume_version", None)
        if self.subcommand != "fit":
            # evaluation gets its own folder beside the training versions, so it never overwrites their config
            name, version = f"{name}_{self.subcommand}", None
        trainer = cfg.trainer
        if trainer.get("logger") in (None, True):
            trainer.logger = Namespace(
                class_path=_TENSORBOARD,
                init_args=Namespace(save_dir=root, name=name, version=version, default_hp_metric=False),
            )

    def before_fit(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")


def main(args: list[str] | None = None) -> None:
    """Entry point of the `ssr` console script (`ssr sr ...` is dispatched to `ssr_lightning.cli.sr`)."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "sr":
        # A plain user command, not a LightningCLI subcommand: dispatched before LightningCLI parses anything.
        from ssr_lightning.cli.sr import main as sr_main

        sys.exit(sr_main(list(argv[1:])))
    # dataclass fields (DegradationConfig, KernelConfig) document themselves with attribute docstrings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    SSRCLI(
        LightningModule,
        SRDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
        args=args,
        auto_configure_optimizers=False,
        seed_everything_default=0,
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
