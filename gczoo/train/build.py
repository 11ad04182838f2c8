"""The pieces a run is built from, each from timm where timm has it: the model (``timm.create_model``,
weights through ``gczoo.models.weights``), the datasets (timm's readers, gczoo's checks), the
learning rate and the attention blocks' parameter groups (timm's weight-decay groups, split)."""
import argparse
import dataclasses
import difflib
import functools
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from gczoo.data import check_image_folder, prepare_digits
from gczoo.evaluate import BadImageError, decode_image
from gczoo.models import ZOO_MODELS, attention_modules
from gczoo.models.weights import format_keys, load_weights

from .args import mixup_active, uses_embedded_digits

__all__ = [
    'create_train_model', 'attention_param_groups', 'resolve_lr', 'Optimization', 'create_optimization',
    'build_datasets', 'FolderImages', 'ApplyTransform',
]


def _check_model_name(name: str) -> None:
    import timm
    if name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name):
        return
    candidates = timm.list_models()
    close = difflib.get_close_matches(name.split('.')[0], candidates, n=6, cutoff=0.6)
    raise ValueError(
        f'--model {name!r} is not a timm or gczoo model; '
        f'closest names: {", ".join(close) or "none"}; gczoo models: {", ".join(ZOO_MODELS)}')


def create_train_model(args: argparse.Namespace, num_classes: int, log: Callable[[str], None] = print) -> nn.Module:
    """``timm.create_model`` with the run's architecture flags; ``--initial-checkpoint`` through
    ``gczoo.models.weights.load_weights`` (a classifier of another size is left at init, as timm does)."""
    import timm
    _check_model_name(args.model)
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=args.drop)
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    if args.pretrained_backbone:
        if args.model.split('.')[0] not in ZOO_MODELS:
            raise ValueError(f'--pretrained-backbone needs a gczoo model ({", ".join(ZOO_MODELS)}), '
                             f'got --model {args.model!r}')
        kwargs['pretrained_backbone'] = args.pretrained_backbone
    model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    if args.initial_checkpoint:
        skipped = load_weights(model, args.initial_checkpoint, what='--initial-checkpoint',
                               skip_mismatched_classifier=True)
        if skipped:
            log(f'--initial-checkpoint: classifier {", ".join(skipped)} has another number of classes; left at init')
    return model


def attention_param_groups(
        model: nn.Module, weight_decay: float, attn_lr_scale: float, no_weight_decay_list: Iterable[str] = (),
) -> List[Dict[str, Any]]:
    """timm's weight-decay parameter groups, each split into backbone and attention-block parameters;
    the attention groups carry ``lr_scale = attn_lr_scale`` (timm's schedulers multiply it in)."""
    from timm.optim import param_groups_weight_decay
    attn_ids = {id(p) for _, m in attention_modules(model) for p in m.parameters()}
    if not attn_ids:
        raise ValueError(f'--attn-lr-scale {attn_lr_scale:g} needs a model with gczoo attention blocks; '
                         f'{type(model).__name__} has none')
    groups = []
    for group in param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list):
        base = [p for p in group['params'] if id(p) not in attn_ids]
        attn = [p for p in group['params'] if id(p) in attn_ids]
        if base:
            groups.append({**group, 'params': base})
        if attn:
            groups.append({**group, 'params': attn, 'lr_scale': attn_lr_scale})
    return groups


def resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr``, or timm's ``--lr-base`` scaled by the global batch (sqrt for adaptive optimizers)."""
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    return args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


@dataclasses.dataclass
class Optimization:
    """What updates the weights: optimizer, schedule, loss scaling, EMA, mixup and the losses."""
    lr: float
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    updates_per_epoch: int
    loss_scaler: Any
    model_ema: Any
    mixup_fn: Any
    train_loss_fn: nn.Module
    val_loss_fn: nn.Module


