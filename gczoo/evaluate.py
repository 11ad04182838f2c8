"""Classification accuracy of a model: ``validate()`` on a loader (top-1/top-5 with torchmetrics,
correct across ranks) and the ``gczoo eval`` command on an image folder.

``gczoo eval`` (``python -m gczoo.evaluate``; ``scripts/eval.sh`` runs it under torchrun) evaluates
a model given by name with ``--pretrained``, by ``--checkpoint FILE``, or as ``local-dir:DIR`` /
``hf-hub:ORG/REPO``, on

* an ImageNet-layout folder (``DATA/val/<wnid>/*.JPEG``): folder names are WordNet ids and each is
  mapped to its index in timm's ImageNet class order (``timm.data.ImageNetInfo``), so a folder with
  a few classes scores a 1000-class model correctly;
* a plain ImageFolder with its own classes: the model's ``label_names`` if it has them (weights saved
  by gczoo/timm carry them), else ``--class-map FILE``, else the sorted folder names (timm's reader
  order, the order ``gczoo train`` numbers them), which must then be as many as the model's outputs.

Images go through the model's own evaluation transform (timm's ``resolve_data_config`` +
``create_transform``: resize, ``crop_pct``, interpolation, mean/std) unless ``--img-size``,
``--crop-pct`` or ``--interpolation`` override it. Under torchrun each rank takes every
``world_size``-th image (``ShardSampler``: nothing padded or dropped) and ``validate`` sums the
metric states across ranks. An unreadable image is skipped and counted (``--on-bad-image skip``,
the default) or stops the run naming the file (``--on-bad-image error``); timm's own dataset would
silently put the next image in its place, which counts that image twice. Results go to
``OUT/<model>.csv`` (timm ``validate.py``'s columns) and ``OUT/<model>.json`` (everything).
"""
import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torchmetrics
from torch.utils.data import DataLoader, Dataset

__all__ = [
    'validate', 'CSV_COLUMNS', 'BadImageError', 'ClassMapping', 'find_eval_folder', 'scan_image_folder',
    'resolve_class_mapping', 'EvalImageFolder', 'create_eval_model', 'evaluate', 'main',
]


