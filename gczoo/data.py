"""Training data: the embedded digits dataset, ImageFolder checks, and the pieces that make a training
run's data order and augmentation reproducible to the bit (so a resumed run equals an uninterrupted one).

* ``prepare_digits()`` writes scikit-learn's handwritten digits (1,797 8x8 scans that ship inside the
  scikit-learn wheel, so nothing is downloaded) once as an ImageFolder tree of RGB PNGs with a
  deterministic, stratified train/val split. ``python -m gczoo.train`` trains on it by default.
* ``check_image_folder()`` turns a missing/empty/mis-laid dataset folder into one clear ``ValueError``.
* ``SeededTransformDataset`` applies the (random) training transform under an RNG seeded from
  ``(seed, epoch, sample index)``: a sample's augmentation no longer depends on which worker, rank or
  resumed process loads it.
* ``ResumableDistributedSampler`` is torch's ``DistributedSampler`` (order = f(seed, epoch)) that can
  skip the samples a checkpointed run already consumed in the current epoch.
"""
import itertools
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from gczoo.files import staged_folder

__all__ = [
    'DATA_HOME_ENV', 'DIGITS_CLASSES', 'data_home', 'prepare_digits', 'IMAGE_EXTENSIONS', 'find_split',
    'check_image_folder', 'SeededTransformDataset', 'ResumableDistributedSampler',
]

DATA_HOME_ENV = 'GCZOO_DATA_HOME'
DIGITS_CLASSES: Tuple[str, ...] = tuple(str(d) for d in range(10))
IMAGE_EXTENSIONS: Tuple[str, ...] = ('.png', '.jpg', '.jpeg')  # what timm's folder reader picks up

# the split names timm's create_dataset looks for (timm.data.dataset_factory._search_split)
_SPLIT_SYNONYMS = {
    'train': ('train', 'training'),
    'training': ('train', 'training'),
    'validation': ('val', 'valid', 'validation', 'eval', 'evaluation'),
}
for _name in ('val', 'valid', 'eval', 'evaluation'):
    _SPLIT_SYNONYMS[_name] = _SPLIT_SYNONYMS['validation']

_DIGITS_FORMAT = 1  # bump when the written tree changes, so stale caches are rewritten


def data_home() -> Path:
    """Where gczoo keeps datasets it writes: ``$GCZOO_DATA_HOME``, else ``~/.cache/gczoo``."""
    return Path(os.environ.get(DATA_HOME_ENV) or Path.home() / '.cache' / 'gczoo').expanduser()


def _digits_manifest(img_size: int, val_fraction: float, seed: int) -> Dict[str, Any]:
    return {'dataset': 'sklearn.datasets.load_digits', 'format': _DIGITS_FORMAT, 'img_size': img_size,
            'val_fraction': val_fraction, 'seed': seed}


def prepare_digits(
        root: Optional[Union[str, os.PathLike]] = None,
        *,
        img_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
) -> Path:
    """Write scikit-learn's handwritten digits once as ``ROOT/{train,val}/<digit>/<index>.png``; return ROOT.

    ROOT defaults to ``data_home()/digits-<img_size>px``. The 8x8 scans (ink 0-16) are scaled to
    0-255, resized to ``img_size`` (bicubic) and stored as RGB, so every ImageFolder pipeline reads
    them unchanged. The split is stratified and fixed by ``seed`` (80/20 by default: 1,437 training
    and 360 validation images). The tree is built in a temporary sibling folder and renamed into
    place (``gczoo.files.staged_folder``), so an interrupted or concurrent call never leaves a half-written dataset; a complete tree
    (``manifest.json`` matching the arguments) is reused as is.
    """
    if not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f'img_size must be an int >= 8 (the scans are 8x8), got {img_size!r}')
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction!r}')
    root = Path(root) if root is not None else data_home() / f'digits-{img_size}px'
    manifest = _digits_manifest(img_size, val_fraction, seed)
    manifest_path = root / 'manifest.json'
    if manifest_path.is_file():
        try:
            if {k: v for k, v in json.loads(manifest_path.read_text()).items() if k in manifest} == manifest:
                return root
        except (OSError, ValueError):
            pass  # unreadable manifest: rewrite the tree

    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    indices = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=digits.target, random_state=seed)

    try:  # a stale tree (an older format) is swapped out whole
        with staged_folder(root) as tmp:
            for split, split_idx in (('train', train_idx), ('val', val_idx)):
                for cls in DIGITS_CLASSES:
                    (tmp / split / cls).mkdir(parents=True)
                for i in sorted(split_idx.tolist()):
                    img = Image.fromarray(images[i], mode='L').resize((img_size, img_size), Image.BICUBIC)
                    img.convert('RGB').save(tmp / split / DIGITS_CLASSES[digits.target[i]] / f'{i:04d}.png')
            counts = {'train': int(len(train_idx)), 'val': int(len(val_idx))}
            (tmp / 'manifest.json').write_text(json.dumps({**manifest, 'counts': counts}, indent=2))
    except OSError:
        if not manifest_path.is_file():  # not a race lost to a concurrent writer that finished
            raise
    return root


