"""Writing output files so that nothing is ever half-written, with the permissions the umask asks for.

Every job writes its results (CSV, JSON, PNG, checkpoints) through ``atomic_write``: the bytes go to
a temporary file in the same folder, are flushed to disk, and replace the target in one
``os.replace``. A crash, a kill or a full disk at any moment leaves the old file or the new one,
never a truncated one; the temporary file is removed on failure, and the error names the file that
was asked for, not the temporary one. ``tempfile.mkstemp`` creates files readable only by their
owner, so the finished file gets the mode a plain ``open()`` would have given it. Files that belong
together (an analysis' CSV, JSON and PNG) go through ``write_files``: all of them or none. A folder
written as a whole (a dataset tree, a training run's ``export/``, a Hub repository folder) is built in a
hidden sibling by ``staged_folder`` and renamed into place when complete: the one implementation of
"write a folder, then rename it" in gczoo.
``check_output_dir`` checks an output folder before the work starts, so a mistyped flag fails in a
second rather than after an hour of computing.
"""
import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Mapping, Union

__all__ = [
    'Writer', 'atomic_write', 'atomic_write_text', 'check_output_dir', 'fsync_dir', 'fsync_tree', 'staged_folder',
    'place_copy', 'umask_mode', 'write_files',
]

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


def fsync_tree(folder: PathLike) -> None:
    """Flush every file below ``folder``, then the folders themselves, to disk."""
    for root, _, files in os.walk(str(folder)):
        for name in files:
            file = Path(root) / name
            try:
                with open(file, 'rb') as f:
                    os.fsync(f.fileno())
            except OSError as e:  # a full disk shows here: raised, naming the file
                raise _naming(file, e) from e
        fsync_dir(root)


def place_copy(source: PathLike, path: PathLike) -> Path:
    """Put the complete file ``source`` also at ``path`` in one rename: a hard link (a copy with the umask's
    mode where the file system has none) under a temporary name next to ``path``, then ``os.replace``.
    A reader sees the old ``path`` or the new one; ``source`` stays."""
    path = Path(path)
    tmp = path.parent / f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp'
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network/FUSE file systems): a copy
            shutil.copyfile(source, tmp)
            os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise _naming(path, e) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


_SWAP_ATTEMPTS = 5  # another writer finishing the same folder at the same moment: swap again
_TAKEN = (errno.ENOTEMPTY, errno.EEXIST)  # os.replace onto a folder another writer just put there


def _swap_in(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` is renamed aside first, then removed. When two
    writers finish the same folder at once, the last rename wins and either folder is whole."""
    for attempt in range(_SWAP_ATTEMPTS):
        last = attempt == _SWAP_ATTEMPTS - 1
        if not path.exists():
            try:
                os.replace(staging, path)
                return
            except OSError as e:
                if e.errno not in _TAKEN or last:
                    raise
                continue
        old = Path(tempfile.mkdtemp(prefix=_staging_prefix(path.name), suffix='.old.tmp', dir=str(path.parent)))
        try:
            try:
                os.replace(path, old / path.name)
            except FileNotFoundError:  # another writer moved it aside first
                if last:
                    raise
                continue
            try:
                os.replace(staging, path)
            except OSError as e:
                if e.errno in _TAKEN and not last:  # another writer's folder took its place: swap that one out
                    continue
                os.replace(old / path.name, path)  # put the old one back: the target is never missing
                raise
            return
        finally:
            shutil.rmtree(old, ignore_errors=True)


def _staging_prefix(name: str) -> str:
    return f'.{name}.staging-{os.getpid()}-'


def _alive(pid: int) -> bool:
    if os.name == 'nt' or pid == os.getpid():  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's)
        return True
    return True


def _remove_stale_staging(folder: Path, name: str) -> None:
    """Remove the staging folders for ``name`` in ``folder`` that a killed run (``kill -9``, power loss)
    left: their process is gone, so they are never output and never block the next run. A run killed
    between ``_swap_in``'s two renames left the previous ``name`` aside (``*.old.tmp``): it is put back."""
    pattern = re.compile(rf'\.{re.escape(name)}\.staging-(\d+)-[^.]*(\.old)?\.tmp')
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and not _alive(int(match.group(1))):
                if match.group(2) and (entry / name).exists() and not (folder / name).exists():
                    with contextlib.suppress(OSError):
                        os.replace(entry / name, folder / name)
                shutil.rmtree(entry, ignore_errors=True)


def _retarget(error: OSError, staging: Path, path: Path) -> OSError:
    """An error about a file in ``staging``, re-aimed at the same file under ``path`` (what was asked for)."""
    name = error.filename if isinstance(error.filename, str) else None
    if error.errno is None:
        return error
    inside = name is not None and Path(name).is_relative_to(staging)
    return _naming(path / Path(name).relative_to(staging) if inside else path, error)


@contextlib.contextmanager
def staged_folder(path: PathLike, *, merge: bool = False) -> Iterator[Path]:
    """``with staged_folder(path) as tmp:`` write into ``tmp``, an empty hidden sibling of ``path``; when
    the block completes, everything in it is flushed to disk and it becomes ``path`` in one rename (an
    existing ``path`` is swapped out and removed), so a reader or a crash sees the old folder or the
    new one, never a half-written one. ``merge=True`` keeps an existing ``path``: ``tmp`` is inside it
    and each of its top-level entries is moved into ``path`` (one rename each; other files stay). On
    failure nothing moves and ``tmp`` is removed (a ``path`` that did not exist still does not); an
    ``OSError`` names the file under ``path``, not its staging copy. A ``path`` that is a file is refused
    (``NotADirectoryError``). ``tmp`` is named ``.NAME.staging-PID-*.tmp``: one left by a killed process
    is removed by the next ``staged_folder`` of the same ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():  # never silently replace a file with a folder
        raise NotADirectoryError(errno.ENOTDIR, f'{os.strerror(errno.ENOTDIR)}: {str(path)!r} is a file, where a '
                                                f'folder is to be written; remove it or give another path')
    inside = merge and path.is_dir()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(path if inside else path.parent, path.name)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(path.name), suffix='.tmp',
                                        dir=str(path if inside else path.parent)))
        os.chmod(staging, umask_mode(0o777))  # mkdtemp makes it 0700; the folder gets what mkdir would give
    except OSError as e:
        raise _naming(path, e) from e
    try:
        yield staging
        fsync_tree(staging)
        if inside:
            for entry in sorted(staging.iterdir()):
                os.replace(entry, path / entry.name)
            fsync_dir(path)
        else:
            _swap_in(staging, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise _retarget(e, staging, path) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    with staged_folder(folder, merge=True) as staging:
        for current, write in zip(paths, writers.values()):
            atomic_write(staging / current.name, write)
    return paths
