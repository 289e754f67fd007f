"""What the `ssr` command says when its command line or a config file is wrong: one line, naming the file or option.

- Config files are read through :func:`ssr_lightning.files.load_yaml` (bounded size, no alias bombs, binary files
  refused, every error naming the file): :func:`check_config_files` for the files on the command line, before
  jsonargparse opens them; :func:`yaml_loader` (installed with ``jsonargparse.set_loader``) for every YAML text
  jsonargparse parses, fragments a config names included.
- :func:`explain_parse_error` turns a jsonargparse error (often dozens of lines, after a 90-line usage block) into one
  line: an unknown option gets a ``difflib`` "did you mean" (or, for an option of an earlier release, its new name),
  and the config file that set it is named.
- :func:`explicit_model_keys` lists the model options a command line sets (they beat a checkpoint's
  hyper-parameters, and a resume compares them).
- :func:`dataclass_flags` generates a command's flags from a dataclass of options (``ssr sr``'s sampling and SVKR
  flags from ``SamplingConfig`` and ``SVKRConfig``): one flag per field, its name, type and help taken from the field,
  default None (= keep the value the command starts from); :func:`flag_values` reads back the ones given.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Optional, get_type_hints

import docstring_parser
from jsonargparse import ArgumentParser, get_loader

from ssr_lightning.files import YAMLFileError, check_yaml_size, load_yaml
from ssr_lightning.inference.legacy import DIFFUSION_MOVES
from ssr_lightning.registry import PACKAGE, stage_of_module

__all__ = ["check_config_files", "dataclass_flags", "explain_parse_error", "explicit_model_keys", "flag", "flag_values",
           "option_names", "yaml_loader"]

_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_JSONARGPARSE_YAML = get_loader("yaml")
_NOISE = re.compile(r"\s*(-\s*)?(Subtypes:|Given value|Expected a <class 'NoneType'>|Errors:|"
                    r"Does not validate against any of the Union)")


def yaml_loader(stream: str, path: Any = "") -> Any:
    """jsonargparse's YAML loader, bounded: a config file (``path`` given) passes ``load_yaml`` first (its errors name
    the file), and no text expands past ``files.YAML_MAX_NODES`` values through aliases."""
    if path:
        load_yaml(str(path), stream)
    return check_yaml_size(_JSONARGPARSE_YAML(stream), path or "a config fragment")


def config_files(args: list[str]) -> list[tuple[str, str]]:
    """``(option, path)`` of the config files on a command line: ``--config X``, ``-c X`` and a group given as a
    file (``--trainer configs/trainer/debug.yaml``)."""
    found = []
    for i, arg in enumerate(args):
        option, _, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not value and i + 1 < len(args):
            value = args[i + 1]
        if option in ("--config", "-c") and value and value != "-":
            found.append(("--config", value))
        elif option.startswith("--") and value.endswith(_CONFIG_SUFFIXES) and Path(value).is_file():
            found.append((option, value))
    return found


def check_config_files(args: list[str]) -> None:
    """Read every config file of the command line through ``load_yaml``: ``YAMLFileError`` naming the option and the
    file when one is missing, binary, not YAML or too large."""
    for option, path in config_files(args):
        try:
            load_yaml(path)
        except YAMLFileError as err:
            raise YAMLFileError(f"{option} {err}") from None


def _fragment_keys(path: str) -> list[str]:
    """`a.b` keys of the model options a config fragment sets (`model: {init_args: {a: {b: X}}}`)."""
    try:
        doc = load_yaml(path) or {}
    except YAMLFileError:
        return []
    model = doc.get("model") if isinstance(doc, dict) else None
    init = (model.get("init_args") if isinstance(model, dict) else None) or {}

    def leaves(d: Any, prefix: str) -> list[str]:
        if not isinstance(d, dict) or not d:
            return [prefix] if prefix else []
        return [k for key, v in d.items() for k in leaves(v, f"{prefix}.{key}" if prefix else str(key))]

    return leaves(init, "")


def explicit_model_keys(args: list[str]) -> list[str]:
    """Model options set on the command line (`--model.init_args.a.b X`, `--model.a=X`) as `a.b` keys, and those of
    every `--config` fragment after the first config (`--config configs/ssr.yaml --config configs/diffusion/X.yaml`:
    X's options are test-time choices, the stage config's are not)."""
    keys: list[str] = []
    configs = 0
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") or arg.startswith("--config="):
            configs += 1
            path = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            found = _fragment_keys(path) if configs > 1 else []
        elif arg.startswith("--model."):
            found = [arg[len("--model."):].split("=", 1)[0].removeprefix("init_args.")]
        else:
            continue
        keys += [k for k in found if k and k not in ("class_path", "help") and k not in keys]
    return keys


def flag(field: str) -> str:
    """The command-line spelling of an option field: ``color_fix`` → ``--color-fix``."""
    return "--" + field.replace("_", "-")


def dataclass_flags(parser: ArgumentParser, cls: type, default_note: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Add one flag per field of the dataclass ``cls`` (not in ``skip``): ``--<field-name>``, typed ``T | None``,
    default None, help = the field's docstring + ``default_note``. Returns the field names."""
    docs = {p.arg_name: " ".join((p.description or "").split()) for p in docstring_parser.parse_from_object(cls).params}
    hints = get_type_hints(cls)
    names = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        parser.add_argument(flag(field.name), dest=field.name, type=Optional[hints[field.name]], default=None,
                            help=f"{docs.get(field.name, '')} ({default_note})".strip())
        names.append(field.name)
    return names


