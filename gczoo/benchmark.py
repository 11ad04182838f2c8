"""Speed and memory benchmarks: ``gczoo bench layers`` and ``gczoo bench models``.

``layers``
    Every attention block of ``gczoo.layers`` (default 8 x 256 x 56 x 56, and Non-local - embedded
    Gaussian, no sub-sampling - also at 2 x 256 x 128 x 128) against

    * a **naive baseline** written the way the circulating snippets are (explicit N x N ``matmul`` +
      ``softmax``, ``view``/``permute``/``expand_as``), with their bugs fixed so that it computes exactly
      what gczoo's block computes. The baselines are the ``Naive*`` classes below. They exist only to be
      measured against; do not use them in a model.
    * timm's counterpart where one exists (``SEModule``, ``CbamModule``, ``GlobalContext`` with
      ``fuse_add`` = timm's ``'gca'``, ``NonLocalAttn``), built with the same widths.

    Weights are shared (copied from gczoo's block after randomising it), and every run first checks in
    float64 that the three outputs agree (``max_abs_diff_*`` columns), so the comparisons are between
    implementations of one function.

``models``
    Inference and training-step throughput of every zoo model, as time ratios to timm's plain ResNet of
    the same depth (``resnet50`` for the ResNet-50s) and to timm's nearest attention model, next to the
    GMAC ratio, so the target "time ratio <= GMAC ratio + 0.03" can be read off.

How things are measured (the machine this runs on may be shared and noisy):

* Time: all implementations of one case live in one process and are called interleaved, one call (or
  a short burst, ``--min-time``) each per round in a new seeded random order every round, so no
  implementation always follows the same one, after warmup calls. Each reported time is the median
  over rounds; each ratio is the median of the per-round ratios (A_r / B_r), which cancels load
  changes slower than one round.
  The q1/q3 columns (quartiles of the per-round ratios) show how noisy a ratio is, and in ``layers``
  an A/A control - gczoo's block against an identical deep copy of itself (``time_ratio_control``) -
  measures the noise floor directly: on a shared machine two identical modules differ by a few percent
  (allocator and page-fault state, frequency, neighbours). A time target counts as missed only if the
  median ratio is above its bound, its first quartile too, and (in ``layers``) by more than that floor;
  smaller misses are reported as within noise. Why noise matters here: on CPU with glibc's malloc a
  full-size block output (100 MB at 8 x 256 x 56 x 56) is a fresh mmap whose page faults and zeroing
  can cost more than the block's arithmetic, and how often that happens depends on the allocator's and
  the kernel's state - the same kernels then run 1.5-2x apart from one run to the next. Cheap cases
  therefore get more rounds (``--budget``), and fewer full-size temporaries is a real speed-up.
* Peak extra memory, CPU: measured after all timings, by default in one fresh interpreter
  (``--memory subprocess``) started with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc serves every block
  >= 64 KiB with mmap and unmaps it on free, so the resident set follows live memory). Each
  implementation is built, called once on a small input (lazy initialisation is not per-call cost),
  then ``malloc_trim(0)`` returns malloc's free pages to the OS, the kernel's resident high-water mark is
  reset (``/proc/self/clear_refs`` <- 5) and the figure is ``VmHWM`` after one full-size call minus
  ``VmRSS`` before it. This counts everything the call touches (tensors, its output, oneDNN / BLAS
  scratch), not only torch's allocator; the page granularity is 4 KiB. Without a writable
  ``clear_refs`` it falls back to ``ru_maxrss`` (the ``mem_method`` column says which).
  ``tracemalloc`` sees none of torch's allocations, and the profiler's per-op memory columns net the
  allocations and frees inside an op, hiding transient peaks.
* Peak extra memory, CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the
  call, after ``reset_peak_memory_stats``, with ``synchronize``.
* GMACs: ``torch.utils.flop_counter.FlopCounterMode`` at batch 1, divided by 2 (multiply-adds). Its
  table has no entry for the CPU flash-attention op behind ``F.scaled_dot_product_attention``
  (``aten._scaled_dot_product_flash_attention_for_cpu``); one is added here with torch's own SDPA
  formula so the attention matmuls of Non-local / SAGAN are counted.
"""
import argparse
import contextlib
import copy
import csv
import dataclasses
import gc
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from gczoo.layers import ATTN_SPECS, create_attn
from gczoo.layers.bam import OFFICIAL_KEY_MAP as BAM_OFFICIAL_KEY_MAP
from gczoo.models import ZOO_MODELS

__all__ = [
    'NaiveNonLocal2d', 'NaiveSimplifiedNonLocal', 'NaiveContextBlock', 'NaiveSqueezeExcite', 'NaiveCBAM',
    'NaiveBAM', 'NaiveCrissCrossAttention', 'NaiveSelfAttention', 'LAYER_BLOCKS', 'TIMM_COUNTERPARTS', 'CLOCKS',
    'MEMORY_MODES', 'LayerCase', 'build_layer_impls', 'bench_layers', 'bench_models', 'count_gmacs',
    'peak_extra_memory', 'format_layer_table', 'format_model_table', 'build_parser', 'main',
]

LAYER_BLOCKS: Tuple[str, ...] = ('nl', 'snl', 'gc', 'se', 'cbam', 'bam', 'cc', 'sa')
IMPLS: Tuple[str, ...] = ('gczoo', 'naive', 'timm')
CONTROL = 'control'  # a deep copy of gczoo's block, timed alongside it: the A/A noise floor
_MB = 2 ** 20
_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536'}


# ----------------------------------------------------------------------------------------------------
# Naive baselines. Written like the snippets that circulate (see the module docstring), bugs fixed,
# parameters shaped so gczoo's weights can be copied in. BASELINES FOR MEASUREMENT ONLY.
# ----------------------------------------------------------------------------------------------------

class NaiveNonLocal2d(nn.Module):
    """BASELINE. The snippets' ``_NonLocalBlockND`` (2D, embedded Gaussian, no sub-sampling) with its bugs
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
    """BASELINE. Simplified Non-local written like the snippets' ``GlobalContextBlock`` (softmax key over
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
    """BASELINE. The snippets' (mmcv-style) ``ContextBlock`` with attention pooling and ``channel_add``;
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
    """BASELINE. The classic SE snippet: ``AdaptiveAvgPool2d`` -> Linear MLP -> ``x * y.expand_as(x)``."""

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
    """BASELINE. The snippets' ``ChannelAttention`` + ``SpatialAttention``, corrected to CBAM's official
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
    """BASELINE. The snippets' BAM ``ChannelGate`` / ``SpatialGate`` with the official combination
    ``x * (1 + sigmoid(M_c * M_s))``; keys are the official checkpoint keys."""

    def __init__(self, gate_channel: int, reduced: int):
        super().__init__()
        self.channel_att = _NaiveBAMChannelGate(gate_channel, reduced)
        self.spatial_att = _NaiveBAMSpatialGate(gate_channel, reduced)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


