"""gczoo eval: ImageNet label order, exact accuracy of a model with a known head, torchrun = one
process, and clear errors for bad input. Tiny images (32x32 crops) and resnet18_gc keep it fast."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import timm
import gczoo  # noqa: F401
from gczoo.evaluate import (
    CSV_COLUMNS, EvalImageFolder, find_eval_folder, main, resolve_class_mapping, scan_image_folder,
)

REPO = Path(__file__).resolve().parent.parent
# tench, goldfish, great white shark: ImageNet indices 0, 1, 2
FIRST_WNIDS = {'n01440764': 0, 'n01443537': 1, 'n01484850': 2}
# tabby cat, cliff dwelling, toilet tissue: far from the start, so sorted-folder numbering (0, 1, 2) is wrong
FAR_WNIDS = {'n02123045': 281, 'n03042490': 500, 'n15075141': 999}
IMAGES_PER_CLASS = (3, 2, 2)  # 7 images: with batch 2 and 2 ranks the last batches are uneven


def _write_images(root: Path, classes, counts=IMAGES_PER_CLASS, suffix='.JPEG', seed=0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in zip(classes, counts):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f'{name}_{i}{suffix}')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp('evaldata')
    _write_images(base / 'imagenet' / 'val', FIRST_WNIDS)
    _write_images(base / 'far' / 'val', FAR_WNIDS, seed=1)
    _write_images(base / 'plain', ('cat', 'dog', 'fish'), suffix='.png', seed=2)  # ImageFolder, no split folder
    return base


@pytest.fixture(scope='module')
def head_ckpt(tmp_path_factory):
    # logits rank goldfish (1) > tench (0) > shark (2) > the rest, for every image
    return _head_checkpoint(tmp_path_factory.mktemp('ckpt') / 'head.safetensors', ranking=(1, 0, 2))


def _head_checkpoint(path: Path, ranking, num_classes=1000) -> Path:
    """resnet18_gc whose logits are a constant: ranking[0] first, ranking[1] second, ..."""
    model = timm.create_model('resnet18_gc', num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for rank, cls in enumerate(ranking):
            model.fc.bias[cls] = len(ranking) - rank
    save_file(model.state_dict(), str(path))
    return path


def _run(argv, tmp_path, capsys):
    out = tmp_path / 'out'
    rc = main(list(argv) + ['--img-size', '32', '-b', '2', '-j', '0', '--no-progress', '--output-dir', str(out)])
    captured = capsys.readouterr()
    return rc, captured, out


def _results(out: Path, stem='resnet18_gc'):
    return json.loads((out / f'{stem}.json').read_text())


# --------------------------------------------------------------------------------------------------
# label mapping


def test_imagenet_folder_maps_to_timm_imagenet_order(data):
    folder = find_eval_folder(data / 'imagenet')
    assert folder == data / 'imagenet' / 'val'
    samples, classes = scan_image_folder(folder)
    assert len(samples) == 7 and classes == sorted(FIRST_WNIDS)
    mapping = resolve_class_mapping(classes, 1000)
    assert mapping.kind == 'imagenet'
    assert mapping.class_to_idx == FIRST_WNIDS


def test_imagenet_subset_far_from_the_start_keeps_imagenet_indices(data):
    _, classes = scan_image_folder(find_eval_folder(data / 'far'))
    mapping = resolve_class_mapping(classes, 1000)
    assert mapping.class_to_idx == FAR_WNIDS  # not 0, 1, 2 as the folder's own order would say


def test_plain_folder_uses_its_own_sorted_classes(data):
    folder = find_eval_folder(data / 'plain')
    assert folder == data / 'plain'
    _, classes = scan_image_folder(folder)
    mapping = resolve_class_mapping(classes, 3)
    assert mapping.kind == 'folder' and mapping.class_to_idx == {'cat': 0, 'dog': 1, 'fish': 2}


def test_label_names_and_class_map_file(data, tmp_path):
    _, classes = scan_image_folder(data / 'plain')
    by_names = resolve_class_mapping(classes, 4, label_names=['fish', 'bird', 'dog', 'cat'])
    assert by_names.kind == 'label_names' and by_names.class_to_idx == {'cat': 3, 'dog': 2, 'fish': 0}
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('dog\ncat\nfish\nbird\n')
    mapped = resolve_class_mapping(classes, 4, class_map=class_map)
    assert mapped.kind == 'class_map' and mapped.class_to_idx == {'cat': 1, 'dog': 0, 'fish': 2}
    class_map.write_text('dog\ncat\n')
    with pytest.raises(ValueError, match='no entry for 1 of the 3 class folders'):
        resolve_class_mapping(classes, 4, class_map=class_map)


def test_class_count_mismatch_says_how_many_of_each(data):
    _, classes = scan_image_folder(data / 'plain')
    with pytest.raises(ValueError, match=r'3 class folders but the model\'s head has 1000 outputs'):
        resolve_class_mapping(classes, 1000)
    with pytest.raises(ValueError, match=r'3 class folders but the model\'s head has 5 outputs'):
        resolve_class_mapping(classes, 5)


# --------------------------------------------------------------------------------------------------
# accuracy


def test_known_head_gets_exact_accuracy(data, head_ckpt, tmp_path, capsys):
    rc, captured, out = _run(['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir', str(data / 'imagenet'),
                              '--crop-pct', '1.0', '--interpolation', 'bicubic'], tmp_path, capsys)
    assert rc == 0, captured.err
    assert "ImageNet class order" in captured.out
    res = _results(out)
    assert res['count'] == 7 and res['label_mapping'] == 'imagenet'
    assert res['top1'] == round(100 * 2 / 7, 4)  # the 2 goldfish images, and nothing else
    assert res['top5'] == 100.0  # the three true classes are the top three logits
    assert res['top1_err'] == round(100 - res['top1'], 4)
    assert res['img_size'] == 32 and res['crop_pct'] == 1.0 and res['interpolation'] == 'bicubic'
    header, row = (out / 'resnet18_gc.csv').read_text().splitlines()
    assert tuple(header.split(',')) == CSV_COLUMNS
    assert row.split(',')[0] == 'resnet18_gc'

    # on a folder whose classes are far from index 0, the head predicting 500 scores exactly its images
    ckpt = _head_checkpoint(tmp_path / 'head500.safetensors', ranking=(500,))
    rc, captured, out = _run(['--model', 'resnet18_gc', '--checkpoint', str(ckpt), '--data-dir', str(data / 'far')],
                             tmp_path, capsys)
    assert rc == 0, captured.err
    assert _results(out)['top1'] == round(100 * 2 / 7, 4)  # n03042490 holds 2 of the 7 images


def test_local_dir_model_with_label_names(data, tmp_path, capsys):
    from gczoo.hub import save_pretrained
    model = timm.create_model('resnet18_gc', num_classes=3)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))  # always 'cat' (index 2 of label_names)
    save_pretrained(model, tmp_path / 'export', label_names=['dog', 'fish', 'cat'])
    rc, captured, out = _run(['--model', f'local-dir:{tmp_path / "export"}', '--data-dir', str(data / 'plain')],
                             tmp_path, capsys)
    assert rc == 0, captured.err
    res = _results(out, 'export')
    assert res['label_mapping'] == 'label_names' and res['architecture'] == 'resnet18_gc'
    assert res['top1'] == round(100 * 3 / 7, 4)  # the 3 'cat' images


def test_distributed_two_processes_match_one(data, tmp_path, capsys):
    # a random 3-class model: predictions and loss differ per image, so a dropped or repeated
    # image (uneven shards: 4 + 3 images, last batches of 2 and 1) would change the numbers
    model = timm.create_model('resnet18_gc', num_classes=3)
    ckpt = tmp_path / 'random.pth'
    torch.save(model.state_dict(), ckpt)
    args = ['--model', 'resnet18_gc', '--checkpoint', str(ckpt), '--data-dir', str(data / 'plain'),
            '--img-size', '32', '-b', '2', '-j', '0', '--no-progress']
    assert main(args + ['--output-dir', str(tmp_path / 'one')]) == 0
    single = _results(tmp_path / 'one')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
         '-m', 'gczoo.evaluate', *args, '--output-dir', str(tmp_path / 'two')],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = _results(tmp_path / 'two')
    assert double['world_size'] == 2 and single['world_size'] == 1
    assert double['count'] == single['count'] == 7
    assert double['top1'] == single['top1'] and double['top5'] == single['top5']
    assert double['loss'] == pytest.approx(single['loss'], rel=1e-5, abs=1e-6)
    assert double['command'].startswith('NPROC=2 scripts/eval.sh')


# --------------------------------------------------------------------------------------------------
# bad input


def test_missing_data_dir(tmp_path, capsys):
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--pretrained', '--data-dir', str(tmp_path / 'nope')],
                           tmp_path, capsys)
    assert rc == 2 and 'does not exist' in captured.err and 'nope' in captured.err
    (tmp_path / 'only_train' / 'train' / 'n01440764').mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no 'val' split folder \(found train\)"):
        find_eval_folder(tmp_path / 'only_train', 'val')


def test_folder_classes_do_not_match_head(data, head_ckpt, tmp_path, capsys):
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir', str(data / 'plain')],
                           tmp_path, capsys)
    assert rc == 2
    assert '3 class folders' in captured.err and '1000 outputs' in captured.err


def test_corrupt_image_skip_or_error(data, head_ckpt, tmp_path, capsys):
    bad = tmp_path / 'bad' / 'val'
    _write_images(bad, FIRST_WNIDS)
    broken = bad / 'n01443537' / 'broken.JPEG'
    broken.write_bytes(b'not a jpeg at all')
    base = ['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir', str(bad.parent)]
    out = tmp_path / 'out'
    rc = main(base + ['--img-size', '32', '-b', '2', '-j', '0', '--no-progress', '--output-dir', str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = _results(out)
    assert res['count'] == 7 and res['skipped_images'] == 1 and res['skipped_files'] == [str(broken)]
    assert res['top1'] == round(100 * 2 / 7, 4)  # the unreadable image is neither counted nor replaced
    assert 'skipped 1 unreadable' in captured.out

    # in a DataLoader worker: the error crosses the process boundary and still names the file
    rc = main(base + ['--img-size', '32', '-b', '2', '-j', '1', '--no-progress', '--output-dir', str(out),
                      '--on-bad-image', 'error'])
    captured = capsys.readouterr()
    assert rc == 2 and str(broken) in captured.err and 'Traceback' not in captured.err


def test_unknown_model_and_missing_weights(data, tmp_path, capsys):
    rc, captured, _ = _run(['--model', 'resnet50_gx', '--pretrained', '--data-dir', str(data / 'imagenet')],
                           tmp_path, capsys)
    assert rc == 2 and "unknown model 'resnet50_gx'" in captured.err and 'resnet50_gc' in captured.err
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--data-dir', str(data / 'imagenet')], tmp_path, capsys)
    assert rc == 2 and 'no weights' in captured.err
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--pretrained', '--data-dir', str(data / 'imagenet')],
                           tmp_path, capsys)
    assert rc == 2 and 'No pretrained weights' in captured.err


def test_checkpoint_that_does_not_fit(data, head_ckpt, tmp_path, capsys):
    ckpt = head_ckpt  # a resnet18_gc checkpoint
    rc, captured, _ = _run(['--model', 'resnet26_gc', '--checkpoint', str(ckpt), '--data-dir', str(data / 'imagenet')],
                           tmp_path, capsys)
    assert rc == 2 and 'does not fit' in captured.err and 'missing keys' in captured.err
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--checkpoint', str(truncated), '--data-dir',
                            str(data / 'imagenet')], tmp_path, capsys)
    assert rc == 2 and 'truncated.safetensors' in captured.err


def test_eval_dataset_rejects_unknown_bad_image_policy():
    with pytest.raises(ValueError, match="on_bad_image must be 'skip' or 'error'"):
        EvalImageFolder([], transform=lambda x: x, on_bad_image='ignore')
