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
from gczoo.cli import run_command
from gczoo.evaluate import CSV_COLUMNS, EvalImageFolder, find_eval_folder, resolve_class_mapping, scan_image_folder


def main(argv):
    return run_command('eval', argv)  # through the CLI runner, as `gczoo eval` runs

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


@pytest.mark.slow
@pytest.mark.ddp
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


def test_unknown_model_and_missing_weights(data, tmp_path, capsys, monkeypatch):
    rc, captured, _ = _run(['--model', 'resnet50_gx', '--pretrained', '--data-dir', str(data / 'imagenet')],
                           tmp_path, capsys)
    assert rc == 2 and "unknown model 'resnet50_gx'" in captured.err and 'resnet50_gc' in captured.err
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--data-dir', str(data / 'imagenet')], tmp_path, capsys)
    assert rc == 2 and 'no weights' in captured.err
    from huggingface_hub import constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # the default tag's source, not in an empty cache
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_hub'))
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--pretrained', '--data-dir', str(data / 'imagenet')],
                           tmp_path, capsys)
    assert rc == 2 and 'timm/resnet18.a1_in1k' in captured.err and captured.err.count('\n') == 1


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


# --------------------------------------------------------------------------------------------------
# timm validate.py's flags and results file


def test_results_file_csv_and_json_like_validate_py(data, head_ckpt, tmp_path, capsys):
    common = ['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir', str(data / 'imagenet'),
              '--img-size', '32', '-b', '4', '-j', '0', '--no-progress']
    assert main(common + ['--results-file', str(tmp_path / 'r.csv')]) == 0, capsys.readouterr().err
    header, row = (tmp_path / 'r.csv').read_text().splitlines()
    assert tuple(header.split(',')) == CSV_COLUMNS and row.startswith('resnet18_gc,28.5714,')
    assert main(common + ['--results-file', str(tmp_path / 'r.json'), '--results-format', 'json']) == 0
    assert json.loads((tmp_path / 'r.json').read_text())['top1'] == round(100 * 2 / 7, 4)
    assert not (tmp_path / 'out').exists()  # --output-dir is gczoo's extra, not a default


def test_checkpoint_folder_evaluates_every_checkpoint_sorted_by_top1(data, tmp_path, capsys):
    folder = tmp_path / 'ckpts'
    folder.mkdir()
    _head_checkpoint(folder / 'goldfish.safetensors', ranking=(1, 0, 2))  # 2/7
    _head_checkpoint(folder / 'tench.safetensors', ranking=(0, 1, 2))  # 3/7
    (folder / 'notes.txt').write_text('not a checkpoint')
    rc = main(['--model', 'resnet18_gc', '--checkpoint', str(folder), '--data-dir', str(data / 'imagenet'),
               '--img-size', '32', '-b', '4', '-j', '0', '--no-progress', '--results-file', str(tmp_path / 'all.csv')])
    assert rc == 0, capsys.readouterr().err
    lines = (tmp_path / 'all.csv').read_text().splitlines()
    assert lines[0].endswith(',checkpoint') and len(lines) == 3
    assert lines[1].endswith('tench.safetensors') and lines[2].endswith('goldfish.safetensors')


def test_use_ema_picks_the_ema_weights(data, tmp_path, capsys):
    goldfish = timm.create_model('resnet18_gc', num_classes=1000).state_dict()
    tench = {k: v.clone() for k, v in goldfish.items()}
    for state, cls in ((goldfish, 1), (tench, 0)):
        state['fc.weight'].zero_()
        state['fc.bias'].zero_()
        state['fc.bias'][cls] = 1.0
    ckpt = tmp_path / 'train.pth.tar'
    torch.save({'state_dict': goldfish, 'state_dict_ema': tench}, ckpt)
    base = ['--model', 'resnet18_gc', '--checkpoint', str(ckpt), '--data-dir', str(data / 'imagenet'),
            '--img-size', '32', '-b', '4', '-j', '0', '--no-progress', '--results-format', 'json']
    assert main(base + ['--results-file', str(tmp_path / 'plain.json')]) == 0
    assert main(base + ['--use-ema', '--results-file', str(tmp_path / 'ema.json')]) == 0
    assert json.loads((tmp_path / 'plain.json').read_text())['top1'] == round(100 * 2 / 7, 4)
    assert json.loads((tmp_path / 'ema.json').read_text())['top1'] == round(100 * 3 / 7, 4)


