"""A hostile user's inputs to the video system (issue 19): each finding of that pass, and what was right
already, as a test. Bad frames, folders, checkpoints and flags end in one line naming what failed."""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import gczoo  # noqa: F401  (registers the zoo models)
from gczoo.cli import main
from gczoo.errors import CheckpointError
from gczoo.video import create_video_model, get_video_tag, inflate_from_2d
from gczoo.video.clips import ClipFolder, ClipSampling, read_clip, scan_clip_folder
from mmaction_reference import Recognizer3D

av = pytest.importorskip('av')
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_video_eval import _write_frames, _write_video  # noqa: E402

TAG = 'i3d_r50.mmaction2_k400'


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    folder = tmp_path / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    yield folder
    torch.hub.set_dir(old)


def _cached(hub_dir):
    """The file name pretrained=True looks for in torch's checkpoint cache."""
    return hub_dir / os.path.basename(get_video_tag(TAG).source)


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------
# frames and clip folders


def test_16_bit_frames_are_scaled_not_clipped_to_white(tmp_path):
    from PIL import Image
    folder = tmp_path / 'clip16'
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 8), 30000, np.uint16)).save(folder / f'{i}.png')  # mode I;16
    frames = read_clip(str(folder), lambda n: np.arange(n))
    assert frames.shape == (3, 6, 8, 3) and frames.dtype == torch.uint8
    assert int(frames[0, 0, 0, 0]) == round(30000 * 255 / 65535)  # 117, not PIL's clipped 255


def test_grey_rgba_and_palette_frames_become_rgb(tmp_path):
    from PIL import Image
    folder = tmp_path / 'mixed_modes'
    folder.mkdir()
    Image.fromarray(np.full((6, 8), 100, np.uint8)).save(folder / '0.png')
    Image.fromarray(np.full((6, 8, 4), 100, np.uint8)).save(folder / '1.png')
    Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).convert('P').save(folder / '2.png')
    frames = read_clip(str(folder), lambda n: np.arange(n))
    assert frames.shape == (3, 6, 8, 3) and int((frames.int() - 100).abs().max()) <= 3  # P: a palette's nearest


def test_frames_of_different_sizes_name_the_sizes(tmp_path):
    from PIL import Image
    folder = tmp_path / 'sizes'
    folder.mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(folder / '0.png')
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(folder / '1.png')
    sampling = ClipSampling(clip_len=2, frame_interval=1, num_clips=1, num_crops=1, resize_short=8, crop_size=8)
    views, _, bad = ClipFolder([(str(folder), 'a')], {'a': 0}, sampling)[0]
    assert views is None and str(folder) in bad and '8x6' in bad and '8x7' in bad


def test_unpadded_frame_names_keep_time_order_and_hidden_files_are_skipped(tmp_path):
    from PIL import Image
    folder = tmp_path / 'clip'
    folder.mkdir()
    for i in (1, 2, 10):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(folder / f'frame_{i}.png')
    (folder / '._frame_1.png').write_bytes(b'AppleDouble metadata, not an image')
    frames = read_clip(str(folder), lambda n: np.arange(n))
    assert frames[:, 0, 0, 0].tolist() == [1, 2, 10]  # not 1, 10, 2


@pytest.mark.parametrize('container', ['mp4', 'mkv'])
def test_a_video_gives_the_chosen_frames_of_a_full_decode(tmp_path, container):
    path = tmp_path / f'v.{container}'
    _write_video(path, frames=9)
    with av.open(str(path)) as c:
        every = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
    seen = []

    def choose(n):
        seen.append(n)
        return np.array([[8, 0], [3, 3]])

    frames = read_clip(str(path), choose)
    assert seen[-1] == len(every) == 9  # chosen from the decoded count, also where the container has none
    assert torch.equal(frames, torch.from_numpy(np.stack([every[i] for i in (8, 0, 3, 3)])))


