"""Training checkpoints: everything a run needs to continue exactly, written so no crash leaves half a file.

* ``atomic_save`` writes with ``gczoo.files.atomic_write`` (temp file in the same folder, fsync,
  ``os.replace``; the file gets the umask's mode): a reader, or a ``kill -9`` at any moment, sees the
  old file or the new one. A failed write (full disk, read-only folder) raises ``OSError`` naming the file.
* ``load_training_checkpoint`` reads through ``gczoo.models.weights.read_checkpoint`` (safetensors or
  ``torch.load(weights_only=True)``, never code) and checks it is a gczoo training checkpoint.
* ``CheckpointFiles`` keeps timm's file set: ``last.pth.tar``, ``model_best.pth.tar`` and the
  ``--checkpoint-hist`` best epochs as ``checkpoint-<epoch>.pth.tar``, ranked as timm's
  ``CheckpointSaver`` ranks them.
* ``plain`` turns what goes into a checkpoint into the plain types ``weights_only`` accepts;
  ``capture_rng``/``restore_rng`` save and restore Python's, NumPy's and torch's RNG states.

Why not timm's ``CheckpointSaver`` itself: it pickles ``args`` as an ``argparse.Namespace`` (unreadable
with ``weights_only=True``), writes to a fixed ``tmp.pth.tar`` without fsync, and refreshes
``model_best`` by unlink-then-link, so a kill in between loses it.
"""
import contextlib
import os
import random
import secrets
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from gczoo.errors import CheckpointError
from gczoo.files import atomic_write, fsync_dir, place_copy
from gczoo.models.weights import read_checkpoint

__all__ = [
    'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'HISTORY_CHECKPOINT', 'atomic_save',
    'load_training_checkpoint', 'CheckpointFiles', 'plain', 'capture_rng', 'restore_rng',
]

CHECKPOINT_FORMAT = 'gczoo.train/1'
LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'model_best.pth.tar'
HISTORY_CHECKPOINT = 'checkpoint-{epoch}.pth.tar'


