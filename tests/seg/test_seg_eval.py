"""``gczoo eval-seg`` and ``gczoo segment`` on small generated Cityscapes/ADE20K-layout folders: the mIoU equals
an independent numpy computation from ``segment``'s predicted ids; bad inputs end in one line, exit 2."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from gczoo.cli import main
from gczoo.seg import create_segmentor
from gczoo.seg.datasets import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_PALETTE
from gczoo.seg.evaluate import iou_from_confusion

SIZES = [(40, 56), (33, 47), (48, 40)]  # (H, W), non-square, different per image


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A gczoo-layout checkpoint of a CCNet whose predictions vary over the image (random, seeded)."""
    torch.manual_seed(0)
    model = create_segmentor('ccnet_r50_d8', num_classes=19)
    with torch.no_grad():
        model.decode_head.cca.gamma.fill_(0.5)
        model.decode_head.conv_seg.weight.mul_(50)
    path = tmp_path_factory.mktemp('ckpt') / 'ccnet.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _cityscapes(root: Path, masks=None, kind='labelTrainIds'):
    rng, mask_rng = np.random.default_rng(0), np.random.default_rng(5)  # the same images whatever the masks
    for i, (h, w) in enumerate(SIZES):
        city = 'aachen' if i < 2 else 'bremen'
        img_dir, gt_dir = root / 'leftImg8bit' / 'val' / city, root / 'gtFine' / 'val' / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(img_dir / f'{city}_{i:06d}_leftImg8bit.png')
        mask = masks[i] if masks is not None else mask_rng.integers(0, 19, (h, w))
        Image.fromarray(mask.astype(np.uint8)).save(gt_dir / f'{city}_{i:06d}_gtFine_{kind}.png')
    return root


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _numpy_miou(preds, masks, num_classes=19):
    """mmseg's IoUMetric, written out: areas over the dataset, nan-mean over classes with a non-empty union."""
    inter, union, label = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for p, m in zip(preds, masks):
        keep = m != 255
        p, m = p[keep], m[keep]
        i = p[p == m]
        a_i = np.bincount(i, minlength=num_classes)
        a_p, a_m = np.bincount(p, minlength=num_classes), np.bincount(m, minlength=num_classes)
        inter, union, label = inter + a_i, union + a_p + a_m - a_i, label + a_m
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / union
    return 100 * np.nanmean(iou), 100 * inter.sum() / label.sum(), 100 * iou


@pytest.mark.slow  # ~10 s: two commands, an R50 CCNet on three small images
def test_eval_seg_miou_equals_numpy(tmp_path, checkpoint, capsys):
    root = _cityscapes(tmp_path / 'cs')
    images = sorted((root / 'leftImg8bit' / 'val').rglob('*.png'))
    common = ['--model', 'ccnet_r50_d8', '--checkpoint', str(checkpoint), '--no-resize', '--dataset', 'cityscapes']
    code, out, err = _run(capsys, 'segment', *map(str, images), '--out', str(tmp_path / 'pred'), '--ids', *common)
    assert code == 0, err
    preds = [np.asarray(Image.open(tmp_path / 'pred' / f'{p.stem}_ids.png')).astype(np.int64) for p in images]
    assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) > 1  # a non-trivial prediction
    colour = np.asarray(Image.open(tmp_path / 'pred' / f'{images[0].stem}.png'))
    assert colour.shape == (*preds[0].shape, 3)
    assert (colour == np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)[preds[0]]).all()
    # ground truth: the prediction on ~60 % of the pixels, random labels and ignored pixels elsewhere, as raw labelIds
    rng = np.random.default_rng(1)
    to_raw = {t: r for r, t in sorted(CITYSCAPES_ID_TO_TRAINID.items(), reverse=True)}  # trainId -> a raw id
    masks, raw = [], []
    for p in preds:
        m = np.where(rng.random(p.shape) < 0.6, p, rng.integers(0, 19, p.shape))
        m[rng.random(p.shape) < 0.1] = 255
        masks.append(m)
        raw.append(np.vectorize(to_raw.get)(m))
    root = _cityscapes(tmp_path / 'cs_raw', masks=raw, kind='labelIds')
    code, out, err = _run(capsys, 'eval-seg', '--data-dir', str(root), '--output-dir', str(tmp_path / 'res'), '-j', '0',
                          '--no-progress', *common)
    assert code == 0, err
    results = json.loads((tmp_path / 'res' / 'ccnet_r50_d8.json').read_text())
    miou, aacc, iou = _numpy_miou(preds, masks)
    assert results['mIoU'] == pytest.approx(miou, abs=1e-9)
    assert results['aAcc'] == pytest.approx(aacc, abs=1e-9)
    assert [v if v is not None else float('nan') for v in results['IoU']] == pytest.approx(list(iou), abs=1e-9,
                                                                                           nan_ok=True)
    assert f'mIoU {miou:.2f}' in out
    assert (tmp_path / 'res' / 'ccnet_r50_d8.csv').read_text().startswith('class,IoU,Acc\nroad,')


