"""A hostile user's pass over the segmentation system (issue 18): every input that used to end in a traceback,
a silent wrong answer or an overwritten file, each now one line (exit 2 through the CLI) or the right result."""
import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gczoo.cli import main
from gczoo.errors import CheckpointError, GczooError
from gczoo.models.sources import url_cached_path
from gczoo.seg import create_segmentor, get_seg_tag
from gczoo.seg.data import SegSample, find_samples, read_image, read_mask
from gczoo.seg.inference import check_slide_window, predict_logits, rescale_size


def _one_line_exit_2(capsys, argv, message):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    return err[0]


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """``weights(num_classes)``: a gczoo-layout GCNet-R50 file with that many classes (random, seeded; cached)."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in create_segmentor('gcnet_r50_d8').state_dict().items()}
    folder, made = tmp_path_factory.mktemp('weights'), {}

    def path(num_classes=19):
        if num_classes not in made:
            for head in ('decode_head', 'auxiliary_head'):
                weight = state[f'{head}.conv_seg.weight']
                state[f'{head}.conv_seg.weight'] = torch.randn(num_classes, *weight.shape[1:])
                state[f'{head}.conv_seg.bias'] = torch.zeros(num_classes)
            made[num_classes] = folder / f'gcnet{num_classes}.safetensors'
            save_file(state, str(made[num_classes]))
        return made[num_classes]
    return path




# ---- images and masks ---------------------------------------------------------------------------------------------

def test_decompression_bomb_is_one_value_error(tmp_path, monkeypatch):
    """PIL raises DecompressionBombError (not an OSError): it escaped as a traceback from the loader."""
    Image.new('RGB', (40, 40)).save(tmp_path / 'bomb.png')
    Image.new('L', (40, 40)).save(tmp_path / 'mask.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # 1600 pixels > 2 x 100: PIL's error, not its warning
    with pytest.raises(ValueError, match='bomb.png.*DecompressionBombError'):
        read_image(tmp_path / 'bomb.png')
    with pytest.raises(ValueError, match='mask.png.*DecompressionBombError'):
        read_mask(SegSample(tmp_path / 'bomb.png', tmp_path / 'mask.png', 'trainIds'), 19)
    monkeypatch.undo()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / 't.png')
    data = (tmp_path / 't.png').read_bytes()
    (tmp_path / 't.png').write_bytes(data[:len(data) // 2])  # truncated: already one line, kept so
    with pytest.raises(ValueError, match="t.png' cannot be decoded.*truncated"):
        read_image(tmp_path / 't.png')


def test_jpeg_mask_is_refused_png_modes_are_ids(tmp_path):
    """A JPEG saved under the mask's .png name was read silently (its ids blurred by compression); 16-bit and
    palette-mode PNGs hold ids and stay accepted; 34 in Cityscapes labelIds (raw ids end at 33) is refused."""
    ids = np.array([[0, 3, 18, 255]] * 3, dtype=np.uint8)
    Image.fromarray(ids).save(tmp_path / 'jpeg_gtFine_labelTrainIds.png', format='JPEG')
    sample = SegSample(tmp_path / 'x.png', tmp_path / 'jpeg_gtFine_labelTrainIds.png', 'trainIds')
    with pytest.raises(ValueError, match='JPEG file: lossy'):
        read_mask(sample, 19)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / 'm16.png')
    palette = Image.fromarray(ids).convert('P')
    palette.putpalette([v % 256 for v in range(768)])
    palette.save(tmp_path / 'mp.png')
    for name in ('m16.png', 'mp.png'):
        got = read_mask(SegSample(tmp_path / 'x.png', tmp_path / name, 'trainIds'), 19)
        assert got.tolist() == ids.tolist(), name
    Image.fromarray(np.full((3, 4), 34, dtype=np.uint8)).save(tmp_path / 'raw.png')
    with pytest.raises(ValueError, match=r'\[34\] out of range for Cityscapes labelIds'):
        read_mask(SegSample(tmp_path / 'x.png', tmp_path / 'raw.png', 'labelIds'), 19)


def test_ade20k_nested_folders_are_found_hidden_files_skipped(tmp_path):
    """mmseg lists ADE20K-layout folders recursively; gczoo listed only the top folder (silently fewer images)."""
    for rel in ('a', 'sub/b', 'sub/deeper/c'):
        (tmp_path / 'images' / 'validation' / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / 'annotations' / 'validation' / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (5, 4)).save(tmp_path / 'images' / 'validation' / f'{rel}.jpg')
        Image.new('L', (5, 4)).save(tmp_path / 'annotations' / 'validation' / f'{rel}.png')
    (tmp_path / 'images' / 'validation' / '._a.jpg').write_bytes(b'macOS resource fork')
    samples = find_samples(tmp_path, 'ade20k', 'validation')
    root = tmp_path / 'annotations' / 'validation'
    assert [s.mask for s in samples] == [root / 'a.png', root / 'sub' / 'b.png', root / 'sub' / 'deeper' / 'c.png']
    (root / 'sub' / 'b.png').unlink()
    with pytest.raises(ValueError, match=r"b.jpg' has no ground truth: expected .*sub/b.png"):
        find_samples(tmp_path, 'ade20k', 'validation')


# ---- inference windows --------------------------------------------------------------------------------------------

def test_slide_stride_larger_than_crop_is_a_value_error():
    """A stride beyond the crop leaves pixels no crop covers: it was a bare AssertionError after all the crops."""
    def model(x):
        return x[:, :2]
    x = torch.randn(1, 3, 20, 30)
    with pytest.raises(ValueError, match=r'stride \(16, 16\) is larger than crop_size \(8, 8\)'):
        predict_logits(model, x, mode='slide', crop_size=(8, 8), stride=(16, 16))
    for crop, stride in [((8, 8), (0, 4)), ((8, 8), (-1, 4)), ((8.0, 8), (4, 4)), ((8,), (4, 4))]:
        with pytest.raises(ValueError, match='two positive ints'):
            check_slide_window(crop, stride)
    assert check_slide_window([9, 7], (9, 1)) == ((9, 7), (9, 1))  # a crop not divisible by 8 is fine
    # a crop bigger than the image: one crop, the image's own size (mmseg's slide_inference)
    assert torch.equal(predict_logits(model, x, mode='slide', crop_size=(64, 64), stride=(32, 32)), x[:, :2])


def test_rescale_size_never_gives_an_empty_side():
    """A 1-pixel-wide strip resized to a small scale rounded to width 0: F.interpolate's RuntimeError."""
    assert rescale_size(10000, 1, (512, 256)) == (512, 1)
    assert rescale_size(512, 1024, (2048, 1024)) == (1024, 2048)  # mmcv's keep-ratio result unchanged


