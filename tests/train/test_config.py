"""timm parity of gczoo train: -c/--config YAML and args.yaml, timm's output names, the commonly used
timm train.py flags with timm's meaning, and the timm flags gczoo lacks explained."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml

from _train_utils import assert_same_weights, metrics_of, model_weights, run_train, summary_rows, tiny_args
from gczoo.errors import UsageError
from gczoo.train import (
    ARGS_FILE, BEST_CHECKPOINT, EXPORT_DIR, LAST_CHECKPOINT, MISSING_TIMM_FLAGS, SUMMARY_COLUMNS, build_parser,
    load_training_checkpoint, parse_args,
)
from gczoo.train.build import create_optimization, create_train_model
from gczoo.train.checkpoint import CheckpointFiles

TIMM_ARGS_YAML = Path(__file__).with_name('timm_args.yaml')


def _fails(capsys, argv) -> str:
    assert run_train(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('gczoo train: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# -c/--config and args.yaml


def test_args_yaml_of_a_finished_run_reproduces_it_bit_identically(data_dir, finished_run, tmp_path):
    """timm's habit: -c OUT/args.yaml runs the same training again (here into another folder)."""
    settings = yaml.safe_load((finished_run / ARGS_FILE).read_text())
    assert settings['model'] == 'resnet18_gc' and settings['lr'] == 0.05 and settings['seed'] == 3
    assert run_train(['-c', finished_run / ARGS_FILE, '--output', tmp_path, '--experiment', 'again']) == 0
    again = tmp_path / 'again'
    assert_same_weights(model_weights(again), model_weights(finished_run))
    assert_same_weights(model_weights(again, BEST_CHECKPOINT), model_weights(finished_run, BEST_CHECKPOINT))
    assert metrics_of(summary_rows(again)) == metrics_of(summary_rows(finished_run))
    reread = yaml.safe_load((again / ARGS_FILE).read_text())
    assert {k: v for k, v in reread.items() if k not in ('output', 'experiment')} == \
        {k: v for k, v in settings.items() if k not in ('output', 'experiment')}


