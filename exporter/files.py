"""Files: reading the ones a user gives (one-line errors) and writing atomically.

Atomic writes: temp file beside the target, fsync, rename — never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

FileError = Callable[[str], Exception]


def read_user_file(path: Path, label: str, what: str, error: FileError) -> bytes:
    """The bytes of `path`; any failure raised as `error("<label>: <what went wrong>")`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except IsADirectoryError:
        raise error(f"{label}: is a directory, not a {what}") from None
    except PermissionError:
        raise error(f"{label}: permission denied") from None
    except OSError as exc:
        raise error(f"{label}: cannot read ({exc.strerror})") from None


def parse_user_yaml(
    data: str | bytes, label: str, error: FileError, loader: type[yaml.SafeLoader] = yaml.SafeLoader
) -> Any:
    """The YAML document in `data`; a syntax error raised as `error` with its line."""
    try:
        return yaml.load(data, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{label}:{where}: invalid YAML: {problem}") from None


def atomic_write(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically (readers see the old or the new file, whole)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the folder is synced.
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
