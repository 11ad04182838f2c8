"""The pretrained tags: every tag loads offline through timm's own ``pretrained=True`` from a Hub cache
and torch's checkpoint folder holding random weights in each source's real format, and gives what the
source gives (identity tags: the source ResNet's logits; SE: timm's seresnet50's; GCNet's detector
backbone: the checkpoint's tensors key for key)."""
import os

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from timm.data import resolve_data_config
from timm.models import adapt_input_conv, get_pretrained_cfg

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.models import ZOO_MODELS, PretrainedWeightsError, attention_modules
from gczoo.models.tags import (
    DETECTION_BACKBONE, GCZOO, IDENTITY, KINDS, SAME_ARCHITECTURE, TAGS, TRANSPLANT, default_tag, get_tag, tags_for,
)
from tag_sources import randomize_, source_file_name, write_sources

TAG_NAMES = [t.name for t in TAGS]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """Every tag's source, written once: {source: state dict}, plus the two cache folders."""
    root = tmp_path_factory.mktemp('tag_sources')
    hub, torch_home = root / 'hf' / 'hub', root / 'torch'
    written = write_sources(hub, torch_home / 'hub' / 'checkpoints')
    return written, hub, torch_home


@pytest.fixture
def offline(sources, monkeypatch):
    """HF_HUB_OFFLINE with the filled Hub cache, torch's hub folder on the filled checkpoints."""
    written, hub, torch_home = sources
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(hub))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(torch_home / 'hub'))
    yield written
    torch.hub.set_dir(previous)


def _source_model(row):
    """The source as timm builds it, with the weights written for it (through timm's own loader)."""
    return timm.create_model(row.source_name, pretrained=True).eval()


def _logits(model, x=X):
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------------------------
# the registry


def test_every_model_has_a_tag_and_timm_lists_only_the_rows():
    listed = {m for m in timm.list_pretrained() if m.split('.')[0] in ZOO_MODELS}
    assert listed == set(TAG_NAMES)
    assert not [m for m in listed if m.endswith('ft_in1k')]  # nothing unpublished
    for name in ZOO_MODELS:
        assert tags_for(name), name
        assert timm.is_model_pretrained(name)
        assert get_pretrained_cfg(name).tag == default_tag(name).tag  # the first row is timm's default
    assert {t.kind for t in TAGS} <= set(KINDS) and GCZOO not in {t.kind for t in TAGS}


def test_defaults_are_imagenet_classifiers_and_tag_names_say_what_they_are():
    for name in ZOO_MODELS:
        row = default_tag(name)
        assert row.kind in (IDENTITY, SAME_ARCHITECTURE, TRANSPLANT) and 'imagenet-1k' in row.datasets
    for row in TAGS:
        assert row.tag.endswith({IDENTITY: '_identity', TRANSPLANT: '_untrained_attn', DETECTION_BACKBONE: 'coco',
                                 SAME_ARCHITECTURE: 'in1k'}[row.kind]), row.name
        assert row.evidence and row.trained and row.untrained and row.license and row.origin_url


def test_cfg_carries_the_source_preprocessing():
    keys = ('input_size', 'test_input_size', 'crop_pct', 'test_crop_pct', 'interpolation', 'mean', 'std',
            'num_classes', 'pool_size', 'crop_mode')
    for row in TAGS:
        cfg = get_pretrained_cfg(row.name).to_dict()
        if row.is_url:
            assert cfg['url'] == row.source and 'hf_hub_id' not in cfg
            assert cfg['num_classes'] == 0 and cfg['input_size'] == (3, 800, 1333)
            continue
        assert cfg['hf_hub_id'] == row.source == f'timm/{row.source_name}'
        assert cfg['hf_hub_filename'] == 'model.safetensors'
        source = get_pretrained_cfg(row.source_name).to_dict()
        assert {k: cfg.get(k) for k in keys} == {k: source.get(k) for k in keys}, row.name
        model = timm.create_model(row.name, device='meta')  # only the cfg is read: no weights allocated
        ref = timm.create_model(row.source_name, device='meta')
        assert resolve_data_config(model=model) == resolve_data_config(model=ref)
        assert (resolve_data_config(model=model, use_test_size=True)
                == resolve_data_config(model=ref, use_test_size=True))


