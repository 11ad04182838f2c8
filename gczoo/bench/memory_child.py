"""The child process of ``gczoo.bench.memory.run_in_fresh_interpreter``, and nothing else.

    MALLOC_MMAP_THRESHOLD_=65536 python -m gczoo.bench.memory_child gczoo.bench.layers:measure_layer_memory < specs.json

A module of its own (not ``python -m gczoo.bench.memory``) so that the interpreter does not load
``gczoo.bench.memory`` twice (once through the package, once as ``__main__``).
"""
import sys

if __name__ == '__main__':
    from gczoo.bench.memory import probe_main
    from gczoo.runner import run
    sys.exit(run(probe_main, sys.argv[1:], 'gczoo.bench.memory_child'))
