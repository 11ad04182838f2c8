"""Writing the pictures and tables so that a failure leaves nothing half-written.

A full disk or a read-only folder must not leave a truncated PNG or CSV that looks like a result.
Each file is written whole or not at all by ``gczoo.files.atomic_write`` (temporary file, fsync,
rename). Files that belong together (the analysis' CSV, JSON and PNG) are first written into a
hidden staging folder next to them and moved into place only once all of them are on disk, so a
failure leaves none of them. An error names the file that was being written, not a temporary name.

The output folder is also checked before the work starts (:func:`check_output_dir`), so a
mistyped ``--out`` fails in a second rather than after every image has been processed.
"""
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Mapping, Union

from gczoo.files import atomic_write, fsync_dir

__all__ = ['Writer', 'check_output_dir', 'write_files']

PathLike = Union[str, os.PathLike]
Writer = Callable[[BinaryIO], None]  # writes one file's bytes into the open (binary) file it is given


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
        raise OSError(errno.ENOTDIR, f'{flag} {str(path)!r} cannot be a folder: {str(existing)!r} is a file')
    if not os.access(existing, os.W_OK | os.X_OK):
        code, why = ((errno.EROFS, 'is on a read-only file system') if _read_only(existing)
                     else (errno.EACCES, 'is not writable by this user'))
        raise OSError(code, f'{flag} {str(path)!r} cannot be written: {str(existing)!r} {why}')
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
