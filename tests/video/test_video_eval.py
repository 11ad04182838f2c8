"""gczoo eval-video on a tiny generated clip folder (videos through PyAV and frame folders), mmaction2's
test-time sampling, averaged softmax scores, bad clips skipped and counted, one-line errors."""
import json

import numpy as np
import pytest
import torch

from gczoo.cli import main
from gczoo.video.clips import ClipSampling, clip_views, crop_offsets, sample_test_clips, scan_clip_folder
from gczoo.video.evaluate import ViewAverage, map_classes

av = pytest.importorskip('av')


def _write_video(path, frames=12, size=(24, 32), seed=0):
    rng = np.random.default_rng(seed)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('mpeg4', rate=8)
        stream.height, stream.width, stream.pix_fmt = size[0], size[1], 'yuv420p'
        for _ in range(frames):
            image = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_frames(folder, frames=10, size=(20, 30), seed=1):
    from PIL import Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(frames):
        Image.fromarray(rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)).save(folder / f'img_{i:05d}.jpg')


@pytest.fixture
def clip_folder(tmp_path):
    root = tmp_path / 'clips'
    for c, name in enumerate(['archery', 'bowling']):
        (root / name).mkdir(parents=True)
        _write_video(root / name / 'a.mp4', seed=c)
        _write_frames(root / name / 'b', seed=10 + c)
    (root / 'bowling' / 'broken.mp4').write_bytes(b'not a video at all')
    (root / 'archery' / 'notes.txt').write_text('ignored: not a clip')
    return root


def test_test_time_sampling_is_mmaction2s():
    # 300 frames, 32 x 2 frames, 10 clips: offsets round(k * (300 - 63) / 9), indices 2 apart
    idx = sample_test_clips(300, 32, 2, 10)
    assert idx.shape == (10, 32) and idx[0, 0] == 0 and idx[-1, 0] == 237 and idx[1, 0] == round(237 / 9)
    assert (np.diff(idx, axis=1) == 2).all()
    short = sample_test_clips(20, 32, 2, 1)  # shorter than a clip: offset 0, indices loop
    assert short[0, 0] == 0 and short[0, 10] == 0 and short.max() == 18  # 20, 22, ... loop to 0, 2, ...
    assert crop_offsets(256, 340, 256, 3) == [(0, 0), (0, 84), (0, 42)]  # left, right, middle
    assert crop_offsets(340, 256, 256, 3) == [(0, 0), (84, 0), (42, 0)]
    assert crop_offsets(256, 340, 224, 1) == [(16, 58)]


def test_views_are_resized_cropped_and_normalised():
    s = ClipSampling(clip_len=4, frame_interval=1, num_clips=2, num_crops=3, resize_short=16, crop_size=16,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frames = torch.full((8, 20, 40, 3), 255, dtype=torch.uint8)
    views = clip_views(frames, s)
    assert views.shape == (6, 3, 4, 16, 16)
    torch.testing.assert_close(views, torch.ones_like(views))


def test_view_average_is_the_mean_softmax():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]
    views = torch.randn(2, 4, 3, 1, 1, 1)
    out = ViewAverage(Fixed())(views)
    expected = views.flatten(2)[..., :3].softmax(-1).mean(1).log()
    torch.testing.assert_close(out, expected)


@pytest.mark.slow
def test_eval_video_skips_and_counts_bad_clips(clip_folder, tmp_path, capsys):
    results_file = tmp_path / 'results.json'
    code = main(['eval-video', str(clip_folder), '--model', 'i3d_r50', '--num-classes', '2', '--clip-len', '8',
                 '--frame-interval', '1', '--num-clips', '2', '--num-crops', '3', '--resize-short', '32',
                 '--crop-size', '32', '-j', '0', '--device', 'cpu', '--no-progress',
                 '--results-file', str(results_file)])
    assert code == 0
    out = capsys.readouterr().out
    assert 'skipped 1 unreadable clip' in out and 'broken.mp4' in out
    results = json.loads(results_file.read_text())
    assert results['count'] == 4 and results['skipped_clips'] == 1
    assert results['top5'] == 100.0 and results['top1'] in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert results['sampling']['num_clips'] == 2 and results['sampling']['num_crops'] == 3


def test_eval_video_errors_are_one_line(clip_folder, tmp_path, capsys):
    assert main(['eval-video', str(tmp_path / 'nowhere'), '--num-classes', '2']) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert main(['eval-video', str(clip_folder), '--model', 'i3d_r50']) == 2  # 400 outputs, 2 folders
    err = capsys.readouterr().err
    assert '2 class folders but the model has 400 outputs' in err and len(err.strip().splitlines()) == 1
    assert main(['eval-video', str(clip_folder), '--num-classes', '2', '--crop-size', '300']) == 2
    assert 'crops must fit' in capsys.readouterr().err


def test_class_map_matches_underscores_to_spaces(tmp_path, clip_folder):
    label_map = tmp_path / 'label_map.txt'
    label_map.write_text('abseiling\narchery\nbowling\n')
    assert map_classes(['archery', 'bowling'], 3, str(label_map)) == {'archery': 1, 'bowling': 2}
    assert map_classes(['air_drumming'], 400, _map(tmp_path)) == {'air_drumming': 0}
    with pytest.raises(ValueError, match='no entry'):
        map_classes(['archery', 'yoga'], 3, str(label_map))
    samples, classes = scan_clip_folder(clip_folder)
    assert classes == ['archery', 'bowling'] and len(samples) == 5  # notes.txt is not a clip


def _map(tmp_path):
    path = tmp_path / 'k400.txt'
    path.write_text('air drumming\n')
    return str(path)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_match_one(clip_folder, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gczoo.video import create_video_model
    ckpt = tmp_path / 'random.pth'
    torch.save(create_video_model('i3d_r50', num_classes=2).state_dict(), ckpt)
    args = ['--model', 'i3d_r50', '--checkpoint', str(ckpt), '--num-classes', '2', '--clip-len', '8',
            '--frame-interval', '1', '--num-clips', '2', '--num-crops', '1', '--resize-short', '32', '--crop-size',
            '32', '-j', '0', '--device', 'cpu', '--no-progress']
    assert main(['eval-video', str(clip_folder), *args, '--results-file', str(tmp_path / 'one.json')]) == 0
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m',
         'gczoo.video.evaluate', str(clip_folder), *args, '--results-file', str(tmp_path / 'two.json')],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('one', 'two'))
    assert two['world_size'] == 2 and one['world_size'] == 1
    assert two['count'] == one['count'] == 4 and two['skipped_clips'] == one['skipped_clips'] == 1
    assert two['top1'] == one['top1'] and two['loss'] == pytest.approx(one['loss'], rel=1e-5, abs=1e-6)


def test_non_finite_scores_are_refused():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float('nan'))
    with pytest.raises(ValueError, match='non-finite scores'):
        ViewAverage(Broken())(torch.zeros(1, 2, 3, 1, 1, 1))
