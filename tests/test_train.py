"""gczoo.train: outputs, exact resume after kill -9, DDP equivalence, torchrun restarts, export, bad input.

Every training run here is tiny (24 images of 32x32, batch 4, 2 epochs) and uses one thread, in
this process or in subprocesses: the runs compared bit for bit must do identical arithmetic.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.cli import run_command
from gczoo.train import (
    BEST_CHECKPOINT, CHECKPOINT_FORMAT, EXPORT_DIR, FAULT_EXIT_CODE, LAST_CHECKPOINT, SUMMARY_COLUMNS,
    atomic_save, attention_param_groups, build_parser, load_training_checkpoint, main,
)

from _train_utils import (
    CLASSES, REPO, assert_same_weights, evaluate_alone, make_image_folder, metrics_of, model_weights, run,
    subprocess_env, summary_rows, tiny_args, train_command,
)

# resnet18_gc is the zoo's smallest model; the runs that are repeated for a comparison use it too
MODEL = 'resnet18_gc'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp('data'))


def run_in_process(argv) -> int:
    """``gczoo train ARGV`` in this process, through the CLI runner (errors: one line, exit 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic as the 1-thread subprocesses
    try:
        return run_command('train', [str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: the yardstick of the resume tests, and the source of the export test."""
    out = tmp_path_factory.mktemp('ref')
    assert run_in_process(tiny_args(data_dir, out, 'ref')) == 0
    return out / 'ref'


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------

def _option_strings():
    parser = build_parser()
    return [a for a in parser._actions if a.option_strings and a.dest != 'help']


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in _option_strings():
        assert action.help and len(action.help) > 10, f'{action.option_strings} has no help'
        for flag in action.option_strings:
            assert flag in text
    for timm_flag in ('--model', '--pretrained', '--pretrained-backbone', '--data-dir', '--dataset', '--train-split',
                      '--val-split', '--num-classes', '--img-size', '--batch-size', '--epochs', '--lr', '--opt',
                      '--sched', '--warmup-epochs', '--weight-decay', '--smoothing', '--mixup', '--cutmix', '--aa',
                      '--amp', '--model-ema', '--channels-last', '--compile', '--grad-accum-steps', '--sync-bn',
                      '--seed', '--workers', '--output', '--resume', '--attn-lr-scale'):
        assert timm_flag in text


def test_train_sh_help_shows_wrapper_and_every_training_flag():
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'train.sh'), '--help'], capture_output=True, text=True,
                          env=subprocess_env(PYTHON=sys.executable), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for torchrun_flag in ('--nproc-per-node', '--nnodes', '--rdzv-endpoint', '--master-addr', '--max-restarts',
                          '--node-rank'):
        assert torchrun_flag in proc.stdout
    for action in _option_strings():
        assert action.option_strings[0] in proc.stdout


def test_bad_flags_exit_2_with_one_line(capsys):
    assert run_command('train', ['--batch-size', '0']) == 2
    assert "--batch-size: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert run_command('train', ['--mixup', '0.2', '--batch-size', '5']) == 2
    assert '--batch-size must be even' in capsys.readouterr().err


def test_defaults_follow_timm_for_your_data_and_the_recipe_for_the_digits(monkeypatch):
    from gczoo.train import parse_args
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    digits, folder = parse_args([]), parse_args(['--data-dir', 'somewhere'])
    assert (digits.model, digits.img_size, digits.epochs, digits.threads) == ('resnet18_gc', 32, 8, 1)
    assert (folder.model, folder.epochs, folder.opt, folder.hflip, folder.threads) == ('resnet50_gc', 300, 'sgd', 0.5, None)
    assert parse_args(['--epochs', '3']).epochs == 3  # a flag always wins
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    assert parse_args([]).threads is None  # so does an explicit OMP_NUM_THREADS


# ---------------------------------------------------------------------------------------------
# a run's outputs
# ---------------------------------------------------------------------------------------------

def test_run_writes_checkpoints_summary_plot_results(reference_run):
    rows = summary_rows(reference_run)
    assert [r['epoch'] for r in rows] == ['0', '1']  # from 0, as timm's summary.csv
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    for row in rows:
        assert 0.0 <= float(row['eval_top1']) <= float(row['eval_top5']) <= 100.0
        assert float(row['images_per_s']) > 0 and float(row['epoch_time']) > 0
    assert (reference_run / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    results = json.loads((reference_run / 'results.json').read_text())
    assert results['best']['top1'] == max(float(r['eval_top1']) for r in rows)
    assert results['final']['top1'] == float(rows[-1]['eval_top1'])
    assert results['class_names'] == sorted(CLASSES)
    assert not list(reference_run.glob('.*.tmp')), 'temporary checkpoint files left behind'

    ckpt = torch.load(reference_run / LAST_CHECKPOINT, map_location='cpu', weights_only=True)  # no pickled code
    assert ckpt['format'] == CHECKPOINT_FORMAT and ckpt['arch'] == MODEL
    assert (ckpt['epoch'], ckpt['batches_done'], ckpt['num_updates']) == (2, 0, 12)
    for key in ('state_dict', 'optimizer', 'scheduler', 'rank_states', 'args', 'history', 'sampler'):
        assert ckpt[key] is not None, key
    assert {'python_state', 'numpy_keys', 'torch'} <= set(ckpt['rank_states'][0]['rng'])
    assert ckpt['args']['model'] == MODEL and ckpt['args']['batch_size'] == 4
    best = load_training_checkpoint(reference_run / BEST_CHECKPOINT)
    assert best['best']['epoch'] == results['best']['epoch']


def test_export_loads_through_timm_local_dir_with_equal_logits(reference_run):
    export = reference_run / EXPORT_DIR
    assert (export / 'model.safetensors').is_file() and (export / 'config.json').is_file()
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == MODEL and config['num_classes'] == 3
    assert config['label_names'] == sorted(CLASSES)
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]

    loaded = timm.create_model(f'local-dir:{export}', pretrained=True).eval()
    reference = timm.create_model(MODEL, num_classes=3)
    reference.load_state_dict(model_weights(reference_run, BEST_CHECKPOINT))
    reference.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


@pytest.mark.slow
def test_bf16_channels_last_accumulation_ema_mixup_attn_lr_run(data_dir, tmp_path):
    """The other code paths in one short run: autocast bf16 on CPU, channels-last, 2-step accumulation,
    EMA (validated and exported), mixup/cutmix with smoothing, attention lr x 10, per-update schedule."""
    argv = tiny_args(data_dir, tmp_path, 'paths', epochs=1, amp='bf16', channels_last=True, grad_accum_steps=2,
                     model_ema=True, model_ema_decay=0.5, mixup=0.2, cutmix=1.0, smoothing=0.1, attn_lr_scale=10,
                     sched_on_updates=True, warmup_epochs=1, drop_path=0.05)
    assert run_in_process(argv) == 0
    run_dir = tmp_path / 'paths'
    ckpt = load_training_checkpoint(run_dir / LAST_CHECKPOINT)
    assert ckpt['num_updates'] == 3 and ckpt['state_dict_ema'] is not None
    assert {g.get('lr_scale') for g in ckpt['optimizer']['param_groups']} == {None, 10.0}
    row = summary_rows(run_dir)[0]
    assert {'ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5'} <= set(row)
    exported = timm.create_model(f'local-dir:{run_dir / EXPORT_DIR}', pretrained=True)
    assert_same_weights({k: v for k, v in exported.state_dict().items()}, ckpt['state_dict_ema'])  # EMA is exported


# ---------------------------------------------------------------------------------------------
# crash and resume
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(data_dir, reference_run, tmp_path):
    """kill -9 the run while it trains (after its first checkpoint), --resume auto: same weights, same metrics
    as the reference run, which wrote checkpoints at epoch ends only."""
    argv = tiny_args(data_dir, tmp_path, 'killed', checkpoint_interval=2)
    run_dir = tmp_path / 'killed'
    proc = subprocess.Popen(train_command(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=subprocess_env(), cwd=str(REPO))
    try:
        deadline = time.time() + 240
        while not (run_dir / LAST_CHECKPOINT).is_file():
            assert proc.poll() is None, f'run ended before its first checkpoint: {proc.stderr.read()}'
            assert time.time() < deadline, 'no checkpoint within the time limit'
            time.sleep(0.02)
        # let it go on a little: the kill lands mid-training, maybe mid-write of the next checkpoint
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    assert not (run_dir / 'results.json').exists()
    partial = load_training_checkpoint(run_dir / LAST_CHECKPOINT)  # whatever moment: never half-written
    assert partial['num_updates'] < 12

    assert run_in_process(argv + ['--resume', 'auto']) == 0
    assert_same_weights(model_weights(run_dir), model_weights(reference_run))
    assert_same_weights(model_weights(run_dir, BEST_CHECKPOINT), model_weights(reference_run, BEST_CHECKPOINT))
    assert metrics_of(summary_rows(run_dir)) == metrics_of(summary_rows(reference_run))
    resumed = json.loads((run_dir / 'results.json').read_text())
    reference = json.loads((reference_run / 'results.json').read_text())
    assert resumed['best'] == reference['best'] and resumed['num_updates'] == reference['num_updates']


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    atomic_save({'a': torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        atomic_save({'a': torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['a'], torch.ones(3))
    assert list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ddp_runs(data_dir, tmp_path_factory):
    """The same 2 epochs as 1 process with batch 8 and as 2 gloo processes with batch 4 each.

    BatchNorm in training mode normalizes each rank's own 4 images, which is not what one process
    does with 8: the runs use --freeze-bn-stats (BN in eval mode: a per-sample affine map, affine
    weights still train), so both runs compute the same function and only the gradient reduction
    order differs. (torch's SyncBatchNorm would be the other way, but it runs on GPUs only.)
    """
    out = tmp_path_factory.mktemp('ddp')
    common = dict(freeze_bn_stats=True, lr=0.02)
    single = tiny_args(data_dir, out, 'single', batch_size=8, **common)
    assert run_in_process(single) == 0
    double = tiny_args(data_dir, out, 'double', batch_size=4, checkpoint_interval=1, **common)
    proc = run(train_command(double, nproc=2), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, double


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(ddp_runs):
    out, _ = ddp_runs
    single, double = load_training_checkpoint(out / 'single' / LAST_CHECKPOINT), load_training_checkpoint(
        out / 'double' / LAST_CHECKPOINT)
    assert single['num_updates'] == double['num_updates'] == 6
    assert double['world_size'] == 2 and len(double['rank_states']) == 2
    initial = timm.create_model(MODEL, num_classes=3).state_dict()
    moved = [k for k, v in single['state_dict'].items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert len(moved) > 50  # the comparison is about trained weights, attention blocks included
    assert any('.se.' in k for k in moved)
    assert_same_weights(single['state_dict'], double['state_dict'], atol=2e-5, rtol=1e-4)  # measured: ~1e-7
    rows_1, rows_2 = summary_rows(out / 'single'), summary_rows(out / 'double')
    for r1, r2 in zip(rows_1, rows_2):
        assert float(r1['eval_top1']) == float(r2['eval_top1'])  # validation saw every image once on both
        assert float(r1['train_loss']) == pytest.approx(float(r2['train_loss']), rel=1e-4)
        assert float(r1['eval_loss']) == pytest.approx(float(r2['eval_loss']), rel=1e-4)


@pytest.fixture(scope='module')
def bn_ddp_run(data_dir, tmp_path_factory):
    """2 gloo processes with BatchNorm in training mode (each rank's running statistics follow its own
    batches), an EMA (which averages each rank's statistics) and mixup, checkpointing every update: the
    run in which the logged accuracy used to be that of weights nobody saved (--dist-bn '')."""
    out = tmp_path_factory.mktemp('bn')
    argv = tiny_args(data_dir, out, 'bn', model_ema=True, model_ema_decay=0.5, mixup=0.2, lr=0.1,
                     checkpoint_interval=1)
    proc = run(train_command(argv, nproc=2), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, argv


def _assert_best_checkpoint_gives_the_logged_metrics(run_dir, data_dir, ema):
    rows = summary_rows(run_dir)
    best = json.loads((run_dir / 'results.json').read_text())['best']
    row = rows[best['epoch']]  # epochs count from 0, as the rows
    ckpt = load_training_checkpoint(run_dir / BEST_CHECKPOINT)
    measured = evaluate_alone(run_dir, ckpt['state_dict'], data_dir)
    assert measured['top1'] == pytest.approx(float(row['eval_top1']), abs=1e-4)
    assert measured['loss'] == pytest.approx(float(row['eval_loss']), rel=1e-5)
    if ema:
        measured = evaluate_alone(run_dir, ckpt['state_dict_ema'], data_dir)
        assert measured['top1'] == pytest.approx(float(row['ema_eval_top1']), abs=1e-4) == best['top1']
        assert measured['loss'] == pytest.approx(float(row['ema_eval_loss']), rel=1e-5)
    else:
        assert best['top1'] == float(row['eval_top1'])


def test_best_checkpoint_gives_the_logged_metrics_one_process(data_dir, reference_run, tmp_path):
    """Evaluated alone (the export's preprocessing, timm's dataset, another batch size), the best
    checkpoint's weights score exactly what the run logged for that epoch: model and EMA."""
    _assert_best_checkpoint_gives_the_logged_metrics(reference_run, data_dir, ema=False)
    assert run_in_process(tiny_args(data_dir, tmp_path, 'ema', model_ema=True, model_ema_decay=0.5)) == 0
    _assert_best_checkpoint_gives_the_logged_metrics(tmp_path / 'ema', data_dir, ema=True)


@pytest.mark.slow
@pytest.mark.ddp
def test_best_checkpoint_gives_the_logged_metrics_two_processes(bn_ddp_run, data_dir):
    """--dist-bn reduce (the default, as timm's) averages the ranks' BatchNorm statistics before every
    validation, so the weights rank 0 saves are the ones every rank validated. (With --dist-bn '' this
    run logged top-1 66.67 for weights that score 54.17 alone.)"""
    out, _ = bn_ddp_run
    _assert_best_checkpoint_gives_the_logged_metrics(out / 'bn', data_dir, ema=True)
    last = load_training_checkpoint(out / 'bn' / LAST_CHECKPOINT)
    measured = evaluate_alone(out / 'bn', last['state_dict_ema'], data_dir)
    assert measured['loss'] == pytest.approx(float(summary_rows(out / 'bn')[-1]['ema_eval_loss']), rel=1e-5)


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_restart_resumes_from_last_checkpoint_and_finishes(bn_ddp_run):
    """A rank dies at update 3 on the first attempt (before that update's checkpoint); torchrun
    --max-restarts 1 (through scripts/train.sh) restarts both ranks, which resume mid-epoch from the
    update-2 checkpoint and end bit-identical to the unbroken 2-process run (BatchNorm statistics and
    EMA per rank, mixup included)."""
    out, unbroken = bn_ddp_run
    argv = [a if a != 'bn' else 'restarted' for a in unbroken] + ['--fail-at-step', '3']
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'train.sh'), '--nproc-per-node', '2', '--max-restarts', '1',
                           *argv], capture_output=True, text=True, timeout=400,
                          env=subprocess_env(PYTHON=sys.executable), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'--fail-at-step 3: rank 1 exits with status {FAULT_EXIT_CODE}' in proc.stderr
    assert 'torchrun restart 1' in proc.stdout
    assert 'resumed from' in proc.stdout and 'epoch 0, batch 2/3, update 2' in proc.stdout
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        restarted = load_training_checkpoint(out / 'restarted' / name)
        reference = load_training_checkpoint(out / 'bn' / name)
        assert_same_weights(restarted['state_dict'], reference['state_dict'])
        assert_same_weights(restarted['state_dict_ema'], reference['state_dict_ema'])
    assert metrics_of(summary_rows(out / 'restarted')) == metrics_of(summary_rows(out / 'bn'))


# ---------------------------------------------------------------------------------------------
# attention learning rate
# ---------------------------------------------------------------------------------------------

def test_attn_lr_scale_gives_attention_blocks_their_own_learning_rate():
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from gczoo.models import attention_modules
    model = timm.create_model(MODEL, num_classes=3)
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4,
                                    param_group_fn=lambda m: attention_param_groups(m, 1e-4, 10.0))
    create_scheduler_v2(optimizer, 'cosine', num_epochs=5, warmup_epochs=0)
    attn_ids = {id(p) for _, m in attention_modules(model) for p in m.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group['params']}
        seen |= ids
        is_attn = bool(ids & attn_ids)
        assert (ids <= attn_ids) if is_attn else not (ids & attn_ids)
        assert group['lr'] == pytest.approx(1.0 if is_attn else 0.1)
        no_decay = [p.ndim <= 1 or names[id(p)].endswith('.bias') for p in group['params']]  # timm's rule
        assert len(set(no_decay)) == 1 and group['weight_decay'] == (0.0 if no_decay[0] else 1e-4)
    assert seen == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match='needs a model with gczoo attention blocks'):
        attention_param_groups(timm.create_model('resnet18', num_classes=3), 1e-4, 10.0)


# ---------------------------------------------------------------------------------------------
# faults and bad input: one line on stderr, exit status 2
# ---------------------------------------------------------------------------------------------

def _error(capsys, argv) -> str:
    assert run_in_process(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('gczoo train: error: ') and 'Traceback' not in err
    return err


def test_missing_data_dir(capsys, tmp_path):
    err = _error(capsys, tiny_args(tmp_path / 'nowhere', tmp_path))
    assert 'nowhere' in err and 'does not exist' in err


def test_empty_data_dir_and_missing_split(capsys, tmp_path):
    (tmp_path / 'empty').mkdir()
    err = _error(capsys, tiny_args(tmp_path / 'empty', tmp_path))
    assert "no folder for split 'train'" in err and 'ImageFolder layout' in err
    for split in ('train/a', 'val/a'):
        (tmp_path / 'empty' / split).mkdir(parents=True)
    err = _error(capsys, tiny_args(tmp_path / 'empty', tmp_path))
    assert 'holds no images' in err


def test_num_classes_not_matching_the_data(capsys, data_dir, tmp_path):
    err = _error(capsys, tiny_args(data_dir, tmp_path, num_classes=5))
    assert '--num-classes 5' in err and '3 classes' in err


def test_unknown_model_lists_close_names(capsys, data_dir, tmp_path):
    err = _error(capsys, tiny_args(data_dir, tmp_path, model='resnet18_gcc'))
    assert "'resnet18_gcc'" in err and 'resnet18_gc' in err


def test_truncated_checkpoint(capsys, data_dir, reference_run, tmp_path):
    broken = tmp_path / 'broken.pth.tar'
    data = (reference_run / LAST_CHECKPOINT).read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    err = _error(capsys, tiny_args(data_dir, tmp_path, resume=broken))
    assert 'broken.pth.tar' in err and 'truncated or corrupt' in err
    err = _error(capsys, tiny_args(data_dir, tmp_path, initial_checkpoint=broken))
    assert 'broken.pth.tar' in err


def test_checkpoint_of_another_model_lists_the_keys(capsys, data_dir, reference_run, tmp_path):
    err = _error(capsys, tiny_args(data_dir, tmp_path, model='resnet26_gc', resume=reference_run / LAST_CHECKPOINT))
    assert 'missing keys' in err and 'layer1.0.conv3.weight' in err  # resnet26 has bottlenecks, resnet18 not
    assert 'shape mismatch' in err and "--model 'resnet18_gc'" in err


def test_weights_file_is_not_a_training_checkpoint(capsys, data_dir, reference_run, tmp_path):
    err = _error(capsys, tiny_args(data_dir, tmp_path, resume=reference_run / EXPORT_DIR / 'model.safetensors'))
    assert 'not a gczoo training checkpoint' in err and '--initial-checkpoint' in err


def test_sync_bn_with_several_cpu_processes_is_refused(capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')  # as torchrun would set it; refused before joining a process group
    err = _error(capsys, tiny_args(data_dir, tmp_path, sync_bn=True))
    assert 'SyncBatchNorm runs on GPUs only' in err


def test_too_few_images_for_one_batch(capsys, data_dir, tmp_path):
    err = _error(capsys, tiny_args(data_dir, tmp_path, batch_size=64))
    assert 'fewer than one global batch' in err


# ---------------------------------------------------------------------------------------------
# the failures issue 10 listed: one line through `gczoo train`, exit 2, no traceback
# ---------------------------------------------------------------------------------------------

def _cli_error(capsys, argv) -> str:
    """``gczoo.cli.main(['train', ...])``: exit 2 and exactly one line on stderr."""
    from gczoo.cli import main as cli_main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(['train', *map(str, argv)]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.startswith('gczoo train: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('flag, value, expected', [
    ('--smoothing', '2', "argument --smoothing: expected a number in [0, 1), got '2'"),
    ('--lr', 'nan', "argument --lr: expected a finite number > 0, got 'nan'"),
    ('--lr', 'inf', "argument --lr: expected a finite number > 0, got 'inf'"),
    ('--workers', '-1', "argument -j/--workers: expected an integer >= 0, got '-1'"),
    ('--crop-pct', '0', "argument --crop-pct: expected a fraction in (0, 1], got '0'"),
    ('--threads', '0', "argument --threads: expected an integer >= 1, got '0'"),
])
def test_bad_numbers_are_refused_before_anything_runs(capsys, tmp_path, flag, value, expected):
    err = _cli_error(capsys, ['--output', tmp_path, flag, value])
    assert expected in err
    assert not list(tmp_path.iterdir()), 'a refused command line must not create the output folder'


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_device_cuda_without_a_gpu(capsys, tmp_path):
    err = _cli_error(capsys, ['--output', tmp_path, '--device', 'cuda'])
    assert "argument --device: 'cuda': this machine has no CUDA GPU" in err and '--device cpu' in err


def test_full_disk_while_writing_a_checkpoint(capsys, data_dir, tmp_path, monkeypatch):
    """ENOSPC simulated in-process: torch.save (what writes checkpoints) raises it after writing a few bytes.
    The run stops with one line naming the file; the failed write leaves no temporary file behind."""
    import errno

    def full_disk(obj, f, *args, **kwargs):
        f.write(b'partial')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    err = _cli_error(capsys, tiny_args(data_dir, tmp_path, 'full', epochs=1))
    assert 'No space left on device' in err and 'free some disk space' in err
    assert str(tmp_path / 'full') in err and '.pth.tar' in err  # names the file it could not write
    run_dir = tmp_path / 'full'
    assert not list(run_dir.glob('.*.tmp')) and not list(run_dir.glob('*.pth.tar'))
    assert not (run_dir / EXPORT_DIR).exists() and not (run_dir / 'results.json').exists()


def test_output_folder_that_cannot_be_written(capsys, data_dir, tmp_path, monkeypatch):
    """Tests run as root, which chmod does not stop, so two honest stand-ins for a read-only folder:
    --output under a regular file (the OS refuses to make the folder), and the permission error a
    non-root user gets from a 0o500 folder, raised by os.open where files are created."""
    import errno
    (tmp_path / 'a-file').write_text('not a folder')
    err = _cli_error(capsys, tiny_args(data_dir, tmp_path / 'a-file' / 'out', 'ro', epochs=1))
    assert 'a-file' in err and ('Not a directory' in err or 'File exists' in err)

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(tmp_path / 'ro') in str(path):
            raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, 'open', read_only)
    err = _cli_error(capsys, tiny_args(data_dir, tmp_path, 'ro', epochs=1))
    assert 'Permission denied' in err and str(tmp_path / 'ro') in err and 'check the permissions' in err


def test_decompression_bomb_in_the_training_data(capsys, data_dir, tmp_path, monkeypatch):
    """PIL's DecompressionBombError is neither an OSError nor a ValueError: the training dataset turns it
    into one line naming the file. (The limit is lowered so a 64x64 image is a 'bomb'; the 32x32 ones stay below.)"""
    import shutil
    from PIL import Image
    bombed = tmp_path / 'data'
    shutil.copytree(data_dir, bombed)
    Image.new('RGB', (64, 64), (200, 10, 10)).save(bombed / 'train' / 'circle' / 'bomb.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1500)  # a 64x64 image (4096 px) exceeds 2x the limit
    err = _cli_error(capsys, tiny_args(bombed, tmp_path, 'bomb', epochs=1))
    assert 'bomb.png' in err and 'DecompressionBombError' in err and 'fix or remove the file' in err