def find_split(root: Union[str, os.PathLike], split: str) -> Optional[Path]:
    """The folder of ``split`` under ``root`` (``split`` itself or one of timm's synonyms, e.g. val for
    validation), or None."""
    root = Path(root)
    for name in (split, *_SPLIT_SYNONYMS.get(split, ())):
        if (root / name).is_dir():
            return root / name
    return None


def check_image_folder(root: Union[str, os.PathLike], split: str, flag: str = '--data-dir') -> Tuple[Path, List[str]]:
    """Check ``root/<split>/<class>/<image>`` exists and holds images; return the split folder and
    its class names (sorted, as timm's folder reader numbers them).

    Raises ``ValueError`` naming what is missing and the layout expected.
    """
    layout = f'expected the ImageNet/ImageFolder layout {root}/<split>/<class name>/<image>{IMAGE_EXTENSIONS[0]}'
    root = Path(root)
    if not root.exists():
        raise ValueError(f'{flag} {str(root)!r} does not exist ({layout})')
    if not root.is_dir():
        raise ValueError(f'{flag} {str(root)!r} is not a directory ({layout})')
    folder = find_split(root, split)
    if folder is None:
        tried = ', '.join(dict.fromkeys((split, *_SPLIT_SYNONYMS.get(split, ()))))
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(
            f'{flag} {str(root)!r} has no folder for split {split!r} (looked for: {tried}; found: '
            f'{", ".join(present) or "no sub-folders"}); {layout}, or set --train-split/--val-split')
    classes = set()
    count = 0
    for dirpath, _, filenames in os.walk(folder):
        images = [f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        if images and Path(dirpath) != folder:
            classes.add(Path(dirpath).name)
            count += len(images)
    if not count:
        raise ValueError(
            f'split folder {str(folder)!r} holds no images in class sub-folders '
            f'(image types: {", ".join(IMAGE_EXTENSIONS)}); {layout}')
    return folder, sorted(classes)


class SeededTransformDataset(Dataset):
    """``transform(dataset[i])`` under an RNG seeded from ``(seed, epoch, i)``.

    Python's ``random``, NumPy's and torch's (CPU) global RNGs, the ones timm's and torchvision's random
    transforms draw from, are seeded per sample (and, in the main process, restored afterwards), so:

    * a sample gets the same augmentation in a 1-process and an N-process run, and in a run resumed
      from a checkpoint mid-epoch (whatever worker loads it);
    * loading data never moves the training process's own RNG (mixup, dropout, drop-path).

    Call ``set_epoch`` before each epoch (before the ``DataLoader`` iterator is created: workers get
    a copy of the dataset when they start).
    """

    def __init__(self, dataset: Dataset, transform: Optional[Callable], seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _sample_seed(self, index: int) -> int:
        # SeedSequence mixes the three numbers into well-separated streams (no seed+epoch collisions)
        return int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, int(index)]).generate_state(1)[0])

    def __getitem__(self, index: int) -> Any:
        img, target = self.dataset[index][:2]
        if self.transform is None:
            return img, target
        seed = self._sample_seed(index)
        if torch.utils.data.get_worker_info() is not None:
            _seed_all(seed)  # a loader worker's RNGs serve this dataset only: nothing to restore
            return self.transform(img), target
        saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            _seed_all(seed)
            img = self.transform(img)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])
        return img, target


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU generator only: torch.manual_seed also seeds every device (slow)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (the order of an epoch is a function of ``seed`` and ``epoch``) that can
    start an epoch part-way: ``set_start(n)`` skips this rank's first ``n`` samples, the ones a
    checkpointed run already trained on.

    ``epoch_samples`` (``--train-num-samples``) makes an epoch the first N samples of its shuffled order
    (a new subset every epoch) instead of the whole dataset; None gives exactly torch's order.
    """

    def __init__(self, dataset: Sequence, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, epoch_samples: Optional[int] = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        if epoch_samples is not None:
            if not 1 <= epoch_samples <= len(dataset):
                raise ValueError(f'epoch_samples must be in [1, {len(dataset)}] (the dataset\'s size), '
                                 f'got {epoch_samples}')
            self.num_samples = math.ceil(epoch_samples / self.num_replicas)
            self.total_size = self.num_samples * self.num_replicas
        self.epoch_samples = epoch_samples
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f'start must be in [0, {self.num_samples}] (samples per rank), got {start}')
        self.start = int(start)

    def _indices(self) -> List[int]:
        if self.epoch_samples is None:
            return list(super().__iter__())
        # torch's DistributedSampler.__iter__ on the first epoch_samples indices of the epoch's permutation
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g) if self.shuffle else torch.arange(len(self.dataset))
        indices = order[:self.epoch_samples].tolist()
        padding = self.total_size - len(indices)
        indices += (indices * math.ceil(padding / len(indices)))[:padding] if padding > 0 else []
        return indices[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self._indices()), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start