class NaiveCrissCrossAttention(nn.Module):
    """BASELINE. Criss-cross attention the way the pure-PyTorch CCNet snippets do it: permute +
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
    """BASELINE. The snippets' SAGAN ``SelfAttention`` with ``gamma`` made an ``nn.Parameter`` (the snippet's
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
# Building the three implementations of a block with shared weights
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter and BN statistic a random, well-scaled value.

    The blocks start at identity (zero last conv / BN / gamma), where every implementation trivially
    agrees; random weights make the equivalence check mean something.
    """
    for name, p in module.named_parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=generator) * p[0].numel() ** -0.5)
        elif name.endswith('weight'):  # norm scales
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
        else:  # biases, gamma
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    for name, b in module.named_buffers():
        if name.endswith('running_mean'):
            b.copy_(0.1 * torch.randn(b.shape, generator=generator))
        elif name.endswith('running_var'):
            b.copy_(0.5 + torch.rand(b.shape, generator=generator))


def _naive_from(block_name: str, block: nn.Module) -> nn.Module:
    sd = block.state_dict()
    if block_name == 'nl':
        naive = NaiveNonLocal2d(block.channels, block.inner_channels, use_scale=block.use_scale)
        naive.load_state_dict({
            'g.weight': sd['g.weight'], 'g.bias': sd['g.bias'],
            'theta.weight': sd['theta.weight'], 'theta.bias': sd['theta.bias'],
            'phi.weight': sd['phi.weight'], 'phi.bias': sd['phi.bias'],
            'W.0.weight': sd['conv_out.weight'],
            **{'W.1.' + k[len('norm.'):]: v for k, v in sd.items() if k.startswith('norm.')},
        })
    elif block_name == 'snl':
        naive = NaiveSimplifiedNonLocal(block.channels)
        naive.load_state_dict({k.replace('conv_mask', 'conv_key'): v for k, v in sd.items()})
    elif block_name == 'gc':
        naive = NaiveContextBlock(block.channels, block.rd_channels)
        naive.load_state_dict(sd)
    elif block_name == 'se':
        naive = NaiveSqueezeExcite(block.channels, block.rd_channels)
        naive.load_state_dict({
            'fc.0.weight': sd['fc1.weight'].flatten(1), 'fc.0.bias': sd['fc1.bias'],
            'fc.2.weight': sd['fc2.weight'].flatten(1), 'fc.2.bias': sd['fc2.bias'],
        })
    elif block_name == 'cbam':
        naive = NaiveCBAM(block.channels, block.rd_channels, block.spatial_gate.conv.kernel_size[0])
        naive.load_state_dict({
            'ca.sharedMLP.0.weight': sd['channel_gate.fc1.weight'][:, :, None, None],
            'ca.sharedMLP.0.bias': sd['channel_gate.fc1.bias'],
            'ca.sharedMLP.2.weight': sd['channel_gate.fc2.weight'][:, :, None, None],
            'ca.sharedMLP.2.bias': sd['channel_gate.fc2.bias'],
            **{k.replace('spatial_gate.', 'sa.'): v for k, v in sd.items() if k.startswith('spatial_gate.')},
        })
    elif block_name == 'bam':
        naive = NaiveBAM(block.channels, block.rd_channels)
        naive.load_state_dict({official: sd[ours] for official, ours in BAM_OFFICIAL_KEY_MAP.items()})
    elif block_name == 'cc':
        naive = NaiveCrissCrossAttention(block.channels, block.rd_channels, block.recurrence)
        naive.load_state_dict(sd)
    elif block_name == 'sa':
        naive = NaiveSelfAttention(block.channels, block.rd_channels)
        naive.load_state_dict({k.replace('v.', 'o.') if k.startswith('v.') else k: v for k, v in sd.items()})
    else:
        raise ValueError(f'no naive baseline for block {block_name!r}; blocks with one: {", ".join(LAYER_BLOCKS)}')
    return naive


def _timm_from(block_name: str, block: nn.Module) -> Optional[nn.Module]:
    """timm's counterpart with the same widths and gczoo's weights, or None where timm has none."""
    sd = block.state_dict()
    if block_name == 'se':
        from timm.layers import SEModule
        ref = SEModule(block.channels, rd_channels=block.rd_channels)
        ref.load_state_dict(sd)
    elif block_name == 'gc':
        from timm.layers import GlobalContext
        # timm's 'gca' = GlobalContext(fuse_add=True, fuse_scale=False): the GCNet block
        ref = GlobalContext(block.channels, fuse_add=True, fuse_scale=False, rd_channels=block.rd_channels)
        ref.load_state_dict({
            'conv_attn.weight': sd['conv_mask.weight'], 'conv_attn.bias': sd['conv_mask.bias'],
            'mlp_add.fc1.weight': sd['channel_add_conv.0.weight'], 'mlp_add.fc1.bias': sd['channel_add_conv.0.bias'],
            'mlp_add.norm.weight': sd['channel_add_conv.1.weight'].flatten(),
            'mlp_add.norm.bias': sd['channel_add_conv.1.bias'].flatten(),
            'mlp_add.fc2.weight': sd['channel_add_conv.3.weight'], 'mlp_add.fc2.bias': sd['channel_add_conv.3.bias'],
        })
        # timm's LayerNorm2d has eps 1e-6, nn.LayerNorm 1e-5: same eps, same function
        ref.mlp_add.norm.eps = block.channel_add_conv[1].eps
    elif block_name == 'cbam':
        from timm.layers.cbam import CbamModule  # not re-exported by timm.layers
        kernel = block.spatial_gate.conv.kernel_size[0]
        ref = CbamModule(block.channels, rd_channels=block.rd_channels, spatial_kernel_size=kernel, mlp_bias=True)
        ref.load_state_dict({
            'channel.fc1.weight': sd['channel_gate.fc1.weight'][:, :, None, None],
            'channel.fc1.bias': sd['channel_gate.fc1.bias'],
            'channel.fc2.weight': sd['channel_gate.fc2.weight'][:, :, None, None],
            'channel.fc2.bias': sd['channel_gate.fc2.bias'],
            # timm pools [mean, max], CBAM's official code [max, mean]: swap the conv's input channels
            'spatial.conv.conv.weight': sd['spatial_gate.conv.weight'][:, [1, 0]],
            **{f'spatial.conv.bn.{k[len("spatial_gate.bn."):]}': v
               for k, v in sd.items() if k.startswith('spatial_gate.bn.')},
        })
    elif block_name == 'nl':
        from timm.layers import NonLocalAttn
        ref = NonLocalAttn(block.channels, use_scale=True, rd_channels=block.inner_channels)
        # timm scales the logits by C**-0.5 (input width), gczoo by inner**-0.5 (or 1 without use_scale):
        # give this instance gczoo's factor so both compute the same function
        ref.scale = block.scale
        ref.load_state_dict({
            't.weight': sd['theta.weight'], 't.bias': sd['theta.bias'],
            'p.weight': sd['phi.weight'], 'p.bias': sd['phi.bias'],
            'g.weight': sd['g.weight'], 'g.bias': sd['g.bias'],
            'z.weight': sd['conv_out.weight'], 'z.bias': torch.zeros(block.channels),
            **{k: v for k, v in sd.items() if k.startswith('norm.')},
        })
    else:
        return None
    return ref


TIMM_COUNTERPARTS: Dict[str, str] = {
    'se': 'timm.layers.SEModule',
    'gc': "timm.layers.GlobalContext(fuse_add=True, fuse_scale=False) ('gca')",
    'cbam': 'timm.layers.cbam.CbamModule(mlp_bias=True)',
    'nl': 'timm.layers.NonLocalAttn',
}


def build_layer_impls(block_name: str, channels: int, seed: int = 0) -> Dict[str, nn.Module]:
    """``{'gczoo': block, 'naive': baseline, 'timm': counterpart}`` sharing one set of random weights.

    ``block_name`` is a ``gczoo.layers`` registry name among ``LAYER_BLOCKS``; 'timm' is absent where timm
    has no counterpart.
    """
    if block_name not in LAYER_BLOCKS:
        raise ValueError(f'block must be one of {list(LAYER_BLOCKS)}, got {block_name!r}')
    block = create_attn(block_name, channels)
    generator = torch.Generator().manual_seed(seed)
    _randomise(block, generator)
    impls = {'gczoo': block, 'naive': _naive_from(block_name, block)}
    ref = _timm_from(block_name, block)
    if ref is not None:
        impls['timm'] = ref
    return impls


@torch.no_grad()
def _max_abs_diffs(impls: Dict[str, nn.Module], channels: int, seed: int) -> Dict[str, float]:
    """Max |output - gczoo output| of every other implementation, float64, eval mode, on a small H != W input."""
    x = torch.randn(2, channels, 9, 11, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    outs = {}
    for name, module in impls.items():
        m = copy.deepcopy(module).double().eval()
        outs[name] = m(x)
    return {name: float((out - outs['gczoo']).abs().max()) for name, out in outs.items() if name != 'gczoo'}


# ----------------------------------------------------------------------------------------------------
# Timing and memory primitives
# ----------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


CLOCKS: Dict[str, Callable[[], float]] = {'wall': time.perf_counter, 'cpu': time.process_time}


def _check_clock(clock: str, device: torch.device) -> None:
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {list(CLOCKS)}, got {clock!r}')
    if clock == 'cpu' and device.type != 'cpu':
        raise ValueError(f"clock='cpu' measures host CPU time and only makes sense on the CPU, got device {device}")


def _grouped_times(
        fns: Dict[str, Callable[[], Any]],
        groups: Sequence[Sequence[str]],
        rounds: int,
        warmup: int,
        device: torch.device,
        progress: Optional[tqdm] = None,
        min_time: float = 0.0,
        clock: str = 'wall',
        budget: float = 0.0,
        max_rounds: Optional[int] = None,
) -> List[Dict[str, List[float]]]:
    """Seconds per call of the functions of every group, over ``rounds`` interleaved rounds.

    Every round measures each group in turn, and within a group each function once, in a new random
    (seeded) order every round: a function then follows a different one from round to round instead of
    always inheriting the same predecessor's cache and allocator state (a fixed or rotated order keeps
    the predecessor fixed, which on glibc biased ratios by up to 37% here). Members of a
    group are thus measured seconds apart, which is what makes their per-round ratios robust to load
    changes. A function may belong to several groups (then it is measured in each).

    Each function is called ``warmup`` times first (at least once when ``min_time`` is set: that call
    is timed). A function faster than ``min_time`` is then called back to back enough times per
    measurement to last about ``min_time`` (the per-call time is the measurement / count): on a busy
    machine a single short call is mostly scheduler noise.

    ``clock``: ``'wall'`` (``time.perf_counter``) or ``'cpu'`` (``time.process_time``: CPU time of
    the whole process, all threads - a steadier figure on a shared machine, but only equal to wall time
    with one thread).

    ``budget``: seconds the timed rounds may take; cheap functions get more than ``rounds`` rounds (up
    to ``max_rounds``) when the warmup timings say a round fits the budget more often.
    """
    _check_clock(clock, device)
    now = CLOCKS[clock]
    last_call = {name: 0.0 for name in fns}
    for _ in range(max(warmup, 1 if min_time > 0 else 0)):
        for name, fn in fns.items():
            _sync(device)
            start = now()
            fn()
            _sync(device)
            last_call[name] = now() - start
    number = {name: 1 for name in fns}
    if min_time > 0:
        number = {name: max(1, math.ceil(min_time / max(last_call[name], 1e-9))) for name in fns}
    if budget > 0 and any(last_call.values()):
        round_time = sum(number[name] * last_call[name] for group in groups for name in group)
        extra = min(max_rounds or rounds, int(budget / max(round_time, 1e-9))) - rounds
        if extra > 0:
            rounds += extra
            if progress is not None:
                progress.total += extra * sum(len(group) for group in groups)
                progress.refresh()
    times: List[Dict[str, List[float]]] = [{name: [] for name in group} for group in groups]
    rng = random.Random(0)
    for _ in range(rounds):
        for group, group_times in zip(groups, times):
            for name in rng.sample(list(group), len(group)):
                fn, count = fns[name], number[name]
                _sync(device)
                start = now()
                for _ in range(count):
                    fn()
                _sync(device)
                group_times[name].append((now() - start) / count)
                if progress is not None:
                    progress.update(1)
    return times


def _interleaved_times(
        fns: Dict[str, Callable[[], Any]],
        rounds: int,
        warmup: int,
        device: torch.device,
        progress: Optional[tqdm] = None,
        min_time: float = 0.0,
        clock: str = 'wall',
        budget: float = 0.0,
        max_rounds: Optional[int] = None,
) -> Dict[str, List[float]]:
    """``_grouped_times`` with all functions in one group."""
    return _grouped_times(fns, [list(fns)], rounds, warmup, device, progress, min_time, clock, budget, max_rounds)[0]


def _quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return q1, q2, q3


def _paired_ratio(num: Sequence[float], den: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3) of the per-round ratios num[r] / den[r]."""
    return _quartiles([a / b for a, b in zip(num, den)])


