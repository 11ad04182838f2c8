"""Start a zoo model from an ImageNet ResNet: load its weights into the backbone, keep the attention
blocks at identity init.

Because every block starts as the identity (the GC/NL/SNL/CC/SA zero-inits), the new model's
logits equal the source ResNet's at init; fine-tuning then only has to learn what attention adds.
(Blocks that cannot be an identity -- SE, CBAM and BAM gates -- start at their papers' init and
change the logits; the report says which keys were left at init.)
"""
import dataclasses
import os
from typing import List, Mapping, Tuple, Union

import torch
import torch.nn as nn

from gczoo.layers import attention_modules

from .errors import CheckpointError, explain_download_errors
from .weights import StateDict, StateDictMismatch, check_state_dict, classifier_names, read_state_dict, unwrap_state_dict

__all__ = ['LoadReport', 'init_from_resnet']


@dataclasses.dataclass
class LoadReport:
    """What ``init_from_resnet`` did with each key."""
    loaded: List[str]
    kept_at_init: List[str]  # attention keys the source does not have
    skipped_classifier: List[str]  # classifier keys whose shape differs (another num_classes), or no head
    ignored: List[str]  # source keys with no place in this model that are safe to drop (e.g. the head)

    def __str__(self) -> str:
        return (f'loaded {len(self.loaded)} tensors; attention tensors kept at init: {len(self.kept_at_init)}; '
                f'classifier tensors skipped: {self.skipped_classifier or "none"}; '
                f'source tensors ignored: {self.ignored or "none"}')


def _resolve_source(source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module]) -> Tuple[StateDict, str]:
    if isinstance(source, nn.Module):
        return source.state_dict(), type(source).__name__
    if isinstance(source, Mapping):
        return unwrap_state_dict(source), 'state dict'
    if os.path.exists(str(source)):
        return read_state_dict(source), str(source)
    if isinstance(source, str):
        import timm
        if not (source.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(source.split('.')[0])):
            raise ValueError(
                f'source {source!r} is neither an existing file nor a timm model name (e.g. "resnet50.a1_in1k")')
        with explain_download_errors(source):
            return timm.create_model(source, pretrained=True).state_dict(), source
    raise TypeError(f'source must be a path, a timm model name, a state dict or a module, got {type(source).__name__}')


def init_from_resnet(
        model: nn.Module,
        source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module],
        verbose: bool = False,
) -> LoadReport:
    """Load an ImageNet ResNet (timm's or torchvision's key layout: they are the same) into ``model``'s
    backbone; attention blocks keep their init.

    ``source``: a timm model name with tag (``"resnet50.a1_in1k"``; downloaded through timm's Hub
    cache), ``hf-hub:``/``local-dir:``, a ``.safetensors``/``.pth`` file (read with
    ``weights_only=True``), a state dict, or a module. Every backbone tensor must be found with the
    same shape; otherwise a ``CheckpointError`` lists the missing, unexpected and mis-shaped keys.
    A classifier of another size is skipped and reported (as timm does for ``num_classes``).
    """
    src, where = _resolve_source(source)
    target = model.state_dict()
    attn_prefixes = tuple(f'{name}.' for name, _ in attention_modules(model))
    head = tuple(f'{name}.' for name in classifier_names(model))

    loaded, kept, skipped, ignored = [], [], [], []
    missing, mis_shaped = [], []
    to_load: StateDict = {}
    for key, tensor in target.items():
        if key.startswith(attn_prefixes):
            if key in src and src[key].shape == tensor.shape:
                to_load[key] = src[key]
                loaded.append(key)
            else:
                kept.append(key)
            continue
        if key not in src:
            (skipped if key.startswith(head) else missing).append(key)
        elif src[key].shape != tensor.shape:
            if key.startswith(head):
                skipped.append(key)
            else:
                mis_shaped.append(f'{key}: source {tuple(src[key].shape)} vs model {tuple(tensor.shape)}')
        else:
            to_load[key] = src[key]
            loaded.append(key)
    unexpected = [k for k in src if k not in target]
    for key in list(unexpected):
        if key.startswith(head) or key.endswith('num_batches_tracked'):
            unexpected.remove(key)
            ignored.append(key)
    mismatch = StateDictMismatch(missing, unexpected, mis_shaped)
    if mismatch:
        raise CheckpointError(
            f'{where} does not fit {type(model).__name__}\'s backbone: {mismatch}. '
            f'Is the source a ResNet of the same depth (timm or torchvision layout)?')
    check_state_dict(model, to_load, where, strict=False)  # dtypes and finite values
    model.load_state_dict(to_load, strict=False)
    report = LoadReport(loaded=loaded, kept_at_init=kept, skipped_classifier=skipped, ignored=ignored)
    if verbose:
        print(f'init_from_resnet({where}): {report}')
    return report
