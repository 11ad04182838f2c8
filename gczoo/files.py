"""Writing output files so that nothing is ever half-written, with the permissions the umask asks for.

Every job writes its results (CSV, JSON, PNG, checkpoints) through ``atomic_write``: the bytes go to
a temporary file in the same folder, are flushed to disk, and replace the target in one
``os.replace``. A crash, a kill or a full disk at any moment leaves the old file or the new one,
never a truncated one; the temporary file is removed on failure, and the error names the file that
was asked for, not the temporary one. ``tempfile.mkstemp`` creates files readable only by their
owner, so the finished file gets the mode a plain ``open()`` would have given it. Files that belong
together (an analysis' CSV, JSON and PNG) go through ``write_files``: all of them or none.
``check_output_dir`` checks an output folder before the work starts, so a mistyped flag fails in a
second rather than after an hour of computing.
"""
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Mapping, Union

__all__ = ['Writer', 'atomic_write', 'atomic_write_text', 'check_output_dir', 'fsync_dir', 'umask_mode', 'write_files']

PathLike = Union[str, os.PathLike]
Writer = Callable[[BinaryIO], None]  # writes one file's bytes into the open (binary) file it is given


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    except OSError as e:
        raise _naming(path, e) from e
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _naming(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``atomic_write`` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def check_output_dir(path: PathLike, flag: str = '--out') -> Path:
    """``path`` as a ``Path`` if it is, or can be created as, a writable folder; creates nothing.

    Raises ``OSError`` (``ENOTDIR``, ``EROFS`` or ``EACCES``) naming ``flag`` and the path otherwise.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:  # the deepest part that exists
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, f'{os.strerror(errno.ENOTDIR)}: {flag} {str(path)!r} cannot be a folder, '
                                     f'{str(existing)!r} is a file')
    if not os.access(existing, os.W_OK | os.X_OK):
        code, why = ((errno.EROFS, 'is on a read-only file system') if _read_only(existing)
                     else (errno.EACCES, 'is not writable by this user'))
        raise OSError(code, f'{os.strerror(code)}: {flag} {str(path)!r} cannot be written, {str(existing)!r} {why}')
    return path


def _naming(path: Path, error: OSError) -> OSError:
    """``error`` about ``path`` (the file the user asked for) instead of a temporary name."""
    if error.errno is None:
        return error
    renamed = OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))
    renamed.__cause__ = error
    return renamed


def write_files(writers: Mapping[PathLike, Writer]) -> List[Path]:
    """Write every ``path -> writer`` file, all or none (see the module docstring); returns the paths.

    All paths must be in one folder, which is created if needed.
    """
    paths = [Path(p) for p in writers]
    if len(paths) == 1:
        try:
            return [atomic_write(paths[0], next(iter(writers.values())))]
        except OSError as e:
            raise _naming(paths[0], e) from e
    folders = {p.parent for p in paths}
    if len(folders) != 1:
        raise ValueError(f'write_files: the files must share one folder, got {sorted(map(str, folders))}')
    folder = folders.pop()
    current = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.staging-', dir=str(folder)))
    except OSError as e:
        raise _naming(folder, e) from e
    try:
        for current, write in zip(paths, writers.values()):
            atomic_write(staging / current.name, write)
        for current in paths:
            os.replace(staging / current.name, current)
        fsync_dir(folder)
    except OSError as e:
        raise _naming(current, e) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
