"""Smoke tests of gczoo.bench: tiny sizes, one round, no timed assertions.

They check that the naive baselines and timm counterparts compute the same function as gczoo's
blocks (otherwise the benchmark compares different things), that the CSV/JSON have their columns
and that every ratio is computed.
"""
import csv
import json
import math

import pytest
import torch
import torch.nn as nn

from gczoo.bench import LAYER_BLOCKS, bench_layers, bench_models, build_layer_impls, format_model_table, main
from gczoo.bench._naive import NaiveNonLocal2d
from gczoo.bench.layers import max_abs_diffs as _max_abs_diffs
from gczoo.bench.models import nearest_timm_model as _nearest_timm, timm_gc_resnet as _timm_gc_resnet
from gczoo.bench.timing import judge_targets as _judge
from gczoo.cli import run_command
from gczoo.complexity import count_complexity
from gczoo.layers import ContextBlock, NonLocal2d
from gczoo.models import ZOO_MODELS

LAYER_COLUMNS = {
    'case', 'block', 'batch', 'channels', 'height', 'width', 'mode', 'device', 'threads', 'clock', 'rounds',
    'timm_counterpart',
    'gczoo_ms', 'naive_ms', 'timm_ms', 'time_ratio_naive', 'time_ratio_naive_q1', 'time_ratio_naive_q3',
    'time_ratio_timm', 'time_ratio_timm_q1', 'time_ratio_timm_q3', 'time_ratio_control', 'time_ratio_control_q1',
    'time_ratio_control_q3', 'time_noise', 'gczoo_mem_mb', 'naive_mem_mb', 'timm_mem_mb',
    'mem_ratio_naive', 'mem_ratio_timm', 'mem_method', 'max_abs_diff_naive', 'max_abs_diff_timm', 'targets',
    'targets_missed', 'targets_within_noise', 'targets_met',
}
MODEL_COLUMNS = {
    'model', 'base', 'nearest', 'batch', 'img_size', 'device', 'amp', 'channels_last', 'threads', 'clock', 'steps',
    'params_m', 'gmacs',
    'base_gmacs', 'gmac_ratio', 'target_time_ratio', 'nearest_gmac_ratio', 'infer_time_ratio_base',
    'infer_time_ratio_nearest', 'train_time_ratio_base', 'train_time_ratio_nearest', 'infer_img_s', 'train_img_s',
    'base_infer_img_s', 'nearest_infer_img_s', 'base_train_img_s', 'nearest_train_img_s',
    'nearest_infer_time_ratio_base', 'nearest_train_time_ratio_base', 'targets',
    'targets_missed', 'targets_within_noise', 'targets_met',
}


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _positive_float(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


@pytest.mark.parametrize('block', LAYER_BLOCKS)
def test_baselines_compute_the_blocks_function(block):
    impls = build_layer_impls(block, 32, seed=1)
    assert set(impls) >= {'gczoo', 'naive'}
    diffs = _max_abs_diffs(impls, 32, seed=1)
    for name, diff in diffs.items():
        assert diff < 1e-9, f'{block}: {name} differs from gczoo by {diff}'
    # the randomised weights move the blocks away from their identity init, so the check means something
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        assert (impls['gczoo'].double().eval()(x) - x).abs().max() > 1e-3


def test_timm_counterparts_exist_where_timm_has_one():
    for block in LAYER_BLOCKS:
        assert ('timm' in build_layer_impls(block, 32)) == (block in ('nl', 'se', 'gc', 'cbam'))


@pytest.mark.slow  # ~7 s
def test_layers_smoke(tmp_path):
    code = main([
        'layers', '--blocks', 'nl', 'se', 'cc', '--batch', '2', '--channels', '16', '--size', '8',
        '--nl-large-batch', '1', '--nl-large-size', '32', '--repeats', '1', '--large-repeats', '1', '--warmup', '0',
        '--min-time', '0', '--budget', '0', '--memory', 'inprocess', '--device', 'cpu', '--output-dir', str(tmp_path),
        '--no-progress',
    ])
    assert code == 0
    rows = _read_csv(tmp_path / 'layers.csv')
    assert set(rows[0]) == LAYER_COLUMNS
    assert [r['case'] for r in rows] == ['nl@8x8', 'se@8x8', 'cc@8x8', 'nl@32x32']
    for r in rows:
        _positive_float(r['time_ratio_naive'])
        _positive_float(r['time_ratio_control'])
        assert float(r['time_noise']) >= 0
        _positive_float(r['gczoo_ms'])
        assert float(r['max_abs_diff_naive']) < 1e-9
        assert float(r['gczoo_mem_mb']) >= 0 and float(r['naive_mem_mb']) >= 0
        if r['block'] in ('nl', 'se'):
            _positive_float(r['time_ratio_timm'])
            assert r['targets_met'] in ('True', 'False')
        else:
            assert r['time_ratio_timm'] == '' and r['timm_ms'] == ''
    large = rows[-1]
    # 1 x 16 x 32 x 32: the naive block holds two 1024 x 1024 float32 matrices (8 MB), gczoo none
    assert large['mem_method'] in ('rss_hwm', 'ru_maxrss')
    assert float(large['naive_mem_mb']) > 4
    assert 0 < float(large['mem_ratio_naive']) < 0.5
    assert 'mem vs naive <= 0.15' in large['targets']
    payload = json.loads((tmp_path / 'layers.json').read_text())
    assert len(payload['rows']) == 4 and payload['environment']['device'] == 'cpu'


def test_layers_bad_input():
    with pytest.raises(ValueError, match='blocks'):
        bench_layers(blocks=['nope'])
    with pytest.raises(ValueError, match='memory'):
        bench_layers(blocks=['se'], memory='sometimes')
    with pytest.raises(ValueError, match='block'):
        build_layer_impls('eca', 16)
    # bad flags end as one line and exit 2 through gczoo's runner (argparse's SystemExit before)
    assert run_command('bench', ['layers', '--blocks', 'nope']) == 2
    assert run_command('bench', ['layers', '--repeats', '0']) == 2
    assert run_command('bench', ['layers', '--budget', '-1']) == 2


def test_models_smoke(tmp_path):
    code = main([
        'models', '--models', 'resnet18_gc', '--batch', '2', '--img-size', '32', '--steps', '1', '--warmup', '0',
        '--device', 'cpu', '--clock', 'cpu', '--output-dir', str(tmp_path), '--no-progress', '--no-control',
    ])
    assert code == 0
    rows = _read_csv(tmp_path / 'models.csv')
    assert len(rows) == 1 and set(rows[0]) >= MODEL_COLUMNS
    row = rows[0]
    assert row['base'] == 'resnet18' and row['nearest'].startswith('resnet18+gca')
    for key in ('infer_time_ratio_base', 'train_time_ratio_base', 'infer_time_ratio_nearest',
                'train_time_ratio_nearest', 'nearest_infer_time_ratio_base', 'nearest_train_time_ratio_base',
                'infer_img_s', 'train_img_s', 'gmacs'):
        _positive_float(row[key])
    assert 1.0 < float(row['gmac_ratio']) < 1.05  # GC adds a little compute
    assert math.isclose(float(row['target_time_ratio']), float(row['gmac_ratio']) + 0.03, rel_tol=1e-6)
    payload = json.loads((tmp_path / 'models.json').read_text())
    assert set(payload['models']) == {'resnet18_gc', 'resnet18', row['nearest']}


def test_models_bad_input():
    with pytest.raises(ValueError, match='models'):
        bench_models(models=['resnet50_nope'])
    with pytest.raises(ValueError, match='modes'):
        bench_models(models=['resnet18_gc'], modes=['predict'])
    with pytest.raises(ValueError, match='clock'):
        bench_models(models=['resnet18_gc'], clock='sundial')


def test_nearest_timm_models():
    labels = {name: getattr(_nearest_timm(name), 'label', None) for name in ZOO_MODELS}
    assert labels['resnet50_se'] == 'seresnet50'
    assert labels['resnet50_cbam'] == 'resnet50+cbam'
    assert labels['resnet50_gc'] == 'resnet50+gca(r16,l234)'
    assert labels['resnet50_gc_r4'] == 'resnet50+gca(r4,l234)'
    for name in ('resnet50_nl', 'resnet50_snl', 'resnet50_bam', 'resnet50_cc', 'resnet50_sa'):
        assert labels[name] is None


def test_timm_gc_comparator_has_the_zoo_placement():
    import timm
    from timm.layers import GlobalContext
    import gczoo  # noqa: F401  (registers the zoo)
    ref = _timm_gc_resnet(18, 1 / 16, 'resnet18_gc')
    zoo = timm.create_model('resnet18_gc')
    for stage in (1, 2, 3, 4):
        ours = sum(isinstance(m, ContextBlock) for m in getattr(zoo, f'layer{stage}').modules())
        theirs = [m for m in getattr(ref, f'layer{stage}').modules() if isinstance(m, GlobalContext)]
        assert len(theirs) == ours
        assert all(m.mlp_add.fc1.out_channels == m.mlp_add.fc1.in_channels // 16 for m in theirs)


def count_gmacs(model, img_size):
    """Conv + matmul GMACs from gczoo.complexity, the one counter the benchmarks use (norms not included)."""
    counts = count_complexity(model, img_size)
    return counts['gmacs_conv'] + counts['gmacs_matmul']


def test_count_gmacs_counts_the_attention_matmuls():
    model = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), NonLocal2d(16))
    n = 8 * 8
    expected = n * 3 * 16 + 3 * n * 16 * 8 + n * 8 * 16 + 2 * n * n * 8  # stem, theta/phi/g, W_z, q.k and attn.v
    assert math.isclose(count_gmacs(model, 8) * 1e9, expected, rel_tol=1e-9)
    # the naive baseline (explicit matmuls) has the same count
    naive = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), NaiveNonLocal2d(16, 8))
    assert math.isclose(count_gmacs(naive, 8) * 1e9, expected, rel_tol=1e-9)


