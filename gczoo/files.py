"""Writing output files so that nothing is ever half-written, with the permissions the umask asks for.

Every job writes its results (CSV, JSON, PNG, checkpoints) through ``atomic_write``: the bytes go to
a temporary file in the same folder, are flushed to disk, and replace the target in one
``os.replace``. A crash, a kill or a full disk at any moment leaves the old file or the new one,
never a truncated one; the temporary file is removed on failure. ``tempfile.mkstemp`` creates files
readable only by their owner, so the finished file gets the mode a plain ``open()`` would have given it.
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ['atomic_write', 'atomic_write_text', 'fsync_dir', 'umask_mode']

PathLike = Union[str, os.PathLike]


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open(path, 'w')`` would create."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def fsync_dir(path: PathLike) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where the file system does not allow it."""
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then move it onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``atomic_write`` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode('utf-8')))