def test_a_wrong_container_frame_count_is_corrected_by_decoding(tmp_path, monkeypatch):
    from types import SimpleNamespace
    path = tmp_path / 'v.mp4'
    _write_video(path, frames=9)
    real_open = av.open

    class Lying:  # a container whose header claims 100 frames (some muxers write wrong counts)
        def __init__(self, *args, **kwargs):
            self.real = real_open(*args, **kwargs)
            self.streams = SimpleNamespace(video=[SimpleNamespace(frames=100, stream=self.real.streams.video[0])])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

        def decode(self, stream):
            return self.real.decode(stream.stream)

    monkeypatch.setattr(av, 'open', Lying)
    seen = []
    frames = read_clip(str(path), lambda n: seen.append(n) or np.array([n - 1]))
    monkeypatch.undo()
    with av.open(str(path)) as c:
        last = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)][-1]
    assert seen == [100, 9] and torch.equal(frames[0], torch.from_numpy(last))


def test_a_long_video_is_not_held_whole_in_memory(tmp_path):
    import tracemalloc
    path = tmp_path / 'long.mp4'
    _write_video(path, frames=120, size=(64, 96))  # 120 frames x 18 KiB decoded
    tracemalloc.start()
    try:
        frames = read_clip(str(path), lambda n: np.array([0, n - 1]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frames.shape == (2, 64, 96, 3)
    assert peak < 30 * 64 * 96 * 3, peak  # a few frames, not 120


def test_views_of_many_frames_are_resized_in_chunks_as_at_once():
    import torch.nn.functional as F
    from gczoo.video.clips import clip_views
    sampling = ClipSampling(clip_len=20, frame_interval=1, num_clips=2, num_crops=1, resize_short=12, crop_size=12)
    frames = torch.randint(0, 256, (40, 18, 30, 3), dtype=torch.uint8)  # 40 frames: 3 chunks of 16
    views = clip_views(frames, sampling)
    whole = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(12, 20), mode='bilinear', align_corners=False)
    whole = (whole.clamp(0, 255) / 255.0 - torch.tensor(sampling.mean).view(1, 3, 1, 1)) / \
        torch.tensor(sampling.std).view(1, 3, 1, 1)
    expected = whole[:, :, :, 4:16].view(2, 20, 3, 12, 12).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(views, expected, rtol=0, atol=0)


def test_zero_byte_and_one_frame_videos(tmp_path):
    sampling = ClipSampling(clip_len=4, frame_interval=2, num_clips=2, num_crops=3, resize_short=16, crop_size=16)
    (tmp_path / 'zero.mp4').write_bytes(b'')
    _write_video(tmp_path / 'one.mp4', frames=1)
    clips = ClipFolder([(str(tmp_path / 'zero.mp4'), 'a'), (str(tmp_path / 'one.mp4'), 'a')], {'a': 0}, sampling)
    views, _, bad = clips[0]
    assert views is None and 'zero.mp4' in bad and '\n' not in bad
    views, _, bad = clips[1]  # one frame: looped, as mmaction2's out_of_bound_opt='loop'
    assert bad is None and views.shape == (6, 3, 4, 16, 16)


def test_a_folder_of_images_is_named_as_an_image_dataset(tmp_path):
    from PIL import Image
    (tmp_path / 'cat').mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'cat' / '0.jpg')
    with pytest.raises(ValueError, match='holds images directly'):
        scan_clip_folder(tmp_path)


# ------------------------------------------------------------------------------------------------
# eval-video and train on hostile folders and flags


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / 'clips'
    for c, name in enumerate(('a', 'b')):
        _write_frames(root / name / 'x', frames=6, seed=c)
    return root


def _eval_argv(root, *extra):
    return ['eval-video', str(root), '--model', 'i3d_r50', '--num-classes', '2', '--clip-len', '8',
            '--frame-interval', '1', '--num-clips', '1', '--num-crops', '1', '--resize-short', '32', '--crop-size',
            '32', '--workers', '0', '--no-progress', '--device', 'cpu', *extra]


def test_an_unwritable_results_file_fails_before_evaluating(clips, tmp_path, capsys):
    err = _one_line_error(capsys, _eval_argv(clips, '--results-file', str(tmp_path)))
    assert 'is a folder' in err
    (tmp_path / 'afile').write_text('x')
    err = _one_line_error(capsys, _eval_argv(clips, '--results-file', str(tmp_path / 'afile' / 'r.json')))
    assert '--results-file' in err and 'afile' in err
    assert 'top-1' not in capsys.readouterr().out  # nothing was evaluated


