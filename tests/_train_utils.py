"""Helpers of the training tests: a tiny ImageFolder dataset and ways to run ``gczoo.train``."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = ('circle', 'square', 'stripes')


def make_image_folder(root: Path, train_per_class: int = 8, val_per_class: int = 4, size: int = 32,
                      classes: Sequence[str] = CLASSES, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<n>.png``: a learnable shape per class over noise, different colors."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    shapes = {
        'circle': (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2,
        'square': (abs(xx - size / 2) < size / 4) & (abs(yy - size / 2) < size / 4),
        'stripes': (xx // 4) % 2 == 0,
    }
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            mask = shapes.get(cls, rng.random((size, size)) > 0.5)
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3))
                img[mask] = rng.integers(150, 255, 3)
                Image.fromarray(img.astype(np.uint8)).save(folder / f'{i:03d}.png')
    return root


def tiny_args(data_dir: Path, output: Path, experiment: str = 'run', **overrides: object) -> List[str]:
    """Flags of a fast, deterministic CPU run (resnet18_gc at 32x32, batch 4, SGD)."""
    flags: Dict[str, object] = {
        '--data-dir': data_dir, '--model': 'resnet18_gc', '--img-size': 32, '--batch-size': 4, '--epochs': 2,
        '--workers': 0, '--opt': 'sgd', '--lr': 0.05, '--weight-decay': 1e-4, '--warmup-epochs': 0,
        '--smoothing': 0.0, '--seed': 3, '--output': output, '--experiment': experiment, '--device': 'cpu',
    }
    for key, value in overrides.items():
        flags['--' + key.replace('_', '-')] = value
    argv: List[str] = ['--no-progress']
    for flag, value in flags.items():
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_train(argv: Sequence[object]) -> int:
    """``gczoo train ARGV`` in this process through the CLI runner (errors: one line, exit 2), with one
    intra-op thread: the same arithmetic as the 1-thread subprocesses."""
    from gczoo.cli import run_command
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_command('train', [str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def subprocess_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(REPO), **extra)
    env.pop('GCZOO_DEBUG', None)
    return env


def train_command(argv: Sequence[str], nproc: int = 0, torchrun_flags: Sequence[str] = ()) -> List[str]:
    """``python -m gczoo.train ARGV``, or under ``torchrun --nproc-per-node NPROC`` when nproc > 0."""
    if nproc:
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(nproc), '--standalone',
                *torchrun_flags, '-m', 'gczoo.train', *argv]
    return [sys.executable, '-m', 'gczoo.train', *argv]


def run(cmd: Sequence[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env),
                          cwd=str(REPO))
    return proc


def model_weights(run_dir: Path, name: str = 'last.pth.tar') -> Dict[str, torch.Tensor]:
    return torch.load(run_dir / name, map_location='cpu', weights_only=True)['state_dict']


def summary_rows(run_dir: Path) -> List[Dict[str, str]]:
    import csv
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


METRIC_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr')  # not the timing columns


def metrics_of(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    return [{k: row[k] for k in METRIC_COLUMNS} for row in rows]


def assert_same_weights(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], atol: float = 0.0,
                        rtol: float = 0.0, msg: Optional[str] = None) -> None:
    assert a.keys() == b.keys(), msg
    for key in a:
        if atol == 0 and rtol == 0:
            assert torch.equal(a[key], b[key]), f'{key} differs {msg or ""}'
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=f'{key} differs {msg or ""}')


def evaluate_alone(run_dir: Path, weights: Dict[str, torch.Tensor], data_dir: Path, split: str = 'val',
                   amp_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Metrics of ``weights`` on ``data_dir/split`` computed as a user would, apart from the training code: the
    model and its preprocessing from the run's Hub-layout export, timm's folder dataset and transform,
    ``gczoo.evaluate.validate`` in one process."""
    import timm
    from timm.data import create_dataset, create_transform, resolve_data_config
    from gczoo.evaluate import validate
    model = timm.create_model(f'local-dir:{run_dir / "export"}', pretrained=True)
    model.load_state_dict(weights)
    data_config = resolve_data_config(model=model)
    dataset = create_dataset('', root=str(data_dir / split), transform=create_transform(**data_config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, num_workers=0)  # another batching than training's
    return validate(model, loader, num_classes=model.num_classes, amp_dtype=amp_dtype)
