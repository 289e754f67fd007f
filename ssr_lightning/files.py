"""Files and names, safely: atomic replacement (temporary file + rename), advisory locks, names that stay inside
their folder, and YAML that cannot blow up.

Every result the suite writes (images, reports, JSON records, artifacts, checkpoints) goes through
:func:`atomic_write`, so a reader, a crash or a concurrent writer never sees half a file. Every name a user gives
that becomes a file or folder name (a study ``name``, ``ssr fit --name``) passes :func:`check_name`. Every YAML file a
command reads goes through :func:`load_yaml`. A leaf module: no project imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "NAME_PATTERN", "YAMLFileError", "atomic_path", "atomic_write", "atomic_write_json", "atomic_write_text", "check_name",
    "check_yaml_size", "file_lock", "load_yaml", "slugify", "unwritable",
]

# A name that becomes one path component: no separators, no "..", no leading dot or dash, bounded length.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Expanded YAML nodes allowed per file: shipped studies and configs have < 5,000; an alias bomb has billions.
YAML_MAX_NODES = 200_000
YAML_MAX_BYTES = 2 << 20


def _temporary_beside(path: Path) -> Path:
    # unique per host, process and call: concurrent writers (threads, shards on a shared folder) never share one
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *,
                 previous: str | os.PathLike[str] | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path`` (atomic on POSIX).

    With ``previous`` (a path in the same folder), an existing ``path`` becomes ``previous`` once the new file is
    complete: hard-linked first, so ``path`` never goes missing (renamed where the file system has no hard links).
    A failed ``write`` leaves both files as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        if previous is not None and path.is_file():
            _keep_as(path, Path(previous))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _keep_as(path: Path, previous: Path) -> None:
    """``path``'s current file becomes ``previous`` (a hard link, replaced atomically; else a rename)."""
    link = _temporary_beside(previous)
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        link.unlink(missing_ok=True)
        os.replace(path, previous)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`atomic_write` as a context: yields the temporary file beside ``path`` (write it while the block runs,
    e.g. in pieces); a clean exit renames it onto ``path``, an exception removes it and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str, ensure_ascii=False))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], blocking: bool = True) -> Iterator[bool]:
    """Exclusive ``flock`` on ``path``; yields False instead of waiting when ``blocking`` is off and it is held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- names --------------------------------------------------------------------------------------------------------
def slugify(text: str) -> str:
    """``text`` made into a valid name (a suggestion for messages): other characters become ``-``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)
    return (slug or "run")[:100]


def check_name(value: str, option: str) -> str:
    """``value`` if it is one safe path component (letters, digits, ``.``, ``_``, ``-``; not ``.``/``..``), else
    ``ValueError`` naming ``option`` and a valid suggestion. Names never escape the folder they are joined to."""
    text = str(value)
    if NAME_PATTERN.fullmatch(text) and ".." not in text:
        return text
    raise ValueError(f"{option} {text!r}: a name must be one folder name of letters, digits, '.', '_' or '-' "
                     f"(no '/', no '..', at most 100 characters), e.g. {slugify(text)!r}")


# --- YAML -------------------------------------------------------------------------------------------------------
class YAMLFileError(ValueError):
    """A YAML file that cannot be read, is not valid YAML, or is too large once its aliases are expanded."""


def _count_nodes(doc: Any, limit: int) -> int:
    """Nodes of ``doc`` with aliases expanded (a shared list counts every time it is reached), stopping past
    ``limit``: the walk costs at most ``limit`` steps however deep the alias chain."""
    count, stack = 0, [doc]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def load_yaml(source: str | os.PathLike[str], text: str | bytes | None = None,
              max_nodes: int = YAML_MAX_NODES) -> Any:
    """``yaml.safe_load`` of a file (or of ``text``, named ``source`` in messages) with bounds: at most
    ``YAML_MAX_BYTES`` and ``max_nodes`` nodes once aliases are expanded (a "billion laughs" file is refused before
    anything walks it). Raises :class:`YAMLFileError` naming the file and what to do."""
    name = str(source)
    if text is None:
        path = Path(source)
        if path.is_dir():
            raise YAMLFileError(f"{name} is a folder, not a YAML file: give the path of a .yaml file")
        try:
            size = path.stat().st_size
            if size > YAML_MAX_BYTES:
                raise YAMLFileError(f"{name}: {size:,} bytes is too large for a config (limit {YAML_MAX_BYTES:,}); "
                                    "give a YAML config file")
            text = path.read_bytes()
        except FileNotFoundError:
            raise YAMLFileError(f"{name}: no such file") from None
        except OSError as err:
            raise YAMLFileError(f"{name}: cannot read it ({err.strerror or err})") from None
    if isinstance(text, bytes):
        if b"\x00" in text[:8192]:
            raise YAMLFileError(f"{name}: a binary file, not YAML text: give a YAML config file")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise YAMLFileError(f"{name}: not UTF-8 text: give a YAML config file") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YAMLFileError(f"{name}: not valid YAML{at}: {problem}") from None
    return check_yaml_size(doc, name, max_nodes)


# --- folders ------------------------------------------------------------------------------------------------------
def unwritable(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in ``folder`` (or, while it does not exist, in its nearest existing parent, where
    it would be made), else None. Tries for real (a temporary file, removed): permission bits do not bind root."""
    here = Path(folder).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(dir=here, prefix=".ssr-write-test-")
    except OSError as err:
        return f"{here}: {err.strerror or err}"
    os.close(fd)
    os.unlink(name)
    return None


def check_yaml_size(doc: Any, source: str | os.PathLike[str], max_nodes: int = YAML_MAX_NODES) -> Any:
    """``doc`` (already loaded, e.g. by another YAML loader) unless it has more than ``max_nodes`` values once its
    aliases are expanded: then :class:`YAMLFileError` naming ``source``, as :func:`load_yaml` says it."""
    if _count_nodes(doc, max_nodes) > max_nodes:
        raise YAMLFileError(f"{source}: more than {max_nodes:,} values once its aliases (*name) are expanded; refused "
                            "(an alias bomb?). Write the values out or use fewer nested aliases")
    return doc