def test_metrics_and_their_evidence():
    for row in TAGS:
        if row.kind == DETECTION_BACKBONE:
            assert row.top1 is None and row.source_top1 is None
            assert {m.name for m in row.metrics} == {'box_ap', 'mask_ap'} and not row.metrics_apply
        elif row.kind == TRANSPLANT:
            assert row.top1 is None and row.source_top1 is not None  # the source's, not this model's
        else:
            assert row.top1 is row.source_top1 and row.top1.img_size == 224
            assert row.top1.evidence.startswith('https://github.com/huggingface/pytorch-image-models/blob/')
    assert get_tag('resnet50_gc').top1.value == 80.382
    assert get_tag('resnet18_gc').top1.value == 71.504  # timm's results-imagenet.csv, 224, crop 0.95
    assert get_tag('resnet50_se.ra2_in1k').top1.value == 80.26
    with pytest.raises(KeyError, match='resnet50_gc.a1_in1k_identity'):
        get_tag('resnet50_gc.ft_in1k')


def test_a_model_without_tags_gets_timms_untrained_cfg_and_unknown_models_are_refused():
    from types import SimpleNamespace
    from gczoo.models.tags import pretrained_cfgs
    zoo = dict(ZOO_MODELS)
    zoo['resnet50_new'] = SimpleNamespace(paper='gcnet', summary='a new row')
    cfgs = pretrained_cfgs(zoo)
    assert 'resnet50_new.untrained' in cfgs
    assert not any(cfgs['resnet50_new.untrained'].get(k) for k in ('url', 'hf_hub_id', 'file'))  # no weights
    with pytest.raises(ValueError, match='resnet50_gc'):
        pretrained_cfgs({k: v for k, v in ZOO_MODELS.items() if k != 'resnet50_gc'})


def test_one_row_publishes_gczoos_own_weights(sources, offline, tmp_path):
    """The docstring's recipe: a GCZOO row first -> timm's default tag, loaded from the Hub as is."""
    from timm.models import generate_default_cfgs
    from gczoo.models import save_pretrained
    from gczoo.models.tags import Metric, Tag, pretrained_cfgs
    from hub_cache import fill_hub_cache
    url = 'https://example.org/eval.json'
    row = Tag('resnet50_gc', 'ft_in1k', GCZOO, source='gczoo/resnet50_gc.ft_in1k', source_name='resnet50_gc.ft_in1k',
              license='apache-2.0', datasets=('imagenet-1k',), trained='everything', untrained='nothing',
              metrics=(Metric('image-classification', 'imagenet-1k', 'top1', 79.1, 224, 0.95, 'bicubic', url),),
              metrics_apply=True, evidence=url, origin_url=url, preprocessing=dict(crop_pct=0.95))
    cfgs = pretrained_cfgs(ZOO_MODELS, rows=(row,) + TAGS)
    cfg = cfgs['resnet50_gc.ft_in1k']
    assert cfg['hf_hub_id'] == 'gczoo/resnet50_gc.ft_in1k' and cfg['crop_pct'] == 0.95 and cfg['pool_size'] == (7, 7)
    assert generate_default_cfgs(cfgs)['resnet50_gc'].tags[0] == 'ft_in1k'
    trained = randomize_(timm.create_model('resnet50_gc'), seed=11)
    folder = save_pretrained(trained, tmp_path / 'published')
    fill_hub_cache(hf_constants.HF_HUB_CACHE, row.source,
                   {name: folder / name for name in ('config.json', 'model.safetensors')})
    model = timm.create_model('resnet50_gc', pretrained=True, pretrained_cfg=cfg)
    torch.testing.assert_close(_logits(model), _logits(trained), rtol=0, atol=0)
    assert row.top1.value == 79.1


def test_a_cfg_without_source_says_which_tags_have_weights():
    with pytest.raises(PretrainedWeightsError, match=r"no pretrained weights.*resnet50_gc\.a1_in1k_identity.*"
                                                     r"resnet50_gc\.mmdet_coco.*pretrained_backbone"):
        timm.create_model('resnet50_gc', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=None))


# ----------------------------------------------------------------------------------------------
# loading every tag offline


