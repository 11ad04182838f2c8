"""The zoo's models: registry, the papers' configurations, and every timm model convention."""
import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import gczoo  # noqa: F401  (registers the models)
from gczoo.layers import BAM, ContextBlock, CrissCrossAttention, NonLocal2d, SimplifiedNonLocal
from gczoo.models import ZOO_MODELS, PretrainedWeightsError, ZooResNet, attention_modules
from gczoo.models.tags import default_tag
from gczoo.papers import reported_figures

NAMES = list(ZOO_MODELS)
KEY_MODELS = ['resnet50_gc', 'resnet50_nl', 'resnet50_bam', 'resnet50_cc']


def x64(b=2):
    return torch.randn(b, 3, 64, 64)


def perturb_attention(model: nn.Module) -> nn.Module:
    """Move every attention parameter off its (identity) init so tests see the blocks work."""
    with torch.no_grad():
        for _, module in attention_modules(model):
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_registered_with_timm_under_module_gczoo_without_collisions():
    assert sorted(timm.list_models(module='gczoo')) == sorted(NAMES)
    timm_own = set(timm.list_models(module='resnet')) | set(timm.list_models(module='byobnet'))
    assert not timm_own & set(NAMES)
    assert set(NAMES) <= set(timm.list_models('resnet*_*'))


@pytest.mark.parametrize('name', NAMES)
def test_builds_forward_backward_64(name):
    model = timm.create_model(name, num_classes=5)
    assert isinstance(model, ZooResNet)
    out = model(x64())
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()


# The papers' own parameter counts (millions, 1000 classes).
PAPER_PARAMS_M = {'resnet50_gc': 28.08, 'resnet50_se': 28.09, 'resnet50_cbam': 28.09, 'resnet50_bam': 25.92}


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_paper(name):
    model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2) == PAPER_PARAMS_M[name] == reported_figures(name).params_m


def test_placements_follow_the_papers():
    def where(name, cls):
        return [n for n, m in timm.create_model(name).named_modules() if isinstance(m, cls)]

    gc = where('resnet50_gc', ContextBlock)
    assert len(gc) == 4 + 6 + 3 and all(n.endswith('.se') for n in gc)
    assert not [n for n in gc if n.startswith('layer1.')]
    assert where('resnet50_nl', NonLocal2d) == [
        'layer2.attn1', 'layer2.attn3', 'layer3.attn1', 'layer3.attn3', 'layer3.attn5']
    nl = timm.create_model('resnet50_nl').layer2.attn1
    assert nl.mode == 'embedded_gaussian' and nl.sub_sample and nl.inner_channels == 256
    assert where('resnet50_snl', SimplifiedNonLocal) == ['layer3.attn4']  # before res4's last block
    assert where('resnet50_bam', BAM) == ['layer1.attn2', 'layer2.attn3', 'layer3.attn5']
    cc = where('resnet50_cc', CrissCrossAttention)
    assert cc == ['layer3.attn5']
    assert timm.create_model('resnet50_cc').layer3.attn5.recurrence == 2
    gc_r4 = timm.create_model('resnet50_gc_r4').layer2[0].se
    assert gc_r4.channel_add_conv[0].out_channels == 512 // 4


def test_backbone_keys_equal_timm_resnet50():
    ref = set(timm.create_model('resnet50').state_dict())
    for name in [n for n in NAMES if n.startswith('resnet50')]:
        model = timm.create_model(name)
        attn = tuple(f'{n}.' for n, _ in attention_modules(model))
        keys = {k for k in model.state_dict() if not k.startswith(attn)}
        assert keys == ref, name


IDENTITY_AT_INIT = ['resnet50_gc', 'resnet50_gc_r4', 'resnet50_nl', 'resnet50_snl', 'resnet50_cc', 'resnet50_sa']


