"""Freezing a backbone's BatchNorm without freezing the attention blocks at the identity.

Detection and segmentation fine-tuning (torchvision's and mmdetection's ResNet backbones, detectron2)
first turns the backbone's BatchNorm into ``FrozenBatchNorm2d`` (``timm.layers.freeze_batch_norm_2d``).
Applied to a whole gczoo model it also freezes the blocks' zero-initialised output norms -- the
Non-local block's BN after W_z (Wang et al., Non-local Neural Networks, CVPR 2018, arXiv:1711.07971,
"BN initialised to zero") -- and a frozen zero makes that block the identity for ever, silently.

:func:`freeze_backbone_bn` is the recipe: timm's ``freeze_batch_norm_2d`` on everything but the
attention blocks, whose norms stay trainable ``BatchNorm``. :func:`frozen_zero_init` finds what the
recipe avoids: an attention block weight that is exactly zero and cannot train (a ``FrozenBatchNorm2d``
weight, or a parameter with ``requires_grad=False``); ``gczoo.train`` warns with it at the start.
"""
from typing import List, Tuple

import torch
import torch.nn as nn

from .registry import ATTN_SPECS

__all__ = ['freeze_backbone_bn', 'frozen_zero_init']


def _attention_classes() -> Tuple[type, ...]:
    # gczoo's blocks, and timm's own that start at the identity (timm.layers.NonLocalAttn's output BN is
    # zero-initialised, GlobalContext's fuse-by-add conv too), as in timm.create_model('resnet50',
    # block_args=dict(attn_layer='nl'))
    from timm.layers import GlobalContext, NonLocalAttn
    return tuple({spec.cls for spec in ATTN_SPECS.values()} | {NonLocalAttn, GlobalContext})


def _freeze_outside(module: nn.Module, classes: Tuple[type, ...]) -> None:
    from timm.layers import freeze_batch_norm_2d
    for name, child in module.named_children():
        if isinstance(child, classes):
            continue  # the attention block keeps its own norms trainable
        if any(isinstance(m, classes) for m in child.modules()):
            _freeze_outside(child, classes)
        else:
            setattr(module, name, freeze_batch_norm_2d(child))


def freeze_backbone_bn(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm outside the attention blocks (gczoo's, and timm's
    ``NonLocalAttn``/``GlobalContext``) turned into timm's
    ``FrozenBatchNorm2d`` (``timm.layers.freeze_batch_norm_2d``, in place where it can be); the blocks'
    norms, the Non-local block's zero-initialised output BN among them, stay trainable. Returns the
    model (a new module only if ``model`` itself is a BatchNorm), as timm's function does. Freeze before
    wrapping in ``DistributedDataParallel`` (a wrapped model is refused: DDP keeps the parameters it was
    built with, and the frozen norms' would never get gradients); ``torch.compile``'d models are fine."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError('freeze_backbone_bn: the model is already wrapped in DistributedDataParallel, which keeps '
                         'the BatchNorm parameters it was built with (its next step fails on them); freeze first, '
                         'then wrap: DistributedDataParallel(freeze_backbone_bn(model), ...)')
    classes = _attention_classes()
    if isinstance(model, classes):
        return model
    if not any(isinstance(m, classes) for m in model.modules()):
        from timm.layers import freeze_batch_norm_2d
        return freeze_batch_norm_2d(model)
    _freeze_outside(model, classes)
    return model


def _frozen_norm_classes() -> Tuple[type, ...]:
    # what timm.layers.freeze_batch_norm_2d produces: torchvision's FrozenBatchNorm2d and timm's FrozenBatchNormAct2d
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d
    return FrozenBatchNorm2d, FrozenBatchNormAct2d


def _is_zero(t: torch.Tensor) -> bool:
    return t.numel() > 0 and t.is_floating_point() and t.device.type != 'meta' and not bool(t.detach().any())


def frozen_zero_init(model: nn.Module) -> List[str]:
    """Names of the attention blocks' weights that are exactly zero and cannot train: the weight of a
    ``FrozenBatchNorm2d`` (torchvision's, timm's, detectron2's: any module whose ``weight`` is a buffer) or
    a parameter with ``requires_grad=False`` (biases aside). Each keeps its block at the identity for the
    whole training."""
    frozen_norms = _frozen_norm_classes()
    found: List[str] = []
    classes = _attention_classes()
    for block_name, block in [(n, m) for n, m in model.named_modules() if isinstance(m, classes)]:
        prefix = f'{block_name}.' if block_name else ''
        for name, sub in block.named_modules():
            # a weight kept as a buffer never trains: torchvision's/timm's FrozenBatchNorm2d, detectron2's, ...
            buffer = dict(sub.named_buffers(recurse=False)).get('weight')
            if (isinstance(sub, frozen_norms) or buffer is not None) and _is_zero(sub.weight):
                kind = type(sub).__name__
                found.append(f'{prefix}{name}.weight ({kind})' if name else f'{block_name}.weight ({kind})')
        for name, param in block.named_parameters():
            if not param.requires_grad and not name.endswith('bias') and _is_zero(param):
                found.append(f'{prefix}{name} (requires_grad=False)')
    return list(dict.fromkeys(found))
