"""ResNet3d with I3D inflation and optional Non-local blocks: the video classifier of Non-local Neural
Networks, laid out as mmaction2's ``ResNet3d`` + ``I3DHead`` and written in timm's style.

Papers: `Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset` - Joao Carreira, Andrew
Zisserman, CVPR 2017, https://arxiv.org/abs/1705.07750 (inflating 2D ImageNet networks to 3D), and
`Non-local Neural Networks` - Xiaolong Wang, Ross Girshick, Abhinav Gupta, Kaiming He, CVPR 2018,
https://arxiv.org/abs/1711.07971 (the I3D ResNet-50 baseline and 5 Non-local blocks in res3/res4).

The network, for a clip (B, 3, T, H, W):

* stem: Conv3d ``conv1_kernel`` (mmaction2's I3D: 5x7x7, stride 2x2x2, padding 2x3x3), BN3d, ReLU,
  max-pool 1x3x3 with stride ``pool1_stride_t``x2x2 (padding 0x1x1);
* ``layer1``..``layer4``: bottlenecks as torchvision's ("pytorch" style: the spatial stride on the
  3x3 conv). In an inflated block conv1 is 3x1x1 (temporal padding 1) and conv2 1x3x3; otherwise both
  are 1x1x1 and 1x3x3. ``inflate`` says which blocks are inflated, per stage;
* ``pool2``: max-pool 2x1x1 (stride 2x1x1) after ``layer1`` (``with_pool2``);
* a Non-local block (:class:`gczoo.layers.NonLocal3d`) after every block marked in ``non_local``,
  applied to the block's output after its ReLU, as mmaction2's ``Bottleneck3d`` does;
* head (mmaction2's ``I3DHead``): global average pool over T, H, W, dropout, ``fc``.

Module names are timm's ResNet names (``conv1``/``bn1``, ``layerN.i.conv1``/``bn1``...,
``downsample.0``/``.1``, ``fc``) plus ``layerN.i.non_local`` for the Non-local blocks, so a 2D ResNet's
keys map one to one (``gczoo.video.inflate``) and mmaction2's checkpoints convert by renaming
(``gczoo.video.convert``).
"""
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from gczoo.layers import NonLocal3d

__all__ = ['Bottleneck3d', 'ResNet3d', 'I3D_INFLATE', 'I3D_NON_LOCAL']

# mmaction2's configs/_base_/models/i3d_r50.py and the -nl- configs' patterns, per stage and block
I3D_INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
I3D_NON_LOCAL = ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))


