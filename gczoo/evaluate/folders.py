"""Evaluation data: the folder to evaluate, its classes mapped to a model's outputs, and a dataset that
skips unreadable images and counts them (timm's dataset puts the next image in their place, which
counts that image twice)."""
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    'BadImageError', 'ClassMapping', 'find_eval_folder', 'scan_image_folder', 'read_class_map',
    'resolve_class_mapping', 'decode_image', 'EvalImageFolder', 'collate_skipping', 'SkippingLoader',
]

_SPLIT_NAMES = {'val': ('val', 'validation'), 'validation': ('validation', 'val')}
_ALL_SPLIT_NAMES = ('train', 'training', 'val', 'valid', 'validation', 'test', 'eval', 'evaluation')


class BadImageError(ValueError):
    """An image file could not be decoded (``--on-bad-image error``)."""


@dataclasses.dataclass(frozen=True)
class ClassMapping:
    """Folder name -> model output index, and how it was decided (printed and written to the JSON)."""
    class_to_idx: Dict[str, int]
    kind: str  # 'imagenet', 'label_names', 'class_map' or 'folder'
    description: str


def find_eval_folder(data_dir: os.PathLike, split: str = 'val') -> Path:
    """The folder whose sub-folders are the classes: ``data_dir/<split>`` (``val`` and ``validation``
    stand for each other) if it exists, else ``data_dir`` itself when it holds class folders and no
    other split (``train/``...). Raises ``ValueError`` naming what is missing."""
    layout = 'expected DATA/<split>/<class>/<image> (ImageNet: DATA/val/n01440764/*.JPEG) or DATA/<class>/<image>'
    root = Path(data_dir)
    if not root.exists():
        raise ValueError(f'--data-dir {str(root)!r} does not exist ({layout})')
    if not root.is_dir():
        raise ValueError(f'--data-dir {str(root)!r} is not a directory ({layout})')
    for name in _SPLIT_NAMES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    other_splits = [d for d in subdirs if d.lower() in _ALL_SPLIT_NAMES]
    if other_splits:  # e.g. only train/: its class folders must not be evaluated as if they were val
        raise ValueError(f'--data-dir {str(root)!r} has no {split!r} split folder (found {", ".join(other_splits)}); '
                         f'pass --split NAME')
    if not subdirs:
        raise ValueError(f'--data-dir {str(root)!r} has no split folder {split!r} and no class folders ({layout})')
    return root


def scan_image_folder(folder: os.PathLike) -> Tuple[List[Tuple[str, str]], List[str]]:
    """``[(image path, class name)]`` and the class names (sorted as timm's folder reader sorts them).

    Uses timm's ``ImageFolder`` reader (recursive; a class is the leaf folder's name).
    """
    from timm.data import create_reader
    reader = create_reader('', root=str(folder))
    idx_to_class = {idx: name for name, idx in reader.class_to_idx.items()}
    samples = [(str(path), idx_to_class[target]) for path, target in reader.samples]
    if not samples:
        raise ValueError(f'{str(folder)!r} holds no images in class sub-folders (ImageFolder layout: '
                         f'<folder>/<class>/<image>.jpg)')
    loose = [path for path, name in samples if name == '']
    if loose:
        raise ValueError(f'{str(folder)!r} has {len(loose)} images outside class sub-folders (e.g. {loose[0]!r}); '
                         f'each image must sit in a folder named after its class')
    return samples, list(reader.class_to_idx)


