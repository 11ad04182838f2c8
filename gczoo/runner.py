"""The one runner every command goes through: a failure a person can fix becomes one line, exit 2.

``run(main_fn, argv, prog)`` calls a job's ``main(argv)``. A ``GczooError``, ``ValueError`` or
``OSError`` (a bad flag, file, image or checkpoint, a full disk, a read-only folder) becomes one line
on stderr naming what failed and what to do (``gczoo.errors.one_line``), and exit status 2; a missing
optional package names the extra to install; running out of memory (CPU or CUDA) is one line saying
to use a smaller batch, input or model; a closed stdout (``gczoo list | head -1``) ends quietly with
status 141, as a shell command does; ``GCZOO_DEBUG=1`` re-raises with the traceback instead.

It is a foundation (it imports only ``gczoo.errors``), so every entry point -- the ``gczoo`` command
(``gczoo.cli``), ``python -m gczoo.train`` and each module's ``if __name__ == '__main__':`` block --
uses it without importing the CLI, and no job imports upwards.
"""
import contextlib
import os
import sys
from typing import Callable, List, NoReturn, Optional, Sequence

from gczoo.errors import GczooError, one_line

__all__ = ['DEBUG_ENV', 'EXIT_BROKEN_PIPE', 'EXIT_USER_ERROR', 'EXTRAS', 'MainFn', 'one_line', 'run', 'run_main']

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


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `gczoo list | head -1`


def _stdout_closed() -> bool:
    """Whether stdout's reader went away (then stdout is pointed at os.devnull so exit does not fail again)."""
    try:
        import select
        poll = select.poll()  # a pipe whose reader closed polls as POLLERR
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file
        return False
    if closed:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return closed


def _out_of_memory(error: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA), its CPU allocator's failure, or Python's ``MemoryError``."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {'MemoryError', 'OutOfMemoryError'}) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error))


def _one_line_error(error: BaseException, prog: str) -> int:
    if _debug():
        raise error
    print(f'{prog}: error: {one_line(error)}', file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run(main_fn: MainFn, argv: Sequence[str], prog: str) -> int:
    """``main_fn(argv)`` with gczoo's error handling (see the module docstring); returns the exit status."""
    try:
        return int(main_fn(list(argv)) or 0)
    except BrokenPipeError as e:  # the reader of stdout left (`| head`): quiet, as a shell command is
        if not _debug() and _stdout_closed():
            return EXIT_BROKEN_PIPE
        return _one_line_error(e, prog)
    except (GczooError, ValueError, OSError) as e:
        return _one_line_error(e, prog)
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
    except (MemoryError, RuntimeError) as e:  # too large an input, batch or model for this machine
        if not _out_of_memory(e) or _debug():
            raise
        print(f'{prog}: error: out of memory ({one_line(e)[:200]}); use a smaller batch size, input size or '
              f'model, or a machine with more memory', file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def run_main(main_fn: MainFn, prog: str) -> NoReturn:
    """``sys.exit(run(main_fn, sys.argv[1:], prog))``: what a ``python -m`` entry point calls."""
    sys.exit(run(main_fn, sys.argv[1:], prog))