@pytest.mark.parametrize('name', IDENTITY_AT_INIT)
def test_zoo_model_equals_its_resnet_at_init(name):
    """timm's init_weights kaiming-inits every conv; the blocks' zero-init must survive it, so a zoo
    model with a ResNet's backbone weights gives that ResNet's logits."""
    model = timm.create_model(name)
    ref = timm.create_model('resnet50')
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()})
    model.eval(), ref.eval()
    x = x64()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    model.init_weights()  # calling timm's init again keeps the identity too
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if k in ref.state_dict()})
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_pretrained_without_its_source_says_where_it_looked_and_the_alternatives(tmp_path, monkeypatch):
    from huggingface_hub import constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_hub'))
    with pytest.raises(PretrainedWeightsError, match=r"resnet50_gc.*timm/resnet50\.a1_in1k.*pretrained_cfg_overlay"):
        timm.create_model('resnet50_gc', pretrained=True)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('resnet50_gcx')
    from gczoo.models import create_zoo_model
    with pytest.raises(ValueError, match='resnet50_gc'):
        create_zoo_model('resnet50_gcx')


def test_pretrained_cfg_is_complete():
    assert timm.create_model('resnet18_gc').pretrained_cfg['architecture'] == 'resnet18_gc'
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier',
                    'pool_size', 'license', 'paper_ids'):
            assert cfg.get(key), (name, key)
        assert cfg['tag'] == default_tag(name).tag  # timm's default is the zoo's default tag
        assert cfg.get('hf_hub_id') or cfg.get('url'), name  # every listed tag names its source
        if cfg.get('hf_hub_id'):
            assert cfg['hf_hub_filename'] == 'model.safetensors'
        assert cfg['architecture'] == name


@pytest.mark.parametrize('name', KEY_MODELS)
def test_features_only_and_out_indices(name):
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    feats = model(x64())
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert model.feature_info.channels() == [256, 512, 1024, 2048]


@pytest.mark.parametrize('name', KEY_MODELS)
def test_forward_intermediates_features_head(name):
    model = perturb_attention(timm.create_model(name, num_classes=7)).eval()
    x = x64()
    final, inter = model.forward_intermediates(x, indices=4)
    assert len(inter) == 4 and inter[-1].shape == (2, 2048, 2, 2)
    feats = model.forward_features(x)
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(inter[-1], feats)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 2048)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    # the attention blocks are part of the stage outputs
    stage3 = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    y = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    y = model.layer3(model.layer2(model.layer1(y)))
    torch.testing.assert_close(stage3, y)


@pytest.mark.parametrize('name', KEY_MODELS)
def test_grad_checkpointing_same_output_and_grads(name):
    model = perturb_attention(timm.create_model(name, num_classes=3)).eval()
    x = x64()
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('name', KEY_MODELS)
def test_torchscript(name):
    model = perturb_attention(timm.create_model(name, num_classes=3)).eval()
    scripted = torch.jit.script(model)
    x = x64(1)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', KEY_MODELS)
def test_torchvision_fx_feature_extraction(name):
    model = perturb_attention(timm.create_model(name, num_classes=3)).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    attn_nodes = [n for n in eval_nodes if '.attn' in n or '.se.' in n]
    assert attn_nodes
    extractor = create_feature_extractor(model, return_nodes={'layer3': 'c4', 'fc': 'logits'})
    x = x64()
    out = extractor(x)
    torch.testing.assert_close(out['logits'], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet50_gc', 'resnet50_nl', 'resnet50_cbam', 'resnet50_bam', 'resnet50_cc', 'resnet50_sa'])
def test_every_parameter_gets_a_gradient(name):
    model = perturb_attention(timm.create_model(name, num_classes=3)).train()
    model(x64()).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_reset_classifier_num_classes_in_chans_global_pool():
    model = timm.create_model('resnet50_gc', num_classes=10, in_chans=1, global_pool='catavgmax')
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    model.reset_classifier(4)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2048 * 2)


def test_attention_norm_weights_are_excluded_from_weight_decay():
    from timm.optim import create_optimizer_v2
    model = timm.create_model('resnet18_gc', num_classes=3)
    assert 'layer2.0.se.channel_add_conv.1.weight' in model.no_weight_decay()
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert id(model.layer2[0].se.channel_add_conv[1].weight) not in decayed
    assert id(model.layer2[0].conv1.weight) in decayed