@pytest.mark.parametrize('flag', [['--num-clips', '0'], ['--num-clips', '-3'], ['--crop-size', '64'],
                                  ['--clip-len', '4'], ['--model', 'i3d_r50_nl', '--crop-size', '16']])
def test_bad_sampling_flags_are_one_line(clips, capsys, flag):
    err = _one_line_error(capsys, _eval_argv(clips, *flag))
    assert flag[-2] in err or 'needs clips of at least' in err
    assert 'top-1' not in capsys.readouterr().out


def test_eval_video_refuses_to_score_a_random_classifier(clips, tmp_path, capsys):
    torch.save(create_video_model('i3d_r50', num_classes=3).state_dict(), tmp_path / 'three.pth')
    for argv in (_eval_argv(clips, '--checkpoint', str(tmp_path / 'three.pth')),  # --num-classes 2
                 [a for a in _eval_argv(clips, '--checkpoint', str(tmp_path / 'three.pth')) if a != '2'
                  and a != '--num-classes']):  # the default 400
        err = _one_line_error(capsys, argv)
        assert "classifier has 3 classes" in err and '--num-classes 3' in err


def test_a_refused_run_leaves_the_results_file_as_it_was(clips, tmp_path, capsys):
    results = tmp_path / 'results.json'
    results.write_text('{"top1": 1.0}\n')
    state = create_video_model('i3d_r50', num_classes=2).state_dict()
    state['fc.weight'][0, 0] = float('nan')
    torch.save(state, tmp_path / 'nan.pth')
    err = _one_line_error(capsys, _eval_argv(clips, '--checkpoint', str(tmp_path / 'nan.pth'),
                                             '--results-file', str(results)))
    assert 'NaN' in err and results.read_text() == '{"top1": 1.0}\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.') or 'tmp' in p.name] == []


def _train_argv(data, out, *extra):
    return ['train', '--no-progress', '--data-dir', str(data), '--model', 'i3d_r50', '--img-size', '32',
            '--batch-size', '2', '--epochs', '1', '--workers', '0', '--device', 'cpu', '--output', str(out),
            '--model-kwargs', 'clip_len=8', 'frame_interval=1', *extra]


def test_train_refuses_an_empty_class_folder_and_a_folder_of_images(tmp_path, capsys):
    from PIL import Image
    data = tmp_path / 'data'
    for split in ('train', 'validation'):
        for c in ('a', 'b'):
            _write_frames(data / split / c / 'x', frames=4, seed=len(c))
    (data / 'train' / 'empty').mkdir()
    err = _one_line_error(capsys, _train_argv(data, tmp_path / 'out'))
    assert 'empty' in err and 'no clip' in err
    images = tmp_path / 'images'
    for split in ('train', 'validation'):
        for c in ('a', 'b'):
            (images / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / split / c / '0.png')
    err = _one_line_error(capsys, _train_argv(images, tmp_path / 'out'))
    assert 'holds images directly' in err
    (data / 'train' / 'empty').rmdir()
    err = _one_line_error(capsys, _train_argv(data, tmp_path / 'out', 'in_chans=1'))  # a --model-kwargs value
    assert 'in_chans=1' in err and 'RGB' in err
    torch.save(timm.create_model('resnet18', num_classes=2).state_dict(), tmp_path / 'r18.pth')
    err = _one_line_error(capsys, _train_argv(data, tmp_path / 'out', '--initial-checkpoint',
                                              str(tmp_path / 'r18.pth')))
    assert '--initial-checkpoint' in err and 'inflate_from_2d' in err
    argv = _train_argv(data, tmp_path / 'out')
    argv[argv.index('clip_len=8')] = 'clip_len=2'
    err = _one_line_error(capsys, argv)
    assert 'at least 5 frames' in err and '--model-kwargs clip_len' in err
    for bad in ('clip_len=0', 'frame_interval=x'):
        argv = _train_argv(data, tmp_path / 'out')
        argv[argv.index('clip_len=8')] = bad if bad.startswith('clip_len') else 'clip_len=8'
        argv += [] if bad.startswith('clip_len') else [bad]
        err = _one_line_error(capsys, argv)
        assert bad.split('=')[0] in err and 'integer >= 1' in err


