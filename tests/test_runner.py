"""``gczoo.runner``: the one runner every entry point goes through (a foundation: no CLI import)."""
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