def test_iou_from_confusion_matches_numpy():
    rng = np.random.default_rng(2)
    preds = [rng.integers(0, 5, (7, 9))]
    masks = [np.where(rng.random((7, 9)) < 0.2, 255, rng.integers(0, 4, (7, 9)))]  # class 4 never labelled
    conf = np.zeros((6, 6), dtype=np.int64)
    for p, m in zip(preds, masks):
        keep = m != 255
        np.add.at(conf, (m[keep], p[keep]), 1)
    miou, aacc, iou = _numpy_miou(preds, masks, num_classes=6)
    got = iou_from_confusion(torch.from_numpy(conf))
    assert got['mIoU'] == pytest.approx(miou) and got['aAcc'] == pytest.approx(aacc)
    assert np.isnan(got['IoU'][5]) and got['IoU'][4] == 0.0  # never seen: no IoU; only predicted: 0


@pytest.mark.parametrize('problem, message', [
    ('size', 'must have its image'),
    ('range', 'out of range'),
    ('missing', 'has no ground truth'),
    ('empty', 'no images'),
    ('rgb', 'one channel'),
])
def test_eval_seg_bad_inputs_one_line_exit_2(problem, message, tmp_path, checkpoint, capsys):
    root = _cityscapes(tmp_path / 'cs')
    first = sorted((root / 'gtFine' / 'val').rglob('*.png'))[0]
    if problem == 'size':
        Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(first)
    elif problem == 'range':
        Image.fromarray(np.full((40, 56), 19, dtype=np.uint8)).save(first)
    elif problem == 'missing':
        first.unlink()
    elif problem == 'empty':
        for p in (root / 'leftImg8bit' / 'val').rglob('*.png'):
            p.unlink()
    elif problem == 'rgb':
        Image.fromarray(np.zeros((40, 56, 3), dtype=np.uint8)).save(first)
    code, out, err = _run(capsys, 'eval-seg', '--model', 'ccnet_r50_d8', '--checkpoint', str(checkpoint), '--data-dir',
                          str(root), '--dataset', 'cityscapes', '--no-resize', '-j', '0', '--no-progress')
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_ade20k_reduce_zero_label(tmp_path):
    from gczoo.seg.data import find_samples, read_mask
    (tmp_path / 'images' / 'validation').mkdir(parents=True)
    (tmp_path / 'annotations' / 'validation').mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / 'images' / 'validation' / 'a.jpg')
    mask = np.array([[0, 1, 150, 255, 7]] * 4, dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / 'annotations' / 'validation' / 'a.png')
    [sample] = find_samples(tmp_path, 'ade20k', 'validation')
    assert read_mask(sample, 150)[0].tolist() == [255, 0, 149, 255, 6]
    Image.fromarray(np.full((4, 5), 151, dtype=np.uint8)).save(tmp_path / 'annotations' / 'validation' / 'a.png')
    with pytest.raises(ValueError, match=r'\[151\] out of range'):
        read_mask(sample, 150)


def test_segment_bad_inputs(tmp_path, capsys):
    code, out, err = _run(capsys, 'segment', str(tmp_path / 'nothing.png'), '--model', 'ccnet_r50_d8', '--out',
                          str(tmp_path / 'o'))
    assert code == 2 and 'does not exist' in err and len(err.strip().splitlines()) == 1
    (tmp_path / 'empty').mkdir()
    code, out, err = _run(capsys, 'segment', str(tmp_path / 'empty'), '--model', 'ccnet_r50_d8', '--out',
                          str(tmp_path / 'o'))
    assert code == 2 and 'no images' in err


@pytest.mark.slow
@pytest.mark.ddp
def test_eval_seg_two_processes_match_one(tmp_path, checkpoint, capsys):
    """torchrun with 2 ranks (shards of 2 + 1 images): the confusion matrix summed over ranks gives one
    process's numbers exactly."""
    import os
    import subprocess
    import sys
    root = _cityscapes(tmp_path / 'cs')
    args = ['eval-seg', '--model', 'ccnet_r50_d8', '--checkpoint', str(checkpoint), '--data-dir', str(root),
            '--dataset', 'cityscapes', '--no-resize', '-j', '0', '--no-progress']
    assert _run(capsys, *args, '--output-dir', str(tmp_path / 'one'))[0] == 0
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                           '-m', 'gczoo.cli', *args, '--output-dir', str(tmp_path / 'two')],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / 'one' / 'ccnet_r50_d8.json').read_text())
    two = json.loads((tmp_path / 'two' / 'ccnet_r50_d8.json').read_text())
    assert one['world_size'] == 1 and two['world_size'] == 2
    assert two['pixels'] == one['pixels'] == sum(h * w for h, w in SIZES)
    assert two['mIoU'] == pytest.approx(one['mIoU'], abs=1e-9) and two['IoU'] == pytest.approx(one['IoU'], nan_ok=True)


def test_checkpoint_of_another_class_count_is_refused(checkpoint):
    """checkpoint_path= is the model's own weights: a classifier of another size is an error, never left at init;
    load_segmentor_checkpoint(skip_mismatched_classifier=True) starts a new head on purpose."""
    from gczoo.errors import CheckpointError
    from gczoo.seg import load_segmentor_checkpoint
    with pytest.raises(CheckpointError, match='conv_seg'):
        create_segmentor('ccnet_r50_d8', num_classes=5, checkpoint_path=checkpoint)
    model = create_segmentor('ccnet_r50_d8', num_classes=5)
    skipped = load_segmentor_checkpoint(model, checkpoint, skip_mismatched_classifier=True)
    assert sorted(skipped) == ['auxiliary_head.conv_seg.bias', 'auxiliary_head.conv_seg.weight',
                               'decode_head.conv_seg.bias', 'decode_head.conv_seg.weight']
