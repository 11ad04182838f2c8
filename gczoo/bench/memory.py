"""Peak extra memory of one call, and the fresh interpreter the CPU figures are measured in.

CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the call, after
``reset_peak_memory_stats``, with ``synchronize``.

CPU: the kernel's resident high-water mark. Before the call ``malloc_trim(0)`` hands malloc's free
pages back to the OS, the high-water mark is reset (``/proc/self/clear_refs`` <- 5), and the figure
is ``VmHWM`` after the call minus ``VmRSS`` before it. This counts everything the call touches
(tensors, its output, oneDNN / BLAS scratch), not only torch's allocator, at 4 KiB granularity;
without a writable ``clear_refs`` it falls back to ``ru_maxrss`` (the method is reported).
``tracemalloc`` sees none of torch's allocations, and the profiler's per-op memory columns net the
allocations and frees inside an op, hiding transient peaks.

The fresh interpreter (``run_in_fresh_interpreter``): glibc keeps freed blocks below its (adaptive)
mmap threshold in its heap, so in a process that has run the timings the resident set does not
follow live memory. The CPU measurements therefore run, by default, in one new Python process::

    MALLOC_MMAP_THRESHOLD_=65536 python -m gczoo.bench.memory_child gczoo.bench.layers:measure_layer_memory

(every block >= 64 KiB is then an mmap, unmapped on free). It reads a JSON list of measurement specs
on stdin, calls the named function (``measure(specs, on_result)``, which must live in ``gczoo.bench``)
and writes one JSON result per line on stdout. This is the only re-execution the benchmarks do; the
``--memory`` flag of ``gczoo bench layers`` chooses it (``subprocess``), this process (``inprocess``)
or no memory figures (``off``).
"""
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from gczoo.errors import GczooError

__all__ = ['MALLOC_ENV', 'MEMORY_MODES', 'peak_extra_memory', 'release_free_memory', 'run_in_fresh_interpreter',
           'probe_main']

MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536'}
MEMORY_MODES = ('subprocess', 'inprocess', 'off')
_PACKAGE = 'gczoo.bench.'  # the child runs measurement functions of this package only

Measure = Callable[[Sequence[Dict[str, Any]], Callable[[Dict[str, Any]], None]], None]


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


def release_free_memory() -> None:
    """Collect garbage and hand malloc's free pages back to the OS (glibc only), so RSS is the live set."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may include freed-but-resident pages
        pass


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> Tuple[int, str]:
    """Peak bytes allocated during ``fn()`` beyond what was live before it, and how that was measured
    (``'cuda_max_memory_allocated'``, ``'rss_hwm'`` or ``'ru_maxrss'``)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, 'cuda_max_memory_allocated'
    release_free_memory()
    if _reset_peak_rss():
        base = _proc_status()['VmRSS']
        fn()
        return _proc_status()['VmHWM'] - base, 'rss_hwm'
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 'ru_maxrss'


def _resolve(target: str) -> Measure:
    module_name, _, func_name = target.partition(':')
    if not module_name.startswith(_PACKAGE) or not func_name:
        raise ValueError(f"the memory probe runs 'gczoo.bench.MODULE:FUNCTION' targets only, got {target!r}")
    return getattr(importlib.import_module(module_name), func_name)


def run_in_fresh_interpreter(target: str, specs: Sequence[Dict[str, Any]],
                             on_result: Callable[[Dict[str, Any]], None]) -> None:
    """Run ``target(specs, on_result)`` in one new interpreter with ``MALLOC_ENV`` (see the module docstring).

    ``target`` is ``'gczoo.bench.MODULE:FUNCTION'``; ``on_result`` gets each result as the child emits it.
    """
    _resolve(target)  # fail here, not in the child
    cmd = [sys.executable, '-m', 'gczoo.bench.memory_child', target]
    env = dict(os.environ, **MALLOC_ENV)
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
            lines = [line for line in err.read().splitlines() if line.strip()]
            raise GczooError(f'the memory probe ({" ".join(cmd[1:])}) failed with exit code {code}: '
                             f'{lines[-1] if lines else "no message"}; rerun with --memory inprocess or --memory off')


def probe_main(argv: Optional[List[str]] = None) -> int:
    """The child side (``python -m gczoo.bench.memory_child TARGET``): specs (a JSON list) on stdin."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        raise ValueError('usage: python -m gczoo.bench.memory_child gczoo.bench.MODULE:FUNCTION < specs.json')
    measure = _resolve(argv[0])
    specs = json.loads(sys.stdin.read())

    def emit(result: Dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)
    measure(specs, emit)
    return 0