def test_eval_seg_bad_slide_window_fails_before_reading_images(tmp_path, capsys):
    line = _one_line_exit_2(capsys, ['eval-seg', '-m', 'ccnet_r50_d8', '--data-dir', tmp_path / 'not-read',
                                     '--dataset', 'cityscapes', '--mode', 'slide', '--crop-size', '8', '8',
                                     '--stride', '9', '4'], 'larger than crop_size')
    assert '--stride' in line


# ---- gczoo segment --------------------------------------------------------------------------------------------------

def test_segment_never_overwrites_its_inputs_or_its_own_outputs(tmp_path, capsys):
    images = tmp_path / 'imgs'
    images.mkdir()
    Image.new('RGB', (24, 20), (10, 200, 30)).save(images / 'a.png')
    before = (images / 'a.png').read_bytes()
    (images / 'notes.txt').write_text('not an image')
    _one_line_exit_2(capsys, ['segment', images, '-m', 'ccnet_r50_d8', '--out', images], 'would overwrite the input')
    assert (images / 'a.png').read_bytes() == before
    Image.new('RGB', (24, 20)).save(images / 'a_ids.jpg')  # its colour PNG is a.png's --ids PNG
    _one_line_exit_2(capsys, ['segment', images, '-m', 'ccnet_r50_d8', '--out', tmp_path / 'o', '--ids'],
                     "a_ids.png'")
    assert not (tmp_path / 'o').exists()
    for flag, values in (('--scale', ('0', '0')), ('--stride', ('-2', '4')), ('--crop-size', ('0', '8'))):
        _one_line_exit_2(capsys, ['segment', images / 'a.png', '-m', 'ccnet_r50_d8', '--out', tmp_path / 'o',
                                  flag, *values], 'expected an integer >= 1')


# ---- create_segmentor and checkpoints ----------------------------------------------------------------------

