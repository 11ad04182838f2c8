"""``gczoo train --model i3d_r50_nl ...``: fine-tuning a video model on a clip folder, inside gczoo's
trainer (its optimizer, schedule, EMA, DDP, checkpoints, resume and non-finite guards are the image
runs' own). This module builds what differs: the model (``create_video_model``), the clip datasets and
their loaders.

    gczoo train --model i3d_r50_nl --pretrained --data-dir DATA --img-size 224 -b 8 --lr 0.001 \\
        --model-kwargs clip_len=32 frame_interval=2

``DATA/<--train-split>/<class>/<clip>`` and ``DATA/<--val-split>/<class>/<clip>`` (``gczoo.video.clips``).
Training clips follow mmaction2's I3D train pipeline, simplified: one clip of ``clip_len`` frames
``frame_interval`` apart at a random offset (``SampleFrames``), short side resized to
``img_size / 0.875``, a square crop of 1 or 0.8 times the short side at a random place (mmaction2's
``MultiScaleCrop`` picks among fixed places), resized to ``img_size``, flipped with probability
``--hflip`` (``--no-aug``: the centre crop, no flip). Validation: the centre clip, centre crop (one
view; ``gczoo eval-video`` does clips x crops).
Every random draw comes from the RNGs gczoo's ``SeededTransformDataset`` seeds per (seed, epoch, clip),
so runs are reproducible and resumable. A training clip that cannot be read stops the run with its
name; an unreadable validation clip is skipped and counted, as images are.

``clip_len`` and ``frame_interval`` are read from ``--model-kwargs`` (defaults: the tag's 32 and 2); the
other keys go to ``create_video_model``. Image-only or timm-only flags (``--channels-last``, ``--cutmix``,
``--aa``, ``--reprob``, ``--vflip``, ``--dataset``, ``--in-chans``, ``--drop-path``, ``--drop-block``, ``--gp``,
``--head-init-*``, ``--grad-checkpointing``, ``--pretrained-backbone``) are refused, and the run is not exported in
timm's Hub layout (timm cannot build a video model): ``model_best.pth.tar`` loads with
``create_video_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=K)``.
"""
import argparse
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gczoo.data import ResumableDistributedSampler, SeededTransformDataset
from gczoo.distributed import ShardSampler
from gczoo.evaluate import collate_skipping
from gczoo.train.loaders import Loaders

from .clips import ClipFolder, ClipSampling, empty_classes, read_clip, scan_clip_folder
from .factory import create_video_model, is_video_model
from .resnet3d import ResNet3d

__all__ = ['is_video_model', 'sample_train_clip', 'TrainClipTransform', 'build_video_training']


def sample_train_clip(num_frames: int, clip_len: int, frame_interval: int, rng: Any) -> np.ndarray:
    """(clip_len,) frame indices of one training clip: mmaction2's ``SampleFrames`` (one clip, looping)."""
    room = num_frames - clip_len * frame_interval + 1
    offset = int(rng.randint(room)) if room > 0 else 0
    return np.mod(offset + np.arange(clip_len) * frame_interval, num_frames)


class TrainClipTransform:
    """path -> (3, clip_len, size, size) normalised training clip (see the module docstring)."""

    def __init__(self, clip_len: int, frame_interval: int, size: int, mean: Tuple[float, ...],
                 std: Tuple[float, ...], hflip: float = 0.5, scales: Tuple[float, ...] = (1.0, 0.8),
                 center: bool = False):
        self.clip_len, self.frame_interval, self.size = clip_len, frame_interval, size
        self.hflip, self.scales, self.center = hflip, scales, center
        self.resize_short = int(round(size / 0.875))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, path: str) -> torch.Tensor:
        rng = np.random  # seeded per sample by SeededTransformDataset
        try:
            frames = read_clip(path, lambda n: sample_train_clip(n, self.clip_len, self.frame_interval, rng))
        except ModuleNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001  (any decoder failure: one line naming the clip)
            text = ' '.join(str(e).split()) or type(e).__name__
            raise ValueError(f'training clip {path!r} cannot be read ({text}): fix or remove it') from e
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, 0-255 (float after the crop: less memory)
        h, w = x.shape[-2:]
        short = min(h, w)
        side = max(1, int(short * self.scales[rng.randint(len(self.scales))]))
        if self.center:  # --no-aug
            top, left = (h - side) // 2, (w - side) // 2
        else:
            top, left = int(rng.randint(h - side + 1)), int(rng.randint(w - side + 1))
        # crop in the original frame, at the place the resized frame's crop would be, then one resize
        x = x[:, :, top:top + side, left:left + side].float()
        x = F.interpolate(x, size=(self.size, self.size), mode='bilinear', align_corners=False).clamp_(0, 255)
        if rng.rand() < self.hflip:
            x = x.flip(-1)
        x = (x / 255.0 - self.mean) / self.std
        return x.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)