def test_config_values_are_defaults_and_the_command_line_wins(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('lr: 0.07\nepochs: 5\nmodel_ema: true\nscale: [0.5, 1.0]\namp: true\namp_dtype: bfloat16\n')
    args = parse_args(['-c', str(config)])
    assert (args.lr, args.epochs, args.model_ema, args.scale, args.amp, args.amp_dtype) == \
        (0.07, 5, True, [0.5, 1.0], True, 'bfloat16')
    args = parse_args(['--config', str(config), '--lr', '0.01', '--epochs', '2'])
    assert (args.lr, args.epochs) == (0.01, 2)


@pytest.mark.parametrize('content, expected', [
    ('lr: .nan\n', "lr: expected a finite number > 0, got 'nan'"),
    ('smoothing: 2\n', "smoothing: expected a number in [0, 1), got '2'"),
    ('model_ema: 1\n', 'model_ema: expected true or false'),
    ('scale: 0.5\n', 'scale: expected a list of 2 values'),
    ('learning_rate: 0.1\n', "unknown setting 'learning_rate'"),
    ('aug_repeats: 3\n', "asks for timm train.py's --aug-repeats, which gczoo train does not implement"),
    ('[1, 2]\n', 'must hold a mapping'),
    ('lr: [\n', 'is not valid YAML'),
])
def test_bad_config_files_are_one_line_errors(tmp_path, content, expected):
    config = tmp_path / 'c.yaml'
    config.write_text(content)
    with pytest.raises(UsageError) as info:
        parse_args(['-c', str(config)])
    assert expected in str(info.value) and str(config) in str(info.value) and '\n' not in str(info.value)


def test_a_timm_args_yaml_is_read_with_timm_meaning():
    """An args.yaml timm train.py wrote: gczoo's settings keep timm's meaning, timm's settings gczoo lacks are
    at their defaults and ignored (and listed); the command line still wins (here: no GPU on this machine)."""
    args = parse_args(['-c', str(TIMM_ARGS_YAML), '--device', 'cpu', '-b', '64'])
    assert (args.data_dir, args.model, args.batch_size, args.lr, args.epochs, args.amp, args.amp_dtype) == \
        ('/data/imagenet', 'resnet50', 64, 0.6, 100, True, 'float16')
    assert (args.model_ema, args.mixup, args.aa, args.sched_on_updates, args.dist_bn) == \
        (True, 0.2, 'rand-m9-mstd0.5-inc1', True, 'reduce')
    assert {'aug_repeats', 'naflex_loader', 'kd_model_name', 'log_wandb'} <= set(args.config_ignored)
    assert set(args.config_ignored) <= set(MISSING_TIMM_FLAGS) | {'data'}


def test_timm_flags_gczoo_lacks_are_explained(capsys, tmp_path):
    err = _fails(capsys, ['--output', tmp_path, '--aug-repeats', '3'])
    assert '--aug-repeats is a timm train.py flag gczoo train does not implement' in err
    assert 'RepeatAugSampler' in err
    err = _fails(capsys, ['--output', tmp_path, '--no-such-flag'])
    assert 'unrecognized arguments: --no-such-flag' in err
    ours = {a.dest for a in build_parser()._actions}
    assert not ours & set(MISSING_TIMM_FLAGS)


# ---------------------------------------------------------------------------------------------
# timm's output names


def test_outputs_have_timm_names(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {'args.yaml', 'last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar',
            'summary.csv', 'curves.png', 'results.json', 'export'} <= names
    assert 'best.pth.tar' not in names and 'summary.png' not in names
    assert tuple(summary_rows(finished_run)[0])[:6] == ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5',
                                                       'lr') == SUMMARY_COLUMNS[:6]
    best = json.loads((finished_run / 'results.json').read_text())['best']['epoch']
    assert_same_weights(model_weights(finished_run, BEST_CHECKPOINT),
                        model_weights(finished_run, f'checkpoint-{best}.pth.tar'))
    assert_same_weights(model_weights(finished_run), model_weights(finished_run, 'checkpoint-1.pth.tar'))


def test_checkpoint_history_ranks_as_timm(tmp_path):
    """--checkpoint-hist N keeps the N best epochs (ties keep the earlier one; a worse epoch evicts nothing);
    model_best is the best so far; every file holds the ranked list for a resumed run."""
    files = CheckpointFiles(tmp_path, max_history=2)
    for epoch, metric in enumerate([50.0, 60.0, 55.0, 60.0, 40.0, 70.0], start=1):
        files.save({'epoch': epoch}, epoch=epoch, metric=metric, best=metric > 60.0 or epoch <= 2)
    kept = sorted(p.name for p in tmp_path.glob('checkpoint-*'))
    assert kept == ['checkpoint-2.pth.tar', 'checkpoint-6.pth.tar']
    assert [name for name, _ in files.files] == ['checkpoint-6.pth.tar', 'checkpoint-2.pth.tar']
    assert torch.load(tmp_path / BEST_CHECKPOINT, weights_only=True)['epoch'] == 6
    last = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert last['epoch'] == 6
    assert last['history_files'] == [['checkpoint-6.pth.tar', 70.0], ['checkpoint-2.pth.tar', 60.0]]
    assert not list(tmp_path.glob('.*.tmp'))
    resumed = CheckpointFiles(tmp_path, max_history=2)
    resumed.load(last['history_files'])
    assert resumed.files == files.files


# ---------------------------------------------------------------------------------------------
# timm train.py's commonly used flags


def test_model_flags_reach_timm_create_model(finished_run):
    """--pretrained-path (adapted as timm: the classifier re-initialized), --gp, --drop-block, --model-kwargs,
    --in-chans, --head-init-scale, --grad-checkpointing."""
    weights = finished_run / EXPORT_DIR / 'model.safetensors'
    args = parse_args(['--model', 'resnet18_gc', '--pretrained-path', str(weights), '--gp', 'max', '--drop-block',
                       '0.1', '--model-kwargs', 'zero_init_last=False', '--head-init-scale', '0',
                       '--grad-checkpointing'])
    assert args.pretrained  # implied, so the file is never silently ignored
    model = create_train_model(args, num_classes=5)
    source = timm.create_model(f'local-dir:{finished_run / EXPORT_DIR}', pretrained=True).state_dict()
    assert torch.equal(model.state_dict()['layer4.1.conv2.weight'], source['layer4.1.conv2.weight'])
    assert model.fc.out_features == 5 and not model.fc.weight.any() and not model.fc.bias.any()
    assert model.global_pool.pool_type == 'max' and model.grad_checkpointing
    assert model.layer3[0].drop_block is not None and model.pretrained_cfg['file'] == str(weights)
    grey = create_train_model(parse_args(['--model', 'resnet18_gc', '--in-chans', '1']), num_classes=3)
    assert grey.conv1.in_channels == 1


def test_optimizer_flags_layer_decay_with_attention_scale_and_bce():
    """--layer-decay is timm's (lr_scale falls layer by layer from the head) and composes with --attn-lr-scale;
    --bce-loss gives timm's BinaryCrossEntropy, also without smoothing; --opt-kwargs reach the optimizer."""
    from timm.loss import BinaryCrossEntropy
    from gczoo.models import attention_modules
    args = parse_args(['--model', 'resnet18_gc', '--data-dir', 'x', '--opt', 'adamw', '--lr', '0.1', '--layer-decay',
                       '0.5', '--attn-lr-scale', '10', '--bce-loss', '--smoothing', '0',
                       '--opt-kwargs', 'amsgrad=True'])
    model = timm.create_model('resnet18_gc', num_classes=3)
    parts = create_optimization(args, model, num_classes=3, world_size=1, batches_per_epoch=4,
                                device=torch.device('cpu'), amp_dtype=None)
    attn = {id(p) for _, m in attention_modules(model) for p in m.parameters()}
    scales = {}
    for group in parts.optimizer.param_groups:
        assert group['amsgrad'] is True
        for p in group['params']:
            scales[id(p)] = group['lr_scale']
    head, stem = scales[id(model.fc.weight)], scales[id(model.conv1.weight)]
    assert head == 1.0 and stem < head  # layer decay
    attn_param = next(p for _, m in attention_modules(model) for p in m.parameters())
    block_of = next(n for n, p in model.named_parameters() if p is attn_param).split('.')[:2]  # e.g. layer2.0
    peer = next(p for n, p in model.named_parameters() if n.split('.')[:2] == block_of and id(p) not in attn)
    assert scales[id(attn_param)] == pytest.approx(10 * scales[id(peer)])  # the same layer's scale, x 10
    assert isinstance(parts.train_loss_fn, BinaryCrossEntropy)


def test_a_timm_command_line_with_the_common_flags_runs(capsys, data_dir, tmp_path, monkeypatch):
    """timm train.py's commonly used flags together in one short run: grey input (--in-chans/--input-size),
    --gp, --class-map, --train-num-samples, --drop-block, --grad-checkpointing, --layer-decay, --bce-loss,
    --amp --amp-dtype bfloat16, --checkpoint-hist, --dist-bn, --start-epoch, --model-kwargs and --torchcompile
    (torch.compile is recorded, not run: inductor needs a compiler and minutes on CPU)."""
    compiled = {}

    def fake_compile(model, **kwargs):
        compiled.update(kwargs)
        return model
    monkeypatch.setattr(torch, 'compile', fake_compile)
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('stripes\ncircle\nsquare\n')
    argv = tiny_args(data_dir, tmp_path, 'timm', epochs=2, start_epoch=1, in_chans=1, input_size=[1, 32, 32], gp='max',
                     class_map=class_map, train_num_samples=12, drop_block=0.05, grad_checkpointing=True,
                     layer_decay=0.8, bce_loss=True, amp=True, amp_dtype='bfloat16', checkpoint_hist=1,
                     dist_bn='reduce',
                     torchcompile='inductor', torchcompile_mode='reduce-overhead', model_kwargs='zero_init_last=False')
    assert run_train(argv) == 0, capsys.readouterr().err
    assert compiled == {'backend': 'inductor', 'mode': 'reduce-overhead'}
    run_dir = tmp_path / 'timm'
    rows = summary_rows(run_dir)
    assert [r['epoch'] for r in rows] == ['1']  # --start-epoch 1: the second epoch only (from 0, as timm)
    ckpt = load_training_checkpoint(run_dir / LAST_CHECKPOINT)
    assert ckpt['num_updates'] == 2 * 3 and ckpt['class_names'] == ['stripes', 'circle', 'square']
    assert ckpt['state_dict']['conv1.weight'].shape[1] == 1
    assert sorted(p.name for p in run_dir.glob('checkpoint-*')) == ['checkpoint-1.pth.tar']
    config = json.loads((run_dir / EXPORT_DIR / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [1, 32, 32] and config['label_names'] == ['stripes', 'circle',
                                                                                             'square']
    assert len(config['pretrained_cfg']['mean']) == 1


def test_resume_with_another_optimizer_needs_no_resume_opt(capsys, data_dir, finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / 'run')
    argv = tiny_args(data_dir, tmp_path, 'run', epochs=3, resume='auto', opt='adamw', lr=0.001)
    err = _fails(capsys, argv)
    assert 'the optimizer state does not fit this run' in err and '--no-resume-opt' in err
    assert run_train(argv + ['--no-resume-opt']) == 0
    assert 'the optimizer and loss scaler start fresh' in capsys.readouterr().out
    assert len(summary_rows(tmp_path / 'run')) == 3
