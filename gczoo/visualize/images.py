"""The images the attention maps are computed on, and timm's eval transform that prepares them.

Three sources: scikit-image's bundled photos (real pictures that install with the ``viz`` extra, so
nothing is downloaded), image files named on the command line, and an image folder (ImageFolder,
ImageNet layout or flat) for the analysis. Every image is decoded here, and one that cannot be read
is a ``ValueError`` naming its file: timm's ``ImageDataset`` would instead substitute the next image
with a log warning, and the analysis would count that image twice.

scikit-image and PIL are imported where an image is made, not at import: they come with the optional
extras, and the CLI names the missing extra.
"""
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from gczoo.data import find_split

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    'SAMPLE_IMAGES', 'sample_images', 'read_image', 'load_images', 'find_image_files', 'ImageFiles',
    'image_batches', 'data_transform', 'to_display',
]

PathLike = Union[str, os.PathLike]


def _skimage_data():
    import skimage.data
    return skimage.data


# Real photographs that install with scikit-image (no download): name -> loader of an (H, W[, 3]) uint8 array.
SAMPLE_IMAGES: Dict[str, Callable[[], np.ndarray]] = {
    'astronaut': lambda: _skimage_data().astronaut(),
    'coffee': lambda: _skimage_data().coffee(),
    'chelsea': lambda: _skimage_data().chelsea(),
    'rocket': lambda: _skimage_data().rocket(),
    'motorcycle': lambda: _skimage_data().stereo_motorcycle()[0],
    'camera': lambda: _skimage_data().camera(),
}


def sample_images(names: Optional[Sequence[str]] = None) -> List[Tuple[str, 'Image.Image']]:
    """``(name, RGB PIL image)`` of scikit-image's bundled photos (default: all of ``SAMPLE_IMAGES``)."""
    from PIL import Image
    names = list(SAMPLE_IMAGES) if names is None else list(names)
    unknown = [n for n in names if n not in SAMPLE_IMAGES]
    if unknown:
        raise ValueError(f'names: unknown sample images {unknown}; choose from {list(SAMPLE_IMAGES)}')
    return [(name, Image.fromarray(SAMPLE_IMAGES[name]()).convert('RGB')) for name in names]


def read_image(path: PathLike, what: str = 'IMAGE') -> 'Image.Image':
    """The RGB image in ``path``, decoded now; ``ValueError`` naming ``what`` and the file if it cannot be.

    Decompression bombs (more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` allows) are refused like
    corrupt files: PIL raises them as a plain ``Exception`` subclass.
    """
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'{what}: {str(path)!r} is not an existing file')
    try:
        with Image.open(path) as img:
            return img.convert('RGB')  # convert() decodes every pixel: a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f'{what}: {str(path)!r} is not a readable image ({type(e).__name__}: {e}); '
                         f'replace or remove it') from e


def load_images(paths: Sequence[PathLike]) -> List[Tuple[str, 'Image.Image']]:
    """``(file stem, RGB PIL image)`` for each path; ``ValueError`` naming IMAGE for a missing/unreadable file."""
    return [(Path(path).stem, read_image(path, 'IMAGE')) for path in paths]


def find_image_files(data_dir: PathLike, flag: str = '--data-dir') -> List[Path]:
    """The image files under ``data_dir`` in timm's order: its validation split folder (``val``,
    ``validation`` ... as timm's ``create_dataset`` looks for them) if it has one, else the folder
    itself, searched recursively (ImageFolder class folders or a flat folder of images).

    ``ValueError`` naming the folder when it does not exist or holds no images.
    """
    from timm.data import get_img_extensions
    from timm.data.readers.reader_image_folder import find_images_and_targets
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f'{flag}: {str(root)!r} is not a directory')
    folder = find_split(root, 'validation') or root
    extensions = get_img_extensions()
    samples, _ = find_images_and_targets(str(folder), types=extensions)
    if not samples:
        raise ValueError(f'{flag}: {str(folder)!r} has no images (looked for {", ".join(extensions)} files in it '
                         f'and its sub-folders); point {flag} at a folder of images or an ImageFolder/ImageNet tree')
    return [Path(path) for path, _ in samples]


class ImageFiles(torch.utils.data.Dataset):
    """``transform(image)`` for each file; an unreadable file raises ``ValueError`` naming it."""

    def __init__(self, paths: Sequence[PathLike], transform: Callable, what: str = '--data-dir') -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.what = what

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(read_image(self.paths[index], self.what))


def image_batches(
        data_dir: Optional[PathLike], transform: Callable, batch_size: int, max_images: Optional[int] = None,
) -> Tuple[Iterable[torch.Tensor], int]:
    """Batches of transformed images from ``data_dir`` (see :func:`find_image_files`) or, without one,
    the sample photos; and how many images there are. ``max_images`` keeps that many, evenly spaced,
    so every class of a sorted ImageFolder is represented."""
    if data_dir is None:
        names = list(SAMPLE_IMAGES)[:max_images]
        tensors = [transform(img) for _, img in sample_images(names)]
        return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)], len(tensors)
    paths = find_image_files(data_dir)
    if max_images is not None and len(paths) > max_images:
        indices = np.linspace(0, len(paths) - 1, max_images).round().astype(int).tolist()
        paths = [paths[i] for i in indices]
    # num_workers=0: a bad file's ValueError reaches the caller as itself, not wrapped by a worker
    loader = torch.utils.data.DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False,
                                         num_workers=0)
    return loader, len(paths)


def data_transform(model: nn.Module, img_size: Optional[int] = None) -> Tuple[Callable, Dict[str, Any]]:
    """timm's eval transform for ``model`` (its data config; ``img_size`` overrides the input size)."""
    from timm.data import create_transform, resolve_data_config
    args = {} if img_size is None else {'input_size': (3, int(img_size), int(img_size))}
    config = resolve_data_config(args, model=model)
    return create_transform(**config, is_training=False), config


def to_display(x: torch.Tensor, config: Dict[str, Any]) -> np.ndarray:
    """A normalised (3, H, W) input back to an (H, W, 3) float image in [0, 1]."""
    mean = torch.tensor(config['mean'], dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(config['std'], dtype=x.dtype, device=x.device)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().float().numpy()