class Bottleneck3d(nn.Module):
    """ResNet bottleneck in 3D: 1x1x1 (3x1x1 when ``inflate``), 1x3x3 (spatial ``stride``), 1x1x1, x4."""
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            inflate: bool = True,
            non_local: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        t = 3 if inflate else 1
        self.conv1 = nn.Conv3d(inplanes, planes, (t, 1, 1), padding=(t // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.non_local = (NonLocal3d(planes * self.expansion, **dict(non_local)) if non_local is not None
                          else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = self.act3(x + shortcut)
        return self.non_local(x)


def _check_clip(x: torch.Tensor, min_frames: int, min_size: int, in_chans: int = 3) -> None:
    if x.dim() != 5 or x.shape[1] != in_chans:
        raise ValueError(f'ResNet3d takes clips (B, {in_chans}, T, H, W), got a tensor of shape {list(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'ResNet3d takes a floating-point clip (normalised frames), got {x.dtype}')
    if x.shape[2] < min_frames or x.shape[3] < min_size or x.shape[4] < min_size:
        raise ValueError(
            f'ResNet3d needs at least {min_frames} frames and {min_size}x{min_size} pixels (its temporal pools and '
            f'Non-local sub-sampling), got a clip of shape {list(x.shape)}')


class ResNet3d(nn.Module):
    """I3D ResNet (mmaction2's ``ResNet3d`` + ``I3DHead``); see the module docstring.

    Args:
        layers: bottlenecks per stage ((3, 4, 6, 3) for ResNet-50).
        num_classes: classes of ``fc``; 0 for features only (``fc`` is ``nn.Identity``).
        inflate: per stage, per block, 1 where conv1 is 3x1x1 (default: mmaction2's I3D pattern).
        non_local: per stage, per block, 1 where a Non-local block follows (default: none).
        non_local_kwargs: :class:`gczoo.layers.NonLocal3d` settings (mmaction2's NL configs:
            ``mode='embedded_gaussian', sub_sample=True, use_scale=False``).
        conv1_kernel: stem kernel (T, H, W); conv1_stride_t: its temporal stride (spatial stride 2).
        pool1_stride_t: temporal stride of the stem's max-pool; with_pool2: the 2x1x1 pool after layer1.
        drop_rate: dropout before ``fc`` (I3DHead's dropout_ratio=0.5).
        base_width: channels of the stem (64).
        in_chans: channels of a frame (3, RGB; timm's ``in_chans``).
    """

    def __init__(
            self,
            layers: Sequence[int] = (3, 4, 6, 3),
            num_classes: int = 400,
            inflate: Sequence[Sequence[int]] = I3D_INFLATE,
            non_local: Optional[Sequence[Sequence[int]]] = None,
            non_local_kwargs: Optional[Mapping[str, Any]] = None,
            conv1_kernel: Tuple[int, int, int] = (5, 7, 7),
            conv1_stride_t: int = 2,
            pool1_stride_t: int = 2,
            with_pool2: bool = True,
            drop_rate: float = 0.5,
            base_width: int = 64,
            in_chans: int = 3,
    ):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        non_local = non_local if non_local is not None else tuple((0,) * n for n in layers)
        self._check_patterns(layers, inflate, non_local)
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f'in_chans must be an int >= 1 (channels of a frame), got {in_chans!r}')
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        self.conv1 = nn.Conv3d(in_chans, base_width, tuple(conv1_kernel), stride=(conv1_stride_t, 2, 2),
                               padding=tuple((k - 1) // 2 for k in conv1_kernel), bias=False)
        self.bn1 = nn.BatchNorm3d(base_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(pool1_stride_t, 2, 2), padding=(0, 1, 1))
        self.pool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1)) if with_pool2 else nn.Identity()
        nl_kwargs = dict(non_local_kwargs or {})
        inplanes = base_width
        self.feature_info = []
        for i, blocks in enumerate(layers):
            planes, stride = base_width * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * Bottleneck3d.expansion:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes * 4, 1, stride=(1, stride, stride), bias=False),
                    nn.BatchNorm3d(planes * 4))
            stage = [Bottleneck3d(inplanes if b == 0 else planes * 4, planes, stride if b == 0 else 1,
                                  downsample if b == 0 else None, bool(inflate[i][b]),
                                  nl_kwargs if non_local[i][b] else None) for b in range(blocks)]
            inplanes = planes * 4
            self.add_module(f'layer{i + 1}', nn.Sequential(*stage))
            self.feature_info.append(dict(num_chs=inplanes, reduction=4 * 2 ** i, module=f'layer{i + 1}'))
        self.num_features = self.head_hidden_size = inplanes
        self.layers = layers
        self.non_local_positions = tuple((i + 1, b) for i, row in enumerate(non_local) for b, v in enumerate(row) if v)
        # frames and pixels below which a temporal pool or a Non-local sub-sampling has nothing to pool
        self._min_frames = self._minimum_frames(conv1_kernel[0], conv1_stride_t, pool1_stride_t, with_pool2)
        # a Non-local block in stage s sees ceil(H / 2**(s + 1)) rows, and its 2x2 sub-sampling needs 2
        self._min_size = max([2 ** (s + 1) + 1 for s, _ in self.non_local_positions if nl_kwargs.get('sub_sample')]
                             or [1])
        # (C, T, H, W) of the smallest clip it takes, as timm's pretrained_cfg['min_input_size']
        self.min_input_size = (in_chans, self._min_frames, self._min_size, self._min_size)
        self.global_pool = nn.AdaptiveAvgPool3d(1)
        self.fc: nn.Module = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {}
        self.init_weights()

    @staticmethod
    def _check_patterns(layers: Tuple[int, ...], inflate: Sequence[Sequence[int]],
                        non_local: Sequence[Sequence[int]]) -> None:
        for name, pattern in (('inflate', inflate), ('non_local', non_local)):
            if len(pattern) != len(layers) or any(len(row) != n for row, n in zip(pattern, layers)):
                raise ValueError(f'{name} must give one 0/1 per block of each stage {list(layers)}, got {pattern!r}')

    @staticmethod
    def _minimum_frames(kernel_t: int, conv1_stride_t: int, pool1_stride_t: int, with_pool2: bool) -> int:
        for frames in range(1, 1024):
            t = (frames + 2 * ((kernel_t - 1) // 2) - kernel_t) // conv1_stride_t + 1
            t = (t - 1) // pool1_stride_t + 1 if t >= 1 else 0
            if t >= (2 if with_pool2 else 1):
                return frames
        return 1024

    def init_weights(self) -> None:
        """mmaction2's init from scratch: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, fc ~ N(0, 0.01^2);
        the Non-local blocks' own init (zero-init norm: the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, NonLocal3d):
                m.reset_parameters()
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = 'avg') -> None:
        """A new ``fc`` for ``num_classes`` (0: features only), as timm's ``reset_classifier``."""
        if global_pool != 'avg':
            raise ValueError(f"ResNet3d pools with global_pool='avg' only (I3DHead's), got {global_pool!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'num_classes must be an int >= 0 (0: features only), got {num_classes!r}')
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, T, H, W) -> layer4's (B, num_features, T', H', W')."""
        if not torch.jit.is_scripting():
            if not is_fx_symbolic_tracing() and not torch.compiler.is_exporting():
                _check_clip(x, self._min_frames, self._min_size, self.in_chans)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.layer1(x))
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