def test_preprocessing_flags_reach_the_transform(data, head_ckpt, tmp_path, capsys):
    rc, captured, out = _run(['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir',
                              str(data / 'imagenet'), '--crop-mode', 'squash', '--mean', '0.5', '--std', '0.25'],
                             tmp_path, capsys)
    assert rc == 0, captured.err
    config = _results(out)['data_config']
    assert config['crop_mode'] == 'squash' and config['mean'] == [0.5] * 3 and config['std'] == [0.25] * 3


def test_one_channel_model(data, tmp_path, capsys):
    model = timm.create_model('resnet18_gc', num_classes=3, in_chans=1)
    ckpt = tmp_path / 'gray.safetensors'
    save_file(model.state_dict(), str(ckpt))
    rc, captured, out = _run(['--model', 'resnet18_gc', '--checkpoint', str(ckpt), '--in-chans', '1',
                              '--data-dir', str(data / 'plain')], tmp_path, capsys)
    assert rc == 0, captured.err
    assert _results(out)['data_config']['input_size'] == [1, 32, 32]


@pytest.mark.parametrize('flag', [['--crop-pct', '0'], ['--crop-pct', '1.5'], ['-b', '0'], ['--workers', '-1'],
                                  ['--device', 'cuda:7'], ['--img-size', 'nan']])
def test_bad_flags_are_one_line(flag, data, head_ckpt, tmp_path, capsys):
    if flag[0] == '--device' and torch.cuda.device_count() > 7:
        pytest.skip('this machine has 8 GPUs')
    rc, captured, _ = _run(['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir',
                            str(data / 'imagenet')] + flag, tmp_path, capsys)
    assert rc == 2 and captured.err.count('\n') == 1 and flag[0] in captured.err


def test_nan_and_integer_weights_are_refused(data, tmp_path, capsys):
    state = timm.create_model('resnet18_gc', num_classes=1000).state_dict()
    nan_state = dict(state, **{'layer1.0.conv1.weight': torch.full_like(state['layer1.0.conv1.weight'], float('nan'))})
    save_file(nan_state, str(tmp_path / 'nan.safetensors'))
    save_file({k: v.to(torch.int64) if v.is_floating_point() else v for k, v in state.items()},
              str(tmp_path / 'int.safetensors'))
    for name, expected in (('nan', 'NaN or infinite values in layer1.0.conv1.weight'), ('int', 'non-floating')):
        rc, captured, out = _run(['--model', 'resnet18_gc', '--checkpoint', str(tmp_path / f'{name}.safetensors'),
                                  '--data-dir', str(data / 'imagenet')], tmp_path, capsys)
        assert rc == 2 and expected in captured.err and captured.err.count('\n') == 1
        assert not out.exists()  # no result written for weights that measure nothing


def test_unwritable_output_and_full_disk_are_one_line(data, head_ckpt, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    base = ['--model', 'resnet18_gc', '--checkpoint', str(head_ckpt), '--data-dir', str(data / 'imagenet'),
            '--img-size', '32', '-b', '4', '-j', '0', '--no-progress']
    assert main(base + ['--results-file', str(blocker / 'r.csv')]) == 2  # a file where a folder should be
    err = capsys.readouterr().err
    assert err.startswith('gczoo eval: error:') and err.count('\n') == 1 and 'a_file' in err

    import errno
    import gczoo.files

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(gczoo.files.os, 'fsync', full_disk)
    assert main(base + ['--results-file', str(tmp_path / 'r.csv')]) == 2
    err = capsys.readouterr().err
    assert 'No space left on device' in err and 'free some disk space' in err and err.count('\n') == 1
    assert not (tmp_path / 'r.csv').exists() and not list(tmp_path.glob('.r.csv*'))  # nothing half-written


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from gczoo.evaluate import decode_image
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    Image.fromarray(ramp).save(tmp_path / 'deep.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
    pixels = np.asarray(decode_image(str(tmp_path / 'deep.png')))
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert (pixels[..., 0] == expected).all() and pixels.max() < 255  # white only where the image is


def test_validate_reports_a_nan_loss_instead_of_dropping_it():
    """torchmetrics' SumMetric drops NaN by default: a diverged model reported eval_loss 0.0."""
    from gczoo.evaluate import validate

    class Diverged(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3)
            out[0] = float('nan')
            return out

    loader = [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))]
    metrics = validate(Diverged(), loader, num_classes=3)
    assert metrics['count'] == 2 and np.isnan(metrics['loss'])
