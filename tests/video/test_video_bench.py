"""gczoo bench nl3d at a tiny size: it runs, checks the equivalence, and reports time and memory ratios."""
import json

import torch

from gczoo.bench.nonlocal3d import NaiveNonLocal3d, build_nl3d_impls, max_abs_diff
from gczoo.cli import main


def test_naive_and_gczoo_blocks_compute_the_same_function():
    assert max_abs_diff(16, (1, 16, 3, 8, 6)) < 1e-12
    impls = build_nl3d_impls(16)
    assert isinstance(impls['naive'], NaiveNonLocal3d)
    x = torch.randn(1, 16, 2, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(impls['gczoo'](x), impls['naive'](x), rtol=1e-5, atol=1e-5)


def test_bench_nl3d_runs_and_writes_its_files(tmp_path, capsys):
    code = main(['bench', 'nl3d', '--batch', '1', '--channels', '8', '--frames', '2', '--size', '6', '--repeats', '2',
                 '--warmup', '0', '--min-time', '0', '--memory', 'inprocess', '--device', 'cpu',
                 '--output-dir', str(tmp_path), '--threads', '1'])
    assert code == 0
    out = capsys.readouterr().out
    assert 'gczoo bench nl3d' in out and '72 x 18' in out
    row = json.loads((tmp_path / 'nl3d.json').read_text())['rows'][0]
    assert row['queries'] == 72 and row['keys'] == 18 and row['t_ratio'] > 0 and row['mem_ratio'] is not None


def test_bench_nl3d_too_small_is_one_line(tmp_path, capsys):
    code = main(['bench', 'nl3d', '--batch', '1', '--channels', '8', '--frames', '2', '--size', '1',
                 '--memory', 'off', '--output-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and 'sub_sample' in err and len(err.strip().splitlines()) == 1


def test_bench_nl3d_larger_than_memory_is_one_line(tmp_path, capsys):
    code = main(['bench', 'nl3d', '--batch', '1', '--channels', '8', '--frames', '4', '--size', '2000',
                 '--repeats', '1', '--warmup', '0', '--min-time', '0', '--memory', 'off', '--device', 'cpu',
                 '--output-dir', str(tmp_path), '--threads', '1'])
    err = capsys.readouterr().err
    assert code == 2 and 'GiB' in err and '--size' in err and len(err.strip().splitlines()) == 1