def _proc_status() -> Dict[str, int]:
    values = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, rest = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # "reset the peak resident set size" (Linux >= 4.0)
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Collect garbage and hand malloc's free pages back to the OS (glibc only), so RSS is the live set."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may include freed-but-resident pages
        pass


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> Tuple[int, str]:
    """Peak bytes allocated during ``fn()`` beyond what was live before it, and how that was measured.

    CUDA: the caching allocator's statistics. CPU: the kernel's resident high-water mark (reset just
    before the call) minus the resident set before it; before that, ``malloc_trim`` hands the pages of
    malloc's free lists back to the OS, so freed-but-resident memory cannot hide part of the peak.
    """
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, 'cuda_max_memory_allocated'
    _release_free_memory()
    if _reset_peak_rss():
        base = _proc_status()['VmRSS']
        fn()
        return _proc_status()['VmHWM'] - base, 'rss_hwm'
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 'ru_maxrss'


# ----------------------------------------------------------------------------------------------------
# gczoo bench layers
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One benchmarked setting: a block at one input shape."""
    block: str
    shape: Tuple[int, int, int, int]  # (B, C, H, W)

    @property
    def label(self) -> str:
        return f'{self.block}@{self.shape[2]}x{self.shape[3]}'


def _layer_call(module: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], Any]:
    """One forward (eval, no_grad) or one forward + backward (train) of ``module`` on ``x``."""
    if not backward:
        module.eval()

        def run() -> Any:
            with torch.no_grad():
                return module(x)
        return run
    module.train()
    x = x.detach().requires_grad_(True)
    grad_out = torch.ones_like(x)

    def run_backward() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad_out)
    return run_backward


def _layer_targets(large_nl: bool, has_timm: bool) -> List[Tuple[str, str, float]]:
    """(column, description, bound): the issue's targets that apply to a case."""
    targets = []
    if large_nl:
        targets += [('mem_ratio_naive', 'mem vs naive <= 0.15', 0.15), ('time_ratio_naive', 'time vs naive <= 1', 1.0)]
    if has_timm:
        targets.append(('time_ratio_timm', 'time vs timm <= 1', 1.0))
    return targets


