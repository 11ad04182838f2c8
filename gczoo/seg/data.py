"""Segmentation folders in Cityscapes' and ADE20K's layouts, read as mmseg reads them.

* ``cityscapes``: ``ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``ROOT/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (train ids, what mmseg evaluates on) or,
  where that is absent, ``<name>_gtFine_labelIds.png`` (raw ids, mapped to train ids here).
* ``ade20k``: ``ROOT/images/<split>/**/<name>.jpg`` with ``ROOT/annotations/<split>/**/<name>.png`` (found
  recursively as mmseg lists them, hidden files skipped; 0 = other,
  mmseg's ``reduce_zero_label``: 0 -> 255, k -> k - 1).

Every problem is one ``ValueError`` naming the file and what to do: no such folder, no images, an image
without its mask, a mask of another size than its image, an RGB mask, label values out of range, an
undecodable file, a decompression bomb, a JPEG mask (lossy: its ids are not the annotator's). A problem found
in a loader worker travels back as its message (not a worker traceback).
"""
import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX

__all__ = ['SegSample', 'find_samples', 'masks_without_images', 'read_image', 'read_mask', 'SegFolder', 'LAYOUTS']

LAYOUTS = ('cityscapes', 'ade20k')
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class SegSample:
    image: Path
    mask: Path
    kind: str  # 'trainIds', 'labelIds' (Cityscapes raw ids) or 'ade20k'


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f'{what} {str(path)!r} is not a folder; check --data-dir and --split')
    return path


def _cityscapes(root: Path, split: str) -> List[SegSample]:
    images = sorted(_folder(root / 'leftImg8bit' / split, 'Cityscapes image folder').rglob('*_leftImg8bit.png'))
    gt = root / 'gtFine' / split
    out = []
    for image in images:
        stem = image.name[:-len('_leftImg8bit.png')]
        folder = gt / image.parent.relative_to(root / 'leftImg8bit' / split)
        train_ids, label_ids = folder / f'{stem}_gtFine_labelTrainIds.png', folder / f'{stem}_gtFine_labelIds.png'
        if train_ids.is_file():
            out.append(SegSample(image, train_ids, 'trainIds'))
        elif label_ids.is_file():
            out.append(SegSample(image, label_ids, 'labelIds'))
        else:
            raise ValueError(f'image {str(image)!r} has no ground truth: expected {str(train_ids)!r} (or '
                             f'{label_ids.name}); every image needs its mask')
    return out


def _ade20k(root: Path, split: str) -> List[SegSample]:
    folder = _folder(root / 'images' / split, 'ADE20K image folder')
    images = sorted(p for p in folder.rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith('.') for part in p.relative_to(folder).parts))  # as mmseg: recursive
    out = []
    for image in images:
        mask = (root / 'annotations' / split / image.relative_to(folder)).with_suffix('.png')
        if not mask.is_file():
            raise ValueError(f'image {str(image)!r} has no ground truth: expected {str(mask)!r}')
        out.append(SegSample(image, mask, 'ade20k'))
    return out