def test_target_verdicts_separate_misses_from_noise():
    targets = [('mem_ratio_naive', 'mem', 0.15), ('time_ratio_timm', 'time', 1.0)]
    row = dict(mem_ratio_naive=0.03, time_ratio_timm=0.97, time_ratio_timm_q1=0.95)
    _judge(row, targets, noise=0.02)
    assert row['targets_met'] is True and not row['targets_within_noise']
    row = dict(mem_ratio_naive=0.03, time_ratio_timm=1.04, time_ratio_timm_q1=0.99)  # q1 below the bound
    _judge(row, targets, noise=0.0)
    assert row['targets_met'] is True and 'time' in row['targets_within_noise']
    row = dict(mem_ratio_naive=0.03, time_ratio_timm=1.04, time_ratio_timm_q1=1.02)  # smaller than the A/A floor
    _judge(row, targets, noise=0.05)
    assert row['targets_met'] is True and 'A/A noise 0.050' in row['targets_within_noise']
    row = dict(mem_ratio_naive=0.2, time_ratio_timm=1.10, time_ratio_timm_q1=1.08)
    _judge(row, targets, noise=0.02)
    assert row['targets_met'] is False
    assert row['targets_missed'] == 'mem (0.200); time (1.100)'


def test_models_batches_and_control():
    """Several batch sizes give a row each, with the A/A control (a copy of the plain ResNet) filled in."""
    rows, raw = bench_models(['resnet18_gc'], batch=[1, 2], img_size=32, steps=1, warmup=0, modes=['infer'],
                             clock='cpu', progress=False)
    assert [r['batch'] for r in rows] == [1, 2]
    for r in rows:
        for key in ('infer_time_ratio_base', 'infer_time_ratio_control', 'time_noise', 'infer_img_s'):
            _positive_float(str(r[key]))
        assert r['train_time_ratio_base'] is None  # not measured: no figure, no target
        assert 'train' not in r['targets']
    assert set(raw['resnet18 (A/A copy)']['by_batch']) == {1, 2}