def flag_values(args: Any, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (not None) as ``{field: value}``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def option_names(parser: ArgumentParser) -> list[str]:
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


def _class_options(class_path: str) -> list[str]:
    """``a.b`` option names of a class of this package (none for another class: nothing outside it is imported); a
    stage module's include its network's arguments (``net.init_args.x``)."""
    if not class_path.startswith(PACKAGE):
        return []
    module, name = class_path.rsplit(".", 1)
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except Exception:  # noqa: BLE001 - only for a suggestion
        return []
    found = stage_of_module(name)
    net = [f"net.init_args.{p}" for p in sorted(_parameters(found.network))] if found and found.weights else []
    return [o.removeprefix("--") for o in option_names(parser)] + net


def _has(doc: Any, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return False
        doc = doc[key]
    return True


def _source(key: str, args: list[str]) -> str:
    """Where the option ``key`` (``model.init_args.x``) was set: ``"--key"`` on the command line, else the first config
    file that holds it (``"FILE: key"``)."""
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in args):
        return f"--{key}"
    for option, path in config_files(args):
        group = option.removeprefix("--")
        inner = key.split(".") if option == "--config" else key.removeprefix(f"{group}.").split(".")
        if (option == "--config" or key.startswith(f"{group}.")) and _has(_safe_load(path), inner):
            return f"{path}: {key}"
    return f"--{key}"


def _safe_load(path: str) -> Any:
    try:
        return load_yaml(path)
    except YAMLFileError:
        return None


def _moved(class_path: str, key: str) -> str | None:
    """The current name of a model option of an earlier release: a network argument the module re-declared (now
    under ``net.init_args``), or a diffusion option (``inference/legacy.DIFFUSION_MOVES``); else None."""
    inner = key.removeprefix("model.init_args.")
    if inner in DIFFUSION_MOVES and class_path.endswith("SSRDiffusionModule"):
        return "model.init_args." + DIFFUSION_MOVES[inner].replace("net.", "net.init_args.", 1)
    found = stage_of_module(class_path.rsplit(".", 1)[-1])
    if found is not None and found.weights and "." not in inner and inner in _parameters(found.network):
        return f"model.init_args.net.init_args.{inner}"
    return None


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _unknown(key: str, known: list[str], args: list[str], what: str, help_hint: str, moved: str | None = None) -> str:
    """``WHERE: WHAT has no such option (did you mean X?); HINT``, ``WHERE`` the option or the file that set it."""
    where = _source(key, args)
    # the last part decides (`chanels` is `net.init_args.channels`, not `help`), then the whole key
    lasts = {k.rsplit(".", 1)[-1]: k for k in sorted(known, key=len, reverse=True)}
    close = [lasts[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(lasts), n=1, cutoff=0.75)]
    close = close or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    dashes = "--" if where.startswith("--") else ""
    suggestion = f" (did you mean {dashes}{close[0]}?)" if close else ""
    if moved is not None:
        suggestion = f" (it moved: {dashes}{moved})"
    return f"{where}: {what} has no such option{suggestion}; {help_hint} lists them"


def explain_parse_error(message: str, sub: str, options: list[str], args: list[str]) -> str:
    """One line for a jsonargparse error ``message`` of ``ssr sub``; ``options`` are the subcommand's option names and
    ``args`` its command line (to name the config file that set an unknown option)."""
    nested = r"(?:Parser key \"\w+\":\s*Problem with given class_path '[\w.]+':\s*)*"
    model = re.search(r"Problem with given class_path '([\w.]+)':\s*(" + nested + r")(?:Option '([^']+)' is not "
                      r"accepted|unrecognized arguments: --([^\s=]+)|No action for key \"([^\"]+)\")", message)
    if model:
        class_path = model.group(1)
        key = next(g for g in model.groups()[2:] if g)
        # an option of a class given inside the module's options (its network: `net`)
        inner = re.findall(r"Parser key \"(\w+)\":\s*Problem with given class_path '([\w.]+)'", model.group(2))
        prefix = "model.init_args." + "".join(f"{k}.init_args." for k, _ in inner)
        where = inner[-1][1] if inner else class_path
        known = [prefix + o for o in _class_options(where)]
        short = class_path.rsplit(".", 1)[-1]
        hint = f"`ssr {sub} --model {short} --help`" if not inner else (
            f"`ssr {sub} --model {short} --model.init_args.{inner[-1][0]}.help {where.rsplit('.', 1)[-1]}`")
        return _unknown(prefix + key, known, args, where.rsplit(".", 1)[-1], hint,
                        None if inner else _moved(class_path, prefix + key))
    top = re.search(r"unrecognized arguments: --([^\s=]+)|does not accept option '([^']+)'", message)
    if top:
        key = top.group(1) or top.group(2)
        return _unknown(key, [o.removeprefix("--") for o in options], args, f"ssr {sub}", f"`ssr {sub} --help`")
    config = re.search(r"Problems parsing config: (.*)", message, re.DOTALL)
    if config:
        message = config.group(1)
    lines = [line.strip(" -").rstrip(":") for line in message.splitlines() if line.strip() and not _NOISE.match(line)]
    return ": ".join(lines)[:400] + f" (`ssr {sub} --help` lists every option)"
