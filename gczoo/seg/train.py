"""``gczoo train-seg``: fine-tune a segmentor on a Cityscapes- or ADE20K-layout folder, mmseg's recipe.

mmseg's schedule for these models: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), poly decay of the
learning rate by iteration (power 0.9, down to 1e-4), cross-entropy with label 255 ignored on the logits
resized to the crop (averaged over all of the crop's pixels, as mmseg's ``avg_non_ignore=False``), plus
0.4 x the same loss on the FCN auxiliary head. Augmentation: random keep-ratio
resize at 0.5-2.0 x the tag's scale, random crop (padded with 0 / label 255 where the image is smaller),
horizontal flip with probability 0.5, then mmseg's mean/std. mmseg's ``PhotoMetricDistortion`` and the
crop's ``cat_max_ratio`` are not reproduced.

Exact resume: every random draw of a sample comes from a generator seeded by (seed, epoch, index), the
order of an epoch from one seeded by (seed, epoch), and ``last.pth.tar`` (written atomically every
``--checkpoint-interval`` iterations and at the end) holds the model, the optimizer, the iteration and
the process's RNG states (dropout), so ``--resume OUT/last.pth.tar`` continues with the numbers an
uninterrupted run would have drawn. A non-finite loss stops the run with one line (``TrainingDiverged``).
Outputs in ``--output``: ``args.yaml``, ``summary.csv`` (one row per logged iteration), ``last.pth.tar``,
``model.safetensors`` (the weights, ``create_segmentor(name, checkpoint_path=...)``) and ``results.json``.
Under torchrun each rank takes every ``world_size``-th sample of the epoch's order (DDP, SyncBatchNorm).
"""
import argparse
import contextlib
import csv
import io
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gczoo.args import (ArgumentParser, device_name, fraction, non_negative_float, non_negative_int, positive_float,
                        positive_int)
from gczoo.errors import CheckpointError
from gczoo.files import atomic_write, atomic_write_text, check_output_dir
from gczoo.models.weights import WEIGHTS_NAME, load_weights, read_checkpoint
from gczoo.train.checkpoint import LAST_CHECKPOINT, atomic_save, capture_rng, plain, restore_rng
from gczoo.train.guards import TrainingDiverged, non_finite_tensors
from gczoo.train.outputs import SUMMARY_FILE, write_args, write_results
from gczoo.train.rundir import RunLock

from .create import create_segmentor, load_segmentor_checkpoint
from .data import LAYOUTS, SegSample, find_samples, read_image, read_mask
from .datasets import IGNORE_INDEX
from .inference import normalize, rescale_size, resize_image
from .tags import MMSEG_MEAN, MMSEG_STD, SEG_DATA

__all__ = ['FORMAT', 'SegTrainFolder', 'build_parser', 'train_segmentor', 'main']

FORMAT = 'gczoo.seg.train/1'
_DEFAULT_CLASSES = {'cityscapes': SEG_DATA[('cityscapes', '512x1024')]['num_classes'],
                    'ade20k': SEG_DATA[('ade20k', '512x512')]['num_classes']}
_DEFAULT_SCALE = {'cityscapes': SEG_DATA[('cityscapes', '512x1024')]['scale'],
                  'ade20k': SEG_DATA[('ade20k', '512x512')]['scale']}


class SegTrainFolder(Dataset):
    """Augmented (image (3, h, w) float, mask (h, w) int64) crops; each sample's draws from (seed, epoch, index)."""

    def __init__(self, samples: Sequence[SegSample], num_classes: int, *, crop: Tuple[int, int],
                 scale: Optional[Tuple[int, int]], ratio: Tuple[float, float], seed: int):
        self.samples, self.num_classes, self.crop, self.scale = list(samples), num_classes, crop, scale
        self.ratio, self.seed, self.epoch = ratio, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def _augment(self, image: torch.Tensor, mask: torch.Tensor,
                 gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        r = self.ratio[0] + (self.ratio[1] - self.ratio[0]) * float(torch.rand((), generator=gen))
        height, width = image.shape[1:]
        if self.scale:
            size = rescale_size(height, width, (self.scale[0] * r, self.scale[1] * r))
        else:
            size = (max(1, int(height * r + 0.5)), max(1, int(width * r + 0.5)))
        image = resize_image(image.unsqueeze(0), size)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode='nearest')[0, 0].long()
        ch, cw = self.crop
        y = int(torch.randint(0, max(size[0] - ch, 0) + 1, (), generator=gen))
        x = int(torch.randint(0, max(size[1] - cw, 0) + 1, (), generator=gen))
        image, mask = image[:, y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw]
        if float(torch.rand((), generator=gen)) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        out = torch.zeros(3, ch, cw)
        out_mask = torch.full((ch, cw), IGNORE_INDEX, dtype=torch.long)
        out[:, :image.shape[1], :image.shape[2]] = normalize(image[None], MMSEG_MEAN, MMSEG_STD)[0]
        out_mask[:mask.shape[0], :mask.shape[1]] = mask
        return out, out_mask

    def __getitem__(self, index: int):
        sample = self.samples[index]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + index)
        try:
            image, mask = read_image(sample.image), read_mask(sample, self.num_classes)
            if tuple(image.shape[1:]) != tuple(mask.shape):
                raise ValueError(f'mask {str(sample.mask)!r} is {mask.shape[1]}x{mask.shape[0]} but its image is '
                                 f'{image.shape[2]}x{image.shape[1]}: a mask must have its image\'s size')
        except ValueError as e:
            return str(e)
        return self._augment(image, mask, gen)


