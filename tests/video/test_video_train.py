"""gczoo train on a clip folder: a video model fine-tunes inside gczoo's trainer (checkpoints, results,
validation with skipped clips), its checkpoint loads back, and image-only flags are refused in one line."""
import json

import numpy as np
import pytest
import torch

from _train_utils import run_train
from gczoo.video import create_video_model
from gczoo.video.finetune import sample_train_clip

av = pytest.importorskip('av')


def _video(path, frames, seed):
    rng = np.random.default_rng(seed)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('mpeg4', rate=8)
        stream.height, stream.width, stream.pix_fmt = 24, 32, 'yuv420p'
        for _ in range(frames):
            image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def clip_data(tmp_path):
    root = tmp_path / 'data'
    for split, n in (('train', 2), ('validation', 1)):
        for c, name in enumerate(('bowling', 'archery')):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _video(root / split / name / f'{i}.mp4', 10, seed=100 * c + 10 * i + len(split))
    (root / 'validation' / 'archery' / 'broken.mp4').write_bytes(b'garbage')
    return root


def _argv(data, out, *extra):
    return ['--no-progress', '--data-dir', data, '--model', 'i3d_r50', '--img-size', 32, '--batch-size', 2,
            '--epochs', 1, '--workers', 0, '--opt', 'sgd', '--lr', 0.01, '--warmup-epochs', 0, '--seed', 0,
            '--output', out, '--experiment', 'run', '--device', 'cpu', '--model-kwargs', 'clip_len=8',
            'frame_interval=1', *extra]


def test_training_clip_sampling_and_augmentation():
    rng = np.random.RandomState(0)
    idx = sample_train_clip(100, 8, 2, rng)
    assert len(idx) == 8 and (np.diff(idx) == 2).all() and 0 <= idx[0] <= 100 - 16
    assert sample_train_clip(5, 4, 2, rng).tolist() == [0, 2, 4, 1]  # shorter than the clip: loops


@pytest.mark.slow
def test_video_model_fine_tunes_in_gczoo_train(clip_data, tmp_path, capsys):
    # the recipe's start: an ImageNet-style 2D ResNet-50 (timm's init: residual branches zeroed) inflated to 3D
    import timm
    from gczoo.video import inflate_from_2d
    start = create_video_model('i3d_r50', num_classes=2)
    inflate_from_2d(start, timm.create_model('resnet50', num_classes=2))
    torch.save(start.state_dict(), tmp_path / 'inflated.pth')
    assert run_train(_argv(clip_data, tmp_path / 'out', '--initial-checkpoint', tmp_path / 'inflated.pth')) == 0
    out = capsys.readouterr().out
    assert 'not exported' in out and 'do not apply' in out
    run = tmp_path / 'out' / 'run'
    results = json.loads((run / 'results.json').read_text())
    assert results['class_names'] == ['archery', 'bowling'] and results['train_images'] == 4
    assert results['val_images_evaluated'] == 2 and results['val_images_skipped'] == 1
    assert results['export'] is None
    assert np.isfinite(results['final']['train_loss']) and results['final']['eval_loss'] > 0
    model = create_video_model('i3d_r50', pretrained=True, num_classes=2,
                               pretrained_cfg_overlay=dict(file=str(run / 'model_best.pth.tar'))).eval()
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize('flag', [['--channels-last'], ['--cutmix', '1.0'], ['--reprob', '0.25'],
                                  ['--drop-path', '0.1'], ['--grad-checkpointing']])
def test_image_only_flags_are_refused(clip_data, tmp_path, capsys, flag):
    assert run_train(_argv(clip_data, tmp_path / 'out', *flag)) == 2
    err = capsys.readouterr().err.strip()
    assert 'is a video model' in err and flag[0] in err and len(err.splitlines()) == 1


def test_train_transform_on_a_frame_folder(tmp_path):
    from PIL import Image
    from gczoo.video.finetune import TrainClipTransform
    folder = tmp_path / 'clip'
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(folder / f'{i:03d}.png')
    t = TrainClipTransform(4, 1, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), hflip=0.0, scales=(1.0,), center=True)
    np.random.seed(0)
    clip = t(str(folder))
    assert clip.shape == (3, 4, 16, 16)
    first = int(round(float(clip[0, 0, 0, 0]) * 255 / 40))
    assert [round(float(clip[0, k, 0, 0]) * 255 / 40) for k in range(4)] == list(range(first, first + 4))