@pytest.mark.slow  # ~8 s: torch.compile of every model in the group
def test_models_compile_column():
    """--modes compile times torch.compile'd models (the 'eager' backend here: the plumbing, not inductor)."""
    rows, _ = bench_models(['resnet18_gc'], batch=1, img_size=32, steps=1, warmup=0, modes=['compile'],
                           clock='cpu', control=False, compile_backend='eager', progress=False)
    for key in ('compile_time_ratio_base', 'compile_time_ratio_nearest', 'compile_img_s'):
        _positive_float(str(rows[0][key]))
    assert rows[0]['targets_met'] is None  # reported, no target
    assert 'compile t/base' in format_model_table(rows).split('\n')[0]


def test_gmacs_come_from_the_complexity_counter():
    """bench models reports gczoo.complexity's figure (4.12 GMACs for resnet50_gc, as the README)."""
    rows, raw = bench_models(['resnet18_gc'], batch=1, img_size=32, steps=1, warmup=0, modes=['infer'],
                             clock='cpu', control=False, progress=False)
    assert math.isclose(rows[0]['gmacs'], count_complexity('resnet18_gc', 32)['gmacs'], rel_tol=1e-9)
    assert math.isclose(raw['resnet18']['gmacs'], count_complexity('resnet18', 32)['gmacs'], rel_tol=1e-9)


