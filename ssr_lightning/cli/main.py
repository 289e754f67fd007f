"""The `ssr` command: LightningCLI over every stage module and the one SR DataModule.

`ssr fit --config configs/dkenet.yaml` trains; `validate`, `test` and `predict` evaluate. Typed constructor
signatures are the schema, so `ssr fit --help` and `ssr fit --model DKENetModule --help` list every option.

Additions to the stock LightningCLI:
- a run folder `<root>/<name>/version_N` with TensorBoard logs, checkpoints and the resolved `config.yaml`
  (`--name` picks `<name>`, default the stage's own name; `--root`, or `--trainer.default_root_dir`, picks `<root>`);
- `--ckpt_path last` resumes the newest version's `last.ckpt` (falling back, with a message, to the
  `last.prev.ckpt` kept beside it when `last.ckpt` is corrupt), logging into the same version folder;
- resuming with model options that differ from the run's `config.yaml` is refused before anything is written;
  other differences (trainer, data) are recorded in `config_resume_N.yaml`, never over `config.yaml`;
- a `fit` that fails before its first step leaves no empty `version_N` behind;
- `data.scale` is linked to the network's `model.init_args.net.init_args.scale` (and to `model.init_args.scale` of the
  stages that have one: depth, VAE, SVKR);
- with `--ckpt_path`, the checkpoint's hyperparameters rebuild the trained model (read with `weights_only=True`,
  refused with a clear message when the checkpoint belongs to another stage), but model options given explicitly
  on the command line still win (test-time switches such as `--model.init_args.conditions.source svkr`).

- `--name` is one folder name (`files.check_name`); a fit holds a lock on its run folder `<root>/<name>`, so a second
  fit of the same run is refused (naming the holder's pid) instead of interleaving checkpoints;
- config files are read through `files.load_yaml` (bounded, named on every error); an unknown option is one line
  with a "did you mean" suggestion.

Usage errors (bad options, missing or foreign checkpoints, a refused resume, a run folder that cannot be written or is
in use) end with one line naming the file or option and exit status 2; failed work (divergence, a full disk, an
exception while training) exits with status 1, the first two in one line.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import shutil
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace, set_loader, set_parsing_settings
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.utilities import rank_zero_info

from ssr_lightning.cli.parsing import (
    check_config_files,
    explain_parse_error,
    explicit_model_keys,
    option_names,
    yaml_loader,
)
from ssr_lightning.data import DataError, SRDataModule
from ssr_lightning.diffusion.config import SamplingError
from ssr_lightning.files import (
    YAMLFileError,
    check_name,
    file_lock,
    load_yaml,
    unwritable,
)
from ssr_lightning.inference.checkpoints import (
    LAST,
    PREVIOUS,
    CheckpointError,
    find_checkpoint,
    read_checkpoint,
)
from ssr_lightning.inference.legacy import upgrade_options
from ssr_lightning.modules.checkpointing import TrainingError
from ssr_lightning.registry import PACKAGE, STAGES, stage_of_module

_TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_WRITE_ERRNOS = _FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}  # reported in one line, exit 1
RUN_LOCK = ".ssr_fit.lock"  # in <root>/<name>: held by the fit that writes there, with its pid


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit status 2."""


def find_last_checkpoint(root: str | os.PathLike, name: str) -> tuple[Path, int] | None:
    """The newest version's ``last.ckpt`` (or, where a kill left none, its ``last.prev.ckpt``) of run ``root/name``
    (the checkpoint policy's ``last``), with its version."""
    ckpt = find_checkpoint(name, root, "last")
    if ckpt is None:
        return None
    return ckpt, int(ckpt.parent.parent.name.split("_", 1)[1])


def readable_last(ckpt: Path) -> Path:
    """The version's ``last.ckpt`` if it reads as a checkpoint, else the ``last.prev.ckpt`` beside it (with a message
    saying why), else UsageError."""
    last, prev = ckpt.with_name(LAST), ckpt.with_name(PREVIOUS)
    problem = f"{last}: missing"
    if last.is_file():
        try:
            read_checkpoint(last)
            return last
        except CheckpointError as err:
            problem = str(err)
    try:
        read_checkpoint(prev)
    except (CheckpointError, FileNotFoundError):
        raise UsageError(f"{problem} (and no readable {prev.name} beside it): resume from another checkpoint with "
                         "--ckpt_path PATH or start a new run without --ckpt_path") from None
    why = ("is missing" if not last.is_file() else "holds non-finite weights" if "not finite" in problem
           else "is corrupt")
    rank_zero_info(f"{last} {why}; resuming from the previous checkpoint {prev} instead")
    return prev


