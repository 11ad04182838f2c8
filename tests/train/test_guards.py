"""gczoo train's guards against silent failure: divergence, two runs on one folder, colliding names,
half-written exports, resuming on other data or another schedule, bad validation images, 16-bit images,
file modes, non-finite results. Each failure is one line and exit 2 through the CLI runner."""
import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _train_utils import CLASSES, assert_same_weights, metrics_of, model_weights, run_train, summary_rows, tiny_args
from gczoo.train import BEST_CHECKPOINT, EXPORT_DIR, load_training_checkpoint
from gczoo.train.build import FolderImages
from gczoo.train.outputs import export_best, write_results
from gczoo.train.rundir import LOCK_FILE, RunLock


def _fails(capsys, argv) -> str:
    assert run_train(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('gczoo train: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


def _copy_run(finished_run: Path, parent: Path, name: str) -> Path:
    copy = parent / name
    shutil.copytree(finished_run, copy)
    return copy


# ---------------------------------------------------------------------------------------------
# divergence


def test_a_diverging_run_stops_at_the_step_and_exports_nothing(capsys, data_dir, tmp_path):
    """--lr 1e10 (a typo'd learning rate) blows the weights up at the first update: the run stops there,
    names the step and the likely cause, writes no NaN checkpoint, no export, no results.json."""
    err = _fails(capsys, tiny_args(data_dir, tmp_path, 'nan', lr=1e10, checkpoint_interval=1, epochs=1))
    assert 'training diverged:' in err and re.search(r'at epoch 0, (after )?update \d+ \(batch \d+/6\)', err)
    assert 'Likely cause: a learning rate too high' in err and 'lower --lr' in err
    run_dir = tmp_path / 'nan'
    assert not (run_dir / EXPORT_DIR).exists() and not (run_dir / 'results.json').exists()
    for ckpt_path in run_dir.glob('*.pth.tar'):
        ckpt = load_training_checkpoint(ckpt_path)
        assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())


def test_results_json_refuses_non_finite_metrics(tmp_path):
    with pytest.raises(ValueError, match=r'not finite numbers: best\.top1, final\.eval_loss'):
        write_results(tmp_path, {'best': {'top1': math.nan}, 'final': {'eval_loss': math.inf}, 'ok': 1.0})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# the run folder


def test_a_second_run_on_a_busy_folder_fails_at_once_and_deletes_nothing(capsys, data_dir, tmp_path):
    """A live run holds OUT/.lock (here: this test process holds it, as a run would). A second run, even
    with --resume auto, stops at once naming the holder's pid and leaves the first run's files alone,
    including its in-progress temporary checkpoint."""
    run_dir = tmp_path / 'busy'
    run_dir.mkdir()
    in_progress = run_dir / '.last.pth.tar.abc123.tmp'
    in_progress.write_bytes(b'the first run is writing this')
    with RunLock(run_dir):
        for extra in ([], ['--resume', 'auto']):
            err = _fails(capsys, tiny_args(data_dir, tmp_path, 'busy', epochs=1) + extra)
            assert f'pid {os.getpid()}' in err and 'in use by another gczoo train run' in err
            assert in_progress.read_bytes() == b'the first run is writing this'
    # the holder is gone: the next run takes the folder and removes what the dead run left half-written
    assert run_train(tiny_args(data_dir, tmp_path, 'busy', epochs=1, no_export=True)) == 0
    assert not in_progress.exists() and (run_dir / LOCK_FILE).is_file()
    # a new run (no --resume) on a folder holding a finished run's checkpoint is refused, nothing touched
    files = lambda: {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != LOCK_FILE}  # noqa: E731
    before = files()
    err = _fails(capsys, tiny_args(data_dir, tmp_path, 'busy', epochs=1))
    assert 'already holds a training run' in err and '--resume auto' in err
    assert files() == before


def test_default_run_names_never_collide(capsys, data_dir, tmp_path, monkeypatch):
    """Two runs started in the same second with the default name get two folders (as timm's get_outdir:
    NAME, NAME-1). The runs stop at --num-classes, after making their folder."""
    import gczoo.train.rundir as rundir
    monkeypatch.setattr(rundir.time, 'strftime', lambda fmt, *a: '20260101-000000')
    for _ in range(2):
        _fails(capsys, tiny_args(data_dir, tmp_path, experiment=None, num_classes=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['20260101-000000-resnet18_gc-32',
                                                         '20260101-000000-resnet18_gc-32-1']


def test_export_is_replaced_in_one_step(finished_run, tmp_path, monkeypatch):
    """A failure while writing the new export (a full disk, here) leaves the old export whole and no
    temporary folder; a finished write replaces it in one rename."""
    import timm
    from timm.data import resolve_data_config
    import gczoo.train.outputs as outputs
    run_dir = _copy_run(finished_run, tmp_path, 'run')
    old = {p.name: p.read_bytes() for p in (run_dir / EXPORT_DIR).iterdir()}
    ckpt = load_training_checkpoint(run_dir / BEST_CHECKPOINT)
    model = timm.create_model('resnet18_gc', num_classes=3)
    real_save = outputs.save_pretrained

    def full_disk(model, out_dir, **kwargs):
        (Path(out_dir) / 'config.json').write_text('{"half": ')
        raise OSError(errno.ENOSPC, 'No space left on device', str(Path(out_dir) / 'model.safetensors'))
    monkeypatch.setattr(outputs, 'save_pretrained', full_disk)
    with pytest.raises(OSError):
        export_best(model, ckpt['state_dict'], 'best', run_dir / EXPORT_DIR, resolve_data_config(model=model), None)
    assert {p.name: p.read_bytes() for p in (run_dir / EXPORT_DIR).iterdir()} == old
    assert not [p for p in run_dir.iterdir() if p.name.startswith('.export')]

    monkeypatch.setattr(outputs, 'save_pretrained', real_save)
    new_weights = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt['state_dict'].items()}
    export_best(model, new_weights, 'best', run_dir / EXPORT_DIR, resolve_data_config(model=model), list(CLASSES))
    exported = timm.create_model(f'local-dir:{run_dir / EXPORT_DIR}', pretrained=True)
    assert_same_weights(exported.state_dict(), new_weights)
    assert not [p for p in run_dir.iterdir() if p.name.startswith('.export')]


def test_output_files_follow_the_umask(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in [finished_run, *finished_run.rglob('*')]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, f'{path}: {oct(path.stat().st_mode & 0o777)}'


# ---------------------------------------------------------------------------------------------
# resuming


def test_resume_with_other_epochs_follows_the_new_schedule(capsys, data_dir, finished_run, tmp_path):
    """As timm's train.py: the schedule is built from the new --epochs. 2 -> 3 epochs trains the third at
    cosine(2/3) of the lr (not at lr 0); 2 -> 1 has nothing left to train and just finishes."""
    longer = _copy_run(finished_run, tmp_path, 'longer')
    assert run_train(tiny_args(data_dir, tmp_path, 'longer', epochs=3, resume='auto')) == 0
    out = capsys.readouterr().out
    assert "the schedule follows this run's --epochs 3" in out and '3 epochs' in out
    rows = summary_rows(longer)
    assert [r['epoch'] for r in rows] == ['0', '1', '2']
    assert metrics_of(rows[:2]) == metrics_of(summary_rows(finished_run))
    assert float(rows[2]['lr']) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))

    shorter = _copy_run(finished_run, tmp_path, 'shorter')
    grown = tmp_path / 'grown'  # the same classes, one more training image: said, not refused
    shutil.copytree(data_dir, grown)
    shutil.copy(grown / 'train' / 'circle' / '000.png', grown / 'train' / 'circle' / 'extra.png')
    assert run_train(tiny_args(grown, tmp_path, 'shorter', epochs=1, resume='auto')) == 0
    out = capsys.readouterr().out
    assert 'nothing left to train' in out
    assert 'the checkpoint trained on 24 train / 12 val images, this data has 25 / 12' in out
    assert len(summary_rows(shorter)) == 2
    assert_same_weights(model_weights(shorter), model_weights(finished_run))


def test_resume_on_data_with_other_classes_is_refused(capsys, data_dir, finished_run, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(data_dir, data)
    for split in ('train', 'val'):
        (data / split / 'square').rename(data / split / 'box')
    _copy_run(finished_run, tmp_path, 'run')
    err = _fails(capsys, tiny_args(data, tmp_path, 'run', epochs=3, resume='auto'))
    assert 'was trained on 3 classes that are not those of' in err
    assert "only in the checkpoint: square" in err and 'only in the data: box' in err


# ---------------------------------------------------------------------------------------------
# images


def test_bad_validation_images_are_skipped_and_counted_never_replaced(capsys, data_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(data_dir, data)
    (data / 'val' / 'circle' / 'broken.png').write_bytes(b'not an image at all')
    assert run_train(tiny_args(data, tmp_path, 'bad', epochs=1, no_export=True)) == 0
    assert 'validation skipped 1 unreadable image(s)' in capsys.readouterr().out
    results = json.loads((tmp_path / 'bad' / 'results.json').read_text())
    assert results['val_images'] == 13 and results['val_images_evaluated'] == 12  # not 13: nothing stood in for it
    assert results['val_images_skipped'] == 1 and results['val_skipped_files'][0].endswith('broken.png')


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """PIL's convert('RGB') clips 16-bit grey to 255 (white); training images are scaled to 8 bits."""
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / 'deep.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I')  # really a 16-bit file
    image, target = FolderImages([(str(tmp_path / 'deep.png'), 2)])[0]
    pixels = np.asarray(image)
    assert image.mode == 'RGB' and target == 2
    assert pixels[0, :, 0].tolist() == [0, 64, 128, 255] and (pixels[..., 0] == pixels[..., 2]).all()


def test_a_single_class_dataset_is_refused_with_a_clear_message(capsys, tmp_path):
    from _train_utils import make_image_folder
    data = make_image_folder(tmp_path / 'one', classes=('circle',))
    err = _fails(capsys, tiny_args(data, tmp_path, 'one', epochs=1))
    assert 'has 1 class (circle): a classifier needs at least 2' in err