def _epoch_batches(n: int, batch: int, seed: int, epoch: int, rank: int, world: int) -> List[List[int]]:
    """This rank's batches of an epoch (a seeded permutation, every ``world``-th index, last partial batch dropped)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()[rank::world]
    return [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog='gczoo train-seg', description=__doc__.split('\n\n')[0])
    p.add_argument('--model', '-m', required=True, help='segmentor (with a tag and --pretrained: its mmseg weights)')
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--initial-checkpoint', default='', help='start from these weights (mmseg or gczoo layout)')
    p.add_argument('--data-dir', required=True)
    p.add_argument('--dataset', choices=LAYOUTS, required=True)
    p.add_argument('--split', default=None, help='split folder (default: Cityscapes train, ADE20K training)')
    p.add_argument('--num-classes', type=positive_int, default=None,
                   help="classes of the heads (default: the dataset's, 19 or 150; another tag's head starts at init)")
    p.add_argument('--crop-size', type=positive_int, nargs=2, default=(512, 1024), metavar=('H', 'W'))
    p.add_argument('--scale', type=positive_int, nargs=2, default=None, metavar=('LONG', 'SHORT'),
                   help="resize scale before the 0.5-2.0 ratio (default: the dataset's mmseg scale)")
    p.add_argument('--no-resize', action='store_true', help='ratio of the image\'s own size instead of --scale')
    p.add_argument('--ratio-range', type=positive_float, nargs=2, default=(0.5, 2.0))
    p.add_argument('-b', '--batch-size', type=positive_int, default=2, help='per process (mmseg: 2 per GPU)')
    p.add_argument('--iters', type=positive_int, default=80000)
    p.add_argument('--lr', type=positive_float, default=0.01)
    p.add_argument('--min-lr', type=non_negative_float, default=1e-4, help='the poly schedule\'s end (<= --lr)')
    p.add_argument('--momentum', type=fraction, default=0.9)
    p.add_argument('--weight-decay', type=non_negative_float, default=5e-4)
    p.add_argument('--aux-weight', type=non_negative_float, default=0.4)
    p.add_argument('--seed', type=non_negative_int, default=0)
    p.add_argument('--output', required=True, help='output folder')
    p.add_argument('--resume', default='', help='OUT/last.pth.tar of an earlier run of the same settings')
    p.add_argument('--checkpoint-interval', type=positive_int, default=4000)
    p.add_argument('--stop-at', type=positive_int, default=None, metavar='ITER',
                   help='end this process after ITER iterations (checkpoint written; continue with --resume)')
    p.add_argument('--log-interval', type=positive_int, default=50)
    p.add_argument('-j', '--workers', type=non_negative_int, default=2)
    p.add_argument('--device', type=device_name, default=None)
    return p


def _losses(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, aux_weight: float,
            align_corners: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    decode, aux = model(images)
    size = masks.shape[1:]
    # mmseg's CrossEntropyLoss (avg_non_ignore=False): the mean over every pixel, ignored ones counting 0 -- a crop
    # with no labelled pixel has loss 0, not the NaN of torch's mean over labelled pixels
    losses = [F.cross_entropy(F.interpolate(logits, size=size, mode='bilinear', align_corners=align_corners), masks,
                              ignore_index=IGNORE_INDEX, reduction='none').mean() for logits in (decode, aux)]
    return losses[0] + aux_weight * losses[1], losses[0].detach()


def _write_summary(out: Path, rows: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=['iter', 'loss', 'decode_loss', 'lr', 'seconds'], lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / SUMMARY_FILE, buf.getvalue())


def _resume(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    ckpt = read_checkpoint(path)
    if ckpt.get('format') != FORMAT:
        raise CheckpointError(f'--resume {path!r} is not a gczoo train-seg checkpoint (no {FORMAT!r} state)')
    missing = [k for k in ('args', 'state_dict', 'optimizer', 'iteration', 'rng') if k not in ckpt]
    if missing or not isinstance(ckpt['args'], dict):
        raise CheckpointError(f'--resume {path!r} is an incomplete train-seg checkpoint (no '
                              f'{", ".join(missing) or "args"}); resume from the last.pth.tar a run wrote')
    for key in ('model', 'dataset', 'split', 'num_classes', 'batch_size', 'seed', 'crop_size', 'iters', 'scale',
                'no_resize', 'ratio_range', 'lr', 'min_lr', 'momentum', 'weight_decay', 'aux_weight'):
        if plain(getattr(args, key)) != ckpt['args'].get(key):
            raise ValueError(f'--resume {path!r} was written with --{key.replace("_", "-")} {ckpt["args"].get(key)!r}, '
                             f'this run has {getattr(args, key)!r}: an exact resume needs the same settings')
    if int(ckpt['iteration']) >= args.iters:
        raise ValueError(f'--resume {path!r} is a finished run ({ckpt["iteration"]} of --iters {args.iters}); its '
                         f'weights are model.safetensors next to it (start a new run with --initial-checkpoint)')
    load_weights(model, ckpt['state_dict'], what=f'--resume {path!r}')
    optimizer.load_state_dict(ckpt['optimizer'])
    restore_rng(ckpt['rng'])
    return int(ckpt['iteration']), list(ckpt.get('summary', []))


def train_segmentor(args: argparse.Namespace) -> Dict[str, Any]:
    """The run (see the module docstring); returns ``results.json``'s content."""
    from gczoo.distributed import init_distributed
    if args.pretrained and args.initial_checkpoint:
        raise ValueError('pass --pretrained or --initial-checkpoint, not both')
    if args.split is None:  # each layout's own name: ADE20K has no 'train' folder
        args.split = {'cityscapes': 'train', 'ade20k': 'training'}[args.dataset]
    if args.min_lr > args.lr:
        raise ValueError(f'--min-lr {args.min_lr} is above --lr {args.lr}: the poly schedule decays from --lr down to '
                         f'--min-lr')
    if args.no_resize and args.scale:
        raise ValueError('--scale and --no-resize contradict each other; pass one')
    if args.ratio_range[0] > args.ratio_range[1]:
        raise ValueError(f'--ratio-range {args.ratio_range[0]} {args.ratio_range[1]}: give the smaller ratio first')
    out = check_output_dir(args.output, '--output')
    last = out / LAST_CHECKPOINT
    if args.resume and last.exists() and Path(args.resume).resolve() != last.resolve():
        raise ValueError(f'--output {str(out)!r} holds another run (last.pth.tar) than --resume {args.resume!r}: '
                         f'resume into the run\'s own folder or write to another --output')
    if (out / LAST_CHECKPOINT).exists() and not args.resume:
        raise ValueError(f'--output {str(out)!r} already holds a run (last.pth.tar): continue it with --resume '
                         f'{str(out / "last.pth.tar")!r} or write to another --output')
    samples = find_samples(args.data_dir, args.dataset, args.split)
    env = init_distributed(args.device)
    torch.manual_seed(args.seed)
    classes = args.num_classes or _DEFAULT_CLASSES[args.dataset]  # as eval-seg: the dataset's, not 19 for ADE20K
    model = create_segmentor(args.model, pretrained=args.pretrained, num_classes=classes)
    if args.initial_checkpoint:  # a new --num-classes leaves conv_seg at init, as with --pretrained
        load_segmentor_checkpoint(model, args.initial_checkpoint, what='--initial-checkpoint',
                                  skip_mismatched_classifier=True)
    scale = None if args.no_resize else tuple(args.scale or _DEFAULT_SCALE[args.dataset])
    data = SegTrainFolder(samples, model.num_classes, crop=tuple(args.crop_size), scale=scale,
                          ratio=tuple(args.ratio_range), seed=args.seed)
    if len(samples) // env.world_size < args.batch_size:
        raise ValueError(f'{len(samples)} images cannot fill one batch of {args.batch_size} per process')
    model.to(env.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    start, summary = _resume(args.resume, model, optimizer, args) if args.resume else (0, [])
    net: nn.Module = _TrainForward(model)
    if env.distributed:
        from timm.layers import convert_sync_batchnorm  # timm's: keeps BatchNormAct2d's activation
        net = nn.parallel.DistributedDataParallel(_TrainForward(convert_sync_batchnorm(model)))
        model = net.module.model
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out) if env.is_main else contextlib.nullcontext():
        if env.is_main and not args.resume and (out / LAST_CHECKPOINT).exists():  # a run that ended while we set up
            raise ValueError(f'--output {str(out)!r} already holds a run (last.pth.tar), written while this one '
                             f'started; write to another --output')
        if env.is_main:
            import yaml
            write_args(out, yaml.safe_dump(plain(vars(args)), sort_keys=False))
        it, loss_value = _train_loop(net, model, optimizer, data, args, env, out, start, summary)
    results = dict(model=args.model, iterations=it, final_loss=loss_value, num_classes=model.num_classes,
                   world_size=env.world_size)
    if env.is_main:
        from safetensors.torch import save
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(out / WEIGHTS_NAME, lambda f: f.write(save(weights)))
        write_results(out, results)
    return results


