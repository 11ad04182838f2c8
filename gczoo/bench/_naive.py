"""Naive seed-style versions of the eight blocks: the baselines ``gczoo bench layers`` measures against.

Each is written the way the snippets that circulate write it (explicit N x N ``matmul`` + ``softmax``,
``view``/``permute``/``expand_as``, modules per step), with their bugs fixed so that it computes
exactly the function gczoo's block computes (the benchmark checks this in float64 before timing).
``NAIVE_FROM[name](block)`` builds the baseline of a gczoo block and copies the block's weights in.

Measurement baselines only: not part of gczoo's API (this module is private), not for use in a model.
"""
from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers.bam import OFFICIAL_KEY_MAP as BAM_OFFICIAL_KEY_MAP

__all__ = [
    'NaiveNonLocal2d', 'NaiveSimplifiedNonLocal', 'NaiveContextBlock', 'NaiveSqueezeExcite', 'NaiveCBAM',
    'NaiveBAM', 'NaiveCrissCrossAttention', 'NaiveSelfAttention', 'NAIVE_FROM',
]


class NaiveNonLocal2d(nn.Module):
    """The snippets' ``_NonLocalBlockND`` (2D, embedded Gaussian, no sub-sampling) with its bugs
    fixed (no ``print`` in forward, ``is None``) and the logits divided by sqrt(inner) as gczoo's
    ``use_scale=True``. Materialises the (HW x HW) pairwise matrix, and its softmax, per image."""

    def __init__(self, in_channels: int, inter_channels: int, use_scale: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.scale = inter_channels ** -0.5 if use_scale else 1.0
        self.g = nn.Conv2d(in_channels, inter_channels, kernel_size=1, stride=1, padding=0)
        self.theta = nn.Conv2d(in_channels, inter_channels, kernel_size=1, stride=1, padding=0)
        self.phi = nn.Conv2d(in_channels, inter_channels, kernel_size=1, stride=1, padding=0)
        # a bias in front of BN is redundant; gczoo has none, so neither has the baseline
        self.W = nn.Sequential(nn.Conv2d(inter_channels, in_channels, kernel_size=1, bias=False),
                               nn.BatchNorm2d(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.size(0)
        g_x = self.g(x).view(batch_size, self.inter_channels, -1)  # [bs, c, w*h]
        g_x = g_x.permute(0, 2, 1)
        theta_x = self.theta(x).view(batch_size, self.inter_channels, -1)
        theta_x = theta_x.permute(0, 2, 1)
        phi_x = self.phi(x).view(batch_size, self.inter_channels, -1)
        f = torch.matmul(theta_x, phi_x)
        f = f * self.scale
        f_div_C = F.softmax(f, dim=-1)
        y = torch.matmul(f_div_C, g_x)
        y = y.permute(0, 2, 1).contiguous()
        y = y.view(batch_size, self.inter_channels, *x.size()[2:])
        W_y = self.W(y)
        z = W_y + x
        return z


class NaiveSimplifiedNonLocal(nn.Module):
    """Simplified Non-local written like the snippets' ``GlobalContextBlock`` (softmax key over
    positions, ``matmul(query, key)``) with the GC bottleneck replaced by the paper's single W_v conv."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv_key = nn.Conv2d(in_channels, 1, 1)
        self.softmax = nn.Softmax(dim=1)
        self.conv_value = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        # key -> [b, 1, H, W] -> [b, 1, H*W] -> [b, H*W, 1]
        key = self.softmax(self.conv_key(x).view(b, 1, -1).permute(0, 2, 1).view(b, -1, 1).contiguous())
        query = x.view(b, c, h * w)
        concate_QK = torch.matmul(query, key)  # [b, c, h*w] * [b, H*W, 1]
        concate_QK = concate_QK.view(b, c, 1, 1).contiguous()
        value = self.conv_value(concate_QK)
        return x + value


class NaiveContextBlock(nn.Module):
    """The snippets' (mmcv-style) ``ContextBlock`` with attention pooling and ``channel_add``;
    parameter names equal gczoo's, so its state dict loads as is."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.inplanes = inplanes
        self.planes = planes
        self.conv_mask = nn.Conv2d(inplanes, 1, kernel_size=1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(self.inplanes, self.planes, kernel_size=1),
            nn.LayerNorm([self.planes, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.planes, self.inplanes, kernel_size=1))

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)  # [N, 1, C, H * W]
        context_mask = self.conv_mask(x).view(batch, 1, height * width)  # [N, 1, H * W]
        context_mask = self.softmax(context_mask).unsqueeze(-1)  # [N, 1, H * W, 1]
        context = torch.matmul(input_x, context_mask)  # [N, 1, C, 1]
        return context.view(batch, channel, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)
        return x + self.channel_add_conv(context)


class NaiveSqueezeExcite(nn.Module):
    """The classic SE snippet: ``AdaptiveAvgPool2d`` -> Linear MLP -> ``x * y.expand_as(x)``."""

    def __init__(self, channel: int, reduced: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, reduced), nn.ReLU(inplace=True), nn.Linear(reduced, channel), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class _NaiveChannelAttention(nn.Module):
    def __init__(self, in_planes: int, reduced: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        # the official CBAM MLP has biases (the snippet's bias=False is not CBAM)
        self.sharedMLP = nn.Sequential(
            nn.Conv2d(in_planes, reduced, 1, bias=True), nn.ReLU(), nn.Conv2d(reduced, in_planes, 1, bias=True))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avgout = self.sharedMLP(self.avg_pool(x))
        maxout = self.sharedMLP(self.max_pool(x))
        return self.sigmoid(avgout + maxout)


class _NaiveSpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maxout, _ = torch.max(x, dim=1, keepdim=True)
        avgout = torch.mean(x, dim=1, keepdim=True)
        # official order [max, mean] and BN after the conv (the snippet has [avg, max] and no BN)
        x = torch.cat([maxout, avgout], dim=1)
        return self.sigmoid(self.bn(self.conv(x)))


class NaiveCBAM(nn.Module):
    """The snippets' ``ChannelAttention`` + ``SpatialAttention``, corrected to CBAM's official
    semantics (MLP biases, [max, mean] pooling order, BN in the spatial gate)."""

    def __init__(self, channels: int, reduced: int, kernel_size: int = 7):
        super().__init__()
        self.ca = _NaiveChannelAttention(channels, reduced)
        self.sa = _NaiveSpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(x) * x
        x = self.sa(x) * x
        return x


class _NaiveFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class _NaiveBAMChannelGate(nn.Module):
    def __init__(self, gate_channel: int, reduced: int):
        super().__init__()
        self.gate_c = nn.Sequential()
        self.gate_c.add_module('flatten', _NaiveFlatten())
        self.gate_c.add_module('gate_c_fc_0', nn.Linear(gate_channel, reduced))
        self.gate_c.add_module('gate_c_bn_1', nn.BatchNorm1d(reduced))
        self.gate_c.add_module('gate_c_relu_1', nn.ReLU())
        self.gate_c.add_module('gate_c_fc_final', nn.Linear(reduced, gate_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the snippet's avg_pool2d(x, x.size(2)) is only a global pool for square maps
        avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(x)


class _NaiveBAMSpatialGate(nn.Module):
    def __init__(self, gate_channel: int, reduced: int, dilation_conv_num: int = 2, dilation_val: int = 4):
        super().__init__()
        self.gate_s = nn.Sequential()
        self.gate_s.add_module('gate_s_conv_reduce0', nn.Conv2d(gate_channel, reduced, kernel_size=1))
        self.gate_s.add_module('gate_s_bn_reduce0', nn.BatchNorm2d(reduced))
        self.gate_s.add_module('gate_s_relu_reduce0', nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module(
                f'gate_s_conv_di_{i}',
                nn.Conv2d(reduced, reduced, kernel_size=3, padding=dilation_val, dilation=dilation_val))
            self.gate_s.add_module(f'gate_s_bn_di_{i}', nn.BatchNorm2d(reduced))
            self.gate_s.add_module(f'gate_s_relu_di_{i}', nn.ReLU())
        self.gate_s.add_module('gate_s_conv_final', nn.Conv2d(reduced, 1, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_s(x).expand_as(x)


class NaiveBAM(nn.Module):
    """The snippets' BAM ``ChannelGate`` / ``SpatialGate`` with the official combination
    ``x * (1 + sigmoid(M_c * M_s))``; keys are the official checkpoint keys."""

    def __init__(self, gate_channel: int, reduced: int):
        super().__init__()
        self.channel_att = _NaiveBAMChannelGate(gate_channel, reduced)
        self.spatial_att = _NaiveBAMSpatialGate(gate_channel, reduced)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


class NaiveCrissCrossAttention(nn.Module):
    """Criss-cross attention the way the pure-PyTorch CCNet snippets do it: permute +
    ``contiguous().view`` into per-column / per-row batches, ``bmm`` energies, an additive -inf diagonal
    (built here on the input's device and dtype, the snippets hard-code ``.cuda()``), ``cat`` + softmax,
    ``bmm`` back; applied ``recurrence`` times with shared weights."""

    def __init__(self, in_dim: int, reduced: int, recurrence: int = 2):
        super().__init__()
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(in_dim, reduced, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, reduced, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.size()
        q = self.query_conv(x)
        k = self.key_conv(x)
        v = self.value_conv(x)
        q_h = q.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
        q_w = q.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
        k_h = k.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        k_w = k.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        v_h = v.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        v_w = v.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        inf_diag = torch.diag(torch.full((h,), float('-inf'), device=x.device, dtype=x.dtype))
        energy_h = (torch.bmm(q_h, k_h) + inf_diag).view(b, w, h, h).permute(0, 2, 1, 3)
        energy_w = torch.bmm(q_w, k_w).view(b, h, w, w)
        concate = F.softmax(torch.cat([energy_h, energy_w], 3), dim=3)
        att_h = concate[:, :, :, 0:h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
        att_w = concate[:, :, :, h:h + w].contiguous().view(b * h, w, w)
        out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self._step(x)
        return x


class NaiveSelfAttention(nn.Module):
    """The snippets' SAGAN ``SelfAttention`` with ``gamma`` made an ``nn.Parameter`` (the snippet's
    plain tensor never trains) and bias-free convs as gczoo's. Materialises the (HW x HW) attention."""

    def __init__(self, in_channels: int, inter_channels: int):
        super().__init__()
        self.inter_channels = inter_channels
        self.f = nn.Conv2d(in_channels, inter_channels, 1, bias=False)
        self.g = nn.Conv2d(in_channels, inter_channels, 1, bias=False)
        self.h = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.o = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        fx = self.f(x).view(b, self.inter_channels, -1)  # [b, c', hw]
        fx = fx.permute(0, 2, 1)  # [b, hw, c']
        gx = self.g(x).view(b, self.inter_channels, -1)  # [b, c', hw]
        attn = torch.matmul(fx, gx)  # [b, hw, hw]
        attn = F.softmax(attn, dim=2)
        hx = self.h(x).view(b, c, -1)  # [b, c, hw]
        hx = hx.permute(0, 2, 1)  # [b, hw, c]
        y = torch.matmul(attn, hx)  # [b, hw, c]
        y = y.permute(0, 2, 1).contiguous()  # [b, c, hw]
        y = y.view(b, c, h, w)
        y = self.o(y)
        return self.gamma * y + x


# ----------------------------------------------------------------------------------------------------
# gczoo block -> its baseline with the same weights (one function per block: the key maps differ)


def _nl(block: nn.Module) -> nn.Module:
    sd = block.state_dict()
    naive = NaiveNonLocal2d(block.channels, block.inner_channels, use_scale=block.use_scale)
    naive.load_state_dict({
        'g.weight': sd['g.weight'], 'g.bias': sd['g.bias'],
        'theta.weight': sd['theta.weight'], 'theta.bias': sd['theta.bias'],
        'phi.weight': sd['phi.weight'], 'phi.bias': sd['phi.bias'],
        'W.0.weight': sd['conv_out.weight'],
        **{'W.1.' + k[len('norm.'):]: v for k, v in sd.items() if k.startswith('norm.')},
    })
    return naive


def _snl(block: nn.Module) -> nn.Module:
    naive = NaiveSimplifiedNonLocal(block.channels)
    naive.load_state_dict({k.replace('conv_mask', 'conv_key'): v for k, v in block.state_dict().items()})
    return naive


def _gc(block: nn.Module) -> nn.Module:
    naive = NaiveContextBlock(block.channels, block.rd_channels)
    naive.load_state_dict(block.state_dict())
    return naive


def _se(block: nn.Module) -> nn.Module:
    sd = block.state_dict()
    naive = NaiveSqueezeExcite(block.channels, block.rd_channels)
    naive.load_state_dict({
        'fc.0.weight': sd['fc1.weight'].flatten(1), 'fc.0.bias': sd['fc1.bias'],
        'fc.2.weight': sd['fc2.weight'].flatten(1), 'fc.2.bias': sd['fc2.bias'],
    })
    return naive


def _cbam(block: nn.Module) -> nn.Module:
    sd = block.state_dict()
    naive = NaiveCBAM(block.channels, block.rd_channels, block.spatial_gate.conv.kernel_size[0])
    naive.load_state_dict({
        'ca.sharedMLP.0.weight': sd['channel_gate.fc1.weight'][:, :, None, None],
        'ca.sharedMLP.0.bias': sd['channel_gate.fc1.bias'],
        'ca.sharedMLP.2.weight': sd['channel_gate.fc2.weight'][:, :, None, None],
        'ca.sharedMLP.2.bias': sd['channel_gate.fc2.bias'],
        **{k.replace('spatial_gate.', 'sa.'): v for k, v in sd.items() if k.startswith('spatial_gate.')},
    })
    return naive


def _bam(block: nn.Module) -> nn.Module:
    sd = block.state_dict()
    naive = NaiveBAM(block.channels, block.rd_channels)
    naive.load_state_dict({official: sd[ours] for official, ours in BAM_OFFICIAL_KEY_MAP.items()})
    return naive


def _cc(block: nn.Module) -> nn.Module:
    naive = NaiveCrissCrossAttention(block.channels, block.rd_channels, block.recurrence)
    naive.load_state_dict(block.state_dict())
    return naive


def _sa(block: nn.Module) -> nn.Module:
    naive = NaiveSelfAttention(block.channels, block.rd_channels)
    naive.load_state_dict({k.replace('v.', 'o.') if k.startswith('v.') else k: v
                           for k, v in block.state_dict().items()})
    return naive


# gczoo.layers registry name -> baseline builder, in the order the benchmark reports the blocks
NAIVE_FROM: Dict[str, Callable[[nn.Module], nn.Module]] = {
    'nl': _nl, 'snl': _snl, 'gc': _gc, 'se': _se, 'cbam': _cbam, 'bam': _bam, 'cc': _cc, 'sa': _sa,
}