class _Paths(Dataset):
    def __init__(self, samples: List[Tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[str, int]:
        return self.samples[index]


class _OneView(Dataset):
    """ClipFolder's (views, target, bad) with its single view unwrapped: (3, T, S, S)."""

    def __init__(self, clips: ClipFolder):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int, Optional[str]]:
        views, target, bad = self.clips[index]
        return (views[0] if views is not None else None), target, bad


def _refuse_image_flags(args: argparse.Namespace) -> None:
    bad = [flag for flag, on in (
        ('--channels-last', args.channels_last), ('--cutmix', (args.cutmix or 0) > 0),
        ('--cutmix-minmax', getattr(args, 'cutmix_minmax', None)), ('--aa', args.aa),
        ('--reprob', (args.reprob or 0) > 0), ('--vflip', (args.vflip or 0) > 0), ('--dataset', args.dataset),
        ('--in-chans', args.in_chans not in (None, 3)), ('--pretrained-backbone', args.pretrained_backbone),
        ('--drop-path', args.drop_path is not None), ('--drop-block', args.drop_block is not None),
        ('--gp', args.gp not in (None, 'avg')), ('--head-init-scale', args.head_init_scale is not None),
        ('--head-init-bias', args.head_init_bias is not None), ('--grad-checkpointing', args.grad_checkpointing))
        if on]
    if bad:
        raise ValueError(f'--model {args.model!r} is a video model: {", ".join(bad)} work(s) on images or timm '
                         f'models only; drop them (clips get random offsets, multi-scale crops and --hflip)')


def _split(data_dir: Any, split: str) -> Tuple[List[Tuple[str, str]], List[str], Path]:
    if data_dir is None:
        raise ValueError('--model is a video model: pass --data-dir DATA with DATA/<split>/<class>/<clip>')
    folder = Path(data_dir) / split
    samples, classes = scan_clip_folder(folder)
    return samples, classes, folder


def _frames_setting(model_kwargs: Dict[str, Any], key: str, default: int) -> int:
    value = model_kwargs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'--model-kwargs {key}={value!r}: {key} must be an integer >= 1 (frames)')
    return value


def _create_model(args: argparse.Namespace, num_classes: int, log: Callable[[str], None]) -> ResNet3d:
    from gczoo.models.weights import load_weights
    kwargs = {k: v for k, v in args.model_kwargs.items() if k not in ('clip_len', 'frame_interval')}
    if kwargs.get('in_chans', 3) != 3:
        raise ValueError(f'--model-kwargs in_chans={kwargs["in_chans"]}: the clip loaders read RGB frames (3 '
                         f'channels); fine-tune with in_chans=3')
    if args.drop is not None:
        kwargs['drop_rate'] = args.drop
    overlay = dict(file=args.pretrained_path) if args.pretrained_path else None
    try:
        model = create_video_model(args.model, pretrained=bool(args.pretrained or args.pretrained_path),
                                   num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)
    except TypeError as e:
        raise ValueError(f'--model {args.model!r} does not take these settings: {e}') from e
    if args.initial_checkpoint:
        skipped = load_weights(model, args.initial_checkpoint, what='--initial-checkpoint',
                               skip_mismatched_classifier=True,
                               hint=f'It must be a checkpoint of {args.model}; 2D ResNet weights are inflated first: '
                                    f'gczoo.video.inflate_from_2d(model, file), then save model.state_dict().')
        if skipped:
            log(f'--initial-checkpoint: classifier {", ".join(skipped)} has another number of classes; left at init')
    return model


