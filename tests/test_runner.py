"""``gczoo.runner``: the one runner every entry point goes through (a foundation: no CLI import)."""
import os
import subprocess
import sys

import pytest

from gczoo.errors import CheckpointError
from gczoo.runner import DEBUG_ENV, EXIT_USER_ERROR, run


def test_user_errors_are_one_line_exit_2(capsys):
    def bad(argv):
        raise CheckpointError('the file x.pth is truncated\nor corrupt: re-download it')
    assert run(bad, [], 'gczoo thing') == EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err == 'gczoo thing: error: the file x.pth is truncated or corrupt: re-download it\n'
    assert run(lambda argv: len(argv), ['a', 'b'], 'p') == 2  # main's return value is the exit status


def test_a_missing_extra_names_its_pip_command_and_debug_reraises(capsys, monkeypatch):
    def needs_onnx(argv):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name='onnxruntime')
    assert run(needs_onnx, [], 'gczoo export') == 2
    assert "pip install 'gczoo[onnx]'" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):  # not an extra of gczoo's: a real bug, with its traceback
        run(lambda argv: __import__('no_such_module_xyz'), [], 'p')
    monkeypatch.setenv(DEBUG_ENV, '1')
    with pytest.raises(CheckpointError):
        run(lambda argv: (_ for _ in ()).throw(CheckpointError('x')), [], 'p')


def test_interrupt_is_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    assert run(interrupted, [], 'gczoo train') == 130
    assert capsys.readouterr().err == 'gczoo train: interrupted\n'


def test_python_m_entry_points_use_it():
    """``python -m gczoo.complexity`` (an ``if __name__ == "__main__":`` block) fails on a bad flag in one line."""
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-m', 'gczoo.complexity', '--no-such-flag'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
    assert proc.stderr.startswith('gczoo complexity: error: unrecognized arguments: --no-such-flag')


# ---- hostile-user pass (issue 20 part B) ------------------------------------------------------

def test_out_of_memory_is_one_line_exit_2(capsys):
    import torch

    def cpu_oom(argv):  # what torch's CPU allocator raises for too large a batch or image
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    def cuda_oom(argv):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 80.00 GiB.\nGPU 0 has ...')
    for fn in (cpu_oom, cuda_oom, lambda argv: (_ for _ in ()).throw(MemoryError())):
        assert run(fn, [], 'gczoo eval') == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('gczoo eval: error: out of memory (')
        assert 'smaller batch size, input size or model' in err
    with pytest.raises(RuntimeError, match='a bug'):  # any other RuntimeError keeps its traceback
        run(lambda argv: (_ for _ in ()).throw(RuntimeError('a bug')), [], 'p')


def test_a_closed_stdout_ends_quietly_like_a_shell_command():
    code = ('import sys, types\npkg = types.ModuleType("gczoo")\npkg.__path__ = ["gczoo"]\n'
            'sys.modules["gczoo"] = pkg\n'  # gczoo.runner without importing torch: the test takes 0.1 s
            'from gczoo.runner import run\n'
            'def main(argv):\n    for i in range(100000):\n        print("resnet50_gc", i)\n'
            'sys.exit(run(main, [], "gczoo list"))\n')
    proc = subprocess.run(f'{sys.executable} -c \'{code}\' | head -1; exit ${{PIPESTATUS[0]}}', shell=True,
                          capture_output=True, text=True, timeout=120, executable='/bin/bash',
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # the repo root
                          env={**os.environ, 'PYTHONPATH': '.'})
    assert proc.stdout == 'resnet50_gc 0\n' and proc.stderr == '', proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell command's


def test_a_broken_pipe_that_is_not_stdout_is_a_one_line_error(capsys):
    def other_pipe(argv):
        raise BrokenPipeError(32, 'Broken pipe')
    assert run(other_pipe, [], 'p') == 2
    assert capsys.readouterr().err == 'p: error: Broken pipe\n'
