"""Start a zoo model from an ImageNet ResNet: load its weights into the backbone, keep the attention
blocks at their init.

Because the GC/NL/SNL/CC/SA blocks start as the identity (their papers' zero-inits), the new model's
logits equal the source ResNet's at init; fine-tuning then only has to learn what attention adds.
(Blocks that cannot be an identity -- SE, CBAM and BAM gates -- start at their papers' init and
change the logits; the report says which keys were left at init.)

Two callers share :func:`transplant_state_dict`: :func:`init_from_resnet` (``pretrained_backbone=``)
loads the result itself, adapting the first conv to ``in_chans`` with timm's ``adapt_input_conv``
and skipping a classifier of another size; the pretrained tags' ``filter_fn``
(``gczoo.models.tags``) hands it to timm's ``load_pretrained``, which adapts the first conv and drops
the classifier itself, as for any timm model.
"""
import dataclasses
import os
from typing import List, Mapping, Tuple, Union

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

from gczoo.layers import attention_modules

from .errors import CheckpointError, explain_download_errors
from .registry import resolve_model_name
from .weights import (
    StateDict, StateDictMismatch, classifier_names, first_conv_names, load_weights, read_state_dict,
    unwrap_state_dict,
)

__all__ = ['LoadReport', 'init_from_resnet', 'transplant_state_dict']


@dataclasses.dataclass
class LoadReport:
    """What ``init_from_resnet`` (or a transplanting pretrained tag) did with each key."""
    loaded: List[str]
    kept_at_init: List[str]  # attention keys the source does not have
    skipped_classifier: List[str]  # classifier keys whose shape differs (another num_classes), or no head
    ignored: List[str]  # source keys with no place in this model that are safe to drop (e.g. the head)
    adapted: List[str] = dataclasses.field(default_factory=list)  # first-conv keys adapted to in_chans

    def __str__(self) -> str:
        return (f'loaded {len(self.loaded)} tensors; attention tensors kept at init: {len(self.kept_at_init)}; '
                f'classifier tensors skipped: {self.skipped_classifier or "none"}; '
                f'source tensors ignored: {self.ignored or "none"}'
                + (f'; adapted to the input channels: {", ".join(self.adapted)}' if self.adapted else ''))


def _resolve_source(source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module]) -> Tuple[StateDict, str]:
    if isinstance(source, nn.Module):
        return source.state_dict(), type(source).__name__
    if isinstance(source, Mapping):
        return unwrap_state_dict(source), 'state dict'
    if os.path.exists(str(source)):
        return read_state_dict(source), str(source)
    if isinstance(source, str):
        import timm
        resolve_model_name(source, what='source (no such file; nor a timm model name such as "resnet50.a1_in1k")')
        with explain_download_errors(source):
            return timm.create_model(source, pretrained=True).state_dict(), source
    raise TypeError(f'source must be a path, a timm model name, a state dict or a module, got {type(source).__name__}')


def _source_only_keys(src: StateDict, target: Mapping[str, torch.Tensor], head: Tuple[str, ...],
                      skip_mismatched_classifier: bool, report: 'LoadReport', out: StateDict) -> List[str]:
    """The source keys the model has no place for: a classifier and BN counters are ignored (reported),
    the rest returned as unexpected."""
    unexpected = []
    for key in src:
        if key in target:
            continue
        if key.startswith(head) or key.endswith('num_batches_tracked'):
            report.ignored.append(key)
            if key.startswith(head) and not skip_mismatched_classifier:
                out[key] = src[key]  # the model has no head (num_classes=0): load_pretrained drops it
        else:
            unexpected.append(key)
    return unexpected