def build_video_training(args: argparse.Namespace, env: Any, device: torch.device, log: Callable[[str], None]
                         ) -> Tuple[ResNet3d, Dict[str, Any], List[str], str, Loaders]:
    """(model, data config, class names, description of the data, loaders) of a video fine-tuning run."""
    _refuse_image_flags(args)
    train_samples, classes, train_dir = _split(args.data_dir, args.train_split)
    val_samples, val_classes, val_dir = _split(args.data_dir, args.val_split)
    empty = empty_classes(train_samples, classes)
    if empty:
        raise ValueError(f'{str(train_dir)!r} has class folders with no clip in them ({", ".join(empty[:5])}): a class '
                         f'with no training clip cannot be learnt; add clips or remove the folder(s)')
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(f'validation split {str(val_dir)!r} has classes the training split does not: {unknown[:5]}')
    if len(classes) < 2:
        raise ValueError(f'{str(train_dir)!r} has {len(classes)} class: a classifier needs at least 2')
    if args.num_classes is not None and args.num_classes != len(classes):
        raise ValueError(f'--num-classes {args.num_classes} does not match the data: {str(train_dir)!r} has '
                         f'{len(classes)} classes')
    index = {name: i for i, name in enumerate(classes)}
    model = _create_model(args, len(classes), log)
    cfg = model.pretrained_cfg
    clip_len = _frames_setting(args.model_kwargs, 'clip_len', cfg['clip_len'])
    interval = _frames_setting(args.model_kwargs, 'frame_interval', cfg['frame_interval'])
    size = int(args.input_size[-1] if args.input_size else args.img_size or cfg['input_size'][-1])
    mean, std = tuple(args.mean or cfg['mean']), tuple(args.std or cfg['std'])
    if args.no_aug:
        transform = TrainClipTransform(clip_len, interval, size, mean, std, hflip=0.0, scales=(1.0,), center=True)
    else:
        transform = TrainClipTransform(clip_len, interval, size, mean, std, hflip=args.hflip)
    log(f'--model {args.model}: clip augmentation: ' + ('none (--no-aug: random offset, centre crop)' if args.no_aug
        else f'random offset, square crops of 1 or 0.8 x the short side, --hflip {args.hflip}')
        + '; --scale, --ratio, --color-jitter and --train-interpolation are image augmentations and do not apply')
    train_set = SeededTransformDataset(_Paths([(p, index[c]) for p, c in train_samples]), transform, seed=args.seed)
    sampling = ClipSampling(clip_len, interval, 1, 1, transform.resize_short, size, mean, std)
    sampling.check_fits(args.model, model.min_input_size, '--model-kwargs clip_len', '--img-size')
    val_set = _OneView(ClipFolder(val_samples, index, sampling))
    sampler = ResumableDistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=args.seed, epoch_samples=args.train_num_samples)
    generator = torch.Generator()
    generator.manual_seed(args.seed + env.rank)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                              drop_last=True, generator=generator)
    val_loader = DataLoader(val_set, batch_size=args.validation_batch_size or args.batch_size,
                            sampler=ShardSampler(len(val_set), env.rank, env.world_size), num_workers=args.workers,
                            collate_fn=collate_skipping)
    batches = sampler.num_samples // args.batch_size
    if batches == 0:
        raise ValueError(f'{str(train_dir)!r} has {len(train_set)} clips, fewer than one global batch (--batch-size '
                         f'{args.batch_size} x {env.world_size} processes); lower --batch-size')
    if not args.no_export:
        args.no_export = True
        log(f'--model {args.model}: video models are not exported in timm\'s Hub layout (timm cannot build them); '
            f'load model_best.pth.tar with gczoo.video.create_video_model(..., pretrained_cfg_overlay=dict(file=...))')
    data_config = dict(input_size=(3, size, size), clip_len=clip_len, frame_interval=interval, mean=mean, std=std,
                       interpolation='bilinear', crop_pct=size / transform.resize_short)
    what = (f'clip folder {args.data_dir} ({len(train_set)} train / {len(val_set)} val clips, {clip_len} frames '
            f'x {interval})')
    return model, data_config, classes, what, Loaders(train_set, val_set, sampler, generator, train_loader,
                                                      val_loader, batches)
