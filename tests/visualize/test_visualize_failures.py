"""Every way `gczoo visualize` / `gczoo analyze-attention` can fail on a user's input or machine ends as one
line on stderr and exit status 2 (through the one runner, `gczoo.cli`), and leaves no half-written file:
an output folder that cannot be written, a full disk, an empty image folder, an unreadable image, a
checkpoint of another model, and out-of-range flags.
"""
import errno
import os
import tempfile

import numpy as np
import pytest
import timm
import torch
from matplotlib.figure import Figure
from PIL import Image

import gczoo  # noqa: F401  (registers the zoo with timm)
from gczoo.cli import main as cli_main

SIZE = 64
# a small zoo model with spatial maps (GC context masks), fast enough to build in every test
MODEL = 'resnet18_gc'


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fails(capsys, command, *argv):
    """Run ``gczoo COMMAND ARGV``; assert exit 2 and a single stderr line; return that line."""
    rc = cli_main([command, *map(str, argv), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f'gczoo {command}: error: ')
    return lines[0]


def _write_images(folder, n, size=(48, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f'img{i}.png'
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _files(folder):
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*') if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------- output folder

@pytest.mark.parametrize('command', ['visualize', 'analyze-attention'])
def test_output_folder_inside_a_file(tmp_path, capsys, command):
    """Tests run as root, where chmod does not stop writes; a parent that is a regular file always does."""
    blocker = tmp_path / 'results.txt'
    blocker.write_text('not a folder')
    out = blocker / 'maps'
    line = _fails(capsys, command, MODEL, '--img-size', SIZE, '--out', out)
    assert '--out' in line and str(out) in line and 'is a file' in line
    assert blocker.read_text() == 'not a folder'


def test_output_folder_read_only(tmp_path, capsys, monkeypatch):
    """The file system refuses the first file (EROFS at creation): one line, nothing left behind."""
    out = tmp_path / 'maps'
    real_mkstemp = tempfile.mkstemp

    def read_only_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, 'mkstemp', read_only_mkstemp)
    paths = _write_images(tmp_path / 'in', 1)
    line = _fails(capsys, 'visualize', MODEL, *paths, '--img-size', SIZE, '--out', out)
    assert 'Read-only file system' in line and 'img0.png' in line and 'write to another folder' in line
    assert _files(out) == []


def test_analysis_output_folder_not_writable(tmp_path, capsys, monkeypatch):
    """EACCES while writing the analysis: none of the CSV, JSON and PNG is left."""
    out = tmp_path / 'analysis'
    real_mkstemp = tempfile.mkstemp
    calls = []

    def refusing_mkstemp(*args, dir=None, **kwargs):
        # the files are staged in the folder, or (a new folder) in a hidden sibling (gczoo.files.staged_folder)
        if dir is not None and str(dir).startswith((str(out), str(tmp_path / '.analysis.'))):
            calls.append(dir)
            if len(calls) == 3:  # the PNG, after the CSV and JSON were written
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, 'mkstemp', refusing_mkstemp)
    line = _fails(capsys, 'analyze-attention', MODEL, '--img-size', SIZE, '--max-images', 1, '--out', out)
    assert 'Permission denied' in line and 'attention_analysis.png' in line
    assert _files(out) == []


# ------------------------------------------------------------------------------------------- full disk

def test_visualize_full_disk_leaves_only_whole_pngs(tmp_path, capsys, monkeypatch):
    """The disk fills up while the second PNG is written (after part of it reached the file): the first
    PNG is whole, the second does not exist, and no temporary file is left."""
    real_savefig = Figure.savefig
    calls = []

    def savefig_until_full(self, fname, *args, **kwargs):
        calls.append(fname)
        if len(calls) == 2:
            fname.write(b'\x89PNG\r\n\x1a\n partial')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, 'savefig', savefig_until_full)
    paths = _write_images(tmp_path / 'in', 2)
    out = tmp_path / 'maps'
    line = _fails(capsys, 'visualize', MODEL, *paths, '--img-size', SIZE, '--out', out)
    assert 'No space left on device' in line and 'img1.png' in line and 'free some disk space' in line
    assert _files(out) == ['img0.png']
    with Image.open(out / 'img0.png') as img:
        img.load()
        assert img.format == 'PNG'


def test_analysis_full_disk_writes_none_of_its_files(tmp_path, capsys, disk_full_at):
    """ENOSPC when the JSON is flushed to disk: the CSV already written is not left alone without it."""
    disk_full_at(2)
    out = tmp_path / 'analysis'
    line = _fails(capsys, 'analyze-attention', MODEL, '--img-size', SIZE, '--max-images', 1, '--out', out)
    assert 'No space left on device' in line and 'attention_analysis.json' in line
    assert _files(out) == []


# ------------------------------------------------------------------------------------------- images

