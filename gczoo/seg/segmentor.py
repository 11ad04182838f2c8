"""Segmentors as mmsegmentation's ``EncoderDecoder`` builds them: a dilated timm ResNet + a paper's head.

The backbone is timm's deep-stem ResNet (``resnet50c`` / ``resnet101c``) at ``output_stride=8``, which is
mmseg's ``ResNetV1c`` with ``dilations=(1, 1, 2, 4)``, ``strides=(1, 2, 1, 1)`` and
``contract_dilation=True``: timm's first block of a dilated stage uses the previous stage's dilation
(1 in stage 3, 2 in stage 4), as mmseg's contracted dilation does. The decode head (``gczoo.seg.heads``)
reads stage 4 (2048 channels, width 512); the FCN auxiliary head reads stage 3 (1024 -> 256, weight 0.4
in mmseg's training loss), as in mmseg's ``ccnet_r50-d8.py`` / ``nonlocal_r50-d8.py`` / ``gcnet_r50-d8.py``.

Names follow mmseg's configs: ``ccnet_r50_d8`` ... ``gcnet_r101_d8`` (:data:`SEGMENTORS`, one row each).
They are not timm classification models and are not in timm's registry: :func:`create_segmentor` and
:func:`list_segmentors` are this table's ``timm.create_model`` / ``timm.list_models``.
"""
import dataclasses
import fnmatch
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import FCNHead, get_head

__all__ = ['SegmentorSpec', 'SEGMENTORS', 'Segmentor', 'list_segmentors', 'get_segmentor_spec', 'split_name']


@dataclasses.dataclass(frozen=True)
class SegmentorSpec:
    """One row: a system's head on a depth of mmseg's ResNetV1c-D8."""
    name: str
    system: str  # 'ccnet', 'nlnet', 'gcnet' (gczoo.seg.heads.HEADS)
    depth: int  # 50 or 101
    paper: str  # gczoo.papers key

    @property
    def backbone(self) -> str:
        return f'resnet{self.depth}c'

    @property
    def summary(self) -> str:
        head = {'ccnet': "CCNet's RCCA head (criss-cross attention x2)", 'nlnet': "NLNet's Non-local head",
                'gcnet': "GCNet's GC head"}[self.system]
        return f"mmseg's ResNetV1c-{self.depth}-D8 (timm {self.backbone}, output stride 8) + {head}"


SEGMENTORS: Dict[str, SegmentorSpec] = {
    s.name: s for s in (
        SegmentorSpec('ccnet_r50_d8', 'ccnet', 50, 'ccnet'),
        SegmentorSpec('ccnet_r101_d8', 'ccnet', 101, 'ccnet'),
        SegmentorSpec('nlnet_r50_d8', 'nlnet', 50, 'nonlocal'),
        SegmentorSpec('nlnet_r101_d8', 'nlnet', 101, 'nonlocal'),
        SegmentorSpec('gcnet_r50_d8', 'gcnet', 50, 'gcnet'),
        SegmentorSpec('gcnet_r101_d8', 'gcnet', 101, 'gcnet'),
    )
}


def split_name(name: str) -> Tuple[str, Optional[str]]:
    """``'ccnet_r50_d8.cityscapes_512x1024_80k'`` -> (model, tag); a tag-less name gives (name, None)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'a segmentor name must be a non-empty str, got {name!r}')
    model, _, tag = name.partition('.')
    return model, (tag or None)


def get_segmentor_spec(name: str) -> SegmentorSpec:
    model, _ = split_name(name)
    if model not in SEGMENTORS:
        raise ValueError(f'unknown segmentor {model!r}; gczoo has {", ".join(SEGMENTORS)} '
                         f'(list them with gczoo.seg.list_segmentors())')
    return SEGMENTORS[model]


def list_segmentors(filter: Union[str, List[str]] = '', pretrained: bool = False) -> List[str]:
    """Segmentor names matching a wildcard ``filter`` (as ``timm.list_models``); with ``pretrained=True``
    every ``model.tag`` instead."""
    from .tags import seg_tags_for
    names: List[str] = []
    for model in SEGMENTORS:
        names += [t.name for t in seg_tags_for(model)] if pretrained else [model]
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p for p in patterns if p]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


class Segmentor(nn.Module):
    """mmseg's ``EncoderDecoder``: backbone -> decode head (+ FCN auxiliary head for training).

    ``forward(x)`` is mmseg's ``encode_decode``: the decode head's logits (1/8 of the input) resized
    bilinearly to the input's size with ``align_corners`` as the config says. ``x`` is normalised with
    mmseg's mean/std (``gczoo.seg.inference.normalize``). ``forward_train(x)`` returns the decode and
    auxiliary logits at 1/8 resolution. ``pretrained_cfg`` carries the classifier names (both
    ``conv_seg``) and, with a tag, its test pipeline.
    """

    def __init__(self, name: str, num_classes: int = 19, *, align_corners: bool = False, dropout: float = 0.1,
                 **head_kwargs: Any):
        super().__init__()
        spec = get_segmentor_spec(name)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f'num_classes must be an int >= 2 (the heads are a softmax over classes: one class '
                             f'would predict it everywhere and train on a zero loss; a binary task is num_classes=2), '
                             f'got {num_classes!r}')
        self.name, self.num_classes, self.align_corners = spec.name, num_classes, bool(align_corners)
        self.backbone = timm.create_model(spec.backbone, pretrained=False, output_stride=8, num_classes=0,
                                          global_pool='')
        self.decode_head = get_head(spec.system)(2048, 512, num_classes, dropout=dropout, **head_kwargs)
        self.auxiliary_head = FCNHead(1024, 256, num_classes, num_convs=1, concat_input=False, dropout=dropout)
        self.pretrained_cfg: Dict[str, Any] = dict(
            architecture=spec.name, classifier=('decode_head.conv_seg', 'auxiliary_head.conv_seg'),
            first_conv='backbone.conv1.0', num_classes=num_classes, align_corners=self.align_corners)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The backbone's stage-3 (1024 ch, 1/8) and stage-4 (2048 ch, 1/8) features."""
        b = self.backbone
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        c3 = b.layer3(b.layer2(b.layer1(x)))
        return c3, b.layer4(c3)

    def forward_train(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(decode logits, auxiliary logits), both at the features' 1/8 resolution."""
        c3, c4 = self.forward_features(x)
        return self.decode_head(c4), self.auxiliary_head(c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # else conv's 'expected scalar type Long but found Float'
            raise TypeError('Segmentor input must be a normalised float tensor (gczoo.seg.inference.normalize), '
                            'not integer pixels')
        c3, c4 = self.forward_features(x)
        logits = self.decode_head(c4)
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear', align_corners=self.align_corners)
