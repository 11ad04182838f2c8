"""An independent re-implementation of mmaction2 1.2.0's I3D (``ResNet3d`` + mmcv's ``ConvModule`` and
``NonLocal3d`` + ``I3DHead``), written from mmaction2's and mmcv's source for the tests only.

It keeps mmaction2's module tree, so its ``state_dict()`` has mmaction2's exact key layout
(``backbone.layer2.1.conv1.conv.weight``, ``backbone.layer2.1.non_local_block.g.0.conv.weight``,
``cls_head.fc_cls.weight`` ...), and computes the Non-local block the way mmcv does, with the explicit
(THW x THW') pairwise matrix. Nothing here imports gczoo.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn

INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
NON_LOCAL = ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))


class ConvModule(nn.Module):
    """mmcv's ConvModule: ``conv``, then ``bn`` (if norm), then ReLU (if act)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, norm=True, act=True, bias=None):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding,
                              bias=(not norm) if bias is None else bias)
        self.with_norm = norm
        if norm:
            self.bn = nn.BatchNorm3d(cout)
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class NonLocal3d(nn.Module):
    """mmcv's NonLocal3d with sub_sample=True, embedded_gaussian (or dot_product), BN3d after conv_out."""

    def __init__(self, channels, mode='embedded_gaussian', use_scale=False):
        super().__init__()
        self.inter = channels // 2
        self.mode, self.use_scale = mode, use_scale
        pool = nn.MaxPool3d(kernel_size=(1, 2, 2))
        self.g = nn.Sequential(ConvModule(channels, self.inter, 1, norm=False, act=False), pool)
        self.conv_out = ConvModule(self.inter, channels, 1, norm=True, act=False)
        self.theta = ConvModule(channels, self.inter, 1, norm=False, act=False)
        self.phi = nn.Sequential(ConvModule(channels, self.inter, 1, norm=False, act=False), pool)

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter, -1)
        pairwise = torch.matmul(theta_x, phi_x)  # (n, THW, THW'): the explicit matrix
        if self.mode == 'embedded_gaussian':
            if self.use_scale:
                pairwise = pairwise / theta_x.shape[-1] ** 0.5
            pairwise = pairwise.softmax(dim=-1)
        else:
            pairwise = pairwise / pairwise.shape[-1]
        y = torch.matmul(pairwise, g_x).permute(0, 2, 1).contiguous().reshape(n, self.inter, *x.size()[2:])
        return x + self.conv_out(y)


class Bottleneck3d(nn.Module):
    def __init__(self, inplanes, planes, spatial_stride, downsample, inflate, non_local, nl_cfg):
        super().__init__()
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate else ((1, 1, 1), (0, 0, 0))
        self.conv1 = ConvModule(inplanes, planes, k1, padding=p1)
        self.conv2 = ConvModule(planes, planes, (1, 3, 3), stride=(1, spatial_stride, spatial_stride),
                                padding=(0, 1, 1))
        self.conv3 = ConvModule(planes, planes * 4, 1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU()
        self.non_local = non_local
        if non_local:
            self.non_local_block = NonLocal3d(planes * 4, **nl_cfg)

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)
        return self.non_local_block(out) if self.non_local else out


class Backbone(nn.Module):
    """mmaction2's ResNet3d(depth=50) with the I3D config (conv1 5x7x7, stride_t 2, pool1 stride_t 2, pool2)."""

    def __init__(self, non_local: Optional[Sequence[Sequence[int]]], nl_cfg):
        super().__init__()
        self.conv1 = ConvModule(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3))
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(2, 2, 2), padding=(0, 1, 1))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1))
        inplanes = 64
        for i, blocks in enumerate((3, 4, 6, 3)):
            planes, stride = 64 * 2 ** i, 1 if i == 0 else 2
            down = ConvModule(inplanes, planes * 4, 1, stride=(1, stride, stride), act=False)
            layers = []
            for b in range(blocks):
                nl = bool(non_local[i][b]) if non_local else False
                layers.append(Bottleneck3d(inplanes, planes, stride if b == 0 else 1, down if b == 0 else None,
                                           bool(INFLATE[i][b]), nl, nl_cfg))
                inplanes = planes * 4
            self.add_module(f'layer{i + 1}', nn.Sequential(*layers))

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.pool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))


class I3DHead(nn.Module):
    def __init__(self, num_classes=400):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc_cls = nn.Linear(2048, num_classes)

    def forward(self, x):
        return self.fc_cls(self.dropout(self.avg_pool(x)).view(x.shape[0], -1))


class Recognizer3D(nn.Module):
    """``backbone`` + ``cls_head``, as mmaction2's Recognizer3D names them."""

    def __init__(self, non_local: bool, num_classes: int = 400, mode: str = 'embedded_gaussian'):
        super().__init__()
        self.backbone = Backbone(NON_LOCAL if non_local else None, dict(mode=mode, use_scale=False))
        self.cls_head = I3DHead(num_classes)

    def forward(self, x):
        return self.cls_head(self.backbone(x))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere (BN statistics and the Non-local conv_out BN included), so a wrong
    key mapping or a zero-initialised branch cannot pass a logits comparison by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            elif name.endswith(('bn.weight',)):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * 0.5 + 0.5)
            else:
                fan = t[0].numel() if t.dim() > 1 else 10
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) / fan ** 0.5)
    return model
