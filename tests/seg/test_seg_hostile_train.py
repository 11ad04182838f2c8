"""A hostile user's pass over ``gczoo train-seg`` (issue 18): bad numbers, resumes of other runs, two runs on one
folder, label-less crops and non-finite weights -- each one line (exit 2) or the right result."""
import argparse
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from gczoo.cli import main
from gczoo.seg import create_segmentor


def _one_line_exit_2(capsys, argv, message):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    return err[0]


def _train_folder(root, n=2):
    img_dir, gt_dir = root / 'leftImg8bit' / 'train' / 'ulm', root / 'gtFine' / 'train' / 'ulm'
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for i in range(n):
        Image.new('RGB', (40, 36)).save(img_dir / f'ulm_{i:06d}_leftImg8bit.png')
        Image.new('L', (40, 36)).save(gt_dir / f'ulm_{i:06d}_gtFine_labelTrainIds.png')
    return root


def _train_args(root, out, *extra):
    return ['train-seg', '--model', 'gcnet_r50_d8', '--data-dir', root, '--dataset', 'cityscapes', '--crop-size',
            '32', '32', '--no-resize', '-b', '2', '--iters', '4', '-j', '0', '--output', out, *extra]


@pytest.mark.parametrize('flag, value, message', [
    ('--min-lr', 'nan', 'expected a finite number >= 0'),
    ('--min-lr', '-1', 'expected a finite number >= 0'),
    ('--lr', '0', 'expected a finite number > 0'),
    ('--lr', '-0.01', 'expected a finite number > 0'),
    ('--momentum', '1.5', 'expected a number in [0, 1)'),
    ('--weight-decay', 'inf', 'expected a finite number >= 0'),
    ('--aux-weight', '-0.4', 'expected a finite number >= 0'),
    ('--min-lr', '0.5', '--min-lr 0.5 is above --lr 0.01'),
])
def test_train_seg_bad_numbers(flag, value, message, tmp_path, capsys):
    _one_line_exit_2(capsys, _train_args(tmp_path / 'no-data', tmp_path / 'o', flag, value), message)
    assert not (tmp_path / 'o').exists()


def _fake_resume(tmp_path, argv, **changes):
    """A train-seg checkpoint as a run with ``argv`` (+ ``changes`` to its args) wrote it."""
    from gczoo.seg.train import FORMAT, build_parser
    from gczoo.train.checkpoint import plain
    args = plain(vars(build_parser().parse_args([str(a) for a in argv[1:]])))
    args.update(split='train', **changes)  # a run records the split it resolved
    model = create_segmentor('gcnet_r50_d8', num_classes=args['num_classes'] or 19)
    path = tmp_path / 'fake.pth.tar'
    torch.save({'format': FORMAT, 'state_dict': model.state_dict(), 'optimizer': {}, 'iteration': 2, 'rng': {},
                'args': args, 'summary': []}, path)
    return path


def test_train_seg_resume_of_other_settings_or_finished_run(tmp_path, capsys):
    """A resume with another --num-classes ended in load_state_dict's many-line RuntimeError; a finished run
    "resumed" rewrote results.json with a NaN final loss."""
    root = _train_folder(tmp_path / 'cs')
    argv = _train_args(root, tmp_path / 'o')
    path = _fake_resume(tmp_path, argv, model='ccnet_r50_d8')
    _one_line_exit_2(capsys, argv + ['--resume', path], "was written with --model 'ccnet_r50_d8'")
    path = _fake_resume(tmp_path, argv, num_classes=5)
    _one_line_exit_2(capsys, argv + ['--resume', path], 'was written with --num-classes 5')
    torch.save({'format': 'gczoo.seg.train/1', 'state_dict': {}}, tmp_path / 'partial.pth.tar')
    _one_line_exit_2(capsys, argv + ['--resume', tmp_path / 'partial.pth.tar'], 'incomplete train-seg checkpoint (no '
                     'args, optimizer, iteration, rng)')
    path = _fake_resume(tmp_path, argv, iters=2)
    _one_line_exit_2(capsys, _train_args(root, tmp_path / 'o', '--iters', '2', '--resume', path), 'a finished run')
    assert not (tmp_path / 'o' / 'results.json').exists()


