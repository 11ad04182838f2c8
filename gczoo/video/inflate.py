"""Inflating a 2D ImageNet ResNet into the 3D video model (I3D's "bootstrapping" from ImageNet).

Paper: `Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset` - Carreira & Zisserman,
CVPR 2017, https://arxiv.org/abs/1705.07750, Sec. 2.4: repeat each 2D filter ``kt`` times along time and
divide by ``kt``, so that a "boring" video of one repeated frame gives the 2D network's activations
(away from the temporal borders, where the 3D convs' zero padding sees fewer frames). This is
mmaction2's ``ResNet3d.inflate_weights`` recipe; the Non-local paper's I3D models start from it.

Any 2D ResNet with timm's key names works: timm's ``resnet50`` weights, or a gczoo zoo model
(``resnet50_gc``, ``resnet50_nl``...). Its ResNet convs, BNs (and ``fc`` when the class counts match)
are carried over; its attention blocks are not (the 3D model has none, or Non-local blocks of its own,
which stay at their zero init, the identity). :class:`InflationReport` lists what was and was not used.
"""
import dataclasses
import os
import re
from typing import List, Mapping, Tuple, Union

import torch
import torch.nn as nn

from gczoo.errors import CheckpointError
from gczoo.models.weights import StateDict, format_keys, load_weights, read_state_dict, unwrap_state_dict

__all__ = ['InflationReport', 'inflate_state_dict', 'inflate_from_2d']

Source = Union[str, 'os.PathLike[str]', Mapping[str, torch.Tensor], nn.Module]


@dataclasses.dataclass
class InflationReport:
    """What :func:`inflate_state_dict` did with each key."""
    inflated: List[str]  # 3D convs made from 2D ones (repeated over time, divided by the kernel's depth)
    copied: List[str]  # BN parameters and buffers, fc (same shape)
    kept_init: List[str]  # 3D keys with no 2D counterpart (Non-local blocks, fc of another num_classes)
    unused: List[str]  # 2D keys the 3D model has no place for (attention blocks, a mismatched fc)

    def __str__(self) -> str:
        return (f'inflated {len(self.inflated)} convs, copied {len(self.copied)} tensors; left at init: '
                f'{format_keys(self.kept_init) if self.kept_init else "nothing"}; unused from 2D: '
                f'{format_keys(self.unused) if self.unused else "nothing"}')


# the weights of a 2D ResNet block (not of an attention block inside it, which the 3D model may lack)
_RESNET_BLOCK = re.compile(r'^layer\d+\.\d+\.(conv\d|bn\d|downsample)\.')


def _may_stay_at_init(key: str) -> bool:
    return '.non_local.' in key or key.startswith('fc.') or key.endswith('num_batches_tracked')


def _inflate_one(key: str, w2d: torch.Tensor, target: torch.Tensor, source: str) -> torch.Tensor:
    if key == 'conv1.weight' and w2d.dim() == 4 and w2d.shape[1] != target.shape[1] \
            and (w2d.shape[0],) + tuple(w2d.shape[2:]) == (target.shape[0],) + tuple(target.shape[3:]):
        raise CheckpointError(
            f'{source}: conv1.weight takes {w2d.shape[1]} input channel(s), the 3D model {target.shape[1]}: create '
            f'the 3D model with in_chans={w2d.shape[1]} (create_video_model(..., in_chans={w2d.shape[1]}))')
    if w2d.dim() != 4 or tuple(w2d.shape) != tuple(target.shape[:2]) + tuple(target.shape[3:]):
        raise CheckpointError(
            f'{source}: {key} has shape {list(w2d.shape)}, which does not inflate to {list(target.shape)} '
            f'(a 2D conv of the same ResNet depth and width is needed)')
    kt = target.shape[2]
    return (w2d.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt).to(target.dtype).contiguous()


def inflate_state_dict(state_2d: Mapping[str, torch.Tensor], model: nn.Module,
                       source: str = '2D weights') -> Tuple[StateDict, InflationReport]:
    """A full state dict for the 3D ``model`` from a 2D ResNet's, and what was done with each key.

    ``CheckpointError`` when a ResNet key of the 3D model is absent from the 2D weights or does not
    fit (another depth or width): nothing of the backbone is ever left at random init silently.
    """
    state_2d = unwrap_state_dict(state_2d, source=source)
    target = model.state_dict()
    out: StateDict = {}
    report = InflationReport([], [], [], [])
    missing: List[str] = []
    for key, value in target.items():
        w = state_2d.get(key)
        if w is None:
            if not _may_stay_at_init(key):
                missing.append(key)
            elif not key.endswith('num_batches_tracked'):
                report.kept_init.append(key)
            out[key] = value
        elif value.dim() == 5:
            out[key] = _inflate_one(key, w, value, source)
            report.inflated.append(key)
        elif tuple(w.shape) == tuple(value.shape):
            out[key] = w.to(value.dtype) if value.is_floating_point() else w
            report.copied.append(key)
        elif key.startswith('fc.'):  # another number of classes: the 3D model's own head
            out[key] = value
            report.kept_init.append(key)
            report.unused.append(key)
        else:
            raise CheckpointError(f'{source}: {key} has shape {list(w.shape)}, the 3D model {list(value.shape)}')
    if missing:
        raise CheckpointError(
            f'{source} lacks ResNet weights the 3D model needs: {format_keys(missing)}. Inflate a 2D ResNet of '
            f'the same depth with timm\'s key names (e.g. timm\'s resnet50, or a gczoo resnet50_* model).')
    report.unused += [k for k in state_2d if k not in target]
    deeper = [k for k in report.unused if _RESNET_BLOCK.match(k)]
    if deeper:
        raise CheckpointError(
            f'{source} has ResNet blocks the 3D model has no place for: {format_keys(deeper)} (a deeper ResNet, '
            f'e.g. a ResNet-101 into the ResNet-50 I3D); it would load part of the 2D network. Inflate a 2D ResNet '
            f'of the same depth (timm\'s resnet50, or a gczoo resnet50_* model).')
    return out, report


def _resolve(source: Source) -> Tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(source, nn.Module):
        return source.state_dict(), f'the 2D model {type(source).__name__}'
    if isinstance(source, Mapping):
        return source, 'the 2D state dict'
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        return read_state_dict(source), f'2D weights {str(source)!r}'
    if isinstance(source, str):  # a timm/gczoo model name: its pretrained weights through timm
        import timm
        import gczoo.models  # noqa: F401  (registers the zoo models with timm)
        return timm.create_model(source, pretrained=True).state_dict(), f'the pretrained weights of {source!r}'
    raise TypeError(f'source must be a 2D model, a state dict, a file or a timm model name, '
                    f'got {type(source).__name__}')


def inflate_from_2d(model: nn.Module, source: Source) -> InflationReport:
    """Load the inflation of ``source`` (a 2D ResNet module, state dict, weights file or timm name such as
    ``'resnet50.a1_in1k'``) into the 3D ``model``, through gczoo's checks; returns the report."""
    state_2d, where = _resolve(source)
    state, report = inflate_state_dict(state_2d, model, where)
    load_weights(model, state, what=where)
    return report