def test_eval_video_names_an_empty_class_folder(clips, capsys):
    (clips / 'c').mkdir()
    assert main(_eval_argv(clips, '--num-classes', '3')) == 0
    out = capsys.readouterr().out
    assert "hold no clip (c)" in out and 'over 2 clips' in out


@pytest.mark.slow
def test_an_unreadable_training_clip_is_one_line_naming_it(tmp_path, capsys):
    data = tmp_path / 'data'
    for split in ('train', 'validation'):
        for c in ('a', 'b'):
            _write_frames(data / split / c / 'x', frames=4, seed=len(c))
    (data / 'train' / 'b' / 'x' / 'img_00001.jpg').write_bytes(b'not a jpeg')  # index 1 is read
    err = _one_line_error(capsys, _train_argv(data, tmp_path / 'out'))
    assert 'training clip' in err and str(data / 'train' / 'b' / 'x') in err


# ------------------------------------------------------------------------------------------------
# checkpoints in torch's hub cache under the tag's file name


def test_a_code_running_pickle_is_refused_and_never_run(hub_dir, tmp_path):
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    torch.save({'state_dict': Payload()}, _cached(hub_dir))  # torch.save's zip layout
    with pytest.raises(CheckpointError, match='can run code'):
        create_video_model('i3d_r50', pretrained=True)
    for protocol in (2, 4):  # a bare pickle (4: torch's reader stops at its FRAME opcode)
        with open(_cached(hub_dir), 'wb') as f:
            pickle.dump({'state_dict': Payload()}, f, protocol=protocol)
        with pytest.raises(CheckpointError, match=r'would call (posix|os)\.system .*can run code'):
            create_video_model('i3d_r50', pretrained=True)
    assert not marker.exists()


def test_truncated_and_nan_checkpoints_are_one_line(hub_dir):
    state = Recognizer3D(non_local=False).state_dict()
    torch.save({'state_dict': state}, _cached(hub_dir))
    data = _cached(hub_dir).read_bytes()
    _cached(hub_dir).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        create_video_model('i3d_r50', pretrained=True)
    state['backbone.layer2.0.conv1.conv.weight'][0, 0, 0, 0, 0] = float('nan')
    torch.save({'state_dict': state}, _cached(hub_dir))
    with pytest.raises(CheckpointError, match=r'NaN or infinite values in layer2\.0\.conv1\.weight'):
        create_video_model('i3d_r50', pretrained=True)


def test_tsn_and_slowfast_checkpoints_name_the_mismatch(hub_dir):
    tsn = {k: (v[:, :, 0] if v.dim() == 5 else v) for k, v in Recognizer3D(non_local=False).state_dict().items()}
    torch.save({'state_dict': tsn}, _cached(hub_dir))  # mmaction2's TSN: the same names, 2D kernels
    with pytest.raises(CheckpointError, match=r'conv1\.weight: checkpoint \(64, 3, 7, 7\)'):
        create_video_model('i3d_r50', pretrained=True)
    slowfast = {'backbone.slow_path.conv1.conv.weight': torch.zeros(64, 3, 1, 7, 7),
                'backbone.fast_path.conv1.conv.weight': torch.zeros(8, 3, 5, 7, 7),
                'cls_head.fc_cls.weight': torch.zeros(400, 2304)}
    torch.save({'state_dict': slowfast}, _cached(hub_dir))
    with pytest.raises(CheckpointError, match=r'ResNet3d \(I3D\) backbone .*backbone\.slow_path') as info:
        create_video_model('i3d_r50', pretrained=True)
    assert '\n' not in str(info.value)


# ------------------------------------------------------------------------------------------------
# create_video_model and inflation


def test_a_named_tag_stays_in_the_cfg_without_its_weights_as_timm():
    assert timm.create_model('resnet18.a1_in1k').pretrained_cfg['tag'] == 'a1_in1k'  # timm's behaviour
    model = create_video_model('i3d_r50_nl.mmaction2_k400', pretrained=False)
    assert model.pretrained_cfg['tag'] == 'mmaction2_k400' and model.pretrained_cfg['num_classes'] == 400
    assert create_video_model('i3d_r50', num_classes=0).pretrained_cfg['tag'] == 'mmaction2_k400'
    with pytest.raises(ValueError, match='unknown video tag'):
        create_video_model('i3d_r50.nope', pretrained=False)


