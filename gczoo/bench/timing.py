"""Interleaved timing and the statistics read from it: medians, quartiles, paired ratios, noise.

The machine a benchmark runs on may be shared and noisy, so every implementation of one case lives
in one process and is called interleaved: one call (or a short burst, ``min_time``) each per round,
in a new seeded random order every round (a fixed or rotated order keeps each function's predecessor
fixed, and with it the cache and allocator state it inherits, which on glibc biased ratios by up to
37% here), after warmup calls. A reported time is the median over rounds; a ratio is the median of
the per-round ratios ``A_r / B_r``, which cancels load changes slower than one round. Its quartiles
say how noisy it is, and an A/A control (a function against an identical copy of itself) measures
the noise floor directly: a time target counts as missed only if the median ratio is above its
bound, its first quartile too, and by more than that floor (``judge_targets``).

Why noise matters on CPU: with glibc's malloc a full-size output (100 MB at 8 x 256 x 56 x 56) is a
fresh mmap whose page faults and zeroing can cost more than a block's arithmetic, and how often that
happens depends on the allocator's and the kernel's state; the same kernels then run 1.5-2x apart
from one run to the next. Cheap cases therefore get more rounds (``budget``).
"""
import math
import random
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

__all__ = [
    'CLOCKS', 'check_clock', 'grouped_times', 'interleaved_times', 'quartiles', 'paired_ratio', 'noise_floor',
    'judge_targets',
]

# 'cpu' is the CPU time of the whole process (all threads): steadier on a shared machine, and equal to
# wall time with one thread on an idle one
CLOCKS: Dict[str, Callable[[], float]] = {'wall': time.perf_counter, 'cpu': time.process_time}


def check_clock(clock: str, device: torch.device) -> None:
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {list(CLOCKS)}, got {clock!r}')
    if clock == 'cpu' and device.type != 'cpu':
        raise ValueError(f"clock='cpu' measures host CPU time and only makes sense on the CPU, got device {device}")


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def grouped_times(
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
        min_warmup: int = 0,
) -> List[Dict[str, List[float]]]:
    """Seconds per call of the functions of every group, over ``rounds`` interleaved rounds.

    Every round measures each group in turn, and within a group each function once, in a new random
    (seeded) order. Members of a group are thus measured seconds apart, which is what makes their
    per-round ratios robust to load changes. A function may belong to several groups (then it is
    measured in each).

    Each function is called ``max(warmup, min_warmup)`` times first (at least once when ``min_time``
    is set: that call is timed). ``min_warmup`` is for calls whose first run is not per-call cost
    (``torch.compile``). A function faster than ``min_time`` is then called back to back enough times
    per measurement to last about ``min_time`` (the per-call time is the measurement / count): on a busy
    machine a single short call is mostly scheduler noise.

    ``budget``: seconds the timed rounds may take; cheap functions get more than ``rounds`` rounds (up
    to ``max_rounds``) when the warmup timings say a round fits the budget more often.
    """
    check_clock(clock, device)
    now = CLOCKS[clock]
    last_call = {name: 0.0 for name in fns}
    for _ in range(max(warmup, min_warmup, 1 if min_time > 0 else 0)):
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


def interleaved_times(fns: Dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device,
                      **kwargs: Any) -> Dict[str, List[float]]:
    """``grouped_times`` with all functions in one group."""
    return grouped_times(fns, [list(fns)], rounds, warmup, device, **kwargs)[0]


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3); a single value is all three."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return q1, q2, q3


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3) of the per-round ratios num[r] / den[r]."""
    return quartiles([a / b for a, b in zip(num, den)])


def noise_floor(row: Dict[str, Any], control_col: str) -> Optional[float]:
    """Noise floor of time ratios from an A/A control column: how far an identical copy's ratio strays
    from 1 (its median's distance, or half its interquartile range if larger)."""
    if row.get(control_col) is None:
        return None
    med, q1, q3 = row[control_col], row[f'{control_col}_q1'], row[f'{control_col}_q3']
    return max(abs(med - 1.0), (q3 - q1) / 2)


def judge_targets(row: Dict[str, Any], targets: Sequence[Tuple[str, str, float]],
                  noise: Optional[float] = None) -> None:
    """Fill ``targets``, ``targets_missed``, ``targets_within_noise`` and ``targets_met`` of a result row.

    ``targets``: (column, description, upper bound[, slack]). A memory ratio (no ``_q1`` column) is
    compared as is; one above its bound by at most ``slack`` (page and allocator granularity) is listed
    as within noise. A time ratio whose median exceeds its bound counts as missed only if its first quartile
    does too (at least 3 of 4 rounds slower) and, when an A/A ``noise`` floor is known, if it exceeds
    the bound by more than that floor; otherwise the miss is within this machine's round-to-round
    noise and listed as such.
    """
    missed, noisy = [], []
    for col, desc, bound, *slack in targets:
        value = row.get(col)
        if value is None or value <= bound:
            continue
        q1 = row.get(f'{col}_q1')
        if q1 is None:
            if slack and value - bound <= slack[0]:
                noisy.append(f'{desc} ({value:.3f}, within {slack[0]:.2f} of the bound)')
            else:
                missed.append(f'{desc} ({value:.3f})')
        elif q1 <= bound or (noise is not None and value - bound <= noise):
            noise_text = f', A/A noise {noise:.3f}' if noise is not None else ''
            noisy.append(f'{desc} (median {value:.3f}, q1 {q1:.3f}{noise_text})')
        else:
            missed.append(f'{desc} ({value:.3f})')
    row['targets'] = '; '.join(target[1] for target in targets)
    row['targets_missed'] = '; '.join(missed)
    row['targets_within_noise'] = '; '.join(noisy)
    row['targets_met'] = (not missed) if targets else None