@pytest.mark.parametrize('name', TAG_NAMES)
def test_tag_loads_what_its_source_holds(name, offline):
    row = get_tag(name)
    model = timm.create_model(name, pretrained=True).eval()
    state = model.state_dict()
    attn = {f'{n}.{k}' for n, m in attention_modules(model) for k in m.state_dict()}
    if row.kind == DETECTION_BACKBONE:
        expected = offline[row.source]  # the official-layout fixture's backbone, in the zoo's keys
        assert model.num_classes == 0 and set(state) == set(expected) | {
            k for k in state if k.endswith('num_batches_tracked')}
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
        return
    ref = _source_model(row)
    ref_state = ref.state_dict()
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key
    if row.kind == SAME_ARCHITECTURE:
        assert set(state) == set(ref_state)
    else:
        assert set(state) - set(ref_state) == attn and attn
    # float64: equal up to round-off (a block may return its input in another memory layout, which
    # changes the next conv's summation order, not the values)
    model, ref, x = model.double(), ref.double(), X.double()
    if row.kind in (IDENTITY, SAME_ARCHITECTURE):
        torch.testing.assert_close(_logits(model, x), _logits(ref, x), rtol=1e-10, atol=1e-10)
    else:  # CBAM/BAM gates are not the identity: the logits are not the source's, as the tag says
        assert not torch.allclose(_logits(model, x), _logits(ref, x), atol=1e-3)


@pytest.mark.parametrize('name', ['resnet50_gc', 'resnet18_gc.a1_in1k_identity', 'resnet50_se.ra2_in1k',
                                  'resnet50_gc_r4.mmdet_coco'])
def test_num_classes_in_chans_and_features_only(name, offline):
    row = get_tag(name)
    full = timm.create_model(name, pretrained=True).eval()
    conv1 = full.conv1.weight.detach()
    for in_chans in (1, 4):
        model = timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=5).eval()
        torch.testing.assert_close(model.conv1.weight, adapt_input_conv(in_chans, conv1), rtol=0, atol=0)
        assert model.fc.out_features == 5
        assert _logits(model, torch.randn(1, in_chans, 64, 64)).shape == (1, 5)
        assert torch.equal(model.layer4[-1].conv3.weight if hasattr(model.layer4[-1], 'conv3')
                           else model.layer4[-1].conv2.weight,
                           full.layer4[-1].conv3.weight if hasattr(full.layer4[-1], 'conv3')
                           else full.layer4[-1].conv2.weight)
    headless = timm.create_model(name, pretrained=True, num_classes=0).eval()
    assert headless.num_classes == 0 and _logits(headless).shape == (2, headless.num_features)
    if row.kind != DETECTION_BACKBONE:
        torch.testing.assert_close(_logits(headless), full.forward_head(full.forward_features(X), pre_logits=True))
    features = timm.create_model(name, pretrained=True, features_only=True, out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        maps = features(X)
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    torch.testing.assert_close(maps[-1], full.forward_features(X).detach(), rtol=0, atol=0)


def test_pretrained_cfg_overlay_and_checkpoint_path(offline, tmp_path):
    # the preprocessing can be overlaid like any timm cfg; the weights still come from the tag's source
    model = timm.create_model('resnet50_gc', pretrained=True, pretrained_cfg_overlay=dict(crop_pct=0.9))
    assert model.pretrained_cfg['crop_pct'] == 0.9 and resolve_data_config(model=model)['crop_pct'] == 0.9
    # a plain ResNet file overlaid as the source: transplanted like the tag's own source
    plain = randomize_(timm.create_model('resnet50'), seed=7)
    from safetensors.torch import save_file
    save_file(plain.state_dict(), str(tmp_path / 'plain.safetensors'))
    model = timm.create_model('resnet50_nl', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'plain.safetensors')))
    torch.testing.assert_close(_logits(model), _logits(plain), rtol=0, atol=0)
    # checkpoint_path (timm's load_checkpoint after building) overrides the tag's weights
    trained = randomize_(timm.create_model('resnet50_gc', num_classes=3), seed=8)
    torch.save(trained.state_dict(), tmp_path / 'trained.pth')
    model = timm.create_model('resnet50_gc', pretrained=True, num_classes=3,
                              checkpoint_path=str(tmp_path / 'trained.pth'))
    torch.testing.assert_close(_logits(model), _logits(trained), rtol=0, atol=0)