@torch.no_grad()
def validate(
        model: nn.Module,
        loader: Iterable,
        *,
        num_classes: int,
        device: torch.device = torch.device('cpu'),
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        criterion: Optional[nn.Module] = None,
        progress: Optional[str] = None,
) -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent), mean loss and sample count of ``model`` over ``loader``.

    With ``torch.distributed`` initialised, each rank sees its own shard (use ``ShardSampler`` so no
    sample is duplicated or dropped) and torchmetrics sums the states across ranks, so every rank
    returns the figures of the whole dataset.
    """
    was_training = model.training
    model.eval()
    top_k = min(5, num_classes)
    metrics = torchmetrics.MetricCollection({
        'top1': torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=1, average='micro'),
        f'top{top_k}': torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average='micro'),
    }).to(device)
    loss_sum = torchmetrics.SumMetric().to(device)
    count = torchmetrics.SumMetric().to(device)
    criterion = criterion or nn.CrossEntropyLoss()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=progress, leave=False)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
        logits = logits.float()
        metrics.update(logits, targets)
        loss_sum.update(criterion(logits, targets) * targets.numel())
        count.update(torch.tensor(float(targets.numel()), device=device))
    n = float(count.compute())
    results = {k: 100.0 * float(v) for k, v in metrics.compute().items()} if n else {'top1': 0.0, f'top{top_k}': 0.0}
    if top_k != 5:
        results['top5'] = results[f'top{top_k}']
    results['loss'] = float(loss_sum.compute()) / n if n else float('nan')
    results['count'] = n
    model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------------
# gczoo eval

CSV_COLUMNS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation')
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


def _read_class_map(path: os.PathLike) -> Dict[str, int]:
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
        mapping = _read_class_map(class_map)
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


def _decode(path: str) -> Any:
    from PIL import Image
    with open(path, 'rb') as f:
        image = Image.open(f)
        return image.convert('RGB')


class EvalImageFolder(Dataset):
    """``(image, target, bad_path)`` for each ``(path, target)``; an undecodable image gives
    ``(None, target, path)`` with ``on_bad_image='skip'`` and raises ``BadImageError`` with ``'error'``."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable, on_bad_image: str = 'skip') -> None:
        if on_bad_image not in ('skip', 'error'):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.samples = list(samples)
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int, Optional[str]]:
        from PIL import Image
        path, target = self.samples[index]
        try:
            image = _decode(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.on_bad_image == 'error':
                raise BadImageError(f'cannot read image {path!r} ({type(e).__name__}: {e}); '
                                    f'pass --on-bad-image skip to skip unreadable images and count them') from e
            return None, target, path
        return self.transform(image), target, None


def _collate(batch: List[Tuple[Optional[torch.Tensor], int, Optional[str]]]) -> Tuple[Optional[torch.Tensor], torch.Tensor, List[str]]:
    good = [(image, target) for image, target, bad in batch if bad is None]
    images = torch.stack([image for image, _ in good]) if good else None
    targets = torch.tensor([target for _, target in good], dtype=torch.long)
    return images, targets, [bad for _, _, bad in batch if bad is not None]


class _SkippingLoader:
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


def _load_checkpoint_into(model: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    from gczoo.models import CheckpointError
    from gczoo.models.weights import compare_state_dicts
    mismatch = compare_state_dicts(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f'--checkpoint {path!r} does not fit {type(model).__name__} '
            f'({getattr(model, "pretrained_cfg", {}).get("architecture", "?")}): {mismatch}. '
            f'Is it a checkpoint of this model (and of this --num-classes)?')
    model.load_state_dict(state, strict=False)


def create_eval_model(
        model_name: str,
        *,
        pretrained: bool = False,
        checkpoint: Optional[os.PathLike] = None,
        num_classes: Optional[int] = None,
) -> nn.Module:
    """The model to evaluate, in eval mode.

    ``local-dir:``/``hf-hub:`` names load their weights; a registered name needs ``pretrained=True``
    or a ``checkpoint`` (a ``.safetensors`` file or a torch file read with ``weights_only=True``;
    ``num_classes`` defaults to the checkpoint's classifier size). Random weights are refused: their
    accuracy means nothing. Raises ``ValueError`` (unknown model), ``CheckpointError`` (unreadable or
    mismatched checkpoint) or ``PretrainedWeightsError`` (weights that cannot be had).
    """
    from gczoo.models.hub_folder import create_model
    from gczoo.models import read_state_dict
    from gczoo.models.weights import classifier_names
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f'--model must be a model name, got {model_name!r}')
    is_hub = model_name.startswith(('local-dir:', 'hf-hub:'))
    if not is_hub:
        import timm
        import gczoo  # noqa: F401  (registers the zoo with timm)
        if not timm.is_model(model_name):
            import difflib
            close = difflib.get_close_matches(model_name.split('.')[0], timm.list_models(), n=4)
            hint = f' Did you mean: {", ".join(close)}?' if close else ''
            raise ValueError(f'unknown model {model_name!r}: not a timm or gczoo model name, nor local-dir:DIR / '
                             f'hf-hub:ORG/REPO.{hint}')
    if model_name.startswith('local-dir:') and not Path(model_name[len('local-dir:'):]).is_dir():
        raise ValueError(f'--model {model_name!r}: folder {model_name[len("local-dir:"):]!r} does not exist')
    if pretrained and checkpoint is not None:
        raise ValueError('pass either --pretrained or --checkpoint, not both')
    if not (pretrained or checkpoint is not None or is_hub):
        raise ValueError(f'no weights for --model {model_name!r}: pass --pretrained, --checkpoint FILE, or a '
                         f'"local-dir:DIR" / "hf-hub:ORG/REPO" name (evaluating random weights measures nothing)')
    kwargs: Dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if state is not None and num_classes is None:
        import timm
        probe = create_model(model_name, pretrained=False) if is_hub else timm.create_model(model_name, device='meta')
        head = classifier_names(probe)[0] + '.weight'
        if head in state:
            kwargs['num_classes'] = int(state[head].shape[0])
    model = create_model(model_name, pretrained=(pretrained or is_hub) and state is None, **kwargs)
    if state is not None:
        _load_checkpoint_into(model, state, str(checkpoint))
    return model.eval()


def _safe_name(model_name: str) -> str:
    name = model_name
    if name.startswith('local-dir:'):
        name = Path(name[len('local-dir:'):]).resolve().name or 'local-dir'
    elif name.startswith('hf-hub:'):
        name = name[len('hf-hub:'):]
    return ''.join(c if c.isalnum() or c in '._-' else '_' for c in name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='gczoo eval',
        description='Top-1/top-5 of a model on an ImageNet-layout folder (DATA/val/<wnid>/*.JPEG, timm ImageNet '
                    'class order) or a plain ImageFolder. Run under torchrun (scripts/eval.sh) for several processes.')
    p.add_argument('--model', '-m', required=True, metavar='NAME',
                   help='a timm/gczoo model name (with --pretrained or --checkpoint), local-dir:DIR or hf-hub:ORG/REPO')
    p.add_argument('--data-dir', required=True, metavar='DIR', help='dataset root (DIR/<split>/<class>/... or DIR/<class>/...)')
    p.add_argument('--split', default='val', help='split folder under --data-dir (default val; validation also found)')
    p.add_argument('--pretrained', action='store_true', help="the model's published pretrained weights")
    p.add_argument('--checkpoint', metavar='FILE', help='weights file (.safetensors, or .pth read with weights_only=True)')
    p.add_argument('--num-classes', type=int, help="the model's outputs (default: the checkpoint's classifier size)")
    p.add_argument('--class-map', metavar='FILE',
                   help='class name per line (line = output index, as timm) or a JSON {name: index}; default: automatic')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained cfg)")
    p.add_argument('--crop-pct', type=float, help="center crop fraction (default: the model's pretrained cfg)")
    p.add_argument('--interpolation', choices=('bilinear', 'bicubic', 'nearest', 'lanczos', 'box', 'hamming'),
                   help="resize interpolation (default: the model's pretrained cfg)")
    p.add_argument('--batch-size', '-b', type=int, default=64)
    p.add_argument('--workers', '-j', type=int, default=4, help='data loading processes per rank')
    p.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda if available')
    p.add_argument('--amp', action='store_true', help='autocast (bfloat16 on CPU, float16 on CUDA)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--on-bad-image', choices=('skip', 'error'), default='skip',
                   help='an undecodable image: skip it and count it (default) or stop with its file name')
    p.add_argument('--output-dir', default='output/eval', metavar='DIR', help='writes DIR/<model>.csv and DIR/<model>.json')
    p.add_argument('--dataset-name', help='how the results name the dataset (default: the --data-dir path and split)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def _positive(name: str, value: Optional[float]) -> None:
    if value is not None and value <= 0:
        raise ValueError(f'{name} must be positive, got {value}')


def evaluate(args: argparse.Namespace, command: str = '') -> Dict[str, Any]:
    """Run one evaluation as ``gczoo eval`` does (any torchrun process group is joined and left
    as the caller set it up); returns the results dict (the same on every rank)."""
    import torch.distributed as dist
    from timm.data import create_transform, resolve_data_config

    from gczoo.distributed import ShardSampler, init_distributed

    for name in ('batch_size', 'img_size', 'crop_pct', 'num_classes'):
        _positive('--' + name.replace('_', '-'), getattr(args, name))
    if args.crop_pct is not None and args.crop_pct > 1:
        raise ValueError(f'--crop-pct must be in (0, 1], got {args.crop_pct}')
    if args.workers < 0:
        raise ValueError(f'--workers must be >= 0, got {args.workers}')
    folder = find_eval_folder(args.data_dir, args.split)  # before building the model: fail fast
    env = init_distributed(args.device)

    model = create_eval_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                              num_classes=args.num_classes)
    num_classes = int(model.num_classes)
    if num_classes < 1:
        raise ValueError(f'--model {args.model!r} has no classifier head (num_classes={num_classes})')
    samples, class_names = scan_image_folder(folder)
    label_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    mapping = resolve_class_mapping(class_names, num_classes, class_map=args.class_map, label_names=label_names)

    overrides = {k: v for k, v in (('img_size', args.img_size), ('crop_pct', args.crop_pct),
                                   ('interpolation', args.interpolation)) if v is not None}
    data_config = resolve_data_config(overrides, model=model)
    transform = create_transform(**data_config, is_training=False)
    dataset = EvalImageFolder([(path, mapping.class_to_idx[name]) for path, name in samples], transform,
                              on_bad_image=args.on_bad_image)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=ShardSampler(len(dataset), env.rank, env.world_size),
        num_workers=args.workers, collate_fn=_collate, pin_memory=env.device.type == 'cuda',
        persistent_workers=False)
    skipping = _SkippingLoader(loader)

    model.to(env.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = (torch.float16 if env.device.type == 'cuda' else torch.bfloat16) if args.amp else None
    if env.is_main:
        print(f'gczoo eval: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
              f'{num_classes} classes) on {folder}: {len(dataset)} images, {len(class_names)} class folders; '
              f'labels: {mapping.description}; world size {env.world_size}', flush=True)
        print(f'gczoo eval: transform: input {tuple(data_config["input_size"])}, crop_pct {data_config["crop_pct"]}, '
              f'{data_config["interpolation"]}, mean {tuple(round(m, 4) for m in data_config["mean"])}, '
              f'std {tuple(round(s, 4) for s in data_config["std"])}', flush=True)
    metrics = validate(model, skipping, num_classes=num_classes, device=env.device, amp_dtype=amp_dtype,
                       channels_last=args.channels_last, progress=None if args.no_progress or not env.is_main else 'eval')

    bad_files = list(skipping.bad_files)
    if dist.is_available() and dist.is_initialized():
        gathered: List[List[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, bad_files)
        bad_files = sorted(f for rank_files in gathered for f in rank_files)
    top1, top5 = round(metrics['top1'], 4), round(metrics['top5'], 4)
    params = sum(p.numel() for p in model.parameters())
    results: Dict[str, Any] = {
        'model': args.model,
        'architecture': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture'),
        'top1': top1, 'top1_err': round(100 - top1, 4),
        'top5': top5, 'top5_err': round(100 - top5, 4),
        'param_count': round(params / 1e6, 2),
        'img_size': int(data_config['input_size'][-1]),
        'crop_pct': data_config['crop_pct'],
        'interpolation': data_config['interpolation'],
        'loss': round(metrics['loss'], 6),
        'count': int(metrics['count']),
        'skipped_images': len(bad_files),
        'skipped_files': bad_files,
        'dataset': args.dataset_name or f'{args.data_dir} ({folder.name})',
        'data_dir': str(args.data_dir),
        'eval_folder': str(folder),
        'num_classes': num_classes,
        'data_classes': len(class_names),
        'label_mapping': mapping.kind,
        'label_mapping_description': mapping.description,
        'data_config': {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        'weights': ('pretrained' if args.pretrained else str(args.checkpoint) if args.checkpoint else args.model),
        'world_size': env.world_size,
        'command': command,
    }
    return results


def _write_results(results: Dict[str, Any], output_dir: os.PathLike) -> Tuple[Path, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _safe_name(results['model'])
    csv_path, json_path = out / f'{stem}.csv', out / f'{stem}.json'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerow(results)
    json_path.write_text(json.dumps(results, indent=2) + '\n')
    return csv_path, json_path


def _short_error(e: BaseException) -> str:
    """A DataLoader worker's error arrives with its traceback in the message: keep its last line."""
    text = str(e)
    if 'Original Traceback' in text:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[-1].split(': ', 1)[-1] if lines else text
    return text


def main(argv: Optional[List[str]] = None) -> int:
    from gczoo.distributed import cleanup_distributed, is_main_process
    from gczoo.models import PretrainedWeightsError
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    command = ('gczoo eval ' if world == 1 else f'NPROC={world} scripts/eval.sh ') + shlex.join(argv)
    try:
        results = evaluate(args, command)
    except (ValueError, TypeError, PretrainedWeightsError) as e:
        print(f'gczoo eval: error: {_short_error(e)}', file=sys.stderr)
        cleanup_distributed()
        return 2
    try:
        if is_main_process():
            csv_path, json_path = _write_results(results, args.output_dir)
            print(f' * Acc@1 {results["top1"]:.3f} ({results["top1_err"]:.3f}) '
                  f'Acc@5 {results["top5"]:.3f} ({results["top5_err"]:.3f}) on {results["count"]} images')
            if results['skipped_images']:
                shown = ', '.join(results['skipped_files'][:5])
                more = f' (+{results["skipped_images"] - 5} more)' if results['skipped_images'] > 5 else ''
                print(f'gczoo eval: skipped {results["skipped_images"]} unreadable images: {shown}{more}')
            print(f'gczoo eval: wrote {csv_path} and {json_path}')
    finally:
        cleanup_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