def _judge(row: Dict[str, Any], targets: Sequence[Tuple[str, str, float]], noise: Optional[float] = None) -> None:
    """Fill ``targets``, ``targets_missed``, ``targets_within_noise`` and ``targets_met`` of a result row.

    A memory ratio is deterministic and is compared as is. A time ratio whose median exceeds its bound
    counts as missed only if its first quartile does too (at least 3 of 4 rounds slower) and, when an A/A
    ``noise`` floor is known, if it exceeds the bound by more than that floor; otherwise the miss is
    within this machine's round-to-round noise and listed as such.
    """
    missed, noisy = [], []
    for col, desc, bound in targets:
        value = row.get(col)
        if value is None or value <= bound:
            continue
        q1 = row.get(f'{col}_q1')
        if q1 is None:
            missed.append(f'{desc} ({value:.3f})')
        elif q1 <= bound or (noise is not None and value - bound <= noise):
            noise_text = f', A/A noise {noise:.3f}' if noise is not None else ''
            noisy.append(f'{desc} (median {value:.3f}, q1 {q1:.3f}{noise_text})')
        else:
            missed.append(f'{desc} ({value:.3f})')
    row['targets'] = '; '.join(desc for _, desc, _ in targets)
    row['targets_missed'] = '; '.join(missed)
    row['targets_within_noise'] = '; '.join(noisy)
    row['targets_met'] = (not missed) if targets else None


def _verdict(row: Dict[str, Any]) -> str:
    if row['targets_met'] is None:
        return ''
    if not row['targets_met']:
        return 'MISSED: ' + row['targets_missed']
    return 'met' + (f" (within noise: {row['targets_within_noise']})" if row['targets_within_noise'] else '')


def _measure_layer_memory(specs: Sequence[Dict[str, Any]], on_result: Callable[[Dict[str, Any]], None]) -> None:
    """Peak extra memory of one call for every spec, one after the other, in this process.

    A spec names a block, an implementation, a shape, the mode and the device. Each implementation is
    built, called once on a small input (lazy initialisation - thread pools, kernels - is not per-call
    cost), then measured on one call at the full shape and freed before the next.
    """
    for spec in specs:
        device = torch.device(spec['device'])
        b, c, h, w = spec['shape']
        module = build_layer_impls(spec['block'], c, seed=spec['seed'])[spec['impl']].to(device)
        small = torch.randn(b, c, min(h, 8), min(w, 8), device=device)
        _layer_call(module, small, spec['backward'])()
        del small
        x = torch.randn(b, c, h, w, device=device)
        extra, method = peak_extra_memory(_layer_call(module, x, spec['backward']), device)
        del module, x
        on_result(dict(spec, peak_extra_bytes=int(extra), method=method))


def _memprobe_main(argv: List[str]) -> int:
    """Child side of the memory subprocess: specs (JSON list) on stdin, one JSON result per line out."""
    specs = json.loads(sys.stdin.read())
    if specs:
        torch.set_num_threads(specs[0]['threads'])

    def emit(result: Dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)
    _measure_layer_memory(specs, emit)
    return 0


def _layer_memory_subprocess(specs: Sequence[Dict[str, Any]], on_result: Callable[[Dict[str, Any]], None]) -> None:
    """Run ``_measure_layer_memory`` in one fresh interpreter started with glibc's mmap threshold fixed."""
    import tempfile
    cmd = [sys.executable, '-m', 'gczoo.benchmark', '_memprobe']
    env = dict(os.environ, **_MALLOC_ENV)
    with tempfile.TemporaryFile('w+') as err:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        proc.stdin.write(json.dumps(list(specs)))
        proc.stdin.close()
        for line in proc.stdout:
            line = line.strip()
            if line.startswith('{'):
                on_result(json.loads(line))
        code = proc.wait()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f'the memory subprocess ({" ".join(cmd)}) failed with exit code {code}:\n'
                               f'{err.read()[-3000:]}')


MEMORY_MODES = ('subprocess', 'inprocess', 'off')


