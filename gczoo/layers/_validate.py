"""Argument and input checks shared by the attention blocks.

Errors are raised where the bad value enters and always name the argument, what was expected and
what was given. ``check_input`` is a TorchScript-compatible free function so ``forward`` methods
can call it and stay scriptable.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, List, Optional, Sequence

import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ['as_tuple', 'check_input', 'check_choice', 'check_positive_int', 'query_index', 'resolve_rd_channels']


def check_input(x: torch.Tensor, channels: int, ndim: int, block: str) -> None:
    """Raise ``ValueError`` unless ``x`` has ``ndim`` dimensions, ``channels`` channels (dim 1) and no
    spatial size 0, and ``TypeError`` unless it is floating-point (integer images fail inside a conv). A batch of 0 passes (the blocks return an empty batch, as convolutions do).

    Skipped while torch.fx traces symbolically (the shapes are proxies then, and FX feature
    extraction must be able to trace through every block). Under ``torch.jit.trace`` (the
    TorchScript-based ONNX exporter) the example input is checked without TracerWarnings: the
    checks read its sizes and record nothing in the graph. Under ``torch.export`` the size-0 check
    holds for every size the export allows (it specialises sizes 0 and 1), so it adds no constraint.
    """
    if not torch.jit.is_scripting():
        if is_fx_symbolic_tracing():
            return
        if torch.jit.is_tracing():
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                _check_input(x, channels, ndim, block)
            return
    _check_input(x, channels, ndim, block)


def _check_input(x: torch.Tensor, channels: int, ndim: int, block: str) -> None:
    if x.dim() != ndim:
        raise ValueError(
            f'{block}: input x must be a {ndim}-D tensor (N, C, ...), got {x.dim()}-D with shape {list(x.shape)}')
    if x.shape[1] != channels:
        raise ValueError(f'{block}: input x must have {channels} channels (dim 1), got {x.shape[1]}')
    if not x.is_floating_point():
        raise TypeError(f'{block}: input x must be a floating-point tensor, got {x.dtype} (convert it with .float())')
    for dim in range(2, ndim):
        if x.shape[dim] == 0:
            raise ValueError(
                f'{block}: input x must have non-empty spatial dimensions (dims 2..{ndim - 1}), '
                f'got shape {list(x.shape)}')


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}')


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (bools rejected), else raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__} ({value!r})')
    if value < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')
    return value


def resolve_rd_channels(
        channels: int,
        rd_ratio: Optional[float],
        rd_channels: Optional[int] = None,
        ratio_name: str = 'rd_ratio',
) -> int:
    """Width of a reduction bottleneck: ``rd_channels`` if given, else ``int(channels * rd_ratio)``.

    Unlike the reference implementations (GCNet #48) a bottleneck of 0 channels is refused here,
    at construction, instead of failing deep inside a convolution at the first forward.
    """
    check_positive_int('channels', channels)
    if rd_channels is not None:
        return check_positive_int('rd_channels', rd_channels)
    if rd_ratio is None or isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)):
        raise TypeError(f'{ratio_name} must be a positive number, got {rd_ratio!r}')
    if rd_ratio <= 0:
        raise ValueError(f'{ratio_name} must be > 0, got {rd_ratio}')
    rd = int(channels * rd_ratio)
    if rd < 1:
        raise ValueError(
            f'{ratio_name}={rd_ratio} leaves {rd} channels for channels={channels}: '
            f'need channels * {ratio_name} >= 1 (or pass rd_channels)')
    return rd


def as_tuple(name: str, value: object, choices: Sequence[str]) -> tuple:
    """Normalise a str or an iterable of str to a non-empty tuple of valid, unique choices."""
    items: Iterable = (value,) if isinstance(value, str) else value  # type: ignore[assignment]
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f'{name} must be a str or a sequence of str, got {type(value).__name__}') from None
    if not items:
        raise ValueError(f'{name} must not be empty; choose from {list(choices)}')
    for item in items:
        check_choice(name, item, choices)
    if len(set(items)) != len(items):
        raise ValueError(f'{name} has duplicates: {list(items)}')
    return items


def query_index(queries: Optional[torch.Tensor], spatial: Sequence[int], device: torch.device) -> torch.Tensor:
    """Validate ``queries`` (indices into the row-major flattened positions of a map of shape
    ``spatial``) and return them as a LongTensor on ``device``; ``None`` is the centre position."""
    sizes: List[int] = [int(s) for s in spatial]
    num_pos = math.prod(sizes)
    if queries is None:
        centre = 0
        for size in sizes:
            centre = centre * size + size // 2
        return torch.tensor([centre], dtype=torch.long, device=device)
    if not isinstance(queries, torch.Tensor) or queries.is_floating_point() or queries.is_complex() \
            or queries.dtype == torch.bool:
        raise TypeError(f'queries must be a 1-D integer tensor of flat position indices, got {queries!r}')
    if queries.dim() != 1:
        raise ValueError(f'queries must be a 1-D tensor of flat position indices, got shape {list(queries.shape)}')
    if queries.numel() == 0:
        raise ValueError('queries must hold at least one position, got an empty tensor')
    if int(queries.min()) < 0 or int(queries.max()) >= num_pos:
        raise ValueError(f'queries must lie in [0, {num_pos}) for spatial size {sizes}, '
                         f'got values in [{int(queries.min())}, {int(queries.max())}]')
    return queries.to(device=device, dtype=torch.long)
