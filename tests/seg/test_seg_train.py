"""gczoo train-seg on a tiny generated Cityscapes folder: it trains (the loss is finite, the outputs are
written and load back), an interrupted run resumed from last.pth.tar ends with exactly the weights of an
uninterrupted one, and bad inputs end in one line."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gczoo.cli import main
from gczoo.seg import create_segmentor


def _folder(root, n=4):
    rng = np.random.default_rng(0)
    for i in range(n):
        img_dir, gt_dir = root / 'leftImg8bit' / 'train' / 'ulm', root / 'gtFine' / 'train' / 'ulm'
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        h, w = 36 + 4 * i, 44
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_dir / f'ulm_{i:06d}_leftImg8bit.png')
        mask = rng.integers(0, 19, (h, w)).astype(np.uint8)
        Image.fromarray(mask).save(gt_dir / f'ulm_{i:06d}_gtFine_labelTrainIds.png')
    return root


def _args(root, out, *extra):
    return ['train-seg', '--model', 'gcnet_r50_d8', '--data-dir', str(root), '--dataset', 'cityscapes',
            '--crop-size', '32', '32', '--no-resize', '-b', '2', '--iters', '4', '--log-interval', '1',
            '--checkpoint-interval', '2', '-j', '0', '--output', str(out), *extra]


@pytest.mark.slow  # ~20 s: 8 training steps of an R50 GCNet on 32x32 crops
def test_train_resume_is_exact(tmp_path, capsys):
    root = _folder(tmp_path / 'cs')
    assert main(_args(root, tmp_path / 'a')) == 0
    assert main(_args(root, tmp_path / 'b', '--stop-at', '2')) == 0
    assert main(_args(root, tmp_path / 'b', '--resume', str(tmp_path / 'b' / 'last.pth.tar'))) == 0
    a, b = load_file(str(tmp_path / 'a' / 'model.safetensors')), load_file(str(tmp_path / 'b' / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / 'a' / 'summary.csv').open()))
    assert [int(r['iter']) for r in rows] == [1, 2, 3, 4] and all(np.isfinite(float(r['loss'])) for r in rows)
    rows_b = list(csv.DictReader((tmp_path / 'b' / 'summary.csv').open()))
    assert [r['loss'] for r in rows_b] == [r['loss'] for r in rows]
    results = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert results['iterations'] == 4 and (tmp_path / 'a' / 'args.yaml').is_file()
    model = create_segmentor('gcnet_r50_d8', checkpoint_path=tmp_path / 'a' / 'model.safetensors')
    assert torch.equal(model.decode_head.conv_seg.weight, a['decode_head.conv_seg.weight'])


def test_bad_inputs_one_line(tmp_path, capsys):
    root = _folder(tmp_path / 'cs', n=1)
    assert main(_args(root, tmp_path / 'o')) == 2  # one image cannot fill a batch of 2
    assert 'cannot fill one batch' in capsys.readouterr().err
    assert main(_args(tmp_path / 'nothing', tmp_path / 'o')) == 2
    assert 'not a folder' in capsys.readouterr().err
    (tmp_path / 'foreign.pth').write_bytes(b'')
    torch.save({'state_dict': {}}, tmp_path / 'foreign.pth')
    root = _folder(tmp_path / 'cs2', n=2)
    assert main(_args(root, tmp_path / 'o', '--resume', str(tmp_path / 'foreign.pth'))) == 2
    err = capsys.readouterr().err
    assert 'not a gczoo train-seg checkpoint' in err and len(err.strip().splitlines()) == 1
    (tmp_path / 'used').mkdir()
    (tmp_path / 'used' / 'last.pth.tar').write_bytes(b'x')
    assert main(_args(root, tmp_path / 'used')) == 2  # an earlier run's folder is not overwritten
    assert 'already holds a run' in capsys.readouterr().err


@pytest.mark.slow  # ~5 s: three steps
def test_divergence_is_one_line(tmp_path, capsys):
    root = _folder(tmp_path / 'cs', n=2)
    argv = _args(root, tmp_path / 'o', '--lr', '1e30', '--min-lr', '1e30')
    argv[argv.index('--iters') + 1] = '3'
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'the loss is' in err[0] and 'lower --lr' in err[0]
    assert not (tmp_path / 'o' / 'model.safetensors').exists() and not (tmp_path / 'o' / 'results.json').exists()