def bench_layers(
        blocks: Sequence[str] = LAYER_BLOCKS,
        batch: int = 8,
        channels: int = 256,
        size: int = 56,
        nl_large_batch: int = 2,
        nl_large_size: int = 128,
        backward: bool = False,
        rounds: int = 5,
        large_rounds: int = 3,
        warmup: int = 1,
        min_time: float = 0.2,
        budget: float = 15.0,
        memory: str = 'subprocess',
        device: str = 'cpu',
        clock: str = 'wall',
        seed: int = 0,
        progress: bool = True,
) -> List[Dict[str, Any]]:
    """Benchmark the blocks; one result row (dict) per case. See the module docstring for the method.

    Each case gets at least ``rounds`` timed rounds (``large_rounds`` for the large Non-local case), and
    more - up to 6x - while they fit in ``budget`` seconds: cheap blocks are the noisiest per call.

    ``memory``: ``'subprocess'`` (CPU default: all memory measurements in one fresh interpreter whose
    glibc unmaps every freed block >= 64 KiB at once), ``'inprocess'`` (after the timings, in this
    process, relying on ``malloc_trim`` alone; cheaper, used by the tests) or ``'off'``. On CUDA the
    measurement is always in-process (allocator statistics).
    """
    unknown = [b for b in blocks if b not in LAYER_BLOCKS]
    if unknown:
        raise ValueError(f'blocks must be among {list(LAYER_BLOCKS)}, got unknown {unknown}')
    if memory not in MEMORY_MODES:
        raise ValueError(f'memory must be one of {list(MEMORY_MODES)}, got {memory!r}')
    dev = torch.device(device)
    _check_clock(clock, dev)
    cases = [LayerCase(name, (batch, channels, size, size)) for name in blocks]
    large_case = None
    if nl_large_size > 0 and 'nl' in blocks:
        large_case = LayerCase('nl', (nl_large_batch, channels, nl_large_size, nl_large_size))
        cases.append(large_case)
    impl_names = {case: [n for n in IMPLS if n != 'timm' or case.block in TIMM_COUNTERPARTS] for case in cases}
    n_rounds = {case: large_rounds if case is large_case else rounds for case in cases}
    total = sum((len(impl_names[c]) + 1) * n_rounds[c] for c in cases)  # + the A/A control
    if memory != 'off':
        total += sum(len(v) for v in impl_names.values())

    times: Dict[LayerCase, Dict[str, List[float]]] = {}
    diffs: Dict[LayerCase, Dict[str, float]] = {}
    mem: Dict[LayerCase, Dict[str, int]] = {case: {} for case in cases}
    mem_method: Dict[LayerCase, str] = {case: '' for case in cases}
    with tqdm(total=total, desc='bench layers', unit='meas', disable=not progress, dynamic_ncols=True) as bar:
        for case in cases:
            bar.set_postfix_str(f'time {case.label}')
            b, c, h, w = case.shape
            impls = build_layer_impls(case.block, c, seed=seed)
            diffs[case] = _max_abs_diffs(impls, c, seed)
            # A/A control: gczoo's block against an identical copy of itself measures this machine's noise
            impls[CONTROL] = copy.deepcopy(impls['gczoo'])
            x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(dev)
            fns = {name: _layer_call(m.to(dev), x, backward) for name, m in impls.items()}
            times[case] = _interleaved_times(fns, n_rounds[case], warmup, dev, bar, min_time=min_time, clock=clock,
                                             budget=budget, max_rounds=6 * n_rounds[case])
            n_rounds[case] = len(times[case]['gczoo'])
            del fns, x, impls
            gc.collect()

        if memory != 'off':
            by_key = {(case.label, name): case for case in cases for name in impl_names[case]}
            specs = [dict(case=case.label, block=case.block, impl=name, shape=list(case.shape), backward=backward,
                          device=device, threads=torch.get_num_threads(), seed=seed)
                     for case in cases for name in impl_names[case]]

            def record(result: Dict[str, Any]) -> None:
                case = by_key[(result['case'], result['impl'])]
                mem[case][result['impl']] = result['peak_extra_bytes']
                mem_method[case] = result['method']
                bar.set_postfix_str(f'memory {case.label}')
                bar.update(1)
            if memory == 'subprocess' and dev.type == 'cpu':
                _layer_memory_subprocess(specs, record)
            else:
                _measure_layer_memory(specs, record)

    return [_layer_row(case, case is large_case, backward, n_rounds[case], times[case], mem[case], mem_method[case],
                       diffs[case], dev, clock) for case in cases]


def _layer_row(case, large_nl, backward, n_rounds, times, mem, mem_method, diffs, dev, clock) -> Dict[str, Any]:
    b, c, h, w = case.shape
    has_timm = 'timm' in times
    row: Dict[str, Any] = dict(
        case=case.label, block=case.block, batch=b, channels=c, height=h, width=w,
        mode='fwd+bwd' if backward else 'fwd', device=dev.type, threads=torch.get_num_threads(), clock=clock,
        rounds=n_rounds,
        timm_counterpart=TIMM_COUNTERPARTS.get(case.block, ''),
    )
    for name in IMPLS:
        row[f'{name}_ms'] = statistics.median(times[name]) * 1e3 if name in times else None
    for ref in ('naive', 'timm', CONTROL):
        if ref in times:
            q1, med, q3 = _paired_ratio(times['gczoo'], times[ref])
        else:
            q1 = med = q3 = None
        row[f'time_ratio_{ref}'], row[f'time_ratio_{ref}_q1'], row[f'time_ratio_{ref}_q3'] = med, q1, q3
    row['time_noise'] = _noise(row, f'time_ratio_{CONTROL}')
    for name in IMPLS:
        row[f'{name}_mem_mb'] = mem[name] / _MB if name in mem else None
    for ref in ('naive', 'timm'):
        ok = 'gczoo' in mem and ref in mem and mem[ref] > 0
        row[f'mem_ratio_{ref}'] = mem['gczoo'] / mem[ref] if ok else None
    row['mem_method'] = mem_method
    row['max_abs_diff_naive'] = diffs.get('naive')
    row['max_abs_diff_timm'] = diffs.get('timm')
    _judge(row, _layer_targets(large_nl, has_timm), noise=row['time_noise'])
    return row


def _noise(row: Dict[str, Any], control_col: str) -> Optional[float]:
    """Noise floor of time ratios from the A/A control: how far an identical copy's ratio strays from 1."""
    if row.get(control_col) is None:
        return None
    med, q1, q3 = row[control_col], row[f'{control_col}_q1'], row[f'{control_col}_q3']
    return max(abs(med - 1.0), (q3 - q1) / 2)