def _stage_of(model_cfg: Namespace | None) -> str | None:
    """The checkpoint stage of the configured LightningModule class (its ``stage`` attribute), if it writes
    checkpoints of its own."""
    class_path = str(getattr(model_cfg, "class_path", "") or "")
    if not class_path.startswith(PACKAGE):  # never import a class outside the package
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        stage = getattr(importlib.import_module(module), name).stage
    except (ImportError, AttributeError):
        return None
    return stage if stage in STAGES and STAGES[stage].weights else None


def _stage_name(model_cfg: Namespace | None) -> str:
    """The default run name: the registered stage of the module class (``DKENetModule`` → ``dkenet``)."""
    class_path = str(getattr(model_cfg, "class_path", "") or "")
    short = class_path.rsplit(".", 1)[-1] or "run"
    found = stage_of_module(short)
    return found.name if found is not None else short.removesuffix("Module").lower() or "run"


def upgrade_model_section(model: Any) -> Any:
    """A run config's ``model`` section (``class_path``/``init_args``) of an earlier format in the current one (the
    network's arguments under ``net``, renamed options; ``inference/legacy.py``)."""
    if not isinstance(model, dict) or not isinstance(model.get("init_args"), dict):
        return model
    found = stage_of_module(str(model.get("class_path", "")).rsplit(".", 1)[-1])
    if found is None:
        return model
    return {**model, "init_args": upgrade_options(found.name, dict(model["init_args"]))}


def _plain(value: Any) -> Any:
    """A config value as comparable plain data (Namespaces → dicts, tuples → lists)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def _differences(a: Any, b: Any, prefix: str = "", new_ok: set[str] | None = None) -> list[str]:
    """Differences ``a -> b``; a key ``b`` has and ``a`` lacks is one only if it is not in ``new_ok`` (options added
    to the code after ``a`` was written, left at their defaults, which reproduce the old behaviour)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else key
            if key not in a and new_ok is not None and path in new_ok:
                continue
            out += _differences(a.get(key), b.get(key), path, new_ok)
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def _leaf_paths(d: Any, prefix: str = "") -> set[str]:
    if not isinstance(d, dict):
        return {prefix}
    return {p for k, v in d.items() for p in _leaf_paths(v, f"{prefix}.{k}" if prefix else k)} | {prefix}


def _clear(lock: Path) -> None:
    with contextlib.suppress(OSError):
        if lock.is_file():  # a failed fresh fit removes its run folder, lock included
            lock.write_text("")