def test_timm_train_py_pretrained_call(offline, tmp_path):
    """timm's train.py builds its model with this call (--pretrained, and --pretrained-path's overlay)."""
    common = dict(in_chans=3, num_classes=10, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None,
                  global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False, checkpoint_path=None)
    model = timm.create_model('resnet26_gc', pretrained=True, **common)
    ref = _source_model(get_tag('resnet26_gc'))
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight, rtol=0, atol=0)
    assert model.fc.out_features == 10
    assert resolve_data_config({}, model=model) == resolve_data_config({}, model=ref)
    from safetensors.torch import save_file
    save_file(ref.state_dict(), str(tmp_path / 'weights.safetensors'))
    model = timm.create_model('resnet26_gc', pretrained=True, **common, pretrained_cfg_overlay=dict(
        file=str(tmp_path / 'weights.safetensors'), num_classes=-1))  # train.py --pretrained-path
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight, rtol=0, atol=0)


def test_official_cbam_checkpoint_as_overlay_file_is_converted(offline, tmp_path):
    from gczoo.layers.cbam import OFFICIAL_KEY_MAP  # official name -> gczoo name, inside the block
    model = randomize_(timm.create_model('resnet50_cbam'), seed=3)
    to_official = {v: k for k, v in OFFICIAL_KEY_MAP.items()}
    official = {}
    for key, value in model.state_dict().items():
        if '.se.' in key:
            block, inner = key.split('.se.')
            key = f'{block}.cbam.{to_official[inner]}'
        official[f'module.{key}'] = value  # saved from nn.DataParallel
    torch.save({'epoch': 90, 'arch': 'resnet', 'state_dict': official, 'best_prec1': 77.62}, tmp_path / 'cbam.pth.tar')
    loaded = timm.create_model('resnet50_cbam', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'cbam.pth.tar')))
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# sources that cannot be had


def test_hub_source_not_cached_offline_names_repo_and_cache(offline, tmp_path, monkeypatch):
    empty = tmp_path / 'empty_hub'
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(empty))
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('resnet50_gc', pretrained=True)
    message = str(info.value)
    for part in ("'resnet50_gc.a1_in1k_identity'", "'timm/resnet50.a1_in1k'", 'model.safetensors', str(empty),
                 'HF_HUB_OFFLINE=1', 'pretrained_cfg_overlay'):
        assert part in message, part
    assert '\n' not in message


def test_url_source_unreachable_names_url_and_folder(offline, tmp_path):
    url = 'http://127.0.0.1:9/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco_19990101-00000000.pth'  # nothing listens
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('resnet50_gc.mmdet_coco', pretrained=True, pretrained_cfg_overlay=dict(url=url),
                          cache_dir=str(tmp_path / 'ckpt'))
    message = str(info.value)
    for part in (url, str(tmp_path / 'ckpt'), 'resnet50_gc.mmdet_coco', 'pretrained_cfg_overlay'):
        assert part in message, part
    assert not (tmp_path / 'ckpt' / os.path.basename(url)).exists()  # nothing half-written


def test_registry_url_tag_reads_torch_checkpoint_folder(offline):
    row = get_tag('resnet101_gc.mmdet_coco')
    assert (os.path.join(torch.hub.get_dir(), 'checkpoints', source_file_name(row))
            == os.path.join(torch.hub.get_dir(), 'checkpoints',
                            'mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco_20200205-e58ae947.pth'))
    assert os.path.exists(os.path.join(torch.hub.get_dir(), 'checkpoints', source_file_name(row)))


def test_gczoo_train_pretrained_starts_from_the_default_tag(offline, tmp_path):
    """gczoo's timm-style train.py with --pretrained (the default tag, offline), a new 3-class head."""
    from _train_utils import make_image_folder, run_train, tiny_args
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1)
    argv = tiny_args(data, tmp_path / 'out', epochs=1, pretrained=True, no_export=True)
    assert run_train(argv) == 0
    from gczoo.models import read_checkpoint
    checkpoint = read_checkpoint(tmp_path / 'out' / 'run' / 'last.pth.tar')
    assert checkpoint['state_dict']['fc.weight'].shape[0] == 3
