"""``gczoo segment``: colour-coded PNGs of a segmentor's predictions for an image or a folder of images.

Each image goes through the tag's test pipeline (``gczoo.seg.inference.segment_image``); the prediction
is coloured with the dataset's palette (mmseg's Cityscapes / ADE20K palette) and written atomically to
``OUT/<image stem>.png`` (``--ids`` also writes ``OUT/<stem>_ids.png``, the class ids as an 8-bit grey
image). An undecodable image, an empty folder, an unwritable output folder, two inputs whose PNGs
would share a name or a prediction that would replace an input image end in one line, before the model is built.
"""
import argparse
import io
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from gczoo.args import ArgumentParser, device_name, positive_int
from gczoo.files import atomic_write, check_output_dir

from .create import create_segmentor
from .data import read_image
from .datasets import colorize, dataset_info
from .evaluate import resolve_seg_config
from .inference import segment_image

__all__ = ['build_parser', 'list_images', 'main']

_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog='gczoo segment', description='Colour-coded PNG predictions of a segmentor for an image '
                                                         'or a folder of images (the tag\'s test pipeline).')
    p.add_argument('inputs', nargs='+', metavar='PATH', help='images or folders of images')
    p.add_argument('--model', '-m', required=True, metavar='NAME', help='e.g. ccnet_r50_d8.cityscapes_512x1024_80k')
    p.add_argument('--pretrained', action='store_true', help="the tag's mmseg weights")
    p.add_argument('--checkpoint', default='', metavar='PATH', help="weights file (mmseg's layout or gczoo's)")
    p.add_argument('--out', required=True, metavar='DIR', help='output folder')
    p.add_argument('--dataset', choices=('cityscapes', 'ade20k'), default=None, help="palette (default: the tag's)")
    p.add_argument('--num-classes', type=positive_int, default=None,
                   help="classes of a fine-tuned --checkpoint (default: the tag's, else 19)")
    p.add_argument('--mode', choices=('whole', 'slide'), default=None)
    p.add_argument('--crop-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'))
    p.add_argument('--stride', type=positive_int, nargs=2, default=None, metavar=('H', 'W'))
    p.add_argument('--scale', type=positive_int, nargs=2, default=None, metavar=('LONG', 'SHORT'))
    p.add_argument('--no-resize', action='store_true')
    p.add_argument('--ids', action='store_true', help='also write the class ids as <stem>_ids.png')
    p.add_argument('--device', type=device_name, default=None)
    return p


def list_images(inputs: Sequence[str], subfolders: Optional[List[Path]] = None) -> List[Path]:
    """The image files named or directly inside the named folders (sorted; hidden files such as macOS'
    ``._x.jpg`` skipped); a ValueError when there is none. The folders' subfolders (not read) are appended
    to ``subfolders`` when given."""
    found: List[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            entries = sorted(path.iterdir())
            found += [p for p in entries
                      if p.is_file() and p.suffix.lower() in _SUFFIXES and not p.name.startswith('.')]
            if subfolders is not None:
                subfolders += [p for p in entries if p.is_dir() and not p.name.startswith('.')]
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f'input {text!r} does not exist')
    if not found:
        raise ValueError(f'no images ({", ".join(_SUFFIXES)}) in {", ".join(map(repr, inputs))}')
    return found


def _png(array: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return buffer.getvalue()


def _check_outputs(images: Sequence[Path], out: Path, ids: bool) -> None:
    """A ValueError when two outputs would share a file or an output would replace an input image."""
    names = [f'{p.stem}.png' for p in images] + ([f'{p.stem}_ids.png' for p in images] if ids else [])
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f'two inputs would both write {str(out / clash[0])!r} (their file name stems, or a stem '
                         f'and another\'s <stem>_ids, are the same); rename one or segment them into separate --out '
                         f'folders')
    inputs = {p.resolve() for p in images}
    for name in names:
        if (out / name).resolve() in inputs:
            raise ValueError(f'--out {str(out)!r}: the prediction {name} would overwrite the input image '
                             f'{str(out / name)!r}; write to another folder')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    subfolders: List[Path] = []
    images = list_images(args.inputs, subfolders)
    out = check_output_dir(args.out, '--out')
    _check_outputs(images, out, args.ids)
    if subfolders:
        print(f'note: subfolders are not read ({len(subfolders)}, first {str(subfolders[0])!r}); name them as inputs '
              f'to segment their images too', flush=True)
    if args.pretrained and args.checkpoint:
        raise ValueError('pass --pretrained or --checkpoint, not both')
    if not args.pretrained and not args.checkpoint:
        raise ValueError(f'no weights for --model {args.model!r}: pass --pretrained (the tag\'s mmseg weights) or '
                         f'--checkpoint FILE (random weights predict nothing)')
    if args.pretrained and args.num_classes:
        raise ValueError('--num-classes is for a fine-tuned --checkpoint; with --pretrained the heads would be '
                         'untrained')
    model = create_segmentor(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint or None,
                             num_classes=args.num_classes)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model.to(device).eval()
    config = resolve_seg_config(argparse.Namespace(**{**vars(args), 'split': ''}), model)
    _, palette = dataset_info(config['dataset'])
    if model.num_classes > len(palette):  # the classes beyond the palette would all be black
        raise ValueError(f'the {config["dataset"]} palette has {len(palette)} colours but the model predicts '
                         f'{model.num_classes} classes; pass the --dataset the model was trained on')
    with torch.no_grad():
        for path in images:
            pred = segment_image(model, read_image(path).to(device), config).argmax(0).to(torch.uint8).cpu().numpy()
            colour = _png(colorize(pred, palette))
            atomic_write(out / f'{path.stem}.png', lambda f, data=colour: f.write(data))
            if args.ids:
                ids = _png(pred)
                atomic_write(out / f'{path.stem}_ids.png', lambda f, data=ids: f.write(data))
            print(f'{path} -> {out / path.stem}.png')
    return 0

