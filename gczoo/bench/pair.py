"""One gczoo block against a reference formulation of the same function, at one input size: the
measurement ``gczoo bench cchead`` and ``gczoo bench nl3d`` share.

A *builder* (``'gczoo.bench.MODULE:FUNCTION'``, called as ``builder(channels, seed)``) returns
``{'gczoo': block, REFERENCE: baseline}`` sharing weights; the caller has checked in float64 that they
compute the same function. Here both are timed on one input (interleaved rounds, medians, the paired
ratio gczoo / reference) and the peak extra memory of one forward call of each is measured, on the CPU
by default in a fresh interpreter (``gczoo.bench.memory``: the only re-execution the benchmarks do,
which is why the builder is named by a string).
"""
import importlib
from typing import Any, Callable, Dict, Sequence

import torch
import torch.nn as nn

from gczoo.args import non_negative_float, non_negative_int, positive_int

from .memory import MEMORY_MODES, peak_extra_memory, run_in_fresh_interpreter
from .timing import interleaved_times, paired_ratio

__all__ = ['forward_call', 'measure_pair_memory', 'time_and_memory', 'add_pair_flags']


def forward_call(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One no-grad forward call of ``module`` on ``x`` (what is timed and measured)."""
    def fn() -> None:
        with torch.no_grad():
            module(x)
    return fn


def _build(builder: str, channels: int, seed: int) -> Dict[str, nn.Module]:
    module_name, _, func_name = builder.partition(':')
    return getattr(importlib.import_module(module_name), func_name)(channels, seed)


def measure_pair_memory(specs: Sequence[Dict[str, Any]], on_result: Callable[[Dict[str, Any]], None]) -> None:
    """Peak extra memory of one forward call per spec (the target of ``memory.run_in_fresh_interpreter``)."""
    for spec in specs:
        torch.set_num_threads(spec['threads'])
        device = torch.device(spec['device'])
        module = _build(spec['builder'], spec['channels'], spec['seed'])[spec['impl']].to(device)
        forward_call(module, torch.randn(*spec['warmup_shape'], device=device))()  # lazy init is not per-call cost
        x = torch.randn(*spec['shape'], device=device)
        extra, method = peak_extra_memory(forward_call(module, x), device)
        del module, x
        on_result(dict(spec, peak_extra_bytes=int(extra), method=method))


def time_and_memory(builder: str, reference: str, shape: Sequence[int], warmup_shape: Sequence[int], *, rounds: int,
                    warmup: int, min_time: float, memory: str, device: str, clock: str, seed: int = 0) -> Dict[str, Any]:
    """``t_gczoo_ms``, ``t_<reference>_ms``, ``t_ratio`` (with ``_q1``/``_q3``), ``mem_gczoo_bytes``,
    ``mem_<reference>_bytes``, ``mem_ratio`` and ``mem_method`` (``memory='off'``: no memory figures)."""
    dev, channels = torch.device(device), int(shape[1])
    impls = {k: v.to(dev) for k, v in _build(builder, channels, seed).items()}
    x = torch.randn(*shape, device=dev)
    times = interleaved_times({k: forward_call(m, x) for k, m in impls.items()}, rounds, warmup, dev,
                              min_time=min_time, clock=clock)
    del impls, x
    q1, ratio, q3 = paired_ratio(times['gczoo'], times[reference])
    row: Dict[str, Any] = {f't_{k}_ms': 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}
    row.update(t_ratio=ratio, t_ratio_q1=q1, t_ratio_q3=q3, mem_gczoo_bytes=None, **{f'mem_{reference}_bytes': None},
               mem_ratio=None, mem_method=None)
    if memory == 'off':
        return row
    specs = [dict(builder=builder, impl=k, channels=channels, shape=list(shape), warmup_shape=list(warmup_shape),
                  device=device, threads=torch.get_num_threads(), seed=seed) for k in ('gczoo', reference)]
    found: Dict[str, Dict[str, Any]] = {}
    if memory == 'subprocess' and dev.type == 'cpu':
        run_in_fresh_interpreter('gczoo.bench.pair:measure_pair_memory', specs, lambda r: found.__setitem__(r['impl'], r))
    else:
        measure_pair_memory(specs, lambda r: found.__setitem__(r['impl'], r))
    row.update(mem_gczoo_bytes=found['gczoo']['peak_extra_bytes'],
               **{f'mem_{reference}_bytes': found[reference]['peak_extra_bytes']}, mem_method=found['gczoo']['method'])
    row['mem_ratio'] = row['mem_gczoo_bytes'] / max(1, row[f'mem_{reference}_bytes'])
    return row


def add_pair_flags(parser: Any) -> None:
    """The measurement's own flags, the same in every subcommand built on it."""
    parser.add_argument('--repeats', type=positive_int, default=5, help='timed rounds')
    parser.add_argument('--min-time', type=non_negative_float, default=0.2,
                        help='seconds each timed measurement should last: faster calls are repeated back to back')
    parser.add_argument('--memory', choices=MEMORY_MODES, default='subprocess',
                        help="peak extra memory: 'subprocess' (CPU: a fresh interpreter), 'inprocess' or 'off'")
    parser.add_argument('--seed', type=non_negative_int, default=0)