class RunConfigCallback(SaveConfigCallback):
    """Saves the resolved config as the run's ``config.yaml``; a resumed run never replaces it.

    On resume an identical config is not written again; a differing one (trainer, data; model differences are
    refused earlier) goes to ``config_resume_N.yaml``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = Path(trainer.log_dir or ".")  # every rank asks: log_dir broadcasts
        if trainer.is_global_zero:
            self._save(log_dir)
        self.already_saved = trainer.strategy.broadcast(True)

    def _save(self, log_dir: Path) -> None:
        path = log_dir / self.config_filename
        if path.is_file():
            text = self.parser.dump(self.config, skip_none=False)
            with contextlib.suppress(YAMLFileError):  # an unreadable config.yaml is kept, this one goes beside it
                if load_yaml(path) == load_yaml(path, text):
                    return
            n = 1
            while (log_dir / f"config_resume_{n}.yaml").exists():
                n += 1
            path = log_dir / f"config_resume_{n}.yaml"
            rank_zero_info(f"the run's config.yaml is kept; this resume's config differs and goes to {path.name}")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)


class SSRCLI(LightningCLI):
    """LightningCLI with SSR's run-folder, resume and argument-link conventions."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="Run name: logs, checkpoints and config land in <root>/<name>/version_N (default: the stage name).",
        )
        parser.add_argument("--root", type=str | None, default=None,
                            help="Folder that holds the run folders (default: --trainer.default_root_dir, else runs).")
        # the network's scale, and the module's own where a stage has one (depth, VAE, SVKR); a link whose target
        # the configured class lacks is left out by jsonargparse
        parser.link_arguments("data.scale", "model.init_args.net.init_args.scale")
        parser.link_arguments("data.scale", "model.init_args.scale")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # errors reach parse_arguments, which makes them one line
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: object) -> None:
        self._cli_args = [] if isinstance(args, (dict, Namespace)) else [str(a) for a in (sys.argv[1:] if args is None else args)]
        try:
            check_config_files(self._cli_args)
        except YAMLFileError as err:
            raise UsageError(str(err)) from None
        try:
            super().parse_arguments(parser, args)  # type: ignore[arg-type]
        except ArgumentError as err:
            raise UsageError(self._explain(str(err))) from None

    def _explain(self, message: str) -> str:
        sub = next((a for a in self._cli_args if a in self.subcommands()), "")
        sub_parser = getattr(self, "_subcommand_parsers", {}).get(sub)
        return explain_parse_error(message, sub or "fit", option_names(sub_parser) if sub_parser else [], self._cli_args)

    def _run_name_and_root(self, cfg: Namespace) -> tuple[str, str]:
        """The run folder `<root>/<name>`: `--name` (else the stage name) under `--root` or the trainer's root dir."""
        if cfg.get("name"):
            try:
                check_name(cfg.get("name"), "--name")
            except ValueError as err:
                raise UsageError(str(err)) from None
        name = cfg.get("name") or _stage_name(cfg.get("model"))
        root, trainer_root = cfg.get("root"), (cfg.get("trainer") or Namespace()).get("default_root_dir")
        if root and trainer_root and Path(root).resolve() != Path(trainer_root).resolve():
            raise UsageError(f"--root {root} and --trainer.default_root_dir {trainer_root} disagree: give one of them")
        return name, str(root or trainer_root or "runs")

    def _resolve_ckpt_path(self) -> None:
        """`--ckpt_path last` → the newest last.ckpt of this run name; a missing file is an error, not a fresh run."""
        self._resume_version: int | None = None
        self._set_aside: Path | None = None
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        name, root = self._run_name_and_root(cfg)
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path == "last":
            found = find_last_checkpoint(root, name)
            if found is None:
                if sub != "fit":
                    raise UsageError(f"--ckpt_path last: no last.ckpt under {Path(root) / name}/version_*/checkpoints. "
                                     "Train the stage first, or pass --ckpt_path PATH/TO/file.ckpt")
                rank_zero_info(f"--ckpt_path last: nothing to resume under {Path(root) / name}; starting fresh.")
                cfg.ckpt_path = None
            else:
                ckpt, self._resume_version = found
                ckpt = readable_last(ckpt)
                if ckpt.name == PREVIOUS and ckpt.with_name(LAST).is_file() and sub == "fit":
                    self._set_aside = ckpt.with_name(LAST)
                rank_zero_info(f"Resuming from {ckpt}")
                cfg.ckpt_path = str(ckpt)
        elif ckpt_path and not Path(ckpt_path).is_file() and ckpt_path not in ("best", "hpc"):
            raise UsageError(f"--ckpt_path {ckpt_path}: no such checkpoint file. Give the path of a .ckpt "
                             "(runs/<name>/version_N/checkpoints/last.ckpt) or 'last' to resume the newest run")

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
        try:
            ckpt = read_checkpoint(ckpt_path, _stage_of(self.config[sub].get("model")))
        except CheckpointError as err:
            raise UsageError(f"--ckpt_path {err}") from None
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except ArgumentError as err:
            raise UsageError(f"--ckpt_path {ckpt_path}: its hyper-parameters do not fit this command: "
                             f"{self._explain(str(err))}") from None

    def _check_resume_model(self, cfg: Namespace, run_dir: Path) -> None:
        """Refuse to resume a run with model options its checkpoints were not trained with."""
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            return
        try:
            old_cfg = load_yaml(saved) or {}
        except YAMLFileError as err:
            raise UsageError(f"cannot resume {run_dir}: {err}") from None
        # the scales are link targets (from data.scale): compare data.scale instead
        old = {"model": upgrade_model_section(_plain(old_cfg.get("model") or {})),
               "data.scale": (old_cfg.get("data") or {}).get("scale")}
        new = {"model": _plain(cfg.get("model")), "data.scale": (cfg.get("data") or Namespace()).get("scale")}
        for side in (old, new):
            init = side["model"].get("init_args") or {}
            init.pop("scale", None)
            ((init.get("net") or {}).get("init_args") or {}).pop("scale", None)
        # options the old config.yaml predates pass unless the command line sets them
        explicit = {f"model.init_args.{k}" for k in explicit_model_keys(getattr(self, "_cli_args", []))}
        new_ok = {p for p in _leaf_paths(new) if not any(e == p or e.startswith(p + ".") or p.startswith(e + ".")
                                                           for e in explicit)}
        diff = _differences(_plain(old), new, new_ok=new_ok)
        if diff:
            raise UsageError(f"cannot resume {run_dir}: the model options differ from its config.yaml "
                             f"({'; '.join(diff[:4])}). Resume with the run's own options, or start a new run "
                             "(another --name, no --ckpt_path)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name, root = self._run_name_and_root(cfg)
        version = getattr(self, "_resume_version", None)
        if self.subcommand == "fit" and version is not None:
            self._check_resume_model(cfg, Path(root) / name / f"version_{version}")
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

    def _run_subcommand(self, subcommand: str) -> None:
        with contextlib.ExitStack() as held:
            self._claim_run_folder(subcommand, held)
            try:
                super()._run_subcommand(subcommand)
            except BaseException:
                self._remove_empty_run(subcommand)
                raise

    def _claim_run_folder(self, subcommand: str, held: contextlib.ExitStack) -> None:
        """Before anything is written: the run folder must be writable, and a fit locks it (``RUN_LOCK``) for as long
        as it runs, so a second fit of the same run is refused instead of interleaving checkpoints and logs."""
        cfg = self.config[subcommand]
        name, root = self._run_name_and_root(cfg)
        folder = Path(root) / (name if subcommand == "fit" else f"{name}_{subcommand}")
        version = getattr(self, "_resume_version", None) if subcommand == "fit" else None
        folders = [folder] + ([folder / f"version_{version}", folder / f"version_{version}" / "checkpoints"]
                              if version is not None else [])
        for path in folders:
            problem = unwritable(path)
            if problem:
                raise UsageError(f"cannot write the run folder {path} ({problem}): make it writable, or pass another "
                                 "--root")
        if subcommand != "fit":
            return
        lock = folder.absolute() / RUN_LOCK
        if not held.enter_context(file_lock(lock, blocking=False)):
            try:
                pid = lock.read_text().strip()
            except OSError:
                pid = ""
            holder = f" (pid {pid})" if pid.isdigit() else ""
            raise UsageError(f"{folder} is in use by another `ssr fit`{holder}: wait for it to finish, or train under "
                             "another --name")
        lock.write_text(f"{os.getpid()}\n")
        held.callback(_clear, lock)  # released: no holder
        if version is not None:  # a resume: temporary files of a save that was killed are stale now
            for stale in (folder / f"version_{version}" / "checkpoints").glob(".*.tmp.ckpt"):
                stale.unlink(missing_ok=True)
        broken = getattr(self, "_set_aside", None)
        if broken is not None and broken.is_file():  # unusable: it must not become the next last.prev.ckpt
            kept = broken.with_name(f"{LAST}.unusable")
            os.replace(broken, kept)
            rank_zero_info(f"{broken} kept as {kept.name}: the next last.prev.ckpt is the checkpoint resumed from")

    def _remove_empty_run(self, subcommand: str) -> None:
        """A fit that failed before its first step (no checkpoint, step 0) leaves no version folder behind."""
        trainer = getattr(self, "trainer", None)
        if subcommand != "fit" or trainer is None or getattr(self, "_resume_version", None) is not None:
            return
        log_dir = Path(trainer.log_dir) if trainer.log_dir else None
        if (log_dir is None or not log_dir.is_dir() or trainer.global_step > 0
                or any(log_dir.glob("checkpoints/*.ckpt"))):
            return
        shutil.rmtree(log_dir, ignore_errors=True)
        for parent in (log_dir.parent, log_dir.parent.parent):  # <root>/<name>, then <root>, when left empty
            if parent.is_dir() and parent.resolve() != Path.cwd().resolve() and not any(
                    p.name != RUN_LOCK for p in parent.iterdir()):
                (parent / RUN_LOCK).unlink(missing_ok=True)
                parent.rmdir()
        print(f"ssr: removed {log_dir}: the run failed before its first step", file=sys.stderr)


def main(args: list[str] | None = None) -> None:
    """Entry point of the `ssr` console script (`ssr sr ...` is dispatched to `ssr_lightning.cli.sr`)."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "sr":
        # A plain user command, not a LightningCLI subcommand: dispatched before LightningCLI parses anything.
        from ssr_lightning.cli.sr import main as sr_main

        sys.exit(sr_main(list(argv[1:])))
    # dataclass fields (DegradationConfig, KernelConfig) document themselves with attribute docstrings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    set_loader("yaml", yaml_loader, (yaml.YAMLError, YAMLFileError))
    try:
        SSRCLI(
            LightningModule,
            SRDataModule,
            subclass_mode_model=True,
            save_config_callback=RunConfigCallback,
            parser_kwargs={"default_env": False},
            args=args,
            auto_configure_optimizers=False,
            seed_everything_default=0,
        )
    except (UsageError, CheckpointError, DataError) as err:
        print(f"ssr {argv[0] if argv else ''}: {err}".replace("  ", " "), file=sys.stderr)
        sys.exit(2)
    except ValueError as err:  # jsonargparse wraps what SamplingConfig's check says while building the module
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, SamplingError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"ssr {argv[0] if argv else ''}: {cause.spelled(lambda f: f'model.init_args.sampling.{f}')}",
              file=sys.stderr)
        sys.exit(2)
    except TrainingError as err:
        print(f"ssr {argv[0] if argv else ''}: {err}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # a full disk or a file system that turned read-only mid-run: one line, failed work
        if err.errno not in _WRITE_ERRNOS or not err.filename:
            raise
        advice = ("free space, then run again (--ckpt_path last resumes a fit)" if err.errno in _FULL_ERRNOS
                  else "fix its permissions or pass another --root, then run again")
        print(f"ssr {argv[0] if argv else ''}: {err.filename}: {err.strerror}: {advice}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
