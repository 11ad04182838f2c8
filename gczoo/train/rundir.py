"""The run folder OUT: a name no other run takes, a lock held while a run writes into it, and the
rules for what a run may remove there.

* Default names (``<timestamp>-<model>-<img-size>``, as timm's) get ``-1``, ``-2``... when a run
  started in the same second already made that folder (``os.mkdir`` is atomic: two runs cannot both
  win); an explicit ``--experiment`` is reused (that is how ``--resume auto`` finds its checkpoint).
* ``RunLock``: ``OUT/.lock`` holds an exclusive ``flock`` for the whole run and the holder's pid, host
  and start time. A second run on the same folder (or a ``--resume auto`` meant for it) fails at once
  and names the holder. The kernel drops the lock when the holder dies, even by ``kill -9``, so a
  lock is never stale and the file is never deleted (deleting it would let two runs lock two files).
* Only once the lock is held are leftovers of dead runs removed: the temporary files and folders
  gczoo's own writers name ``.<name>.<random>.tmp``. A new run (no ``--resume``) refuses a folder
  that already holds a run's checkpoint instead of overwriting it.
"""
import argparse
import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch.distributed as dist

from gczoo.errors import GczooError, one_line

from .checkpoint import LAST_CHECKPOINT

__all__ = [
    'LOCK_FILE', 'RunFolderBusy', 'RunLock', 'make_run_dir', 'remove_stale_temporaries', 'experiment_name',
    'elastic_restart_count', 'claim_run_dir',
]

LOCK_FILE = '.lock'


class RunFolderBusy(GczooError, RuntimeError):
    """Another live run holds the output folder's lock."""


def make_run_dir(parent: Path, name: str, *, unique: bool) -> Path:
    """Create ``parent/name`` (and parents). ``unique``: never an existing folder, ``name-1``, ``name-2``... instead."""
    parent.mkdir(parents=True, exist_ok=True)
    if not unique:
        (parent / name).mkdir(exist_ok=True)
        return parent / name
    for attempt in range(10000):
        path = parent / (name if attempt == 0 else f'{name}-{attempt}')
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f'{parent / name}: 10000 runs of that name already exist; pass --experiment NAME')


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``OUT/.lock`` for the life of the run (rank 0 takes it)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> 'RunLock':
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the folder is not protected there
            return self
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.read(fd, 4096).decode('utf-8', 'replace').strip()
                      or 'a process that has not written its pid yet')
            os.close(fd)
            raise RunFolderBusy(
                f'{self.path.parent} is in use by another gczoo train run ({holder}); wait for it to finish or stop '
                f'it, or write to another folder (--experiment NAME / --output DIR)') from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}, started '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode('utf-8'))
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: see the module docstring)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temporaries(out_dir: Path) -> int:
    """Remove the ``.<name>.<random>.tmp`` files and folders gczoo's writers leave when killed mid-write.
    Call it only while holding the folder's ``RunLock``: then no live run is writing them. Returns the count."""
    removed = 0
    for stale in Path(out_dir).glob('.*.tmp'):
        with contextlib.suppress(OSError):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed += 1
    return removed


def elastic_restart_count() -> int:
    """Which attempt of a torchrun job with ``--max-restarts`` this is (0: the first, or no torchrun)."""
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)


def _elastic_run() -> bool:
    return int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', '0') or 0) > 0


def experiment_name(args: argparse.Namespace) -> str:
    """``--experiment``, or timm's default ``<timestamp>-<model>-<img-size>`` (torchrun's run id with restarts)."""
    if args.experiment:
        return args.experiment
    slug = args.model.replace('/', '_').replace(':', '_')
    img = args.input_size[-1] if args.input_size else (args.img_size or 'auto')
    if _elastic_run():
        # every attempt of a torchrun job with restarts must find the same folder: use its run id
        return f'{slug}-{img}-elastic-{os.environ.get("TORCHELASTIC_RUN_ID", "none")}'
    return f'{time.strftime("%Y%m%d-%H%M%S")}-{slug}-{img}'


def _refuse_to_overwrite(args: argparse.Namespace, out_dir: Path) -> None:
    last = out_dir / LAST_CHECKPOINT
    if not last.is_file() or args.resume == 'auto' or elastic_restart_count() > 0:
        return
    if args.resume and Path(args.resume).resolve().parent == out_dir.resolve():
        return  # going back to one of this run's own checkpoints
    raise ValueError(
        f'{out_dir} already holds a training run ({last.name}); continue it with --resume auto, or start the new '
        f'run in another folder (--experiment NAME / --output DIR). Nothing was changed')


def claim_run_dir(args: argparse.Namespace, env: Any, log: Callable[[str], None]) -> Tuple[Path, Optional[RunLock]]:
    """Rank 0 makes OUT (a default name is never an existing folder), locks it, refuses to start a new run
    over another's checkpoint, and removes what dead runs left half-written; every rank learns OUT, or the
    error, so all of them stop together. Returns OUT and (rank 0) the held lock."""
    out_dir, lock, error = Path(args.output or 'output/train'), None, None  # '' is timm's ./output/train
    if env.is_main:
        try:
            out_dir = make_run_dir(out_dir, experiment_name(args), unique=not (args.experiment or _elastic_run()))
            lock = RunLock(out_dir).acquire()
            _refuse_to_overwrite(args, out_dir)
            removed = remove_stale_temporaries(out_dir)
            if removed:
                log(f'{out_dir}: removed {removed} temporary file(s) a killed run left half-written')
        except (GczooError, ValueError, OSError) as e:
            error = e
            if lock is not None:
                lock.release()
    shared = [str(out_dir), None if error is None else one_line(error)]
    if env.distributed:
        dist.broadcast_object_list(shared, src=0)
    if error is not None:
        raise error
    if shared[1] is not None:
        raise ValueError(f'rank 0 could not claim the output folder: {shared[1]}')
    return Path(shared[0]), lock
