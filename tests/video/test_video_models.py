"""gczoo.video: mmaction2's I3D checkpoints through pretrained=True, bad checkpoints, the model API,
TorchScript and torch.export."""
import os
import urllib.error

import pytest
import torch

from gczoo.errors import CheckpointError, PretrainedWeightsError
from gczoo.video import (
    VIDEO_MODELS, ResNet3d, convert_mmaction2, create_video_model, get_video_tag, is_video_model, list_video_models)
from mmaction_reference import Recognizer3D, randomize


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


def _write_checkpoint(folder, tag_name, state):
    """mmaction2's published layout: {'meta': {...}, 'state_dict': {...}} under the URL's file name."""
    tag = get_video_tag(tag_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / os.path.basename(tag.source)
    meta = {'mmengine_version': '0.7.0', 'epoch': 100, 'iter': 1000, 'seed': 0,
            'experiment_name': tag.source_name, 'time': '20220812_000000'}
    torch.save({'meta': meta, 'state_dict': state}, path)
    return path


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize('name,non_local', [('i3d_r50_nl', True), ('i3d_r50', False)])
def test_pretrained_gives_the_reference_logits(hub_dir, name, non_local):
    ref = randomize(Recognizer3D(non_local=non_local)).eval()
    _write_checkpoint(hub_dir, f'{name}.mmaction2_k400', ref.state_dict())
    model = create_video_model(name, pretrained=True).eval()
    assert model.pretrained_cfg['tag'] == 'mmaction2_k400' and model.pretrained_cfg['num_classes'] == 400
    x = torch.randn(1, 3, 8, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.double()(x)
        got = model.double()(x)
    assert got.shape == (1, 400)
    assert _rel(got, expected) <= 1e-5
    if non_local:  # the Non-local branches were loaded, not left at their identity init
        assert model.layer2[1].non_local.norm.weight.abs().sum() > 0


def test_mmaction2_keys_convert_one_to_one():
    ref = Recognizer3D(non_local=True)
    converted = convert_mmaction2({'state_dict': ref.state_dict(), 'meta': {}})
    model = ResNet3d(**VIDEO_MODELS['i3d_r50_nl'].kwargs)
    target = model.state_dict()
    assert sorted(converted) == sorted(target)
    assert all(tuple(converted[k].shape) == tuple(target[k].shape) for k in target)


def test_foreign_and_renamed_keys_are_refused_by_name():
    state = Recognizer3D(non_local=False).state_dict()
    state['backbone.layer1.0.conv_extra.conv.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match='conv_extra'):
        convert_mmaction2({'state_dict': state})
    with pytest.raises(CheckpointError, match='not an mmaction2 Recognizer3D'):
        convert_mmaction2({'state_dict': {'conv1.weight': torch.zeros(1)}})


def test_bad_checkpoint_shape_is_one_clear_error(hub_dir):
    state = Recognizer3D(non_local=False).state_dict()
    state['backbone.layer1.0.conv1.conv.weight'] = torch.zeros(64, 64, 1, 1, 1)
    _write_checkpoint(hub_dir, 'i3d_r50.mmaction2_k400', state)
    with pytest.raises(CheckpointError) as info:
        create_video_model('i3d_r50', pretrained=True)
    message = str(info.value)
    assert 'layer1.0.conv1.weight' in message and '\n' not in message


def test_missing_weights_without_network_say_where_to_put_them(hub_dir, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(PretrainedWeightsError) as info:
        create_video_model('i3d_r50_nl', pretrained=True)
    assert 'i3d_r50_nl.mmaction2_k400' in str(info.value) and str(hub_dir) in str(info.value)


def test_new_num_classes_keeps_the_backbone(hub_dir):
    ref = randomize(Recognizer3D(non_local=False))
    _write_checkpoint(hub_dir, 'i3d_r50.mmaction2_k400', ref.state_dict())
    model = create_video_model('i3d_r50.mmaction2_k400', pretrained=True, num_classes=7)
    assert model.fc.out_features == 7 and model.num_classes == 7
    assert torch.equal(model.conv1.weight, ref.state_dict()['backbone.conv1.conv.weight'])


def test_registry_is_apart_from_timm():
    import timm
    assert list_video_models() == ['i3d_r50', 'i3d_r50_nl']
    assert list_video_models(pretrained=True) == ['i3d_r50.mmaction2_k400', 'i3d_r50_nl.mmaction2_k400']
    assert list_video_models('*_nl') == ['i3d_r50_nl']
    assert is_video_model('i3d_r50_nl.mmaction2_k400') and not is_video_model('resnet50')
    assert not timm.list_models('i3d_r50*')
    with pytest.raises(ValueError, match='the video models are'):
        create_video_model('i3d_r101')
    with pytest.raises(ValueError, match='unknown video tag'):
        create_video_model('i3d_r50.kinetics700')


def _tiny(non_local=True):
    """A small ResNet3d on the same code paths (inflation, pools, Non-local blocks), fast enough to export."""
    return ResNet3d(layers=(1, 2, 2, 1), num_classes=5, base_width=8, inflate=((1,), (1, 0), (1, 0), (0,)),
                    non_local=((0,), (0, 1), (0, 1), (0,)) if non_local else None,
                    non_local_kwargs=dict(mode='embedded_gaussian', sub_sample=True, use_scale=False)).eval()


def test_model_api_like_timm():
    model = _tiny()
    x = torch.randn(1, 3, 8, 48, 40)  # batch 1, non-square
    feats = model.forward_features(x)
    assert feats.shape == (1, 256, 1, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
    assert model(x).shape == (1, 5)
    model.reset_classifier(0)
    assert model(x).shape == (1, 256)
    assert model.non_local_positions == ((2, 1), (3, 1))


def test_bad_clips_are_refused_by_name():
    model = _tiny()
    with pytest.raises(ValueError, match='clips'):
        model(torch.randn(1, 3, 48, 40))
    with pytest.raises(ValueError, match='at least 5 frames and 17x17'):
        model(torch.randn(1, 3, 4, 48, 40))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8))


def test_torchscript_matches_eager():
    model = _tiny()
    x = torch.randn(2, 3, 8, 32, 24)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_torch_export_matches_eager():
    model = _tiny()
    x = torch.randn(1, 3, 8, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_hub_entrypoints_build_the_video_models():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / 'hubconf.py'
    spec = importlib.util.spec_from_file_location('hubconf_video', path)
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert 'Non-local' in hubconf.i3d_r50_nl.__doc__ and 'i3d_r50_nl.mmaction2_k400' in hubconf.i3d_r50_nl.__doc__
    model = torch.hub.load(str(path.parent), 'i3d_r50', source='local', num_classes=3)
    assert isinstance(model, ResNet3d) and model.fc.out_features == 3


def test_data_preprocessor_buffers_are_dropped_and_bad_arguments_refused():
    state = Recognizer3D(non_local=False).state_dict()
    state['data_preprocessor.mean'] = torch.zeros(3, 1, 1, 1)
    assert 'data_preprocessor.mean' not in convert_mmaction2({'state_dict': state})
    with pytest.raises(ValueError, match='num_classes must be an int >= 0'):
        create_video_model('i3d_r50', num_classes=-1)
    with pytest.raises(TypeError, match='model_name must be a str'):
        create_video_model(None)
    with pytest.raises(ValueError, match="global_pool='avg' only"):
        _tiny().reset_classifier(3, global_pool='max')


def test_gczoo_list_names_the_video_models(capsys):
    from gczoo.cli import main
    assert main(['list']) == 0
    out = capsys.readouterr().out
    assert 'Video models' in out and 'i3d_r50_nl' in out
