"""The pieces a run is built from, each from timm where timm has it: the model (``timm.create_model``,
weights through ``gczoo.models.weights``), the datasets (timm's readers, gczoo's checks), the
learning rate and the attention blocks' parameter groups (timm's weight-decay groups, split)."""
import argparse
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from timm.data import Mixup, create_dataset, create_reader
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3, NativeScaler

from gczoo.data import check_image_folder, prepare_digits
from gczoo.evaluate import BadImageError, decode_image, read_class_map
from gczoo.models import ZOO_MODELS, attention_modules
from gczoo.models.factory import create_model
from gczoo.models.registry import resolve_model_name
from gczoo.models.weights import format_keys, load_weights

from .args import mixup_active, uses_embedded_digits

__all__ = [
    'IMAGE_MODES', 'in_chans_of', 'create_train_model', 'attention_param_groups', 'resolve_lr', 'Optimization',
    'create_optimization', 'build_datasets', 'FolderImages', 'ApplyTransform',
]

IMAGE_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}  # --in-chans -> how images are read (timm: L for 1, else RGB)


def in_chans_of(args: argparse.Namespace) -> int:
    """Input channels: ``--input-size C H W`` wins over ``--in-chans`` (as timm), 3 by default."""
    return args.input_size[0] if args.input_size else (args.in_chans or 3)


def create_train_model(args: argparse.Namespace, num_classes: int, log: Callable[[str], None] = print) -> nn.Module:
    """timm train.py's ``create_model`` call through ``gczoo.models.factory.create_model`` (timm's, with
    gczoo's checks on pretrained files: no pickles, keys and shapes first); ``--initial-checkpoint``
    through ``gczoo.models.weights.load_weights`` (a classifier of another size is left at init, as timm)."""
    resolve_model_name(args.model, what='--model')
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans_of(args), drop_rate=args.drop,
                                  drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                                  global_pool=args.gp)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: the model's own default
    if args.pretrained_backbone:
        resolve_model_name(args.model, what='--model (--pretrained-backbone needs a gczoo model)', zoo=ZOO_MODELS)
        kwargs['pretrained_backbone'] = args.pretrained_backbone
    if args.pretrained_path:  # timm's: the file as the pretrained weights, the classifier always re-initialized
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    overlap = sorted(set(args.model_kwargs) & set(kwargs))
    if overlap:
        raise ValueError(f'--model-kwargs {", ".join(overlap)}: set by their own flags (--num-classes, --in-chans, '
                         f'--drop, --drop-path, --drop-block, --gp); use those')
    try:
        model = create_model(args.model, pretrained=args.pretrained, **kwargs, **args.model_kwargs)
    except TypeError as e:  # a keyword the architecture does not take
        raise ValueError(f'--model {args.model!r} does not take these settings: {e}') from e
    if args.head_init_scale is not None or args.head_init_bias is not None:
        head = model.get_classifier()
        with torch.no_grad():
            if args.head_init_scale is not None:
                head.weight.mul_(args.head_init_scale)
                head.bias.mul_(args.head_init_scale)
            if args.head_init_bias is not None:
                nn.init.constant_(head.bias, args.head_init_bias)
    if args.initial_checkpoint:
        skipped = load_weights(model, args.initial_checkpoint, what='--initial-checkpoint',
                               skip_mismatched_classifier=True)
        if skipped:
            log(f'--initial-checkpoint: classifier {", ".join(skipped)} has another number of classes; left at init')
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def attention_param_groups(
        model: nn.Module, weight_decay: float, attn_lr_scale: float, no_weight_decay_list: Iterable[str] = (),
        layer_decay: Optional[float] = None, layer_decay_min_scale: float = 0.0,
        layer_decay_no_opt_scale: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """timm's parameter groups (weight decay, and layer decay if asked), each split into backbone and
    attention-block parameters; the attention groups' ``lr_scale`` is multiplied by ``attn_lr_scale``
    (timm's schedulers apply ``lr_scale``)."""
    attn_ids = {id(p) for _, m in attention_modules(model) for p in m.parameters()}
    if not attn_ids:
        raise ValueError(f'--attn-lr-scale {attn_lr_scale:g} needs a model with gczoo attention blocks; '
                         f'{type(model).__name__} has none')
    if layer_decay is not None:
        base_groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list, layer_decay=layer_decay,
            min_scale=layer_decay_min_scale, no_opt_scale=layer_decay_no_opt_scale)
    else:
        base_groups = param_groups_weight_decay(model, weight_decay=weight_decay,
                                                no_weight_decay_list=no_weight_decay_list)
    groups = []
    for group in base_groups:
        base = [p for p in group['params'] if id(p) not in attn_ids]
        attn = [p for p in group['params'] if id(p) in attn_ids]
        if base:
            groups.append({**group, 'params': base})
        if attn:
            groups.append({**group, 'params': attn, 'lr_scale': group.get('lr_scale', 1.0) * attn_lr_scale})
    for group in groups:
        group.pop('param_names', None)  # timm's layer groups name their parameters; the optimizer takes tensors
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
    lr = resolve_lr(args, world_size)
    opt_kwargs: Dict[str, Any] = {}
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    opt_kwargs.update(args.opt_kwargs)
    group_fn = None
    if args.attn_lr_scale != 1.0:  # gczoo's groups, which include timm's layer decay
        group_fn = functools.partial(
            attention_param_groups, weight_decay=args.weight_decay, attn_lr_scale=args.attn_lr_scale,
            no_weight_decay_list=getattr(model, 'no_weight_decay', lambda: set())(), layer_decay=args.layer_decay,
            layer_decay_min_scale=args.layer_decay_min_scale, layer_decay_no_opt_scale=args.layer_decay_no_opt_scale)
    elif args.layer_decay is not None:
        opt_kwargs.update(layer_decay=args.layer_decay, layer_decay_min_scale=args.layer_decay_min_scale,
                          layer_decay_no_opt_scale=args.layer_decay_no_opt_scale)
    try:
        optimizer = create_optimizer_v2(model, args.opt, lr=lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum, param_group_fn=group_fn, **opt_kwargs)
    except (TypeError, ValueError, AssertionError) as e:  # an unknown optimizer or keyword
        raise ValueError(f'--opt {args.opt!r}{" --opt-kwargs" if args.opt_kwargs else ""}: {e}') from e
    updates_per_epoch = math.ceil(batches_per_epoch / args.grad_accum_steps)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                updates_per_epoch=updates_per_epoch)
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
    bce = dict(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
    if mixup_active(args):
        mixup_fn = Mixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)
        # mixup folds the smoothing into its soft targets
        train_loss_fn: nn.Module = BinaryCrossEntropy(**bce) if args.bce_loss else SoftTargetCrossEntropy()
    elif args.bce_loss:  # timm falls back to softmax cross-entropy when --smoothing is 0; gczoo keeps the BCE asked for
        train_loss_fn = BinaryCrossEntropy(smoothing=args.smoothing, **bce)
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    return Optimization(lr=lr, optimizer=optimizer, scheduler=scheduler, num_epochs=num_epochs,
                        updates_per_epoch=updates_per_epoch, loss_scaler=loss_scaler, model_ema=model_ema,
                        mixup_fn=mixup_fn, train_loss_fn=train_loss_fn, val_loss_fn=nn.CrossEntropyLoss())


