"""``gczoo bench layers``: every attention block against a naive version and timm's counterpart.

Cases: every block at 8 x 256 x 56 x 56 by default, and Non-local (embedded Gaussian, no
sub-sampling) also at 2 x 256 x 128 x 128. Each block is measured against

* a naive seed-style version (``gczoo.bench._naive``: explicit N x N ``matmul`` + ``softmax``,
  ``view``/``permute``/``expand_as``), bugs fixed so it computes exactly the block's function;
* timm's counterpart where one exists (``SEModule``, ``CbamModule``, ``GlobalContext`` with
  ``fuse_add`` = timm's ``'gca'``, ``NonLocalAttn``), built with the same widths;
* an A/A control: an identical deep copy of gczoo's block, whose ratio is this machine's noise floor.

Weights are shared (copied from gczoo's block after randomising it), and every run first checks in
float64 that the outputs agree (``max_abs_diff_*`` columns), so the comparisons are between
implementations of one function. Time: ``timing`` (interleaved rounds, paired ratios); peak extra
memory: ``memory`` (after all timings, by default in one fresh interpreter). ``--backward`` times one
forward + backward in train mode; its targets are the training-step ones (time and peak memory <= the
naive version's and <= timm's).
"""
import copy
import dataclasses
import gc
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from gczoo.layers import create_attn

from ._naive import NAIVE_FROM
from .memory import MEMORY_MODES, peak_extra_memory, run_in_fresh_interpreter
from .report import fmt, markdown, verdict
from .timing import check_clock, interleaved_times, judge_targets, noise_floor, paired_ratio

__all__ = [
    'LAYER_BLOCKS', 'TIMM_COUNTERPARTS', 'LayerCase', 'build_layer_impls', 'max_abs_diffs', 'measure_layer_memory',
    'bench_layers', 'format_layer_table',
]

LAYER_BLOCKS: Tuple[str, ...] = tuple(NAIVE_FROM)  # nl snl gc se cbam bam cc sa
IMPLS: Tuple[str, ...] = ('gczoo', 'naive', 'timm')
CONTROL = 'control'  # a deep copy of gczoo's block, timed alongside it: the A/A noise floor
_MB = 2 ** 20
_MEMORY_SLACK = 0.01  # a memory ratio this far above its bound is page/allocator granularity, not a miss

TIMM_COUNTERPARTS: Dict[str, str] = {
    'se': 'timm.layers.SEModule',
    'gc': "timm.layers.GlobalContext(fuse_add=True, fuse_scale=False) ('gca')",
    'cbam': 'timm.layers.cbam.CbamModule(mlp_bias=True)',
    'nl': 'timm.layers.NonLocalAttn',
}


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


def build_layer_impls(block_name: str, channels: int, seed: int = 0) -> Dict[str, nn.Module]:
    """``{'gczoo': block, 'naive': baseline, 'timm': counterpart}`` sharing one set of random weights.

    ``block_name`` is a ``gczoo.layers`` registry name among ``LAYER_BLOCKS``; 'timm' is absent where timm
    has no counterpart.
    """
    if block_name not in LAYER_BLOCKS:
        raise ValueError(f'block must be one of {list(LAYER_BLOCKS)}, got {block_name!r}')
    block = create_attn(block_name, channels)
    _randomise(block, torch.Generator().manual_seed(seed))
    impls = {'gczoo': block, 'naive': NAIVE_FROM[block_name](block)}
    ref = _timm_from(block_name, block)
    if ref is not None:
        impls['timm'] = ref
    return impls


