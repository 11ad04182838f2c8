"""The decode heads of the seed papers' segmentation systems, as mmsegmentation builds them, on gczoo's blocks.

* :class:`FCNHead` -- Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
  (arXiv:1411.4038), as mmseg's ``FCNHead``: ``num_convs`` 3x3 conv-BN-ReLU, optionally a 3x3 fusion conv
  over ``cat([input, output])`` (``concat_input``), dropout, a 1x1 classifier ``conv_seg``. mmseg's
  auxiliary head is one of these on the backbone's stage 3 (1024 -> 256, one conv, no concat).
* :class:`CCHead` -- CCNet (Huang et al., ICCV 2019, arXiv:1811.11721): ``convs[0]`` -> the recurrent
  criss-cross attention (RCCA, the same block applied ``recurrence`` = 2 times) -> ``convs[1]`` -> concat.
* :class:`NLHead` -- Non-local Neural Networks (Wang et al., CVPR 2018, arXiv:1711.07971): the same with
  an embedded-Gaussian Non-local block (inner width C/2, logits / sqrt(C/2), BN after W_z).
* :class:`GCHead` -- GCNet (Cao et al., arXiv:1904.11492): the same with a GC block (attention pooling,
  ``channel_add``, bottleneck C/4).

Every conv-BN-ReLU is timm's ``ConvNormAct`` (keys ``conv``/``bn``, mmcv's ``ConvModule`` names), the
attention blocks are ``gczoo.layers``' own; ``gczoo.seg.convert`` maps mmseg's remaining names (mmcv's
``ConvModule`` inside the Non-local block, ``Scale`` for the criss-cross ``gamma``). The blocks are
configured to compute exactly mmcv's ``CrissCrossAttention``, ``NonLocal2d(reduction=2, use_scale=True)``
and ``ContextBlock(ratio=1/4)``; the tests check the logits against an independent re-implementation
of mmseg's module structure.
"""
from typing import Type

import torch
import torch.nn as nn
from timm.layers import ConvNormAct

from gczoo.layers import ContextBlock, CrissCrossAttention, NonLocal2d

__all__ = ['FCNHead', 'CCHead', 'NLHead', 'GCHead', 'HEADS', 'get_head']


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` (convs -> optional concat fusion -> dropout -> 1x1 ``conv_seg``).

    Args:
        in_channels: channels of the backbone feature the head reads.
        channels: the head's width.
        num_classes: classes of ``conv_seg``.
        num_convs: 3x3 conv-BN-ReLU layers (mmseg's decode heads: 2; the auxiliary head: 1).
        concat_input: fuse ``cat([input, convs(input)])`` with one more 3x3 conv-BN-ReLU.
        dropout: ``Dropout2d`` probability before ``conv_seg`` (mmseg's ``dropout_ratio``, 0.1).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, num_convs: int = 2,
                 concat_input: bool = True, dropout: float = 0.1, kernel_size: int = 3):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f'num_convs must be >= 1, got {num_convs}')
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.concat_input = concat_input
        layers = [ConvNormAct(in_channels, channels, kernel_size)]
        layers += [ConvNormAct(channels, channels, kernel_size) for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*layers)
        self.conv_cat = ConvNormAct(in_channels + channels, channels, kernel_size) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's init of conv_seg
        nn.init.zeros_(self.conv_seg.bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """What sits between the convs (nothing in the plain FCN head)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i == 0:  # the attention block sits after the first conv (mmseg's CCHead/NLHead/GCHead)
                out = self.context(out)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


class CCHead(FCNHead):
    """CCNet's head: ``convs[0]`` -> RCCA (one ``CrissCrossAttention``, query/key width C // 8, applied
    ``recurrence`` times with shared weights, as mmseg's ``CCHead``) -> ``convs[1]`` -> concat fusion."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, recurrence: int = 2, **kwargs):
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kwargs)
        self.cca = CrissCrossAttention(channels, rd_channels=channels // 8, recurrence=recurrence)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.cca(x)


class NLHead(FCNHead):
    """NLNet's head: ``convs[0]`` -> embedded-Gaussian Non-local block (inner width C // ``reduction``,
    logits / sqrt(inner), W_z followed by BN, as mmcv's ``NonLocal2d``) -> ``convs[1]`` -> concat fusion."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, reduction: int = 2,
                 use_scale: bool = True, **kwargs):
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kwargs)
        self.nl_block = NonLocal2d(channels, mode='embedded_gaussian', rd_channels=max(channels // reduction, 1),
                                   use_scale=use_scale)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.nl_block(x)


class GCHead(FCNHead):
    """GCNet's head: ``convs[0]`` -> GC block (attention pooling, ``channel_add``, bottleneck
    ``int(C * ratio)`` with LayerNorm, as mmcv's ``ContextBlock``) -> ``convs[1]`` -> concat fusion."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, *, ratio: float = 1 / 4., **kwargs):
        super().__init__(in_channels, channels, num_classes, num_convs=2, **kwargs)
        self.gc_block = ContextBlock(channels, rd_channels=int(channels * ratio), pooling_type='att',
                                     fusion_types=('channel_add',))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.gc_block(x)


HEADS = {'ccnet': CCHead, 'nlnet': NLHead, 'gcnet': GCHead, 'fcn': FCNHead}


def get_head(name: str) -> Type[FCNHead]:
    """The head class of a system name (``'ccnet'``, ``'nlnet'``, ``'gcnet'``, ``'fcn'``)."""
    if name not in HEADS:
        raise ValueError(f'unknown segmentation head {name!r}; expected one of {sorted(HEADS)}')
    return HEADS[name]