@pytest.mark.parametrize('layout', ['empty', 'no image files', 'empty val split'])
def test_analyze_empty_folder(tmp_path, capsys, layout):
    data = tmp_path / 'data'
    data.mkdir()
    if layout == 'no image files':
        (data / 'class_a').mkdir()
        (data / 'class_a' / 'notes.txt').write_text('no pictures here')
    elif layout == 'empty val split':
        _write_images(data / 'train' / 'a', 1)
        (data / 'val').mkdir()
    out = tmp_path / 'out'
    line = _fails(capsys, 'analyze-attention', MODEL, '--data-dir', data, '--out', out)
    folder = data / 'val' if layout == 'empty val split' else data
    assert f'--data-dir: {str(folder)!r} has no images' in line
    assert not out.exists()


def _bad_image(folder, kind):
    """A file named like an image that is not one, or a PNG cut short after its header."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{kind.replace(" ", "_")}.png'
    if kind == 'not an image':
        path.write_bytes(b'this is not a PNG')
    else:
        good = _write_images(folder.parent / 'source', 1)[0]
        path.write_bytes(good.read_bytes()[:200])
    return path


@pytest.mark.parametrize('kind', ['not an image', 'truncated'])
def test_visualize_unreadable_image(tmp_path, capsys, kind):
    bad = _bad_image(tmp_path / 'in', kind)
    out = tmp_path / 'out'
    line = _fails(capsys, 'visualize', MODEL, bad, '--img-size', SIZE, '--out', out)
    assert f'IMAGE: {str(bad)!r} is not a readable image' in line
    assert _files(out) == []


@pytest.mark.parametrize('kind', ['not an image', 'truncated'])
def test_analyze_unreadable_image_in_folder(tmp_path, capsys, kind):
    """timm's ImageDataset would substitute the next image and count it twice; here the file is named."""
    data = tmp_path / 'data'
    bad = _bad_image(data, kind)
    _write_images(data / 'more', 2)
    out = tmp_path / 'out'
    line = _fails(capsys, 'analyze-attention', MODEL, '--data-dir', data, '--img-size', SIZE, '--out', out)
    assert f'--data-dir: {str(bad)!r} is not a readable image' in line
    assert _files(out) == []


def test_visualize_decompression_bomb(tmp_path, capsys, monkeypatch):
    """PIL raises DecompressionBombError, which is not an OSError: it is refused like any unreadable image."""
    path = _write_images(tmp_path / 'in', 1, size=(64, 64))[0]
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    line = _fails(capsys, 'visualize', MODEL, path, '--img-size', SIZE, '--out', tmp_path / 'out')
    assert 'DecompressionBombError' in line and str(path) in line


# ------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('form', ['--checkpoint', 'NAME=CHECKPOINT'])
def test_visualize_checkpoint_of_another_model(tmp_path, capsys, form):
    """Weights of resnet18_gc given to resnet26_gc: one short line naming both and the mismatch, not the
    27-line load_state_dict dump."""
    from safetensors.torch import save_file
    path = tmp_path / 'r18.safetensors'
    save_file(timm.create_model('resnet18_gc').state_dict(), str(path))
    argv = ['resnet26_gc', '--checkpoint', path] if form == '--checkpoint' else [f'resnet26_gc={path}']
    line = _fails(capsys, 'visualize', *argv, '--img-size', SIZE, '--out', tmp_path / 'out')
    assert f'--checkpoint {str(path)!r} does not fit \'resnet26_gc\'' in line
    assert 'missing keys' in line and 'tensors of another shape' in line and '(+' in line
    assert len(line) - len(str(path)) < 450, line
    assert not (tmp_path / 'out').exists()


def test_analyze_checkpoint_with_nan_weights(tmp_path, capsys):
    """The shared loading path's checks apply here too: non-finite weights are refused, naming the file."""
    from safetensors.torch import save_file
    state = timm.create_model(MODEL).state_dict()
    state['fc.weight'][0, 0] = float('nan')
    path = tmp_path / 'nan.safetensors'
    save_file(state, str(path))
    line = _fails(capsys, 'analyze-attention', f'{MODEL}={path}', '--img-size', SIZE, '--out', tmp_path / 'out')
    assert str(path) in line and 'NaN' in line


# ------------------------------------------------------------------------------------------- flags

@pytest.mark.parametrize('command, flag, value', [
    ('visualize', '--queries', '0'),
    ('visualize', '--img-size', '-1'),
    ('visualize', '--seed', '-1'),
    ('visualize', '--device', 'cuda:7'),
    ('visualize', '--query-points', 'nan,3'),
    ('analyze-attention', '--queries', '1'),
    ('analyze-attention', '--batch-size', '0'),
    ('analyze-attention', '--max-images', '0'),
    ('analyze-attention', '--img-size', 'big'),
])
def test_out_of_range_flags(tmp_path, capsys, command, flag, value):
    if flag == '--device' and torch.cuda.device_count() > 7:
        pytest.skip('this machine has 8 GPUs')
    line = _fails(capsys, command, MODEL, flag, value, '--out', tmp_path / 'out')
    assert flag in line and value in line
    assert not (tmp_path / 'out').exists()
