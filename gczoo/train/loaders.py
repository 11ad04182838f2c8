"""The run's data pipeline: timm's data config and transforms, and loaders whose order survives a resume.

* ``train_data_config``: timm's ``resolve_data_config`` of the flags and the model, with the channels
  ``--in-chans`` asks for (timm keeps the pretrained cfg's 3 when no ``--img-size`` is given, and
  normalizes grey images with 3-channel statistics; grey images get the channels' average here).
* ``build_loaders``: the training loader samples in an order that is a function of ``(seed, epoch)``
  (``ResumableDistributedSampler``, its own generator), each sample augmented under an RNG seeded from
  ``(seed, epoch, index)`` (``SeededTransformDataset``); the validation loader gives every rank its
  own shard (``ShardSampler``) and skips unreadable images instead of replacing them.
"""
import argparse
import dataclasses
from typing import Any, Dict

import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader

from gczoo.data import ResumableDistributedSampler, SeededTransformDataset
from gczoo.distributed import ShardSampler
from gczoo.evaluate import EvalImageFolder, collate_skipping

from .build import ApplyTransform, FolderImages, in_chans_of

__all__ = ['Loaders', 'train_data_config', 'build_loaders']


def train_data_config(args: argparse.Namespace, model: torch.nn.Module) -> Dict[str, Any]:
    """timm's resolve_data_config of the flags and the model, with the channels --in-chans asks for."""
    keys = ('img_size', 'input_size', 'in_chans', 'mean', 'std', 'crop_pct', 'interpolation')
    config = resolve_data_config({k: getattr(args, k) for k in keys if getattr(args, k)}, model=model)
    chans = in_chans_of(args)
    config['input_size'] = (chans, *config['input_size'][1:])
    for key in ('mean', 'std'):
        if len(config[key]) != chans:
            if chans != 1:
                raise ValueError(f'--in-chans {chans}: pass --mean and --std with {chans} values (the model\'s '
                                 f'are {len(config[key])})')
            config[key] = (sum(config[key]) / len(config[key]),)  # grey images: the channels' average
    return config


@dataclasses.dataclass
class Loaders:
    train_set: SeededTransformDataset
    val_set: Any
    sampler: ResumableDistributedSampler
    generator: torch.Generator  # the training loader's, saved per rank in checkpoints
    train_loader: DataLoader
    val_loader: DataLoader  # batches of (images, targets, unreadable paths): wrap in gczoo.evaluate.SkippingLoader
    batches_per_epoch: int


def build_loaders(args: argparse.Namespace, env: Any, device: torch.device, train_ds: Any, val_ds: Any,
                  data_config: Dict[str, Any], what: str) -> Loaders:
    """Transforms (timm's ``create_transform`` with the flags), datasets, samplers and loaders of one rank."""
    train_config = {k: v for k, v in data_config.items() if k not in ('crop_pct', 'crop_mode')}
    # timm: the eval interpolation when --no-aug or no --train-interpolation
    train_config['interpolation'] = (data_config['interpolation'] if args.no_aug or not args.train_interpolation
                                     else args.train_interpolation)
    train_transform = create_transform(
        **train_config, is_training=True, no_aug=args.no_aug, scale=tuple(args.scale), ratio=tuple(args.ratio),
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
    train_set = SeededTransformDataset(train_ds, train_transform, seed=args.seed)
    val_transform = create_transform(**data_config, is_training=False)
    if isinstance(val_ds, FolderImages):  # an unreadable image is skipped and counted, never replaced
        val_set: Any = EvalImageFolder(val_ds.samples, val_transform, on_bad_image='skip', in_chans=in_chans_of(args))
    else:
        val_set = ApplyTransform(val_ds, val_transform)

    if args.train_num_samples is not None and args.train_num_samples > len(train_set):
        raise ValueError(f'--train-num-samples {args.train_num_samples}: the training split has only '
                         f'{len(train_set)} images')
    sampler = ResumableDistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=args.seed, epoch_samples=args.train_num_samples)
    generator = torch.Generator()  # keeps DataLoader off the global RNG
    generator.manual_seed(args.seed + env.rank)
    pin = args.pin_mem and device.type == 'cuda'
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                              drop_last=True, pin_memory=pin, generator=generator)
    val_loader = DataLoader(val_set, batch_size=args.validation_batch_size or args.batch_size,
                            sampler=ShardSampler(len(val_set), env.rank, env.world_size), num_workers=args.workers,
                            pin_memory=pin, collate_fn=collate_skipping)
    batches_per_epoch = sampler.num_samples // args.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f'{what}: the training split has {len(train_set)} images, fewer than one global batch '
                         f'(--batch-size {args.batch_size} x {env.world_size} processes); lower --batch-size')
    return Loaders(train_set, val_set, sampler, generator, train_loader, val_loader, batches_per_epoch)
