"""Command-line pieces every job shares: a parser whose errors are one line, and checked value types.

argparse prints its usage block and exits; gczoo's commands instead raise ``UsageError`` so that
``gczoo.cli.run`` prints one line (``gczoo train: error: argument --lr: ...``) and exits 2 like every
other failure. The types reject what argparse would accept silently (``--lr nan``, ``--workers -1``,
``--smoothing 2``): 0 is never a stand-in for a default.
"""
import argparse
import math
from typing import Callable, NoReturn

from .errors import UsageError

__all__ = [
    'ArgumentParser', 'finite_float', 'positive_float', 'non_negative_float', 'fraction', 'positive_int',
    'non_negative_int', 'device_name',
]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises ``UsageError`` instead of printing usage and exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f'{message} (see {self.prog} --help)')


def _number(kind: Callable[[str], float], what: str, check: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}') from None
        if isinstance(value, float) and not math.isfinite(value) or not check(value):
            raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}')
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


finite_float = _number(float, 'a finite number', lambda v: True)
positive_float = _number(float, 'a finite number > 0', lambda v: v > 0)
non_negative_float = _number(float, 'a finite number >= 0', lambda v: v >= 0)
fraction = _number(float, 'a number in [0, 1)', lambda v: 0 <= v < 1)
positive_int = _number(int, 'an integer >= 1', lambda v: v >= 1)
non_negative_int = _number(int, 'an integer >= 0', lambda v: v >= 0)


def device_name(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``/``cuda:N`` only with a GPU, ``mps`` on Apple."""
    import torch
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f'{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has no CUDA GPU (torch {torch.__version__}); '
                                             f'use --device cpu')
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has {count} CUDA GPU(s)')
    elif device.type == 'mps' and not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f'{text!r}: MPS is not available on this machine; use --device cpu')
    return text
