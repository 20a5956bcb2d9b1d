"""Atomic writing of the files and folders the project writes itself (JSON, NIfTI, model folders), the clean-up of
temporaries that a killed run left behind, and JSON reading with errors that name the file.

Every temporary is created beside its target with a name of our own: `.sadm-tmp-PID-HOST-NAME.XXXXXXXX[suffix]`
(PID and an 8-hex tag of the host name of the writing process), so a later run can tell its leftovers from files
of others and from temporaries still being written (`remove_stale_temporaries`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sadm_nnunet.errors import InputError

TMP_PREFIX = ".sadm-tmp-"
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-")
FOREIGN_HOST_MAX_AGE_S = 24 * 3600  # a temporary of another machine (shared file system) is stale after a day


class IncompleteWrite(InputError):
    """A file could not be written completely (e.g. a full disk); nothing was installed under its name."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """tempfile creates 0600 files and 0700 folders; give them the mode a plain open()/mkdir() would (umask), so
    that what we write into shared nnU-Net folders stays readable by others."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _tmp_prefix(path: Path) -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{HOST_TAG}-{path.name}."


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    """Writes JSON to a temporary file beside `path`, then renames it into place. A failed write (a full disk
    raises ENOSPC at write, flush or fsync) leaves `path` as it was and raises `IncompleteWrite` naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    _usual_mode(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        raise IncompleteWrite(f"could not write {path}: {e.strerror or e}; {written} bytes written, {len(text)} "
                              f"expected; {path} was left as it was") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """The JSON object in `path`, or an `InputError` naming the file when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is unreadable: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON ({len(text)} characters; {e.msg} at line {e.lineno}, "
                         f"column {e.colno}); expected the JSON object nnU-Net or sadm_nnunet wrote there") from None


@contextmanager
def atomic_path(path: str | os.PathLike, verify: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yields a temporary file path beside `path` (same suffix); renames it to `path` if the block succeeds.
    `verify(tmp, path)` runs before the rename and raises when the written file is incomplete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=suffix)
    os.close(fd)
    _usual_mode(tmp)
    try:
        yield Path(tmp)
        if verify is not None:
            verify(Path(tmp), path)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside `path`; when the block succeeds it replaces `path` (an existing folder is
    moved aside first and deleted only after the new one is in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path)))
    _usual_mode(tmp, directory=True)
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_tmp_prefix(path)}old-"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _running_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def is_stale_temporary(entry: Path, now: float | None = None) -> bool:
    """True for a temporary of our naming whose writer is gone: a process of this machine that no longer runs, or
    (a shared file system) another machine's temporary untouched for FOREIGN_HOST_MAX_AGE_S."""
    m = TMP_NAME.match(entry.name)
    if m is None:
        return False
    if m["host"] == HOST_TAG:
        return not _running_here(int(m["pid"]))
    try:
        age = (time.time() if now is None else now) - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_HOST_MAX_AGE_S


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Removes the stale temporaries (files and folders of our naming, see `is_stale_temporary`) inside `folder`
    (`recursive`: in its subfolders too), which a run killed with SIGKILL leaves behind; returns how many were
    removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if not is_stale_temporary(entry):
            if recursive and entry.is_dir() and not entry.is_symlink():
                removed += remove_stale_temporaries(entry, recursive)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += not os.path.lexists(entry)
    return removed