def test_backward_targets_are_the_training_step_ones():
    rows = bench_layers(blocks=['se'], batch=2, channels=16, size=8, backward=True, rounds=1, warmup=0,
                        min_time=0, budget=0, memory='inprocess', clock='cpu', progress=False)
    targets = rows[0]['targets']
    for text in ('train time vs naive <= 1', 'train mem vs naive <= 1', 'train time vs timm <= 1',
                 'train mem vs timm <= 1'):
        assert text in targets
    row = dict(mem_ratio_naive=1.004)  # page granularity: within noise, not a miss
    _judge(row, [('mem_ratio_naive', 'mem', 1.0, 0.01)])
    assert row['targets_met'] is True and 'mem' in row['targets_within_noise']


@pytest.mark.slow  # ~9 s: a fresh interpreter measures the memory
def test_memory_subprocess_is_explicit(tmp_path):
    """The CPU memory figures come from `python -m gczoo.bench.memory_child TARGET` (one fresh interpreter)."""
    from gczoo.bench.memory import probe_main, run_in_fresh_interpreter
    spec = dict(case='se@8x8', block='se', impl='gczoo', shape=[1, 16, 8, 8], backward=False, device='cpu',
                threads=1, seed=0)
    results = []
    run_in_fresh_interpreter('gczoo.bench.layers:measure_layer_memory', [spec], results.append)
    assert len(results) == 1 and results[0]['peak_extra_bytes'] >= 0
    assert results[0]['method'] in ('rss_hwm', 'ru_maxrss')
    with pytest.raises(ValueError, match='gczoo.bench'):
        run_in_fresh_interpreter('os:system', [spec], results.append)
    with pytest.raises(ValueError, match='usage'):
        probe_main([])


def test_command_failures_are_one_line(tmp_path, capsys):
    """Bad flags, a missing GPU and an unwritable output folder: one line on stderr, exit 2, before measuring."""
    cases = [
        (['layers', '--device', 'cuda:7'], 'cuda'),
        (['models', '--batch', '0'], '--batch'),
        (['models', '--modes', 'predict'], '--modes'),
        (['layers', '--seed', '-1'], '--seed'),
    ]
    if not torch.cuda.is_available():
        cases.append((['models', '--device', 'cuda'], 'no CUDA GPU'))
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    cases.append((['layers', '--blocks', 'se', '--output-dir', str(blocker / 'out')], 'folder'))
    for argv, needle in cases:
        assert run_command('bench', argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith('gczoo bench: error:') and len(err.splitlines()) == 1 and needle in err, (argv, err)
    assert not (blocker.parent / 'out').exists()


def test_no_second_flop_counter():
    import gczoo.bench as bench
    from pathlib import Path
    for path in Path(bench.__file__).parent.glob('*.py'):
        assert 'FlopCounterMode' not in path.read_text(), path
    assert not hasattr(bench, 'count_gmacs')