def _fmt(value: Any, spec: str = '.2f') -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def format_layer_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The ratio table (time and memory of gczoo / naive and gczoo / timm; < 1 means gczoo is better)."""
    header = ['case', 'mode', 'rounds', 'gczoo ms', 'naive ms', 'timm ms', 't/naive', 't/timm', 't/self (A/A)',
              'gczoo MB', 'naive MB', 'timm MB', 'm/naive', 'm/timm', 'max|d| naive', 'max|d| timm', 'targets']
    lines = [header]
    for r in rows:
        verdict = _verdict(r)
        lines.append([
            r['case'], r['mode'], str(r['rounds']),
            _fmt(r['gczoo_ms'], '.1f'), _fmt(r['naive_ms'], '.1f'), _fmt(r['timm_ms'], '.1f'),
            _fmt(r['time_ratio_naive']), _fmt(r['time_ratio_timm']), _fmt(r[f'time_ratio_{CONTROL}']),
            _fmt(r['gczoo_mem_mb'], '.1f'), _fmt(r['naive_mem_mb'], '.1f'), _fmt(r['timm_mem_mb'], '.1f'),
            _fmt(r['mem_ratio_naive'], '.3f'), _fmt(r['mem_ratio_timm'], '.3f'),
            _fmt(r['max_abs_diff_naive'], '.1e'), _fmt(r['max_abs_diff_timm'], '.1e'), verdict,
        ])
    return _markdown(lines)


def _markdown(lines: List[List[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ['| ' + ' | '.join(cell.ljust(w) for cell, w in zip(line, widths)) + ' |' for line in lines]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(out)


# ----------------------------------------------------------------------------------------------------
# gczoo bench models
# ----------------------------------------------------------------------------------------------------

def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_mapping() -> Dict[Any, Callable[..., int]]:
    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    return {op: _sdpa_cpu_flops} if op is not None else {}


@torch.no_grad()
def count_gmacs(model: nn.Module, img_size: int) -> float:
    """Multiply-accumulates (x 1e9) of one forward at batch 1, FlopCounterMode with the CPU SDPA op added."""
    from torch.utils.flop_counter import FlopCounterMode
    param = next(model.parameters())
    x = torch.randn(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


@dataclasses.dataclass
class _ModelEntry:
    label: str
    build: Callable[[], nn.Module]
    description: str


def _gc_ratio(zoo_name: str) -> Optional[float]:
    """rd_ratio of the zoo model's GC blocks, or None if it has other attention than GC."""
    ratios = set()
    for p in ZOO_MODELS[zoo_name].placements:
        spec = ATTN_SPECS[p.attn]
        if spec.cls.__name__ != 'ContextBlock':
            return None
        kw = {**spec.kwargs, **p.kwargs}
        fusions = tuple(kw.get('fusion_types', ('channel_add',)))
        if kw.get('pooling_type', 'att') != 'att' or fusions != ('channel_add',):
            return None
        ratios.add(kw.get('rd_ratio', 1. / 16))
    return ratios.pop() if len(ratios) == 1 else None


def _timm_gc_resnet(depth: int, rd_ratio: float, zoo_name: str) -> nn.Module:
    """timm ResNet with timm's GlobalContext ('gca': fuse_add) where the zoo model has its GC blocks.

    ``block_args=dict(attn_layer=...)`` puts the block in every residual block of every stage; the blocks
    of the stages / indices the zoo model leaves empty (layer1 for GCNet's c3-c5) are replaced by
    ``nn.Identity`` so the comparison is block for block.
    """
    import timm
    from timm.layers import GlobalContext
    attn = partial(GlobalContext, fuse_add=True, fuse_scale=False, rd_ratio=rd_ratio, rd_divisor=1)
    model = timm.create_model(f'resnet{depth}', block_args=dict(attn_layer=attn))
    covered = {}
    for p in ZOO_MODELS[zoo_name].placements:
        covered.update(p.stages)
    for stage in (1, 2, 3, 4):
        blocks = list(getattr(model, f'layer{stage}').children())
        keep = set(range(len(blocks))) if covered.get(stage, ()) is None else \
            {range(len(blocks))[i] for i in covered.get(stage, ())}
        for i, blk in enumerate(blocks):
            if i not in keep:
                blk.se = nn.Identity()
    return model


def _nearest_timm(zoo_name: str) -> Optional[_ModelEntry]:
    """timm's nearest attention model for a zoo model (None where timm has no such model)."""
    import timm
    zoo = ZOO_MODELS[zoo_name]
    depth = zoo.depth
    attns = {p.attn for p in zoo.placements}
    if attns == {'se'} and f'seresnet{depth}' in timm.list_models(f'seresnet{depth}'):
        return _ModelEntry(f'seresnet{depth}', partial(timm.create_model, f'seresnet{depth}'),
                           f"timm 'seresnet{depth}' (SE r16 in every block)")
    if attns == {'cbam'}:
        return _ModelEntry(f'resnet{depth}+cbam', partial(timm.create_model, f'resnet{depth}',
                                                          block_args=dict(attn_layer='cbam')),
                           f"timm 'resnet{depth}', block_args attn_layer='cbam' (CbamModule in every block)")
    ratio = _gc_ratio(zoo_name)
    if ratio is not None:
        stages = sorted({s for p in zoo.placements for s in p.stages})
        r = round(1 / ratio)
        return _ModelEntry(
            f'resnet{depth}+gca(r{r},l{"".join(map(str, stages))})', partial(_timm_gc_resnet, depth, ratio, zoo_name),
            f"timm 'resnet{depth}', block_args attn_layer=GlobalContext(fuse_add=True, fuse_scale=False, "
            f"rd_ratio=1/{r}) (= timm's 'gca' at the zoo's ratio), kept only where the zoo model has GC "
            f"(layer{', layer'.join(map(str, stages))}; the other blocks' attention replaced by Identity)")
    return None