def find_samples(root: Union[str, Path], layout: str, split: str) -> List[SegSample]:
    """Every (image, mask) pair of a split; a ValueError for an empty or incomplete folder."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown dataset layout {layout!r}; expected one of {list(LAYOUTS)}')
    root = _folder(Path(root), 'dataset root')
    mine, other, theirs = ('leftImg8bit', 'images', 'ade20k') if layout == 'cityscapes' else ('images', 'leftImg8bit',
                                                                                             'cityscapes')
    if not (root / mine).is_dir() and (root / other).is_dir():
        raise ValueError(f'{str(root)!r} is in the {theirs} layout ({other}/), not the {layout} one ({mine}/): pass '
                         f'--dataset {theirs}')
    samples = (_cityscapes if layout == 'cityscapes' else _ade20k)(root, split)
    if not samples:
        pattern = 'leftImg8bit/{0}/*/*_leftImg8bit.png' if layout == 'cityscapes' else 'images/{0}/*.jpg'
        raise ValueError(f'no images in {str(root)!r} for split {split!r} (expected {pattern.format(split)})')
    return samples


def masks_without_images(root: Union[str, Path], layout: str, split: str, samples: List[SegSample]) -> List[Path]:
    """The split's mask files that no image of ``samples`` uses (images missing from the folder: mmseg, too,
    evaluates only the images it finds; the caller says how many masks that leaves out)."""
    if layout == 'cityscapes':
        folder, patterns = Path(root) / 'gtFine' / split, ('*_gtFine_labelTrainIds.png', '*_gtFine_labelIds.png')
    else:
        folder, patterns = Path(root) / 'annotations' / split, ('*.png',)
    if not folder.is_dir():
        return []
    used = {s.mask for s in samples}
    stems = {s.mask.name.replace('_gtFine_labelTrainIds.png', '').replace('_gtFine_labelIds.png', '')
             for s in samples}
    found = sorted({m for pattern in patterns for m in folder.rglob(pattern)
                    if not any(part.startswith('.') for part in m.relative_to(folder).parts)})
    if layout == 'cityscapes':  # an image evaluated on its labelTrainIds file leaves its labelIds file used too
        return [m for m in found if m not in used and m.name.split('_gtFine_')[0] not in stems]
    return [m for m in found if m not in used]


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB. A 16-bit grey image is scaled to 8 bits (value // 256) as OpenCV's ``IMREAD_COLOR``
    (mmcv's reader) does; PIL's ``convert('RGB')`` would clip every value above 255 to white."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            if img.mode.startswith('I;16'):
                grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
                array = np.repeat(grey[:, :, None], 3, axis=2)
            elif img.mode in ('I', 'F'):
                raise ValueError(f'image {str(path)!r} has 32-bit pixels (PIL mode {img.mode}); save it as an 8-bit '
                                 f'RGB or grey image')
            else:
                array = np.asarray(img.convert('RGB'))
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f'image {str(path)!r} cannot be decoded ({type(e).__name__}: {e}); replace or remove '
                         f'it') from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_mask(sample: SegSample, num_classes: int) -> torch.Tensor:
    """(H, W) int64 train ids in 0..num_classes-1 or 255 (ignored)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(sample.mask) as img:
            lossy = img.format in ('JPEG', 'MPO')
            array = np.asarray(img).astype(np.int64)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f'mask {str(sample.mask)!r} cannot be decoded ({type(e).__name__}: {e})') from e
    if lossy:  # lossy compression blurs label ids into their neighbours' values
        raise ValueError(f'mask {str(sample.mask)!r} is a {img.format} file: lossy compression changes label ids; '
                         f'use the dataset\'s original PNG masks')
    if array.ndim != 2:
        raise ValueError(f'mask {str(sample.mask)!r} has shape {array.shape}: expected one channel of label ids '
                         f'(a colour-coded mask is not a label map)')
    if sample.kind == 'labelIds':
        raw_max = max(CITYSCAPES_ID_TO_TRAINID)
        _check_range(sample.mask, array, raw_max + 1, 'Cityscapes labelIds')
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        for raw, train in CITYSCAPES_ID_TO_TRAINID.items():
            lut[raw] = train
        array = lut[array]
    elif sample.kind == 'ade20k':
        _check_range(sample.mask, array, num_classes + 1, 'ADE20K annotation (0 = other)')
        array = np.where((array == 0) | (array == IGNORE_INDEX), IGNORE_INDEX, array - 1)  # mmseg: 255 stays 255
    else:
        _check_range(sample.mask, array, num_classes, 'train ids')
    return torch.from_numpy(array)


def _check_range(path: Path, array: np.ndarray, limit: int, what: str) -> None:
    bad = np.unique(array[((array < 0) | (array >= limit)) & (array != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f'mask {str(path)!r} holds label values {bad[:8].tolist()} out of range for {what}: '
                         f'expected 0..{limit - 1} or {IGNORE_INDEX} (ignored); is it the right dataset or '
                         f'--num-classes?')


class SegFolder(Dataset):
    """(image (3, H, W) uint8, mask (H, W) int64, index) per sample; a broken sample gives its error message
    in place of the tensors (``(None, None, message)``) for the caller to raise in the main process."""

    def __init__(self, samples: List[SegSample], num_classes: int):
        self.samples, self.num_classes = list(samples), num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Union[int, str]]:
        sample = self.samples[index]
        try:
            image, mask = read_image(sample.image), read_mask(sample, self.num_classes)
            if tuple(image.shape[1:]) != tuple(mask.shape):
                raise ValueError(f'mask {str(sample.mask)!r} is {mask.shape[1]}x{mask.shape[0]} but its image '
                                 f'{sample.image.name} is {image.shape[2]}x{image.shape[1]}: a mask must have its '
                                 f'image\'s size')
        except ValueError as e:
            return None, None, str(e)
        return image, mask, index
