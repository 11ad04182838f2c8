"""Writing the pictures and tables so that a failure leaves nothing half-written.

A full disk or a read-only folder must not leave a truncated PNG or CSV that looks like a result.
Each file is written to a temporary name in its own folder, flushed to disk, and only then renamed
over its final name (``os.replace`` is atomic within a folder); files written together (the
analysis' CSV, JSON and PNG) are renamed only once all of them are on disk. On any failure the
temporary files are removed and the error names the file that was being written.

The output folder is also checked before the work starts (:func:`check_output_dir`), so a
mistyped ``--out`` fails in a second rather than after every image has been processed.
"""
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Mapping, Union

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


def write_files(writers: Mapping[PathLike, Writer]) -> List[Path]:
    """Write every ``path -> writer`` file, all or none (see the module docstring); returns the paths.

    Folders are created as needed. An ``OSError`` names the final path, not the temporary one.
    """
    staged = []
    try:
        for path, write in writers.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
                staged.append((tmp, path))
                with os.fdopen(fd, 'wb') as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno is None:
                    raise
                raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return [path for _, path in staged]