def read_class_map(path: os.PathLike) -> Dict[str, int]:
    """timm's ``.txt`` class map (one class name per line; line number = index) or a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'--class-map {str(path)!r} does not exist')
    if path.suffix == '.json':
        try:
            mapping = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f'--class-map {str(path)!r} is not valid JSON: {e}') from e
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise ValueError(f'--class-map {str(path)!r} must be a JSON object of class name -> index')
        return {str(k): int(v) for k, v in mapping.items()}
    names = [line.strip() for line in path.read_text().splitlines()]
    if names and names[-1] == '':
        names = names[:-1]
    return {name: idx for idx, name in enumerate(names) if name}


def _imagenet_synsets(num_classes: int) -> Optional[List[str]]:
    from timm.data import ImageNetInfo, infer_imagenet_subset
    subset = infer_imagenet_subset({'num_classes': num_classes})
    return list(ImageNetInfo(subset).label_names()) if subset else None


def resolve_class_mapping(
        class_names: Sequence[str],
        num_classes: int,
        *,
        class_map: Optional[os.PathLike] = None,
        label_names: Optional[Sequence[str]] = None,
) -> ClassMapping:
    """Map each class folder to an output index of a ``num_classes``-way model.

    In order: ``class_map`` (a file) if given; the model's ``label_names`` if every folder is one of
    them; timm's ImageNet order if the head is an ImageNet head (1000, 11821, 21841, ... classes) and
    every folder is a WordNet id of that class set; else the folders' own sorted order, which needs
    exactly ``num_classes`` folders. Raises ``ValueError`` saying how many classes each side has.
    """
    names = list(class_names)
    if class_map is not None:
        mapping = read_class_map(class_map)
        missing = [n for n in names if n not in mapping]
        if missing:
            raise ValueError(f'--class-map {str(class_map)!r} has no entry for {len(missing)} of the {len(names)} '
                             f'class folders (e.g. {", ".join(missing[:5])})')
        bad = {n: mapping[n] for n in names if not 0 <= mapping[n] < num_classes}
        if bad:
            raise ValueError(f'--class-map {str(class_map)!r} maps {len(bad)} folders outside the model\'s '
                             f'{num_classes} outputs (e.g. {next(iter(bad.items()))})')
        return ClassMapping({n: mapping[n] for n in names}, 'class_map',
                            f'--class-map {class_map} ({len(names)} classes)')
    if label_names and len(label_names) == num_classes and all(n in label_names for n in names):
        index = {n: i for i, n in enumerate(label_names)}
        return ClassMapping({n: index[n] for n in names}, 'label_names',
                            f"the model's label_names ({len(names)} of its {num_classes} classes present)")
    synsets = _imagenet_synsets(num_classes)
    if synsets is not None:
        index = {s: i for i, s in enumerate(synsets)}
        if all(n in index for n in names):
            return ClassMapping({n: index[n] for n in names}, 'imagenet',
                                f"timm's ImageNet class order (timm.data.ImageNetInfo, {num_classes} classes; "
                                f'{len(names)} present)')
    if len(names) != num_classes:
        wnids = sum(1 for n in names if n.startswith('n') and n[1:].isdigit() and len(n) == 9)
        detail = (f'{wnids} of the folder names look like WordNet ids but not all are ImageNet classes of this head'
                  if wnids else f'the folder names (e.g. {", ".join(names[:3])}) are not ImageNet WordNet ids')
        raise ValueError(
            f'the data has {len(names)} class folders but the model\'s head has {num_classes} outputs, and {detail}. '
            f'Pass --class-map FILE (one model class name per line, as timm) to map folders to outputs, or '
            f'evaluate a model trained on these {len(names)} classes (--checkpoint, local-dir:DIR)')
    return ClassMapping({n: i for i, n in enumerate(names)}, 'folder',
                        f'the sorted folder names ({len(names)} classes, the order timm and gczoo train number them)')


def decode_image(path: str, mode: str = 'RGB') -> Any:
    """The image at ``path`` as an RGB PIL image; 16-bit images are scaled to 8 bits (PIL's own
    ``convert('RGB')`` clips them, turning almost every pixel white). ``mode``: ``'L'`` for 1-channel
    models, ``'RGBA'`` for 4, as timm reads images for ``in_chans``."""
    import numpy as np
    from PIL import Image
    with open(path, 'rb') as f:
        image = Image.open(f)
        if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
            pixels = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if image.mode.startswith('I;16') or pixels.max(initial=0) > 255 else 255.0
            image = Image.fromarray(np.clip(np.rint(pixels * (255.0 / peak)), 0, 255).astype(np.uint8))
        return image.convert(mode)


class EvalImageFolder(Dataset):
    """``(image, target, bad_path)`` for each ``(path, target)``; an undecodable image gives
    ``(None, target, path)`` with ``on_bad_image='skip'`` and raises ``BadImageError`` with ``'error'``."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable, on_bad_image: str = 'skip',
                 in_chans: int = 3) -> None:
        if on_bad_image not in ('skip', 'error'):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.samples = list(samples)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.mode = {1: 'L', 3: 'RGB', 4: 'RGBA'}.get(in_chans)
        if self.mode is None:
            raise ValueError(f'in_chans must be 1, 3 or 4 to read images, got {in_chans}')

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int, Optional[str]]:
        from PIL import Image
        path, target = self.samples[index]
        try:
            image = decode_image(path, self.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.on_bad_image == 'error':
                raise BadImageError(f'cannot read image {path!r} ({type(e).__name__}: {e}); '
                                    f'pass --on-bad-image skip to skip unreadable images and count them') from e
            return None, target, path
        return self.transform(image), target, None


def collate_skipping(batch: List[Tuple[Optional[torch.Tensor], int, Optional[str]]]) -> Tuple[Optional[torch.Tensor], torch.Tensor, List[str]]:
    good = [(image, target) for image, target, bad in batch if bad is None]
    images = torch.stack([image for image, _ in good]) if good else None
    targets = torch.tensor([target for _, target in good], dtype=torch.long)
    return images, targets, [bad for _, _, bad in batch if bad is not None]


class SkippingLoader:
    """Yields ``(images, targets)`` for ``validate`` and keeps the paths of the images it could not read."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.bad_files: List[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for images, targets, bad in self.loader:
            self.bad_files.extend(bad)
            if images is not None:
                yield images, targets