def _make_train_step(model: nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> Callable[[], None]:
    from timm.optim import create_optimizer_v2
    model.train()
    optimizer = create_optimizer_v2(model, 'sgd', lr=1e-3, momentum=0.9, weight_decay=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(x.device.type) if amp_dtype == torch.float16 else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(x.device, amp_dtype):
            loss = criterion(model(x), target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return step


def _make_infer_step(model: nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> Callable[[], Any]:
    def step() -> Any:
        model.eval()
        with torch.inference_mode(), _autocast(x.device, amp_dtype):
            return model(x)
    return step


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def bench_models(
        models: Optional[Sequence[str]] = None,
        batch: int = 8,
        img_size: int = 224,
        steps: int = 3,
        warmup: int = 1,
        modes: Sequence[str] = ('infer', 'train'),
        device: str = 'cpu',
        amp: Optional[bool] = None,
        channels_last: Optional[bool] = None,
        clock: str = 'wall',
        progress: bool = True,
) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """Throughput of zoo models vs timm; returns (one row per zoo model, raw figures per measured model).

    All models (zoo models, their same-depth plain timm ResNets, timm's nearest attention models) live
    in one process. Each zoo model forms a group with its two references; every round steps each group
    in turn, the members of a group back to back in rotating order, so a zoo model and its references
    are measured seconds apart and the ratios are medians of per-round paired ratios (a reference is
    stepped in every group it belongs to; its img/s is the median over all its steps).
    """
    import timm
    models = list(ZOO_MODELS) if models is None else list(models)
    unknown = [m for m in models if m not in ZOO_MODELS]
    if unknown:
        raise ValueError(f'models must be zoo models ({", ".join(ZOO_MODELS)}), got unknown {unknown}')
    for mode in modes:
        if mode not in ('infer', 'train'):
            raise ValueError(f"modes must be 'infer' and/or 'train', got {mode!r}")
    dev = torch.device(device)
    _check_clock(clock, dev)
    amp = dev.type == 'cuda' if amp is None else amp
    channels_last = dev.type == 'cuda' if channels_last is None else channels_last
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if dev.type == 'cpu' or torch.cuda.is_bf16_supported() else torch.float16

    entries: Dict[str, _ModelEntry] = {}
    pairing: Dict[str, Tuple[str, Optional[str]]] = {}
    for name in models:
        depth = ZOO_MODELS[name].depth
        entries[name] = _ModelEntry(name, partial(timm.create_model, name), ZOO_MODELS[name].summary)
        base = f'resnet{depth}'
        entries.setdefault(base, _ModelEntry(base, partial(timm.create_model, base), f"timm '{base}'"))
        nearest = _nearest_timm(name)
        if nearest is not None:
            entries.setdefault(nearest.label, nearest)
        pairing[name] = (base, nearest.label if nearest is not None else None)

    built: Dict[str, nn.Module] = {}
    raw: Dict[str, Dict[str, Any]] = {}
    for label, entry in tqdm(entries.items(), desc='build + GMACs', disable=not progress, dynamic_ncols=True):
        torch.manual_seed(0)
        model = entry.build()
        raw[label] = dict(description=entry.description, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                          gmacs=count_gmacs(model, img_size))
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        built[label] = model

    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    groups = [[name, *(ref for ref in pairing[name] if ref)] for name in models]
    times: Dict[str, List[Dict[str, List[float]]]] = {}
    total = len(modes) * steps * sum(len(g) for g in groups)
    with tqdm(total=total, desc='bench models', unit='step', disable=not progress, dynamic_ncols=True) as bar:
        for mode in modes:
            bar.set_postfix_str(mode)
            make = _make_infer_step if mode == 'infer' else _make_train_step
            fns = {label: make(model, x, amp_dtype) for label, model in built.items()}
            times[mode] = _grouped_times(fns, groups, steps, warmup, dev, bar, clock=clock)
            del fns
            gc.collect()

    for label in built:
        for mode in modes:
            all_times = [t for group_times in times[mode] for t in group_times.get(label, [])]
            raw[label][f'{mode}_ms'] = statistics.median(all_times) * 1e3
            raw[label][f'{mode}_img_s'] = batch / statistics.median(all_times)
            raw[label][f'{mode}_times_s'] = all_times

    rows = []
    for group_idx, name in enumerate(models):
        base, nearest = pairing[name]
        gmac_ratio = raw[name]['gmacs'] / raw[base]['gmacs']
        row: Dict[str, Any] = dict(
            model=name, base=base, nearest=nearest or '', batch=batch, img_size=img_size, device=dev.type,
            amp=str(amp_dtype).replace('torch.', '') if amp_dtype else 'off', channels_last=channels_last,
            threads=torch.get_num_threads(), clock=clock, steps=steps, params_m=raw[name]['params_m'],
            gmacs=raw[name]['gmacs'], base_gmacs=raw[base]['gmacs'],
            gmac_ratio=gmac_ratio, target_time_ratio=gmac_ratio + 0.03,
            nearest_gmac_ratio=raw[nearest]['gmacs'] / raw[base]['gmacs'] if nearest else None,
        )
        targets = []
        for mode in ('infer', 'train'):
            for ref, ref_name in (('base', base), ('nearest', nearest)):
                key = f'{mode}_time_ratio_{ref}'
                if mode in modes and ref_name:
                    group_times = times[mode][group_idx]
                    q1, med, q3 = _paired_ratio(group_times[name], group_times[ref_name])
                else:
                    q1 = med = q3 = None
                row[key], row[f'{key}_q1'], row[f'{key}_q3'] = med, q1, q3
            # timm's own attention model against the plain ResNet: the overhead a reference implementation has
            key = f'nearest_{mode}_time_ratio_base'
            if mode in modes and nearest:
                group_times = times[mode][group_idx]
                row[key] = _paired_ratio(group_times[nearest], group_times[base])[1]
            else:
                row[key] = None
            row[f'{mode}_img_s'] = raw[name].get(f'{mode}_img_s')
            row[f'base_{mode}_img_s'] = raw[base].get(f'{mode}_img_s')
            row[f'nearest_{mode}_img_s'] = raw[nearest].get(f'{mode}_img_s') if nearest else None
            targets.append((f'{mode}_time_ratio_base', f'{mode} vs {base} <= GMAC ratio + 0.03',
                            row['target_time_ratio']))
            if nearest:
                targets.append((f'{mode}_time_ratio_nearest', f'{mode} vs {nearest} <= 1', 1.0))
        _judge(row, targets)
        rows.append(row)
    return rows, raw


def format_model_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Time ratios (zoo / timm; < 1 means the zoo model is faster) next to the GMAC ratio.

    'timm ... t/base' is timm's nearest attention model against the plain ResNet: what the block costs in
    timm's implementation, for reading the zoo model's own ratio.
    """
    header = ['model', 'GMACs', 'GMAC ratio', 'target', 'infer img/s', 'infer t/base', 'train img/s',
              'train t/base', 'nearest timm', 'infer t/nearest', 'train t/nearest', 'timm infer t/base',
              'timm train t/base', 'targets']
    lines = [header]
    for r in rows:
        lines.append([
            r['model'], _fmt(r['gmacs']), _fmt(r['gmac_ratio'], '.3f'), f"<= {r['target_time_ratio']:.3f}",
            _fmt(r['infer_img_s'], '.1f'), _fmt(r['infer_time_ratio_base'], '.3f'),
            _fmt(r['train_img_s'], '.1f'), _fmt(r['train_time_ratio_base'], '.3f'),
            r['nearest'] or '-', _fmt(r['infer_time_ratio_nearest'], '.3f'), _fmt(r['train_time_ratio_nearest'], '.3f'),
            _fmt(r['nearest_infer_time_ratio_base'], '.3f'), _fmt(r['nearest_train_time_ratio_base'], '.3f'),
            _verdict(r),
        ])
    return _markdown(lines)


# ----------------------------------------------------------------------------------------------------
# Output and command line
# ----------------------------------------------------------------------------------------------------

def _write_outputs(rows: Sequence[Dict[str, Any]], extra: Dict[str, Any], out_dir: Path, stem: str) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f'{stem}.csv', out_dir / f'{stem}.json'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    with open(json_path, 'w') as f:
        json.dump({'rows': list(rows), **extra}, f, indent=2)
    return [csv_path, json_path]


def _environment(device: str) -> Dict[str, Any]:
    import platform
    import timm
    return dict(torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
                device=device, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                load_average=list(os.getloadavg()), machine=platform.machine(),
                time=time.strftime('%Y-%m-%d %H:%M:%S'))


def _resolve_device(device: str) -> str:
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device!r} asked for CUDA, but torch.cuda.is_available() is False')
    return device


def _int_at_least(name: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{name} must be an integer, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{name} must be >= {minimum}, got {value}')
        return value
    return parse


def _positive(name: str) -> Callable[[str], int]:
    return _int_at_least(name, 1)


def _non_negative(name: str) -> Callable[[str], int]:
    return _int_at_least(name, 0)


def _non_negative_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{name} must be a number, got {text!r}') from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f'{name} must be a finite number >= 0, got {value}')
        return value
    return parse


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--device', default='auto', help="'auto' (CUDA if present), 'cpu' or 'cuda[:i]'")
    parser.add_argument('--threads', type=_positive('--threads'), default=None,
                        help='torch intra-op threads (default: torch default)')
    parser.add_argument('--warmup', type=_non_negative('--warmup'), default=1, help='warmup rounds (default 1)')
    parser.add_argument('--clock', choices=tuple(CLOCKS), default='wall',
                        help="'wall' (default) or 'cpu' (process CPU time; CPU device only; equals wall time with "
                             "--threads 1 on an idle machine and is far steadier on a shared one)")
    parser.add_argument('--output-dir', type=Path, default=Path('output/bench'),
                        help='where the CSV and JSON go (default output/bench)')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='gczoo bench', description='Speed and memory benchmarks of gczoo against naive code and timm.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='what', required=True, metavar='{layers,models}')
    layers = sub.add_parser(
        'layers', formatter_class=argparse.ArgumentDefaultsHelpFormatter, help='every block vs a naive baseline and timm: time and peak extra memory',
        description='Every block vs a naive baseline and timm\'s counterpart (time and peak extra memory), '
                    'interleaved, medians over rounds; prints a ratio table, writes layers.csv/.json.')
    layers.add_argument('--blocks', nargs='+', default=list(LAYER_BLOCKS), choices=LAYER_BLOCKS, metavar='BLOCK',
                        help=f'blocks to run (default: all of {" ".join(LAYER_BLOCKS)})')
    layers.add_argument('--batch', type=_positive('--batch'), default=8)
    layers.add_argument('--channels', type=_positive('--channels'), default=256)
    layers.add_argument('--size', type=_positive('--size'), default=56, help='H = W of the input')
    layers.add_argument('--nl-large-batch', type=_positive('--nl-large-batch'), default=2)
    layers.add_argument('--nl-large-size', type=_non_negative('--nl-large-size'), default=128,
                        help='extra Non-local case at this H = W (0: skip)')
    layers.add_argument('--backward', action='store_true', help='time forward + backward (train mode)')
    layers.add_argument('--repeats', type=_positive('--repeats'), default=5, help='timed rounds per case (at least)')
    layers.add_argument('--large-repeats', type=_positive('--large-repeats'), default=3,
                        help='timed rounds of the large Non-local case (a naive call takes ~20 s on 2 cores)')
    layers.add_argument('--budget', type=_non_negative_float('--budget'), default=15.0,
                        help='seconds of timed rounds per case: cheap cases get more rounds (up to 6x --repeats)')
    layers.add_argument('--min-time', type=_non_negative_float('--min-time'), default=0.2,
                        help='seconds each timed measurement should last: faster calls are repeated back to back')
    layers.add_argument('--memory', choices=MEMORY_MODES, default='subprocess',
                        help="peak extra memory: 'subprocess' (one fresh interpreter for all measurements), "
                             "'inprocess' (after the timings, here) or 'off'")
    layers.add_argument('--seed', type=int, default=0)
    _common_args(layers)
    models = sub.add_parser(
        'models', formatter_class=argparse.ArgumentDefaultsHelpFormatter, help='zoo model throughput vs timm resnet and timm attention models, with GMAC ratios',
        description='Inference and training-step throughput of zoo models as time ratios to timm\'s ResNet of '
                    'the same depth and to timm\'s nearest attention model, next to the GMAC ratio; '
                    'writes models.csv/.json.')
    models.add_argument('--models', nargs='+', default=list(ZOO_MODELS), choices=list(ZOO_MODELS), metavar='MODEL',
                        help='zoo models (default: all)')
    models.add_argument('--batch', type=_positive('--batch'), default=8)
    models.add_argument('--img-size', type=_positive('--img-size'), default=224)
    models.add_argument('--steps', type=_positive('--steps'), default=3,
                        help='timed rounds per mode (3 keeps the default run near 10 min on 2 busy cores)')
    models.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    models.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='autocast (default: on for CUDA, off for CPU)')
    models.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                        help='channels_last memory format (default: on for CUDA, off for CPU)')
    _common_args(models)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo bench layers|models [options]``; returns the exit code (0 even if a target is missed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == '_memprobe':
        return _memprobe_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    progress = not args.no_progress
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if device == 'cpu' and torch.get_num_threads() > 1 and load >= cpus:
        print(f'gczoo bench: the machine is busy (load average {load:.1f} on {cpus} CPUs): with '
              f'{torch.get_num_threads()} threads every parallel op waits for descheduled threads, which can '
              f'dominate small ops; --threads 1 --clock cpu gives steadier ratios here', file=sys.stderr)
    if args.what == 'layers':
        rows = bench_layers(
            args.blocks, args.batch, args.channels, args.size, args.nl_large_batch, args.nl_large_size,
            backward=args.backward, rounds=args.repeats, large_rounds=args.large_repeats, warmup=args.warmup,
            min_time=args.min_time, budget=args.budget, memory=args.memory, device=device, clock=args.clock,
            seed=args.seed,
            progress=progress)
        table = format_layer_table(rows)
        paths = _write_outputs(rows, {'environment': _environment(device), 'args': _jsonable(vars(args))},
                               args.output_dir, 'layers_bwd' if args.backward else 'layers')
        print(f'\ngczoo bench layers ({device}, {torch.get_num_threads()} threads, {args.clock} clock; ratios '
              f'gczoo / other, < 1 = gczoo faster or smaller; medians over the interleaved rounds, see the '
              f'rounds column of the CSV)')
    else:
        rows, raw = bench_models(
            args.models, args.batch, args.img_size, steps=args.steps, warmup=args.warmup, modes=args.modes,
            device=device, amp=args.amp, channels_last=args.channels_last, clock=args.clock, progress=progress)
        table = format_model_table(rows)
        extra = {'models': raw, 'environment': _environment(device), 'args': _jsonable(vars(args))}
        paths = _write_outputs(rows, extra, args.output_dir, 'models')
        print(f'\ngczoo bench models ({device}, batch {args.batch} at {args.img_size}, '
              f'{torch.get_num_threads()} threads, {args.clock} clock; time ratios zoo / timm, < 1 = zoo faster; '
              f'medians of {args.steps} interleaved rounds)')
        for r in rows:
            if r['nearest']:
                print(f"  {r['model']}: nearest timm = {raw[r['nearest']]['description']}")
    print(table)
    print('\nwrote ' + ', '.join(str(p) for p in paths))
    return 0


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


if __name__ == '__main__':
    sys.exit(main())
