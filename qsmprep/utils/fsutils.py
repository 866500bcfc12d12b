"""Safe writing into the output directory: atomic files, locks, free space, deferred signals.

Every file qsmprep writes into ``output_dir`` goes through :func:`atomic_path` (or one of the
helpers built on it): the data are written to a hidden temporary name in the destination
folder (``.<host>-<pid>-<random>.qsmprep-tmp.<name>``) and renamed over the final name with
:func:`os.replace` only when complete, so a full disk, a crash or a signal never leaves a
truncated file under a real name.  Temporary names left by a killed process are removed by
:func:`remove_stale_temporaries`.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_text(d / 'a.json', '{}\\n')
>>> sorted(p.name for p in d.iterdir())
['a.json']
>>> try:
...     with atomic_path(d / 'b.txt') as tmp:
...         _ = tmp.write_text('half')
...         raise OSError(28, 'No space left on device')
... except OSError as exc:
...     is_disk_full(exc)
True
>>> sorted(p.name for p in d.iterdir())  # nothing half-written, no temporary left
['a.json']
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

__all__ = [
    'TMP_MARK',
    'atomic_path',
    'copy_file',
    'file_lock',
    'free_bytes',
    'is_disk_full',
    'remove_stale_temporaries',
    'signals_deferred',
    'temporary_name',
    'tree_bytes',
    'try_lock',
    'write_bytes',
    'write_text',
]

#: Part of every temporary file name (``.<token>.qsmprep-tmp.<final name>``).
TMP_MARK = '.qsmprep-tmp.'

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is "no space left", a quota or
    a file-size limit (``ENOSPC``, ``EDQUOT``, ``EFBIG``); also for Nipype's text tracebacks."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        text = str(exc)
        if 'No space left on device' in text or 'Disk quota exceeded' in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _host() -> str:
    return ''.join(c if c.isalnum() else '_' for c in socket.gethostname().split('.')[0])


def temporary_name(path) -> Path:
    """A hidden name next to ``path`` that keeps its extensions (``.nii.gz`` stays last):
    ``.<host>-<pid>-<random>.qsmprep-tmp.<name>``."""
    path = Path(path)
    token = f'{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    return path.with_name(f'.{token}{TMP_MARK}{path.name}')


def _is_stale(path: Path, max_age: float) -> bool:
    """A temporary file whose writer has ended: same host and its process is gone, or older
    than ``max_age`` seconds (other hosts, e.g. nodes sharing an NFS output folder)."""
    try:
        host, pid, _ = path.name[1:].split(TMP_MARK)[0].rsplit('-', 2)
        pid = int(pid)
    except ValueError:
        return True  # not written by this version
    if host == _host():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if pid == os.getpid():
            return False
    try:
        return time.time() - path.lstat().st_mtime > max_age
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False):
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On any exception (or signal) the temporary file is removed and ``path`` is left as it
    was: either the old complete file or no file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path, text: str, encoding: str = 'utf-8') -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(src, dst) -> Path:
    """Atomically copy ``src`` to ``dst`` (data and modification time)."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


def remove_stale_temporaries(root, max_age: float = 6 * 3600) -> list[Path]:
    """Delete temporary files (:data:`TMP_MARK`) under ``root`` left by killed runs: those of
    processes of this host that have ended, and any older than ``max_age`` seconds."""
    removed = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith('.') and TMP_MARK in name and _is_stale(p, max_age):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive :func:`fcntl.flock` on ``path`` (created if needed) for the block.

    Blocks until the lock is free.  Works between processes on one machine and, on Linux,
    on NFS (flock is emulated with POSIX locks there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(path) -> int | None:
    """Take an exclusive lock on ``path`` without waiting: the open descriptor (close it to
    release), or None when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def free_bytes(path) -> int:
    """Bytes available to this user on the file system of ``path`` (or its first existing
    parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def tree_bytes(path) -> int:
    """Total size of the files under ``path`` (allocated blocks, at least the length)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += max(st.st_size, getattr(st, 'st_blocks', 0) * 512)
    return total


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """Block ``signals`` for the block (a few renames that must happen together); a signal
    received meanwhile is delivered when the block ends.  No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