def transplant_state_dict(
        model: nn.Module,
        source: Mapping[str, torch.Tensor],
        where: str,
        *,
        adapt_first_conv: bool = True,
        skip_mismatched_classifier: bool = True,
) -> Tuple[StateDict, LoadReport]:
    """Map a ResNet state dict (timm's or torchvision's keys: they are the same) onto ``model``'s keys.

    Returns every key of ``model``: backbone tensors from ``source``, attention tensors from ``source``
    where it has them with the same shape, else the model's own (its init, the identity where the
    block's paper zero-inits), and a report. A backbone key missing from the source, a source key
    with no place in the model, or a mis-shaped backbone tensor raises ``CheckpointError`` listing
    them all.

    ``adapt_first_conv``: adapt the first conv to the model's input channels with timm's
    ``adapt_input_conv`` (else it is returned as the source has it, for timm's ``load_pretrained``
    to adapt). ``skip_mismatched_classifier``: leave a classifier of another size out (else it is
    returned as the source has it, for ``load_pretrained`` to drop when ``num_classes`` differs).
    """
    src = unwrap_state_dict(source, source=where)
    target = model.state_dict()
    attn_prefixes = tuple(f'{name}.' for name, _ in attention_modules(model))
    head = tuple(f'{name}.' for name in classifier_names(model))
    stem = {f'{name}.weight' for name in first_conv_names(model)}

    report = LoadReport(loaded=[], kept_at_init=[], skipped_classifier=[], ignored=[])
    missing, mis_shaped = [], []
    out: StateDict = {}
    for key, tensor in target.items():
        if key.startswith(attn_prefixes):
            if key in src and src[key].shape == tensor.shape:
                out[key] = src[key]
                report.loaded.append(key)
            else:
                out[key] = tensor  # the model's own init
                report.kept_at_init.append(key)
            continue
        if key not in src:
            if key.startswith(head):
                report.skipped_classifier.append(key)
                if skip_mismatched_classifier:
                    out[key] = tensor  # a new head (for load_pretrained: absent, so a strict load names it)
            elif key.endswith('num_batches_tracked'):
                out[key] = tensor  # absent from files saved before PyTorch 0.4.1; never changes a result
            else:
                missing.append(key)
            continue
        value = src[key]
        if value.shape != tensor.shape:
            if key.startswith(head):
                if skip_mismatched_classifier:
                    report.skipped_classifier.append(key)
                    out[key] = tensor
                else:
                    out[key] = value
                continue
            if key in stem and value.ndim == 4 and value.shape[0] == tensor.shape[0] \
                    and value.shape[2:] == tensor.shape[2:]:
                if adapt_first_conv:
                    value = adapt_input_conv(tensor.shape[1], value, base_chans=value.shape[1])
                    report.adapted.append(f'{key} ({src[key].shape[1]} -> {tensor.shape[1]} channels)')
                out[key] = value
                report.loaded.append(key)
                continue
            mis_shaped.append(f'{key}: source {tuple(value.shape)} vs model {tuple(tensor.shape)}')
            continue
        out[key] = value
        report.loaded.append(key)
    unexpected = _source_only_keys(src, target, head, skip_mismatched_classifier, report, out)
    mismatch = StateDictMismatch(missing, unexpected, mis_shaped)
    if mismatch:
        raise CheckpointError(
            f'{where} does not fit {type(model).__name__}\'s backbone: {mismatch}. '
            f'Is the source a ResNet of the same depth (timm or torchvision layout)?')
    return out, report


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
    A classifier of another size is skipped and reported (as timm does for ``num_classes``); a model
    built with another ``in_chans`` gets the first conv adapted the way timm adapts it
    (``timm.models.adapt_input_conv``: summed for 1 channel, repeated and rescaled otherwise).
    """
    src, where = _resolve_source(source)
    state, report = transplant_state_dict(model, src, where)
    # the model's own tensors need no loading (nor checking): load only what comes from the source
    loaded = set(report.loaded)
    to_load = {k: v for k, v in state.items() if k in loaded}
    load_weights(model, to_load, what=where, strict=False)  # checked: dtypes and finite values
    if verbose:
        print(f'init_from_resnet({where}): {report}')
    return report