def test_pretrained_features_only_and_2d_weights(hub_dir, tmp_path):
    state = Recognizer3D(non_local=False).state_dict()
    torch.save({'state_dict': state}, _cached(hub_dir))
    model = create_video_model('i3d_r50', pretrained=True, num_classes=0)  # the classifier dropped, as timm
    assert isinstance(model.fc, torch.nn.Identity) and model.num_classes == 0
    assert torch.equal(model.conv1.weight, state['backbone.conv1.conv.weight'])
    torch.save(timm.create_model('resnet50').state_dict(), tmp_path / 'r50.pth')
    with pytest.raises(CheckpointError, match='inflate_from_2d'):
        create_video_model('i3d_r50', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'r50.pth')))


def test_in_chans_as_timm(hub_dir):
    model = create_video_model('i3d_r50', in_chans=1, num_classes=0).eval()
    assert model.conv1.in_channels == 1 and model(torch.randn(1, 1, 8, 32, 40)).shape == (1, 2048)
    with pytest.raises(ValueError, match=r'\(B, 1, T, H, W\)'):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match='in_chans must be'):
        create_video_model('i3d_r50', in_chans=0)
    state = Recognizer3D(non_local=False).state_dict()
    torch.save({'state_dict': state}, _cached(hub_dir))
    grey = create_video_model('i3d_r50', pretrained=True, in_chans=1)  # timm's rule: RGB kernels summed
    torch.testing.assert_close(grey.conv1.weight, state['backbone.conv1.conv.weight'].sum(1, keepdim=True))
    two = create_video_model('i3d_r50', pretrained=True, in_chans=2)
    assert two.conv1.weight.shape == (64, 2, 5, 7, 7)


def test_reset_classifier_refuses_a_negative_size():
    model = create_video_model('i3d_r50', num_classes=3)
    with pytest.raises(ValueError, match='num_classes must be'):
        model.reset_classifier(-1)
    model.reset_classifier(0)
    assert isinstance(model.fc, torch.nn.Identity) and model.num_classes == 0


def test_channels_last_3d_and_non_square_clips_match(tmp_path):
    model = create_video_model('i3d_r50_nl', num_classes=5).double().eval()
    x = torch.randn(2, 3, 8, 36, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last_3d))
        one = model(x[:1])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(one, ref[:1], rtol=1e-10, atol=1e-10)  # batch 1


def test_deeper_or_one_channel_2d_resnets_are_refused_by_name():
    with pytest.raises(CheckpointError, match=r'layer3\.6\.conv1\.weight.*deeper ResNet'):
        inflate_from_2d(create_video_model('i3d_r50'), timm.create_model('resnet101'))
    grey_2d = timm.create_model('resnet50', in_chans=1)
    with pytest.raises(CheckpointError, match='in_chans=1'):
        inflate_from_2d(create_video_model('i3d_r50'), grey_2d)
    model_3d = create_video_model('i3d_r50', in_chans=1, num_classes=1000)
    report = inflate_from_2d(model_3d, grey_2d)
    assert 'conv1.weight' in report.inflated
    torch.testing.assert_close(model_3d.conv1.weight.sum(2), grey_2d.conv1.weight)


@pytest.mark.slow
def test_full_size_model_scripts_and_exports_at_batch_1():
    torch.manual_seed(0)
    model = create_video_model('i3d_r50_nl').eval()
    x = torch.randn(1, 3, 32, 224, 224)
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)(x)
        exported = torch.export.export(model, (x,)).module()(x)
    assert ref.shape == (1, 400)
    torch.testing.assert_close(scripted, ref)
    torch.testing.assert_close(exported, ref)


@pytest.mark.slow
def test_kill_9_mid_run_leaves_nothing_half_written(tmp_path):
    import signal
    import subprocess
    root = tmp_path / 'clips'
    for c in ('a', 'b'):
        for i in range(30):
            _write_frames(root / c / f'x{i}', frames=4, seed=i)
    results = tmp_path / 'results.json'
    results.write_text('{"earlier": true}\n')
    argv = _eval_argv(root, '--results-file', str(results))[1:]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-m', 'gczoo.video.evaluate', *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert 'gczoo eval-video: i3d_r50' in proc.stdout.readline()  # evaluating now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert results.read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['clips', 'results.json']  # no temporary file left