def atomic_save(obj: Any, path: os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader (or
    a crash at any moment) sees the old file or the new one, never a half-written one."""
    path = Path(path)
    try:
        return atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as e:
        if e.filename or not e.errno:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # name the file the OS error is about


class CheckpointFiles:
    """timm's checkpoint files, written so that a kill at any moment leaves a consistent set.

    Every save replaces ``last.pth.tar``; at an epoch end the checkpoint also becomes
    ``model_best.pth.tar`` when its metric is the best so far, and ``checkpoint-<epoch>.pth.tar``
    when it ranks among the ``max_history`` best (ties keep the earlier epoch; a worse one evicts
    nothing), as timm's ``CheckpointSaver``. The bytes are written once, to a temporary file, and
    hard-linked under each name (copied where the file system has no links), each name replaced in
    one ``os.replace``; ``last.pth.tar`` comes last, so a resumed run never skips an epoch whose
    best/history files are missing. The ranked list travels in the checkpoint (``history_files``).
    """

    def __init__(self, out_dir: Path, max_history: int = 10, decreasing: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.max_history = max_history
        self.decreasing = decreasing  # a lower metric is better (--eval-metric loss)
        self.files: List[Tuple[str, float]] = []  # (file name, metric), best first

    def load(self, state: Optional[Sequence[Sequence[Any]]]) -> None:
        """The ranked list of a resumed checkpoint, without the files that no longer exist."""
        self.files = [(str(name), float(metric)) for name, metric in (state or [])
                      if (self.out_dir / str(name)).is_file()]

    def state(self) -> List[List[Any]]:
        return [[name, metric] for name, metric in self.files]

    def plan(self, epoch: int, metric: float) -> Tuple[List[Tuple[str, float]], List[str], bool]:
        """The ranked list after saving ``epoch``, the files it evicts, and whether ``epoch`` is kept."""
        better = (lambda a, b: a < b) if self.decreasing else (lambda a, b: a > b)
        files = [f for f in self.files if f[0] != HISTORY_CHECKPOINT.format(epoch=epoch)]  # a re-run epoch
        keep = len(files) < self.max_history or better(metric, files[-1][1])
        if not keep:
            return files, [], False
        files = sorted(files + [(HISTORY_CHECKPOINT.format(epoch=epoch), metric)], key=lambda f: f[1],
                       reverse=not self.decreasing)  # stable: among equal metrics the earlier epoch stays first
        return files[:self.max_history], [name for name, _ in files[self.max_history:]], True

    def save(self, payload: Dict[str, Any], *, epoch: Optional[int] = None, metric: Optional[float] = None,
             best: bool = False) -> None:
        """Write ``payload`` as last (and, at an epoch end, best / history); ``payload['history_files']`` is
        set to the ranked list as it will be after this save."""
        files, evicted, keep = (self.files, [], False) if epoch is None else self.plan(epoch, float(metric))
        payload['history_files'] = [[name, value] for name, value in files]
        names = ([BEST_CHECKPOINT] if best else []) + ([HISTORY_CHECKPOINT.format(epoch=epoch)] if keep else [])
        if not names:
            atomic_save(payload, self.out_dir / LAST_CHECKPOINT)
            self.files = files
            return
        tmp = self.out_dir / f'.checkpoint.{os.getpid()}.{secrets.token_hex(4)}.tmp'
        try:
            try:
                atomic_save(payload, tmp)
            except OSError as e:  # name the checkpoint, not the temporary file
                raise OSError(e.errno, e.strerror or str(e), str(self.out_dir / names[0])) from e
            for name in names:
                place_copy(tmp, self.out_dir / name)
            for name in evicted:  # only files this run listed: never another run's
                with contextlib.suppress(FileNotFoundError):
                    (self.out_dir / name).unlink()
            os.replace(tmp, self.out_dir / LAST_CHECKPOINT)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fsync_dir(self.out_dir)
        self.files = files


def load_training_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by ``gczoo train`` (through ``gczoo.models.weights.read_checkpoint``).

    Raises ``CheckpointError`` for a missing, truncated/corrupt or foreign file.
    """
    path = Path(path)
    if path.suffix == '.safetensors':
        raise CheckpointError(
            f'{str(path)!r} is a safetensors weights file, not a gczoo training checkpoint (no {CHECKPOINT_FORMAT!r} '
            f'training state); to start from its weights use --initial-checkpoint instead of --resume')
    ckpt = read_checkpoint(path)
    if ckpt.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f'{str(path)!r} is not a gczoo training checkpoint (no {CHECKPOINT_FORMAT!r} training state); '
            f'to start from its weights use --initial-checkpoint instead of --resume')
    return ckpt


def plain(value: Any) -> Any:
    """``value`` as the plain types ``torch.load(weights_only=True)`` accepts."""
    if value is None or isinstance(value, (bool, torch.Tensor)):
        return value
    for plain_type in (int, float, str):  # also turns subclasses (torch's TorchVersion, IntEnum) into the base type
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        # int keys stay ints: the optimizer's state is keyed by parameter index
        return {(k if type(k) in (int, str) else str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return str(value)


def capture_rng() -> Dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states as plain tensors and numbers."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        'python_version': int(version), 'python_state': torch.tensor(mt_state, dtype=torch.int64),
        'python_gauss': gauss,
        'numpy_name': str(np_name), 'numpy_keys': torch.from_numpy(np_keys.astype(np.int64)),
        'numpy_pos': int(np_pos), 'numpy_has_gauss': int(np_has_gauss), 'numpy_gauss': float(np_gauss),
        'torch': torch.get_rng_state(),
        'cuda': (list(torch.cuda.get_rng_state_all())
                 if torch.cuda.is_available() and torch.cuda.is_initialized() else []),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo ``capture_rng``: the process draws the same numbers as the one that saved ``state``."""
    random.setstate((state['python_version'], tuple(int(x) for x in state['python_state'].tolist()),
                     state['python_gauss']))
    np.random.set_state((state['numpy_name'], state['numpy_keys'].numpy().astype(np.uint32), state['numpy_pos'],
                         state['numpy_has_gauss'], state['numpy_gauss']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