def test_one_class_is_refused_a_tag_without_pretrained_is_its_config(monkeypatch):
    """num_classes=1 built a head whose argmax is 0 everywhere and whose cross-entropy is always 0."""
    with pytest.raises(ValueError, match='num_classes must be an int >= 2'):
        create_segmentor('gcnet_r50_d8', num_classes=1)
    with pytest.raises(ValueError, match='num_classes must be an int >= 2'):
        create_segmentor('gcnet_r50_d8', num_classes=0)
    import gczoo.seg.create as create

    def no_fetch(*args, **kwargs):
        raise AssertionError('pretrained=False fetched weights')
    monkeypatch.setattr(create, 'fetch_url', no_fetch)
    model = create_segmentor('gcnet_r50_d8.ade20k_512x512_80k')  # timm: the tag's config, no weights
    assert model.num_classes == 150 and model.pretrained_cfg['tag'] == 'ade20k_512x512_80k'


def test_odd_sizes_batch_and_channels_last_in_float64():
    """97 x 129 (odd, non-square) at batch 2: each image's logits are its own (batch 1) and channels_last
    computes the same function, in float64."""
    torch.manual_seed(0)
    model = create_segmentor('ccnet_r50_d8', num_classes=3).eval().double()
    with torch.no_grad():
        model.decode_head.cca.gamma.fill_(0.7)  # the attention on (it starts at 0)
        x = torch.randn(2, 3, 97, 129, dtype=torch.float64)
        both = model(x)
        assert both.shape == (2, 3, 97, 129)
        torch.testing.assert_close(both[1:], model(x[1:]), rtol=1e-10, atol=1e-10)
        last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(last, both, rtol=1e-10, atol=1e-10)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_code_running_pickle_truncated_file_and_foreign_model_are_refused(tmp_path, monkeypatch):
    tag = get_seg_tag('ccnet_r50_d8', 'cityscapes_512x1024_80k')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    path = url_cached_path(tag.source)
    path.parent.mkdir(parents=True)
    marker = tmp_path / 'payload-ran'
    torch.save({'state_dict': {'backbone.stem.0.weight': torch.zeros(1)}, 'meta': _Payload(str(marker))}, path)
    with pytest.raises(GczooError, match=path.name):
        create_segmentor(tag.name, pretrained=True)
    assert not marker.exists()  # torch.load(weights_only=True): refused, never run

    model = create_segmentor('ccnet_r50_d8')
    state = {}
    for key, value in model.state_dict().items():  # mmseg's layout of the shared ResNetV1c body
        key = key.replace('backbone.conv1.', 'backbone.stem.').replace('backbone.bn1.', 'backbone.stem.7.')
        if not key.startswith('decode_head.') or 'conv_seg' in key:
            state[key] = value
    state['decode_head.psp_modules.0.1.conv.weight'] = torch.zeros(512, 2048, 1, 1)  # mmseg's PSPNet head
    state['decode_head.bottleneck.conv.weight'] = torch.zeros(512, 4096, 3, 3)
    torch.save({'meta': {}, 'state_dict': state}, path)
    with pytest.raises(CheckpointError) as info:
        create_segmentor(tag.name, pretrained=True)
    message = str(info.value)
    assert '\n' not in message and "decode head of PSPNet's PPM head (decode_head.psp_modules.*)" in message, message
    assert 'not of ccnet_r50_d8 (ccnet)' in message, message

    path.write_bytes(path.read_bytes()[:1000])  # a download cut short
    with pytest.raises(CheckpointError, match=path.name):
        create_segmentor(tag.name, pretrained=True)


