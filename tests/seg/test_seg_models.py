"""The segmentors against an independent re-implementation of mmseg's module structure (mmseg_reference):
mmseg-layout checkpoints (``meta`` + ``state_dict``, mmseg's exact keys and shapes) load through
``pretrained=True`` from torch's hub cache and give the reference's logits, whole and slide mode, at two
input sizes; the key layout at full size for every model; bad checkpoints fail with one message."""

import pytest
import torch

from gczoo.errors import CheckpointError, PretrainedWeightsError
from gczoo.models.sources import url_cached_path
from gczoo.seg import (SEGMENTORS, convert_mmseg_state_dict, create_segmentor, get_seg_tag, list_segmentors,
                       seg_tags_for)
from gczoo.seg.inference import predict_logits

import mmseg_reference as ref

SYSTEMS = ('ccnet', 'nlnet', 'gcnet')


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope='module')
def references():
    """One randomised R50 reference per system (built once: CPU is scarce)."""
    return {s: ref.randomize_(ref.EncoderDecoder(s, 50, 19), seed=i).eval() for i, s in enumerate(SYSTEMS)}


def _serve(tmp_path, monkeypatch, tag, checkpoint, legacy=True):
    """Put ``checkpoint`` where ``fetch_url`` finds the tag's URL: torch's hub checkpoint folder."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    path = url_cached_path(tag.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)  # mmseg's publish_model.py: legacy
    return path




def test_names_and_tags():
    assert list_segmentors() == ['ccnet_r50_d8', 'ccnet_r101_d8', 'nlnet_r50_d8', 'nlnet_r101_d8', 'gcnet_r50_d8',
                                 'gcnet_r101_d8']
    assert list_segmentors('cc*') == ['ccnet_r50_d8', 'ccnet_r101_d8']
    assert len(list_segmentors(pretrained=True)) == 36
    for name in SEGMENTORS:
        tags = seg_tags_for(name)
        assert tags[0].tag == 'cityscapes_512x1024_80k'
        for t in tags:
            assert t.source.startswith('https://download.openmmlab.com/mmsegmentation/v0.5/')
            assert t.source.endswith('.pth') and t.license == 'apache-2.0' and t.metrics_apply
            assert t.metrics[0].name == 'mIoU' and 35 < t.metrics[0].value < 80
    assert get_seg_tag('ccnet_r50_d8', 'cityscapes_512x1024_80k').metrics[0].value == 79.03
    assert get_seg_tag('nlnet_r101_d8', 'ade20k_512x512_160k').metrics[0].value == 44.63
    with pytest.raises(ValueError, match='no pretrained tag'):
        create_segmentor('ccnet_r50_d8.cityscapes_1x1_1k')
    with pytest.raises(ValueError, match='unknown segmentor'):
        create_segmentor('ccnet_r18_d8')


def test_not_in_timm_registry():
    import timm
    assert not any(n in timm.list_models() for n in SEGMENTORS)


@pytest.mark.parametrize('depth', [50, 101])
@pytest.mark.parametrize('system', SYSTEMS)
def test_full_size_key_layout(system, depth):
    """mmseg's exact keys and shapes at full size, converted, are exactly the segmentor's."""
    with torch.device('meta'):
        reference = ref.EncoderDecoder(system, depth, 19)
        model = create_segmentor(f'{system}_r{depth}_d8')
    converted = convert_mmseg_state_dict({'state_dict': reference.state_dict()})
    target = model.state_dict()
    assert sorted(converted) == sorted(target)
    for k, v in converted.items():
        assert tuple(v.shape) == tuple(target[k].shape), k


@pytest.mark.slow  # ~12-18 s each on one core: full-width R50 forwards
@pytest.mark.parametrize('system', SYSTEMS)
def test_pretrained_logits_equal_reference(system, references, tmp_path, monkeypatch):
    """pretrained=True from torch's hub cache; whole and slide mode, two (non-square) sizes, float32 and float64."""
    reference = references[system]
    tag = get_seg_tag(f'{system}_r50_d8', 'cityscapes_512x1024_80k')
    _serve(tmp_path, monkeypatch, tag, ref.mmseg_checkpoint(reference, tag.source_name))
    model = create_segmentor(tag.name, pretrained=True).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for size in ((48, 80), (65, 57)):
            x = torch.randn(1, 3, *size, generator=gen)
            assert _rel(model(x), reference.inference(x)) <= 1e-5
            kw = dict(mode='slide', crop_size=(40, 40), stride=(27, 27))
            assert _rel(predict_logits(model, x, **kw), reference.inference(x, **kw)) <= 1e-5
        x = torch.randn(2, 3, 41, 56, generator=gen, dtype=torch.float64)
        model64, reference64 = model.double(), reference.double()
        try:
            assert _rel(model64(x), reference64.inference(x)) <= 1e-12
            kw = dict(mode='slide', crop_size=(33, 33), stride=(20, 20))
            assert _rel(predict_logits(model64, x, **kw), reference64.inference(x, **kw)) <= 1e-12
        finally:
            reference.float()


