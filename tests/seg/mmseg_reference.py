"""An independent re-implementation of mmsegmentation's module structure (mmseg 1.2.2 / mmcv 2.x), the
reference the segmentors are tested against. Written from mmseg's and mmcv's sources, not imported:
mmcv no longer installs on current torch. Module and parameter names are mmseg's exactly, so
``state_dict()`` is the key layout of mmseg's checkpoints:

* ``ResNetV1c`` (mmseg/models/backbones/resnet.py): deep stem ``stem.{0..8}``, ``maxpool``, ``layerN``
  of ``Bottleneck`` (style 'pytorch': stride on conv2) with ``dilations=(1, 1, 2, 4)``,
  ``strides=(1, 2, 1, 1)`` and ``contract_dilation`` (a stage's first block at dilation // 2).
* ``ConvModule`` (mmcv/cnn/bricks/conv_module.py): ``conv`` (bias only without norm), ``bn``, ``activate``.
* ``FCNHead`` / ``CCHead`` / ``NLHead`` / ``GCHead`` (mmseg/models/decode_heads): ``convs``, ``conv_cat``,
  ``dropout``, ``conv_seg``; ``cca`` / ``nl_block`` / ``gc_block``.
* mmcv's ``CrissCrossAttention`` as mmcv writes it (einsum, a -inf diagonal, ``gamma = Scale(0.)``),
  ``NonLocal2d`` (embedded Gaussian, ``reduction=2``, ``use_scale``: logits / sqrt(inner)),
  ``ContextBlock`` (att pooling, channel_add, LayerNorm([planes, 1, 1])).
* ``EncoderDecoder.inference`` in whole and slide mode (mmseg/models/segmentors/encoder_decoder.py).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ConvModule(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.with_norm = norm
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        return self.activate(x) if self.activate is not None else x


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetV1c(nn.Module):
    def __init__(self, depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (n, s, d) in enumerate(zip(DEPTHS[depth], strides, dilations)):
            planes = 64 * 2 ** i
            downsample = None
            if s != 1 or inplanes != planes * 4:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, s, bias=False),
                                           nn.BatchNorm2d(planes * 4))
            first = d // 2 if (d > 1 and contract_dilation) else d
            blocks = [Bottleneck(inplanes, planes, s, first, downsample)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes, 1, d) for _ in range(n - 1)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f'layer{i}')(x)
            outs.append(x)
        return outs


class Scale(nn.Module):  # mmcv.cnn.Scale
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


def NEG_INF_DIAG(n, device):
    return torch.diag(torch.tensor(float('-inf')).to(device).repeat(n), 0)


class CrissCrossAttention(nn.Module):  # mmcv/ops/cc_attention.py, as written there
    def __init__(self, in_channels):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.)

    def forward(self, x):
        B, C, H, W = x.size()
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        energy_H = torch.einsum('bchw,bciw->bwhi', query, key) + NEG_INF_DIAG(H, query.device)
        energy_H = energy_H.transpose(1, 2)
        energy_W = torch.einsum('bchw,bchj->bhwj', query, key)
        attn = F.softmax(torch.cat([energy_H, energy_W], dim=-1), dim=-1)
        out = torch.einsum('bciw,bhwi->bchw', value, attn[..., :H])
        out += torch.einsum('bchj,bhwj->bchw', value, attn[..., H:])
        return (self.gamma(out) + x).contiguous()


class NonLocal2d(nn.Module):  # mmcv/cnn/bricks/non_local.py, embedded_gaussian
    def __init__(self, in_channels, reduction=2, use_scale=True):
        super().__init__()
        self.inter_channels = max(in_channels // reduction, 1)
        self.use_scale = use_scale
        self.g = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)
        self.conv_out = ConvModule(self.inter_channels, in_channels, 1, norm=True, act=False)
        self.theta = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)
        self.phi = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter_channels, -1)
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        pairwise_weight = pairwise_weight.softmax(dim=-1)
        y = torch.matmul(pairwise_weight, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        return x + self.conv_out(y)


class ContextBlock(nn.Module):  # mmcv/cnn/bricks/context_block.py, att + channel_add
    def __init__(self, in_channels, ratio):
        super().__init__()
        self.planes = int(in_channels * ratio)
        self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(in_channels, self.planes, kernel_size=1), nn.LayerNorm([self.planes, 1, 1]),
            nn.ReLU(inplace=True), nn.Conv2d(self.planes, in_channels, kernel_size=1))

    def forward(self, x):
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.softmax(self.conv_mask(x).view(batch, 1, height * width)).unsqueeze(-1)
        context = torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
        return x + self.channel_add_conv(context)


class FCNHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, in_index, num_convs=2, concat_input=True,
                 align_corners=False):
        super().__init__()
        self.in_index, self.concat_input, self.align_corners = in_index, concat_input, align_corners
        convs = [ConvModule(in_channels, channels, 3, padding=1)]
        convs += [ConvModule(channels, channels, 3, padding=1) for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, 3, padding=1)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(0.1)

    def cls_seg(self, feat):
        return self.conv_seg(self.dropout(feat))

    def forward(self, inputs):
        x = inputs[self.in_index]
        output = self.convs(x)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)


class _AttentionHead(FCNHead):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, num_convs=2, **kwargs)

    def block(self, x):
        raise NotImplementedError

    def forward(self, inputs):
        x = inputs[self.in_index]
        output = self.block(self.convs[0](x))
        output = self.convs[1](output)
        output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)


class CCHead(_AttentionHead):
    def __init__(self, *args, recurrence=2, **kwargs):
        super().__init__(*args, **kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.conv_seg.in_channels)

    def block(self, x):
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


class NLHead(_AttentionHead):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nl_block = NonLocal2d(self.conv_seg.in_channels, reduction=2, use_scale=True)

    def block(self, x):
        return self.nl_block(x)


class GCHead(_AttentionHead):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gc_block = ContextBlock(self.conv_seg.in_channels, ratio=1 / 4.)

    def block(self, x):
        return self.gc_block(x)


HEADS = {'ccnet': CCHead, 'nlnet': NLHead, 'gcnet': GCHead}


class EncoderDecoder(nn.Module):
    def __init__(self, system, depth=50, num_classes=19, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.backbone = ResNetV1c(depth)
        self.decode_head = HEADS[system](2048, 512, num_classes, 3, align_corners=align_corners)
        self.auxiliary_head = FCNHead(1024, 256, num_classes, 2, num_convs=1, concat_input=False,
                                      align_corners=align_corners)

    def encode_decode(self, inputs, img_shape):
        logits = self.decode_head(self.backbone(inputs))
        return F.interpolate(logits, size=img_shape, mode='bilinear', align_corners=self.align_corners)

    def slide_inference(self, inputs, crop_size, stride):
        h_stride, w_stride = stride
        h_crop, w_crop = crop_size
        batch_size, _, h_img, w_img = inputs.size()
        out_channels = self.decode_head.conv_seg.out_channels
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = inputs.new_zeros((batch_size, out_channels, h_img, w_img))
        count_mat = inputs.new_zeros((batch_size, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * h_stride, w_idx * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop_img = inputs[:, :, y1:y2, x1:x2]
                crop_seg_logit = self.encode_decode(crop_img, crop_img.shape[2:])
                preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
                count_mat[:, :, y1:y2, x1:x2] += 1
        assert (count_mat == 0).sum() == 0
        return preds / count_mat

    def inference(self, inputs, mode='whole', crop_size=None, stride=None):
        if mode == 'slide':
            return self.slide_inference(inputs, crop_size, stride)
        return self.encode_decode(inputs, inputs.shape[2:])


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic random (seeded), away from any init the model under test might share:
    gamma, the GC block's last conv and the NL block's BN non-zero, BN variances positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith('gamma.scale'):
                p.fill_(0.7)
            elif 'bn' in name or 'stem' in name or 'downsample' in name or 'channel_add_conv.1' in name:
                p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith('running_var'):
                b.copy_(1.0 + 0.2 * torch.rand(b.shape, generator=g))
    return model


def mmseg_checkpoint(model: EncoderDecoder, config_name: str, classes: Optional[Tuple[str, ...]] = None) -> Dict:
    """The object mmseg's runner saves for a release: ``meta`` (versions, config, classes, palette) and
    ``state_dict`` (the model's own keys, no ``module.`` prefix)."""
    n = model.decode_head.conv_seg.out_channels
    classes = classes or tuple(f'class{i}' for i in range(n))
    meta = {'mmseg_version': '0.5.0+b57fb2b', 'config': f"_base_ = ['{config_name}.py']\n", 'CLASSES': classes,
            'PALETTE': [[(7 * i) % 256, (37 * i) % 256, (101 * i) % 256] for i in range(n)], 'iter': 80000,
            'epoch': 1, 'seed': 0, 'exp_name': f'{config_name}.py', 'env_info': 'sys.platform: linux'}
    return {'meta': meta, 'state_dict': {k: v.detach().clone() for k, v in model.state_dict().items()}}