def test_masks_without_images_are_named_not_silently_skipped(tmp_path, capsys, weights):
    """gtFine extracted in full but leftImg8bit only in part: the mIoU of a subset, with nothing said."""
    from gczoo.seg.data import masks_without_images
    for i, city in enumerate(('aachen', 'bremen', 'bremen')):
        (tmp_path / 'gtFine' / 'val' / city).mkdir(parents=True, exist_ok=True)
        for kind in ('labelTrainIds', 'labelIds'):  # both, as cityscapesScripts writes them
            Image.new('L', (24, 16)).save(tmp_path / 'gtFine' / 'val' / city / f'{city}_{i:06d}_gtFine_{kind}.png')
    (tmp_path / 'leftImg8bit' / 'val' / 'aachen').mkdir(parents=True)
    Image.new('RGB', (24, 16)).save(tmp_path / 'leftImg8bit' / 'val' / 'aachen' / 'aachen_000000_leftImg8bit.png')
    samples = find_samples(tmp_path, 'cityscapes', 'val')
    orphans = masks_without_images(tmp_path, 'cityscapes', 'val', samples)
    assert sorted(p.name for p in orphans) == sorted(f'bremen_00000{i}_gtFine_{k}.png' for i in (1, 2)
                                                     for k in ('labelTrainIds', 'labelIds'))
    assert main(['eval-seg', '-m', 'gcnet_r50_d8', '--checkpoint', str(weights()), '--data-dir', str(tmp_path),
                 '--dataset', 'cityscapes', '--no-resize', '-j', '0', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'note: 4 masks have no image and are not evaluated' in out and 'over the 1 images found' in out


def test_explicit_align_corners_is_what_the_test_pipeline_uses():
    """align_corners=True on a tag trained with False: the model resized with True, the pipeline's final resize
    (pretrained_cfg, from the tag) with False -- two values in one prediction."""
    from gczoo.seg.evaluate import resolve_seg_config
    model = create_segmentor('ccnet_r50_d8.cityscapes_512x1024_80k', align_corners=True)
    assert model.align_corners is True and model.pretrained_cfg['align_corners'] is True
    args = argparse.Namespace(dataset=None, mode=None, crop_size=None, stride=None, scale=None, no_resize=False)
    assert resolve_seg_config(args, model)['align_corners'] is True
    assert create_segmentor('ccnet_r50_d8.cityscapes_769x769_80k').pretrained_cfg['align_corners'] is True


def test_non_uint8_images_and_integer_inputs_are_refused():
    """A 0..1 float image went through mmseg's 0..255 mean/std (silently wrong classes); integer pixels into the
    model ended in conv's 'expected scalar type Long but found Float'."""
    from gczoo.seg.inference import segment_image
    model = create_segmentor('gcnet_r50_d8', num_classes=2).eval()
    config = dict(scale=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mode='whole', align_corners=False)
    with pytest.raises(ValueError, match=r'uint8 \(0..255\) RGB image, got torch.float32'):
        segment_image(model, torch.rand(3, 17, 23), config)
    with pytest.raises(TypeError, match='normalised float tensor'):
        model(torch.randint(0, 255, (1, 3, 17, 23)))
    with torch.no_grad():  # batch 1, odd non-square, smaller than 64, channels_last: logits at the input's size
        x = torch.randn(1, 3, 17, 23).to(memory_format=torch.channels_last)
        assert model(x).shape == (1, 2, 17, 23)
        assert segment_image(model, torch.zeros(3, 9, 13, dtype=torch.uint8), config).shape == (2, 9, 13)


@pytest.mark.parametrize('flags, message', [
    (['--crop-size', '16', '16'], 'need --mode slide'),
    (['--stride', '8', '8'], 'need --mode slide'),
    (['--scale', '64', '32', '--no-resize'], 'contradict'),
])
def test_eval_seg_flags_that_would_be_ignored_are_refused(flags, message, tmp_path, capsys):
    _one_line_exit_2(capsys, ['eval-seg', '-m', 'ccnet_r50_d8', '--data-dir', tmp_path, '--dataset', 'cityscapes',
                              *flags], message)


def test_eval_seg_output_dir_checked_before_evaluating(tmp_path, capsys):
    (tmp_path / 'a-file').write_text('')
    code = main(['eval-seg', '-m', 'ccnet_r50_d8', '--data-dir', str(tmp_path / 'not-read'), '--dataset',
                 'cityscapes', '--output-dir', str(tmp_path / 'a-file' / 'results')])
    captured = capsys.readouterr()
    assert code == 2 and 'cannot be a folder' in captured.err and captured.out == ''


def test_segment_folder_with_subfolders_hidden_files_and_a_palette_too_small(tmp_path, capsys, weights):
    """Subfolders were skipped without a word, a macOS ``._a.png`` stopped the run as an undecodable image, and
    an ADE20K model coloured with Cityscapes' 19-colour palette painted 131 of its classes black."""
    images = tmp_path / 'imgs'
    (images / 'more').mkdir(parents=True)
    Image.new('RGB', (20, 16), (90, 10, 200)).save(images / 'a.png')
    Image.new('RGB', (20, 16)).save(images / 'more' / 'b.png')
    (images / '._a.png').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
    assert main(['segment', str(images), '-m', 'gcnet_r50_d8', '--checkpoint', str(weights()), '--out',
                 str(tmp_path / 'o'), '--no-resize']) == 0
    out = capsys.readouterr().out
    assert 'note: subfolders are not read (1' in out and 'more' in out
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == ['a.png']
    with Image.open(tmp_path / 'o' / 'a.png') as img:
        assert img.size == (20, 16) and img.mode == 'RGB'
    _one_line_exit_2(capsys, ['segment', images / 'a.png', '-m', 'gcnet_r50_d8.ade20k_512x512_80k', '--checkpoint',
                              weights(150), '--dataset', 'cityscapes', '--out', tmp_path / 'p'],
                     'palette has 19 colours')


@pytest.mark.slow  # ~15 s: three gczoo processes
def test_segment_killed_or_run_twice_into_one_folder_leaves_only_whole_pngs(tmp_path, weights):
    import signal
    import subprocess
    import sys
    import time
    images = tmp_path / 'imgs'
    images.mkdir()
    for i in range(8):
        Image.new('RGB', (96, 80), (30 * i, 200, 10)).save(images / f'{i}.png')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    argv = [sys.executable, '-m', 'gczoo.cli', 'segment', str(images), '-m', 'gcnet_r50_d8', '--checkpoint',
            str(weights()), '--no-resize', '--ids']

    def whole_pngs(folder):
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))
        for name in names:
            with Image.open(folder / name) as img:
                img.load()  # a half-written PNG fails here
        return names

    runs = [subprocess.Popen(argv + ['--out', str(tmp_path / 'both')], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for _ in range(2)]
    assert [r.wait(timeout=300) for r in runs] == [0, 0], [r.stderr.read() for r in runs]
    assert len(whole_pngs(tmp_path / 'both')) == 16
    assert not [p for p in (tmp_path / 'both').iterdir() if p.name.startswith('.')]  # no temporaries left

    run = subprocess.Popen(argv + ['--out', str(tmp_path / 'killed')], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / 'killed' / '0.png').exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    names = whole_pngs(tmp_path / 'killed')
    assert '0.png' in names and len(names) < 16


def test_pretrained_tag_with_another_dataset_is_refused():
    """A Cityscapes tag's weights evaluated or coloured as ADE20K: class ids of one dataset read as the other's."""
    from gczoo.seg.evaluate import resolve_seg_config
    model = create_segmentor('ccnet_r50_d8.cityscapes_512x1024_80k')
    args = argparse.Namespace(dataset='ade20k', mode=None, crop_size=None, stride=None, scale=None, no_resize=False,
                              pretrained=True)
    with pytest.raises(ValueError, match="tag 'cityscapes_512x1024_80k' was trained on cityscapes"):
        resolve_seg_config(args, model)
    args.pretrained = False  # its architecture with other weights (--checkpoint): the user's dataset
    assert resolve_seg_config(args, model)['dataset'] == 'ade20k'


def test_mmseg_decode_head_names_the_system():
    from gczoo.seg.convert import mmseg_decode_head
    assert mmseg_decode_head({'decode_head.aspp_modules.0.conv.weight': 0}) == (
        "DeepLabV3's ASPP head", 'decode_head.aspp_modules')
    assert mmseg_decode_head({'decode_head.cca.query_conv.weight': 0}) == ('ccnet', 'decode_head.cca')
    assert mmseg_decode_head({'decode_head.conv_seg.weight': 0, 'backbone.stem.0.weight': 0}) is None


def test_checkpoint_of_another_depth_is_named(tmp_path):
    from gczoo.seg import load_segmentor_checkpoint
    from safetensors.torch import save_file
    model = create_segmentor('gcnet_r50_d8', num_classes=2)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for i in range(6, 23):  # the extra layer3 blocks of a ResNet-101 (their tensors do not matter here)
        state[f'backbone.layer3.{i}.conv1.weight'] = torch.zeros(1)
    save_file(state, str(tmp_path / 'r101.safetensors'))
    with pytest.raises(CheckpointError, match=r'ResNet-101 backbone \(23 blocks in layer3\), not the ResNet-50 of '
                                              r'gcnet_r50_d8; create gcnet_r101_d8'):
        load_segmentor_checkpoint(model, tmp_path / 'r101.safetensors')


def test_eval_seg_pretrained_with_another_num_classes_is_refused(tmp_path, capsys, monkeypatch):
    """--pretrained --num-classes 5 left both classifiers at init: the mIoU of an untrained head, silently."""
    tag = get_seg_tag('ccnet_r50_d8', 'cityscapes_512x1024_80k')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    path = url_cached_path(tag.source)
    path.parent.mkdir(parents=True)
    torch.save(create_segmentor('ccnet_r50_d8').state_dict(), path)  # gczoo's layout is read too
    _one_line_exit_2(capsys, ['eval-seg', '-m', tag.name, '--pretrained', '--num-classes', '5', '--data-dir',
                              tmp_path / 'not-read'], 'the heads would be evaluated untrained')


def test_segment_takes_a_fine_tuned_checkpoint_of_another_class_count(tmp_path, capsys, weights):
    """train-seg --num-classes 5 wrote a model that gczoo segment could not build (no --num-classes)."""
    Image.new('RGB', (20, 16)).save(tmp_path / 'a.png')
    argv = ['segment', str(tmp_path / 'a.png'), '-m', 'gcnet_r50_d8', '--checkpoint', str(weights(5)), '--out',
            str(tmp_path / 'o'), '--no-resize', '--ids']
    assert main(argv + ['--num-classes', '5']) == 0
    with Image.open(tmp_path / 'o' / 'a_ids.png') as img:
        assert int(np.asarray(img).max()) < 5
    _one_line_exit_2(capsys, ['segment', tmp_path / 'a.png', '-m', 'gcnet_r50_d8', '--pretrained', '--num-classes',
                              '5', '--out', tmp_path / 'p'], 'heads would be untrained')


def test_no_weights_is_refused_before_any_image(tmp_path, capsys):
    """eval-seg and segment without --pretrained or --checkpoint ran random weights (an mIoU of noise), which
    gczoo eval refuses."""
    _one_line_exit_2(capsys, ['eval-seg', '-m', 'ccnet_r50_d8', '--data-dir', tmp_path / 'not-read'],
                     'no weights for --model')
    Image.new('RGB', (20, 16)).save(tmp_path / 'a.png')
    _one_line_exit_2(capsys, ['segment', tmp_path / 'a.png', '-m', 'ccnet_r50_d8', '--out', tmp_path / 'o'],
                     'no weights for --model')
    assert not (tmp_path / 'o').exists()


def test_eval_seg_default_split_is_the_layouts(tmp_path, capsys, weights):
    """--split defaulted to 'val' for both layouts: every ADE20K evaluation without --split validation failed."""
    for folder in ('images', 'annotations'):
        (tmp_path / folder / 'validation').mkdir(parents=True)
    Image.new('RGB', (24, 16)).save(tmp_path / 'images' / 'validation' / 'a.jpg')
    Image.new('L', (24, 16), 3).save(tmp_path / 'annotations' / 'validation' / 'a.png')
    assert main(['eval-seg', '-m', 'gcnet_r50_d8.ade20k_512x512_80k', '--checkpoint', str(weights(150)),
                 '--data-dir', str(tmp_path), '--no-resize', '-j', '0', '--no-progress']) == 0
    assert '1 images of' in capsys.readouterr().out


def test_the_other_layout_is_named(tmp_path):
    (tmp_path / 'images' / 'val').mkdir(parents=True)
    with pytest.raises(ValueError, match='is in the ade20k layout .images/., not the cityscapes one .leftImg8bit/.: '
                                         'pass --dataset ade20k'):
        find_samples(tmp_path, 'cityscapes', 'val')


def test_16_bit_grey_image_is_scaled_not_clipped(tmp_path):
    """PIL's convert('RGB') clipped a 16-bit grey image to 255 (a white input); OpenCV, mmcv's reader, scales it."""
    values = np.array([[0, 255, 256, 5000], [40000, 65535, 1000, 511]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / 'deep.png')
    got = read_image(tmp_path / 'deep.png')
    assert got.dtype == torch.uint8 and got.shape == (3, 2, 4)
    assert got[0].tolist() == (values // 256).tolist() and torch.equal(got[0], got[2])
    Image.fromarray(np.zeros((2, 4), dtype=np.float32)).save(tmp_path / 'float.tiff')
    with pytest.raises(ValueError, match='32-bit pixels'):
        read_image(tmp_path / 'float.tiff')