def test_train_seg_folder_taken_while_starting_is_not_overwritten(tmp_path, capsys, monkeypatch):
    """Two runs on one --output: the second checked for last.pth.tar before the first wrote it, then ran on."""
    import gczoo.seg.train as train

    class _LateLock:
        def __init__(self, out):
            self.out = out

        def __enter__(self):  # the other run finished between our check and our lock
            (self.out / 'last.pth.tar').write_bytes(b'the other run')

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(train, 'RunLock', _LateLock)
    root = _train_folder(tmp_path / 'cs')
    _one_line_exit_2(capsys, _train_args(root, tmp_path / 'o'), 'written while this one started')
    assert (tmp_path / 'o' / 'last.pth.tar').read_bytes() == b'the other run'


def test_train_loss_is_mmseg_mean_over_all_pixels_and_zero_without_labels():
    """torch's mean over labelled pixels is NaN for a crop without one (a false 'diverged'); mmseg's loss
    (avg_non_ignore=False) averages over every pixel of the crop."""
    from gczoo.seg.train import _losses
    torch.manual_seed(0)
    decode, aux = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[0, :5] = 255
    loss, decode_loss = _losses(lambda x: (decode, aux), torch.zeros(1), masks, 0.4, False)

    def reference(logits):
        up = F.interpolate(logits, size=(8, 8), mode='bilinear', align_corners=False).log_softmax(1)
        keep = masks != 255
        picked = up.gather(1, masks.clamp_max(2)[:, None])[:, 0]
        return -(picked * keep).sum() / masks.numel()
    assert torch.allclose(decode_loss, reference(decode))
    assert torch.allclose(loss, reference(decode) + 0.4 * reference(aux))
    loss, _ = _losses(lambda x: (decode, aux), torch.zeros(1), torch.full((2, 8, 8), 255), 0.4, False)
    assert float(loss) == 0.0


def test_non_finite_weights_are_never_saved(tmp_path):
    """The last step can make the weights NaN after a finite loss: the run 'succeeded' with NaN weights."""
    from gczoo.seg.train import _save
    from gczoo.train.guards import TrainingDiverged
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(float('nan'))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match=r'NaN/inf after iteration 3 \(weight\)'):
        _save(tmp_path, model, optimizer, 3, argparse.Namespace(), [])
    assert list(tmp_path.iterdir()) == []


def test_train_seg_resume_into_another_runs_folder_and_scale_conflict(tmp_path, capsys):
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'last.pth.tar').write_bytes(b'run b')
    argv = _train_args(tmp_path / 'no-data', tmp_path / 'b', '--resume', tmp_path / 'a' / 'last.pth.tar')
    _one_line_exit_2(capsys, argv, 'holds another run')
    assert (tmp_path / 'b' / 'last.pth.tar').read_bytes() == b'run b'
    _one_line_exit_2(capsys, _train_args(tmp_path / 'no-data', tmp_path / 'c', '--scale', '64', '32'), 'contradict')


def test_train_seg_num_classes_defaults_to_the_datasets(tmp_path, capsys, monkeypatch):
    """An untagged model on an ADE20K folder got 19 classes (Cityscapes') and stopped at the first mask over 19."""
    import gczoo.seg.train as train
    for folder in ('images', 'annotations'):
        (tmp_path / 'ade' / folder / 'training').mkdir(parents=True)
    for i in range(2):
        Image.new('RGB', (40, 36)).save(tmp_path / 'ade' / 'images' / 'training' / f'{i}.jpg')
        Image.new('L', (40, 36), 150).save(tmp_path / 'ade' / 'annotations' / 'training' / f'{i}.png')
    monkeypatch.setattr(train, '_train_loop', lambda net, model, *rest: (0, 0.0))  # the setup, not the steps
    argv = _train_args(tmp_path / 'ade', tmp_path / 'o')  # ADE20K's split is 'training': the default on ade20k
    argv[argv.index('cityscapes')] = 'ade20k'
    assert main([str(a) for a in argv]) == 0
    assert json.loads((tmp_path / 'o' / 'results.json').read_text())['num_classes'] == 150