def test_old_mmcv_gamma_and_align_corners(references, tmp_path, monkeypatch):
    """mmcv-full < 1.3.13 saved the criss-cross gamma as ``cca.gamma`` (1,): the 2020 releases' layout. The
    769x769 tags' config says align_corners=True and slide mode, and the model takes it from the tag."""
    reference = references['ccnet']
    tag = get_seg_tag('ccnet_r50_d8', 'cityscapes_769x769_80k')
    checkpoint = ref.mmseg_checkpoint(reference, tag.source_name)
    state = checkpoint['state_dict']
    state['decode_head.cca.gamma'] = state.pop('decode_head.cca.gamma.scale').reshape(1)
    _serve(tmp_path, monkeypatch, tag, checkpoint)
    model = create_segmentor(tag.name, pretrained=True).eval()
    assert model.align_corners and model.pretrained_cfg['mode'] == 'slide'
    reference.align_corners = True
    try:
        x = torch.randn(1, 3, 40, 72)
        with torch.no_grad():
            assert _rel(model(x), reference.inference(x)) <= 1e-5
    finally:
        reference.align_corners = False


def test_new_num_classes_keeps_trained_body(references, tmp_path, monkeypatch):
    tag = get_seg_tag('gcnet_r50_d8', 'cityscapes_512x1024_80k')
    _serve(tmp_path, monkeypatch, tag, ref.mmseg_checkpoint(references['gcnet'], tag.source_name))
    model = create_segmentor(tag.name, pretrained=True, num_classes=5)
    assert model.decode_head.conv_seg.out_channels == 5
    ref_state = references['gcnet'].state_dict()
    assert torch.equal(model.decode_head.gc_block.conv_mask.weight, ref_state['decode_head.gc_block.conv_mask.weight'])


def test_bad_checkpoints_fail_with_one_message(references, tmp_path, monkeypatch):
    tag = get_seg_tag('ccnet_r50_d8', 'cityscapes_512x1024_80k')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    torch.hub.set_dir(str(tmp_path / 'empty' / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_network)
    with pytest.raises(PretrainedWeightsError, match='ccnet_r50_d8.cityscapes_512x1024_80k'):
        create_segmentor(tag.name, pretrained=True)
    # a GCNet checkpoint under CCNet's URL: named keys, nothing loaded
    _serve(tmp_path, monkeypatch, tag, ref.mmseg_checkpoint(references['gcnet'], tag.source_name))
    with pytest.raises(CheckpointError, match='gc_block'):
        create_segmentor(tag.name, pretrained=True)
    # non-finite weights
    checkpoint = ref.mmseg_checkpoint(references['ccnet'], tag.source_name)
    checkpoint['state_dict']['decode_head.conv_seg.weight'][0, 0] = float('nan')
    _serve(tmp_path, monkeypatch, tag, checkpoint)
    with pytest.raises(CheckpointError, match='NaN'):
        create_segmentor(tag.name, pretrained=True)


def _no_network(url, dst, *args, **kwargs):
    raise OSError(f'no network in the tests: {url}')


def test_torch_hub_entrypoint():
    from pathlib import Path
    repo = str(Path(__file__).resolve().parents[2])
    model = torch.hub.load(repo, 'gcnet_r50_d8', source='local', num_classes=3).eval()
    assert isinstance(model, type(create_segmentor('gcnet_r50_d8')))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 3, 33, 47)


@pytest.mark.slow  # ~10 s each: an R101 reference and model
@pytest.mark.parametrize('system', SYSTEMS)
def test_r101_pretrained_logits_equal_reference(system, tmp_path, monkeypatch):
    """The R101 models too: two non-square sizes, whole and slide mode, through pretrained=True (ADE20K tags:
    150 classes)."""
    reference = ref.randomize_(ref.EncoderDecoder(system, 101, 150), seed=7).eval()
    tag = get_seg_tag(f'{system}_r101_d8', 'ade20k_512x512_160k')
    _serve(tmp_path, monkeypatch, tag, ref.mmseg_checkpoint(reference, tag.source_name))
    model = create_segmentor(tag.name, pretrained=True).eval()
    assert model.num_classes == 150 and model.pretrained_cfg['reduce_zero_label']
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for size in ((44, 60), (57, 41)):
            x = torch.randn(1, 3, *size, generator=gen)
            assert _rel(model(x), reference.inference(x)) <= 1e-5
            kw = dict(mode='slide', crop_size=(36, 36), stride=(24, 24))
            assert _rel(predict_logits(model, x, **kw), reference.inference(x, **kw)) <= 1e-5


def test_gczoo_list_names_the_segmentors(capsys):
    from gczoo.cli import main
    assert main(['list']) == 0
    out = capsys.readouterr().out
    assert 'Segmentation models' in out and "ccnet_r101_d8   mmseg's ResNetV1c-101-D8 (timm resnet101c" in out
