"""mmaction2's Recognizer3D checkpoints (``ResNet3d`` backbone + ``I3DHead``) -> gczoo's ResNet3d keys.

mmaction2 (and mmcv's ``ConvModule``/``NonLocal3d``) name a conv + BN pair ``<name>.conv`` and
``<name>.bn``; gczoo uses timm's ResNet names. The mapping, one key at a time:

====================================================  ==========================================
mmaction2                                             gczoo
====================================================  ==========================================
``backbone.conv1.conv.weight`` / ``conv1.bn.*``       ``conv1.weight`` / ``bn1.*``
``backbone.layerN.i.convK.conv.weight`` / ``.bn.*``   ``layerN.i.convK.weight`` / ``bnK.*``
``backbone.layerN.i.downsample.conv`` / ``.bn``       ``layerN.i.downsample.0`` / ``.1``
``backbone...non_local_block.theta.conv.*``           ``layerN.i.non_local.theta.*``
``...non_local_block.g.0.conv.*`` (sub_sample)        ``layerN.i.non_local.g.*`` (``phi`` alike)
``...non_local_block.conv_out.conv`` / ``.bn``        ``layerN.i.non_local.conv_out`` / ``.norm``
``cls_head.fc_cls.*``                                 ``fc.*``
====================================================  ==========================================

Keys of ``data_preprocessor.`` (mean/std buffers, if a version saved them) are dropped; any other key
is refused by name, so a checkpoint of another architecture never loads half-way.
"""
import re
from typing import Any, List, Mapping, Tuple

import torch

from gczoo.errors import CheckpointError
from gczoo.models.weights import StateDict, format_keys, unwrap_state_dict

__all__ = ['is_mmaction2_layout', 'convert_mmaction2']

_DROPPED = ('data_preprocessor.',)
_RULES: Tuple[Tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r'^backbone\.conv1\.conv\.(weight)$', r'conv1.\1'),
    (r'^backbone\.conv1\.bn\.(\w+)$', r'bn1.\1'),
    (r'^backbone\.(layer\d+\.\d+)\.conv(\d)\.conv\.(weight)$', r'\1.conv\2.\3'),
    (r'^backbone\.(layer\d+\.\d+)\.conv(\d)\.bn\.(\w+)$', r'\1.bn\2.\3'),
    (r'^backbone\.(layer\d+\.\d+)\.downsample\.conv\.(weight)$', r'\1.downsample.0.\2'),
    (r'^backbone\.(layer\d+\.\d+)\.downsample\.bn\.(\w+)$', r'\1.downsample.1.\2'),
    (r'^backbone\.(layer\d+\.\d+)\.non_local_block\.(g|phi|theta)(?:\.0)?\.conv\.(weight|bias)$',
     r'\1.non_local.\2.\3'),
    (r'^backbone\.(layer\d+\.\d+)\.non_local_block\.conv_out\.conv\.(weight|bias)$', r'\1.non_local.conv_out.\2'),
    (r'^backbone\.(layer\d+\.\d+)\.non_local_block\.conv_out\.bn\.(\w+)$', r'\1.non_local.norm.\2'),
    (r'^cls_head\.fc_cls\.(weight|bias)$', r'fc.\1'),
))


def is_mmaction2_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are mmaction2's Recognizer3D layout (``backbone.conv1.conv.weight``)."""
    return 'backbone.conv1.conv.weight' in state_dict


def _rename(key: str) -> str:
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return ''


def convert_mmaction2(checkpoint: Mapping[str, Any], source: str = 'checkpoint') -> StateDict:
    """gczoo's state dict from an mmaction2 checkpoint (``{'meta': ..., 'state_dict': ...}`` or the state
    dict itself). ``CheckpointError`` naming the keys that are not mmaction2's I3D layout."""
    state = unwrap_state_dict(checkpoint, source=source)
    if not is_mmaction2_layout(state):
        raise CheckpointError(
            f'{source} is not an mmaction2 Recognizer3D checkpoint of a ResNet3d (I3D) backbone (no '
            f'backbone.conv1.conv.weight; keys start '
            f'{format_keys(sorted(state)[:3])}). Pass a gczoo ResNet3d state dict instead, or one of mmaction2\'s '
            f'I3D checkpoints.')
    out: StateDict = {}
    unknown: List[str] = []
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        new = _rename(key)
        if not new:
            unknown.append(key)
        elif new in out:
            raise CheckpointError(f'{source}: two keys map to {new!r} (one is {key!r}); the file is not one model')
        else:
            out[new] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if unknown:
        raise CheckpointError(
            f'{source} has keys outside mmaction2\'s ResNet3d + I3DHead layout: {format_keys(unknown)}. It is a '
            f'checkpoint of another mmaction2 model (another backbone or head); gczoo converts only the I3D ones.')
    return out
