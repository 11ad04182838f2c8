"""gczoo bench cchead at a tiny size: it runs, checks the float64 equivalence with mmcv's einsum
formulation, and reports time and memory ratios (no timed assertions)."""
import json


from gczoo.bench.cchead import EinsumCrissCross, build_cc_impls, cc_max_abs_diff
from gczoo.cli import main


def test_mmcv_formulation_is_the_same_function():
    assert cc_max_abs_diff(16) < 1e-12
    impls = build_cc_impls(16)
    assert isinstance(impls['mmcv'], EinsumCrissCross) and float(impls['gczoo'].gamma.detach()) == 0.5


def test_bench_cchead_runs_and_writes_its_files(tmp_path, capsys):
    code = main(['bench', 'cchead', '--batch', '1', '--channels', '16', '--height', '7', '--width', '5', '--repeats',
                 '2', '--min-time', '0', '--warmup', '0', '--memory', 'inprocess', '--output-dir', str(tmp_path),
                 '--no-progress'])
    out = capsys.readouterr().out
    assert code == 0
    assert 'gczoo bench cchead' in out and '1x16x7x5' in out
    rows = json.loads((tmp_path / 'cchead.json').read_text())
    rows = rows['rows'] if isinstance(rows, dict) else rows
    assert rows[0]['t_ratio'] > 0 and rows[0]['mem_ratio'] is not None
