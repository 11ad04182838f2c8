"""The one runner every command goes through: a failure a person can fix becomes one line, exit 2.

``run(main_fn, argv, prog)`` calls a job's ``main(argv)``. A ``GczooError``, ``ValueError`` or
``OSError`` (a bad flag, file, image or checkpoint, a full disk, a read-only folder) becomes one line
on stderr naming what failed and what to do (``gczoo.errors.one_line``), and exit status 2; a missing
optional package names the extra to install; ``GCZOO_DEBUG=1`` re-raises with the traceback instead.

It is a foundation (it imports only ``gczoo.errors``), so every entry point -- the ``gczoo`` command
(``gczoo.cli``), ``python -m gczoo.train`` and each module's ``if __name__ == '__main__':`` block --
uses it without importing the CLI, and no job imports upwards.
"""
import os
import sys
from typing import Callable, List, NoReturn, Optional, Sequence

from gczoo.errors import GczooError, one_line

__all__ = ['DEBUG_ENV', 'EXIT_USER_ERROR', 'EXTRAS', 'MainFn', 'one_line', 'run', 'run_main']

DEBUG_ENV = 'GCZOO_DEBUG'
EXIT_USER_ERROR = 2

MainFn = Callable[[List[str]], Optional[int]]

# the optional extra (pyproject.toml) that brings each package a job may need
EXTRAS = {
    'torchmetrics': 'train', 'sklearn': 'train', 'yaml': 'train', 'matplotlib': 'train',
    'skimage': 'viz', 'onnx': 'onnx', 'onnxruntime': 'onnx', 'onnxscript': 'onnx', 'tqdm': 'train',
    'av': 'video',
}


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, '') not in ('', '0')


def run(main_fn: MainFn, argv: Sequence[str], prog: str) -> int:
    """``main_fn(argv)`` with gczoo's error handling (see the module docstring); returns the exit status."""
    try:
        return int(main_fn(list(argv)) or 0)
    except (GczooError, ValueError, OSError) as e:
        if _debug():
            raise
        print(f'{prog}: error: {one_line(e)}', file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as e:  # an optional extra that is not installed
        root = (e.name or '').split('.')[0]
        if root not in EXTRAS or _debug():
            raise
        print(f"{prog}: error: this command needs the package {root!r}, which is not installed: "
              f"pip install 'gczoo[{EXTRAS[root]}]'", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr, flush=True)
        return 130


def run_main(main_fn: MainFn, prog: str) -> NoReturn:
    """``sys.exit(run(main_fn, sys.argv[1:], prog))``: what a ``python -m`` entry point calls."""
    sys.exit(run(main_fn, sys.argv[1:], prog))