@torch.no_grad()
def max_abs_diffs(impls: Dict[str, nn.Module], channels: int, seed: int) -> Dict[str, float]:
    """Max |output - gczoo output| of every other implementation, float64, eval mode, on a small H != W input."""
    x = torch.randn(2, channels, 9, 11, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    outs = {name: copy.deepcopy(module).double().eval()(x) for name, module in impls.items()}
    return {name: float((out - outs['gczoo']).abs().max()) for name, out in outs.items() if name != 'gczoo'}


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


def _layer_targets(large_nl: bool, has_timm: bool, backward: bool) -> List[Tuple]:
    """(column, description, bound[, slack]): the targets that apply to a case."""
    if backward:  # the training step: no slower and no larger than the naive version and timm's
        refs = ('naive', 'timm') if has_timm else ('naive',)
        return [target for ref in refs for target in (
            (f'time_ratio_{ref}', f'train time vs {ref} <= 1', 1.0),
            (f'mem_ratio_{ref}', f'train mem vs {ref} <= 1', 1.0, _MEMORY_SLACK))]
    targets: List[Tuple] = []
    if large_nl:
        targets += [('mem_ratio_naive', 'mem vs naive <= 0.15', 0.15), ('time_ratio_naive', 'time vs naive <= 1', 1.0)]
    if has_timm:
        targets.append(('time_ratio_timm', 'time vs timm <= 1', 1.0))
    return targets


def measure_layer_memory(specs: Sequence[Dict[str, Any]], on_result: Callable[[Dict[str, Any]], None]) -> None:
    """Peak extra memory of one call for every spec, one after the other, in this process.

    A spec names a block, an implementation, a shape, the mode, the device and the thread count. Each
    implementation is built, called once on a small input (lazy initialisation - thread pools, kernels -
    is not per-call cost), then measured on one call at the full shape and freed before the next.
    (The target of ``memory.run_in_fresh_interpreter``.)
    """
    for spec in specs:
        torch.set_num_threads(spec['threads'])
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


def _memory_of(cases: Sequence[LayerCase], impl_names: Dict[LayerCase, List[str]], backward: bool, device: str,
               seed: int, memory: str, bar: Any) -> Tuple[Dict[LayerCase, Dict[str, int]], Dict[LayerCase, str]]:
    """Each case's and implementation's peak extra memory (bytes) and how it was measured ({} for 'off')."""
    mem: Dict[LayerCase, Dict[str, int]] = {case: {} for case in cases}
    mem_method: Dict[LayerCase, str] = {case: '' for case in cases}
    if memory == 'off':
        return mem, mem_method
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
    if memory == 'subprocess' and torch.device(device).type == 'cpu':
        run_in_fresh_interpreter('gczoo.bench.layers:measure_layer_memory', specs, record)
    else:
        measure_layer_memory(specs, record)
    return mem, mem_method


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
    check_clock(clock, dev)
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
    with tqdm(total=total, desc='bench layers', unit='meas', disable=not progress, dynamic_ncols=True) as bar:
        for case in cases:
            bar.set_postfix_str(f'time {case.label}')
            b, c, h, w = case.shape
            impls = build_layer_impls(case.block, c, seed=seed)
            diffs[case] = max_abs_diffs(impls, c, seed)
            impls[CONTROL] = copy.deepcopy(impls['gczoo'])
            x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).to(dev)
            fns = {name: _layer_call(m.to(dev), x, backward) for name, m in impls.items()}
            times[case] = interleaved_times(fns, n_rounds[case], warmup, dev, progress=bar, min_time=min_time,
                                            clock=clock, budget=budget, max_rounds=6 * n_rounds[case])
            n_rounds[case] = len(times[case]['gczoo'])
            del fns, x, impls
            gc.collect()
        mem, mem_method = _memory_of(cases, impl_names, backward, device, seed, memory, bar)

    return [_layer_row(case, case is large_case, backward, n_rounds[case], times[case], mem[case], mem_method[case],
                       diffs[case], dev, clock) for case in cases]


def _layer_row(case: LayerCase, large_nl: bool, backward: bool, n_rounds: int, times: Dict[str, List[float]],
               mem: Dict[str, int], mem_method: str, diffs: Dict[str, float], dev: torch.device,
               clock: str) -> Dict[str, Any]:
    b, c, h, w = case.shape
    row: Dict[str, Any] = dict(
        case=case.label, block=case.block, batch=b, channels=c, height=h, width=w,
        mode='fwd+bwd' if backward else 'fwd', device=dev.type, threads=torch.get_num_threads(), clock=clock,
        rounds=n_rounds, timm_counterpart=TIMM_COUNTERPARTS.get(case.block, ''),
    )
    for name in IMPLS:
        row[f'{name}_ms'] = statistics.median(times[name]) * 1e3 if name in times else None
    for ref in ('naive', 'timm', CONTROL):
        q1 = med = q3 = None
        if ref in times:
            q1, med, q3 = paired_ratio(times['gczoo'], times[ref])
        row[f'time_ratio_{ref}'], row[f'time_ratio_{ref}_q1'], row[f'time_ratio_{ref}_q3'] = med, q1, q3
    row['time_noise'] = noise_floor(row, f'time_ratio_{CONTROL}')
    for name in IMPLS:
        row[f'{name}_mem_mb'] = mem[name] / _MB if name in mem else None
    for ref in ('naive', 'timm'):
        ok = 'gczoo' in mem and ref in mem and mem[ref] > 0
        row[f'mem_ratio_{ref}'] = mem['gczoo'] / mem[ref] if ok else None
    row['mem_method'] = mem_method
    row['max_abs_diff_naive'] = diffs.get('naive')
    row['max_abs_diff_timm'] = diffs.get('timm')
    judge_targets(row, _layer_targets(large_nl, 'timm' in times, backward), noise=row['time_noise'])
    return row


def format_layer_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The ratio table (time and memory of gczoo / naive and gczoo / timm; < 1 means gczoo is better)."""
    header = ['case', 'mode', 'rounds', 'gczoo ms', 'naive ms', 'timm ms', 't/naive', 't/timm', 't/self (A/A)',
              'gczoo MB', 'naive MB', 'timm MB', 'm/naive', 'm/timm', 'max|d| naive', 'max|d| timm', 'targets']
    lines = [header]
    for r in rows:
        lines.append([
            r['case'], r['mode'], str(r['rounds']),
            fmt(r['gczoo_ms'], '.1f'), fmt(r['naive_ms'], '.1f'), fmt(r['timm_ms'], '.1f'),
            fmt(r['time_ratio_naive']), fmt(r['time_ratio_timm']), fmt(r[f'time_ratio_{CONTROL}']),
            fmt(r['gczoo_mem_mb'], '.1f'), fmt(r['naive_mem_mb'], '.1f'), fmt(r['timm_mem_mb'], '.1f'),
            fmt(r['mem_ratio_naive'], '.3f'), fmt(r['mem_ratio_timm'], '.3f'),
            fmt(r['max_abs_diff_naive'], '.1e'), fmt(r['max_abs_diff_timm'], '.1e'), verdict(r),
        ])
    return markdown(lines)