def create_optimization(
        args: argparse.Namespace, model: nn.Module, *, num_classes: int, world_size: int, batches_per_epoch: int,
        device: torch.device, amp_dtype: Optional[torch.dtype], log: Callable[[str], None] = print,
) -> Optimization:
    """timm train.py's optimizer, scheduler, ``NativeScaler``, ``ModelEmaV3``, ``Mixup`` and losses for ``args``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm.utils import ModelEmaV3, NativeScaler

    lr = resolve_lr(args, world_size)
    opt_kwargs: Dict[str, Any] = {}
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    group_fn = None
    if args.attn_lr_scale != 1.0:
        group_fn = functools.partial(
            attention_param_groups, weight_decay=args.weight_decay, attn_lr_scale=args.attn_lr_scale,
            no_weight_decay_list=getattr(model, 'no_weight_decay', lambda: set())())
    optimizer = create_optimizer_v2(model, args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                                    param_group_fn=group_fn, **opt_kwargs)
    updates_per_epoch = math.ceil(batches_per_epoch / args.grad_accum_steps)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    if scheduler is None:  # no scheduler to apply timm's lr_scale: do it once here
        for group in optimizer.param_groups:
            group['lr'] = group['lr'] * group.get('lr_scale', 1.0)

    # timm's loss scaling: float16 autocast on CUDA only (bfloat16 needs none; timm has no CPU float16 scaling)
    fp16 = amp_dtype == torch.float16
    loss_scaler = NativeScaler(device='cuda') if fp16 and device.type == 'cuda' else None
    if fp16 and device.type != 'cuda':
        log('--amp float16 without CUDA: no loss scaling (timm scales float16 on CUDA only); bfloat16 is safer here')

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)

    mixup_fn = None
    if mixup_active(args):
        mixup_fn = Mixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)
        train_loss_fn: nn.Module = SoftTargetCrossEntropy()  # mixup folds the smoothing into the targets
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    return Optimization(lr=lr, optimizer=optimizer, scheduler=scheduler, num_epochs=num_epochs,
                        updates_per_epoch=updates_per_epoch, loss_scaler=loss_scaler, model_ema=model_ema,
                        mixup_fn=mixup_fn, train_loss_fn=train_loss_fn, val_loss_fn=nn.CrossEntropyLoss())


def build_datasets(args: argparse.Namespace, env: Any) -> Tuple[Any, Any, List[str], str]:
    """(train, val) datasets without transforms, the class names, and a description of the data."""
    from timm.data import create_dataset, create_reader

    if uses_embedded_digits(args):
        if env.local_rank == 0:
            root = prepare_digits()
        if env.distributed:
            dist.barrier()
        root = prepare_digits()  # rank 0 of the node wrote it; this only reads the manifest
        data_dir, dataset_name, what = str(root), '', f'embedded handwritten digits ({root})'
    else:
        data_dir, dataset_name = args.data_dir, args.dataset
        what = f'{dataset_name or "folder"} dataset at {data_dir}'
    if dataset_name in ('', 'digits'):
        train_dir, train_classes = check_image_folder(data_dir, args.train_split)
        val_dir, val_classes = check_image_folder(data_dir, args.val_split)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise ValueError(f'validation split {str(val_dir)!r} has classes the training split {str(train_dir)!r} '
                             f'does not: {format_keys(unknown)}')
        train_reader = create_reader('', root=str(train_dir))
        class_to_idx = dict(train_reader.class_to_idx)
        train_ds = FolderImages(train_reader.samples)
        val_ds = FolderImages(create_reader('', root=str(val_dir), class_map=class_to_idx).samples)
        class_names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    else:
        if data_dir is None:
            raise ValueError(f'--dataset {dataset_name!r} needs --data-dir (where it is, or should be downloaded to)')
        kw = dict(root=data_dir, download=args.dataset_download, batch_size=args.batch_size, seed=args.seed)
        try:
            train_ds = create_dataset(dataset_name, split=args.train_split, is_training=True, **kw)
            val_ds = create_dataset(dataset_name, split=args.val_split, **kw)
        except (RuntimeError, FileNotFoundError, AssertionError) as e:
            raise ValueError(f'--dataset {dataset_name!r} at {data_dir!r} could not be opened: {e}') from e
        if isinstance(train_ds, torch.utils.data.IterableDataset):
            raise ValueError(f'--dataset {dataset_name!r} is a streaming (iterable) dataset; gczoo.train needs '
                             f'map-style datasets for exact, resumable data order')
        classes = getattr(train_ds, 'classes', None)
        if classes is None:
            raise ValueError(f'--dataset {dataset_name!r} does not expose its classes; use an ImageFolder tree')
        class_names = [str(c) for c in classes]
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f'{what}: the training or validation split is empty')
    return train_ds, val_ds, class_names, what


class FolderImages(torch.utils.data.Dataset):
    """``(PIL image, target)`` for each ``(path, target)`` of timm's folder reader, decoded by
    ``gczoo.evaluate.decode_image`` (16-bit images scaled to 8 bits, not clipped to white).

    An image that cannot be decoded (truncated, not an image, a decompression bomb) raises
    ``BadImageError`` naming the file: timm's ``ImageDataset`` would silently put the next image in
    its place. The run stops with one line; fix or remove the file and ``--resume auto``.
    """

    def __init__(self, samples: List[Tuple[str, int]], mode: str = 'RGB') -> None:
        self.samples = list(samples)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        from PIL import Image
        path, target = self.samples[index]
        try:
            return decode_image(path, self.mode), target
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadImageError(f'cannot read training image {path!r} ({type(e).__name__}: {e}); fix or remove the '
                                f'file, then continue with --resume auto') from e


class ApplyTransform(torch.utils.data.Dataset):
    """Validation transform over a non-folder dataset (e.g. ``torch/cifar10``): ``(image, target, None)``, the
    form ``gczoo.evaluate.collate_skipping`` takes (``None``: nothing skipped)."""

    def __init__(self, dataset: Any, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        img, target = self.dataset[index][:2]
        return self.transform(img), target, None
