"""The one atomic writer of the package: every file weightspace writes goes through here.

A file is written to a temporary next to its target, fsynced, and renamed over the target
with :func:`os.replace`, so readers see the old file or the new one, never a part. Temporaries
are named recognisably, ``.<target-name>.weightspace-tmp-<pid>-<random>@<host>``; a write that
fails removes its own, and a process killed mid-write leaves one behind, which the next write
of the same target removes once it sees that the process that made it is gone (same host, pid
not alive). Temporaries of live processes, and of other hosts (a shared file system), are
never touched.

It lives in ``merging`` (the lowest layer that writes files) so that ``merging`` and
``weightspace`` share it; ``weightspace.checkpoint`` builds :func:`weightspace.save` on it.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["TAG", "UMASK", "temp_path", "clean_stale", "write_temp", "commit", "atomic_write"]

TAG = ".weightspace-tmp-"
#: the process's umask, read once at import (os.umask can only be read by setting it): files and
#: directories written atomically get the permissions a plain open() or mkdir() would give
UMASK = os.umask(0)
os.umask(UMASK)
_TEMP = re.compile(r"\.(?P<target>.+)" + re.escape(TAG) + r"(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})@(?P<host>[A-Za-z0-9_.-]*)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64]


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.weightspace-tmp-<pid>-<random>@<host>``."""
    path = Path(path)
    return path.parent / f".{path.name}{TAG}{os.getpid()}-{secrets.token_hex(4)}@{_host()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or not a pid we can ask about): keep
    return True


def clean_stale(path: str | os.PathLike, names: re.Pattern[str] | None = None) -> list[Path]:
    """Remove the temporaries that dead processes of this host left for ``path``.

    Args:
        path: the target; its directory is searched.
        names: also clean temporaries of every target in that directory whose name matches this
            pattern (the shards of a sharded checkpoint, whatever their count). (default: ``None``)

    Returns:
        list[Path]: the temporaries removed.
    """
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host = _host()
    for e in entries:
        m = _TEMP.fullmatch(e.name) if e.name.startswith(".") and TAG in e.name else None
        if m is None or m["host"] != host:
            continue
        if m["target"] != path.name and (names is None or not names.fullmatch(m["target"])):
            continue
        if not _alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                if e.is_dir(follow_symlinks=False):  # a directory being written (a Hugging Face model)
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def write_temp(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write a temporary next to ``path`` with ``write(temp_name)`` and fsync it; return its path.

    Stale temporaries of ``path`` are cleaned first. On any exception (``KeyboardInterrupt``
    included) the temporary is removed and the exception propagates. The file gets the mode a
    new file gets (``0o666`` less the umask).
    """
    path = Path(path)
    clean_stale(path)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def commit(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]]) -> None:
    """Rename each ``(temporary, target)`` into place, then fsync the directories."""
    pairs = [(Path(t), Path(p)) for t, p in pairs]
    for tmp, path in pairs:
        os.replace(tmp, path)
    for d in {p.parent for _, p in pairs}:
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``write(temp_name)`` fills a temporary that replaces ``path``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = atomic_write(tempfile.mkdtemp() + "/x.txt", lambda f: Path(f).write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    tmp = write_temp(path, write)
    try:
        commit([(tmp, path)])
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