def build_datasets(args: argparse.Namespace, env: Any) -> Tuple[Any, Any, List[str], str]:
    """(train, val) datasets without transforms, the class names, and a description of the data."""
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
    mode = IMAGE_MODES[in_chans_of(args)]
    if dataset_name in ('', 'digits'):
        train_dir, train_classes = check_image_folder(data_dir, args.train_split)
        val_dir, val_classes = check_image_folder(data_dir, args.val_split)
        class_to_idx = _class_map(args.class_map, train_classes, val_classes) if args.class_map else None
        unknown = sorted(set(val_classes) - set(class_to_idx or train_classes))
        if unknown:
            raise ValueError(f'validation split {str(val_dir)!r} has classes the training split {str(train_dir)!r} '
                             f'does not: {format_keys(unknown)}')
        train_reader = create_reader('', root=str(train_dir), class_map=class_to_idx or '')
        class_to_idx = dict(train_reader.class_to_idx)
        train_ds = FolderImages(train_reader.samples, mode)
        val_ds = FolderImages(create_reader('', root=str(val_dir), class_map=class_to_idx).samples, mode)
        class_names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    else:
        if data_dir is None:
            raise ValueError(f'--dataset {dataset_name!r} needs --data-dir (where it is, or should be downloaded to)')
        if mode != 'RGB' or args.class_map:
            raise ValueError(f'--dataset {dataset_name!r}: --in-chans/--input-size other than 3 channels and '
                             f'--class-map work with image folders only')
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
    if len(class_names) < 2:
        raise ValueError(f'{what} has {len(class_names)} class ({", ".join(class_names)}): a classifier needs at least '
                         f'2 (one sub-folder per class in each split)')
    return train_ds, val_ds, class_names, what


def _class_map(path: str, train_classes: List[str], val_classes: List[str]) -> Dict[str, int]:
    """``--class-map``: every class folder must be in it (timm's reader would silently drop the others), and its
    indices must be 0..K-1 (K outputs)."""
    mapping = read_class_map(path)
    if not mapping:
        raise ValueError(f'--class-map {path!r} holds no classes')
    unmapped = sorted(set(train_classes + val_classes) - set(mapping))
    if unmapped:
        raise ValueError(f'--class-map {path!r} has no entry for the class folders {format_keys(unmapped)}; '
                         f'their images would be left out')
    indices = sorted(mapping.values())
    if indices != list(range(len(mapping))):
        raise ValueError(f'--class-map {path!r}: the indices must be 0..{len(mapping) - 1}, each once')
    return dict(mapping)


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
