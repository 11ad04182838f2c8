"""scripts/gpu_check.sh without a GPU (issue 21): the CUDA tests are collected and skip with the reason,
one line says no GPU is here, exit 0; the README's GPU section says what was (not) measured."""
import os
import subprocess
import sys

import pytest
import torch

from _train_utils import REPO, subprocess_env

pytestmark = pytest.mark.slow


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU: scripts/gpu_check.sh runs for real')
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    env = subprocess_env(PYTHON=sys.executable)
    env.pop('GCZOO_CUDA_TESTS_ON', None)
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_check.sh'), str(tmp_path / 'out')], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith('gpu_check: no CUDA GPU on this machine')
    assert ' skipped' in proc.stdout and 'failed' not in proc.stdout and 'error' not in proc.stdout.lower()
    assert 'needs a CUDA GPU' in proc.stdout  # -rs: each skip with its reason
    assert (tmp_path / 'out' / 'cuda_tests.xml').is_file()
    assert not (tmp_path / 'out' / 'bench' / 'models.csv').exists()


def test_gpu_check_refuses_an_unwritable_output_folder(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_check.sh'), str(blocker / 'out')], capture_output=True,
                          text=True, timeout=60, env=subprocess_env(PYTHON=sys.executable), cwd=str(REPO))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f'gpu_check: cannot create the output folder {blocker / "out"}; '
                                                f'pass another one']


def test_readme_states_what_ran_on_a_gpu():
    text = (REPO / 'README.md').read_text()
    assert 'scripts/gpu_check.sh' in text
    assert '### On a GPU: `scripts/gpu_check.sh`' in text


def _python_without_torch(folder):
    """An interpreter that runs, but without site-packages: no torch, timm or pytest."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = folder / 'python'
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -E "$@"\n')
    fake.chmod(0o755)
    return fake


def _gpu_check(args, cwd, python):
    return subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_check.sh'), *args], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(PYTHON=str(python)), cwd=str(cwd))


def test_gpu_check_refuses_a_python_without_torch_in_one_line(tmp_path):
    fake = _python_without_torch(tmp_path / 'bin')
    proc = _gpu_check([str(tmp_path / 'out')], REPO, fake)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines() == [  # no traceback before it
        f"gpu_check: python ({fake}) cannot import torch, timm, pytest; activate the environment gczoo is installed "
        f"in (pip install -e '.[test]'), or set PYTHON="]
    proc = _gpu_check([str(tmp_path / 'out')], REPO, tmp_path / 'no' / 'python')
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f'gpu_check: cannot run python ({tmp_path / "no" / "python"}); set PYTHON=')


def test_gpu_check_takes_out_and_python_from_the_callers_folder(tmp_path):
    _python_without_torch(tmp_path / 'bin')  # stops the script right after it made OUT
    proc = _gpu_check(['rel_out'], tmp_path, 'bin/python')  # both relative to cwd, which is not the repo
    assert proc.returncode == 2 and f'python ({tmp_path / "bin" / "python"}) cannot import torch' in proc.stderr
    assert (tmp_path / 'rel_out' / 'bench').is_dir() and not (REPO / 'rel_out').exists()


def test_gpu_check_says_when_the_cuda_tests_failed(tmp_path):
    fake = tmp_path / 'python'  # the real interpreter, whose `-m pytest` fails as a failed test run does
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pytest ]; then echo "1 failed"; exit 1; fi\n'
                    f'exec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    proc = _gpu_check([str(tmp_path / 'out')], REPO, fake)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f'gpu_check: the CUDA tests failed (pytest exit status 1; the failures are above and in '
        f'{tmp_path / "out" / "cuda_tests.xml"}); the benchmarks did not run')


@pytest.mark.skipif(not os.path.exists('/bin/sh') or 'bash' in os.path.realpath('/bin/sh'), reason='/bin/sh is bash')
def test_gpu_check_under_sh_says_to_use_bash(tmp_path):
    proc = subprocess.run(['/bin/sh', str(REPO / 'scripts' / 'gpu_check.sh'), str(tmp_path / 'out')],
                          capture_output=True, text=True, timeout=60, env=subprocess_env(PYTHON=sys.executable))
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines() == ['gpu_check: run it with bash (scripts/gpu_check.sh or bash '
                                                'scripts/gpu_check.sh), not sh']


def test_gpu_check_takes_no_flags_and_one_folder(tmp_path):
    usage = 'usage: scripts/gpu_check.sh [OUT]   (OUT: the results folder, default output/gpu_check in the repository)'
    proc = _gpu_check(['--help'], tmp_path, sys.executable)
    assert proc.returncode == 0 and proc.stdout.strip() == usage
    for args, message in ((['--out', 'x'], 'unknown option --out'), (['a', 'b'], '2 arguments given')):
        proc = _gpu_check(args, tmp_path, sys.executable)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f'gpu_check: {message} (it takes one argument, the results folder); {usage}'
            if args[0].startswith('-') else f'gpu_check: {message}, it takes at most one (the results folder); {usage}']
    assert list(tmp_path.iterdir()) == []  # no folder named --help, --out or a was made


def test_gpu_check_refuses_a_cpu_dry_run_on_a_gpu_and_unknown_values(tmp_path):
    gpu = tmp_path / 'python'  # the real interpreter, except that it reports a CUDA GPU
    gpu.write_text(f'#!/bin/sh\ncase "$2" in *cuda.is_available*) echo 1; exit 0;; esac\nexec "{sys.executable}" "$@"\n')
    gpu.chmod(0o755)
    for python, value, message in (
            (gpu, 'cpu', 'GCZOO_CUDA_TESTS_ON=cpu would run the CUDA tests on the CPU of a machine that has a GPU'),
            (sys.executable, 'CPU', 'GCZOO_CUDA_TESTS_ON=CPU is not understood: its one value is cpu')):
        proc = subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_check.sh'), str(tmp_path / 'out')],
                              capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                              env=subprocess_env(PYTHON=str(python), GCZOO_CUDA_TESTS_ON=value))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
        assert 'CUDA tests (pytest' not in proc.stdout  # stopped before the tests


def test_gpu_check_through_a_symlink_finds_its_repository(tmp_path):
    link = tmp_path / 'bin' / 'gpu_check'
    _python_without_torch(tmp_path / 'bin')  # stops right after the checks that need the repository
    link.symlink_to(REPO / 'scripts' / 'gpu_check.sh')
    proc = subprocess.run(['bash', str(link), 'out'], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env=subprocess_env(PYTHON=str(tmp_path / 'bin' / 'python')))
    assert proc.returncode == 2 and 'cannot import torch' in proc.stderr and 'tests/cuda' not in proc.stderr
    assert (tmp_path / 'out' / 'bench').is_dir()
    copy = tmp_path / 'elsewhere' / 'scripts' / 'gpu_check.sh'  # a copy outside any checkout
    copy.parent.mkdir(parents=True)
    copy.write_text((REPO / 'scripts' / 'gpu_check.sh').read_text())
    proc = subprocess.run(['bash', str(copy)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env=subprocess_env(PYTHON=sys.executable))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'gpu_check: {tmp_path.resolve() / "elsewhere"} has no tests/cuda; run the gpu_check.sh of a gczoo checkout']