def _train_loop(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, data: SegTrainFolder,
                args: argparse.Namespace, env: Any, out: Path, start: int,
                summary: List[Dict[str, Any]]) -> Tuple[int, float]:
    """Iterations ``start`` .. ``--iters`` (or ``--stop-at``): poly LR, the losses, the guard, checkpoints."""
    samples, align = data.samples, model.align_corners
    it, loss_value, tick = start, float('nan'), time.time()
    per_epoch = len(_epoch_batches(len(samples), args.batch_size, args.seed, 0, env.rank, env.world_size))
    while it < args.iters:
        epoch, skip = divmod(it, per_epoch)
        data.epoch = epoch
        batches = _epoch_batches(len(samples), args.batch_size, args.seed, epoch, env.rank, env.world_size)[skip:]
        loader = DataLoader(data, batch_sampler=batches, num_workers=args.workers, collate_fn=_collate)
        for batch in loader:
            if isinstance(batch, str):
                raise ValueError(batch)
            images, masks = batch
            lr = (args.lr - args.min_lr) * (1 - it / args.iters) ** 0.9 + args.min_lr
            for group in optimizer.param_groups:
                group['lr'] = lr
            loss, decode_loss = _losses(net, images.to(env.device), masks.to(env.device), args.aux_weight, align)
            if not bool(torch.isfinite(loss.detach())):
                raise TrainingDiverged(f'the loss is {float(loss.detach())} at iteration {it + 1} (lr {lr:.3g}); lower '
                                       f'--lr, or check the masks and --num-classes; the last checkpoint is '
                                       f'{out / "last.pth.tar"}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            it, loss_value = it + 1, float(loss.detach())
            if it % args.log_interval == 0 or it == args.iters:
                summary.append(dict(iter=it, loss=loss_value, decode_loss=float(decode_loss), lr=lr,
                                    seconds=round(time.time() - tick, 3)))
            stop = it >= args.iters or (args.stop_at is not None and it >= args.stop_at)
            if env.is_main and (it % args.checkpoint_interval == 0 or stop):
                _save(out, model, optimizer, it, args, summary)
            if stop:
                break
        if args.stop_at is not None and it >= args.stop_at:
            break
    return it, loss_value


class _TrainForward(nn.Module):
    """``forward`` = the segmentor's ``forward_train`` (what DDP must call for its gradient hooks)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_train(x)


def _save(out: Path, model: nn.Module, optimizer, it: int, args: argparse.Namespace, summary) -> None:
    bad = non_finite_tensors([model])
    if bad:  # the last step can turn the weights non-finite after a finite loss: never saved as a result
        raise TrainingDiverged(f'the weights hold NaN/inf after iteration {it} ({", ".join(bad[:3])}); lower --lr; '
                               f'nothing was written for this iteration, the last checkpoint is {out / "last.pth.tar"}')
    atomic_save({'format': FORMAT, 'state_dict': model.state_dict(), 'optimizer': plain(optimizer.state_dict()),
                 'iteration': it, 'rng': capture_rng(), 'args': plain(vars(args)), 'summary': plain(summary)},
                out / LAST_CHECKPOINT)
    _write_summary(out, summary)


def _collate(batch):
    """A broken sample's message travels as the batch (raised in the main process, not in a worker)."""
    for item in batch:
        if isinstance(item, str):
            return item
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gczoo.distributed import cleanup_distributed
    try:
        results = train_segmentor(build_parser().parse_args(argv))
    finally:
        cleanup_distributed()
    print(f'train-seg: {results["iterations"]} iterations, final loss {results["final_loss"]:.4f}')
    return 0
