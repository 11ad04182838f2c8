"""Training checkpoints: everything a run needs to continue exactly, written so no crash leaves half a file.

* ``atomic_save`` writes with ``gczoo.files.atomic_write`` (temp file in the same folder, fsync,
  ``os.replace``; the file gets the umask's mode): a reader, or a ``kill -9`` at any moment, sees the
  old file or the new one. A failed write (full disk, read-only folder) raises ``OSError`` naming the file.
* ``load_training_checkpoint`` reads through ``gczoo.models.weights.read_checkpoint`` (safetensors or
  ``torch.load(weights_only=True)``, never code) and checks it is a gczoo training checkpoint.
* ``plain`` turns what goes into a checkpoint into the plain types ``weights_only`` accepts;
  ``capture_rng``/``restore_rng`` save and restore Python's, NumPy's and torch's RNG states.

Why not timm's ``CheckpointSaver``: it pickles ``args`` as an ``argparse.Namespace`` (unreadable with
``weights_only=True``), writes to a fixed ``tmp.pth.tar`` without fsync, and refreshes ``model_best``
by unlink-then-link, so a kill in between loses it.
"""
import os
import random
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import torch

from gczoo.errors import CheckpointError
from gczoo.files import atomic_write

__all__ = [
    'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'atomic_save', 'load_training_checkpoint', 'plain',
    'capture_rng', 'restore_rng',
]

CHECKPOINT_FORMAT = 'gczoo.train/1'
LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'best.pth.tar'


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


def load_training_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by ``gczoo train`` (through ``gczoo.models.weights.read_checkpoint``).

    Raises ``CheckpointError`` for a missing, truncated/corrupt or foreign file.
    """
    from gczoo.models.weights import read_checkpoint
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
