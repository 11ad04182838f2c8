"""init_from_resnet: an ImageNet ResNet transplanted into a zoo model's backbone, blocks left at init."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50 as tv_resnet50

import gczoo  # noqa: F401
from gczoo.models import CheckpointError, ZOO_MODELS, attention_modules, init_from_resnet

RESNET50_MODELS = [n for n, z in ZOO_MODELS.items() if z.depth == 50]
# Blocks whose paper zero-initialises them are the identity at init; SE/CBAM/BAM gates are sigmoids.
IDENTITY_AT_INIT = {'resnet50_gc', 'resnet50_gc_r4', 'resnet50_nl', 'resnet50_snl', 'resnet50_cc', 'resnet50_sa'}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A timm resnet50 with random weights (BN statistics too), saved as safetensors and as .pth."""
    torch.manual_seed(0)
    model = timm.create_model('resnet50').eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.05 + (1.0 if name.endswith(('running_var', 'bn3.weight')) else 0.0))
    folder = tmp_path_factory.mktemp('resnet50')
    save_file(model.state_dict(), str(folder / 'resnet50.safetensors'))
    torch.save({'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}}, folder / 'resnet50.pth')
    return model, folder


@pytest.mark.parametrize('name', RESNET50_MODELS)
def test_transplant_gives_the_source_logits_where_blocks_are_identity(name, source):
    ref, folder = source
    model = timm.create_model(name).eval()
    report = init_from_resnet(model, folder / 'resnet50.safetensors')
    attn_keys = {f'{n}.{k}' for n, m in attention_modules(model) for k in m.state_dict()}
    assert set(report.kept_at_init) == attn_keys and attn_keys
    assert not report.skipped_classifier
    backbone = {k: v for k, v in model.state_dict().items() if k not in attn_keys}
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(backbone[key], value, rtol=0, atol=0)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model, ref64 = model.double(), timm.create_model('resnet50').double().eval()
    ref64.load_state_dict(ref.state_dict())
    if name in IDENTITY_AT_INIT:
        torch.testing.assert_close(model(x), ref64(x), rtol=1e-10, atol=1e-10)
    else:
        assert not torch.allclose(model(x), ref64(x))  # a sigmoid gate cannot start as the identity


def test_pth_with_dataparallel_prefix_and_pretrained_backbone_kwarg(source):
    ref, folder = source
    model = timm.create_model('resnet50_gc', pretrained_backbone=str(folder / 'resnet50.pth')).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_torchvision_layout_and_new_head(source):
    tv = tv_resnet50()
    model = timm.create_model('resnet50_nl', num_classes=7)
    report = init_from_resnet(model, tv.state_dict())
    assert report.skipped_classifier == ['fc.weight', 'fc.bias']
    torch.testing.assert_close(model.layer4[2].conv3.weight, tv.layer4[2].conv3.weight)


def test_mismatched_source_lists_the_keys(source):
    with pytest.raises(CheckpointError, match=r'missing keys layer1\.0\.conv3\.weight.*shape mismatch'):
        init_from_resnet(timm.create_model('resnet50_gc'), timm.create_model('resnet18').state_dict())
    with pytest.raises(ValueError, match=r"no such file.*unknown model 'no/such/file\.pth'"):
        init_from_resnet(timm.create_model('resnet50_gc'), 'no/such/file.pth')


@pytest.mark.parametrize('in_chans', [1, 4])
def test_pretrained_backbone_with_in_chans_adapts_conv1_as_timm_does(source, in_chans):
    """timm adapts a pretrained first conv to in_chans (summed for 1, repeated and rescaled otherwise);
    pretrained_backbone= does the same instead of failing on conv1's shape."""
    ref, folder = source
    model = timm.create_model('resnet50_gc', in_chans=in_chans, num_classes=5,
                              pretrained_backbone=str(folder / 'resnet50.safetensors')).eval()
    expected = timm.models.adapt_input_conv(in_chans, ref.conv1.weight.detach())
    torch.testing.assert_close(model.conv1.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.layer4[2].conv3.weight, ref.layer4[2].conv3.weight, rtol=0, atol=0)
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 5)
    # what timm itself loads for the source ResNet with the same in_chans
    timm_ref = timm.create_model('resnet50', in_chans=in_chans, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(folder / 'resnet50.safetensors'))).eval()
    torch.testing.assert_close(model.conv1.weight, timm_ref.conv1.weight, rtol=0, atol=0)
    report = init_from_resnet(timm.create_model('resnet50_nl', in_chans=in_chans), ref.state_dict())
    assert report.adapted == [f'conv1.weight (3 -> {in_chans} channels)'] and 'adapted' in str(report)


def test_first_conv_of_another_kernel_is_still_a_mismatch(source):
    ref, _ = source
    state = dict(ref.state_dict())
    state['conv1.weight'] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r'conv1\.weight: source \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)'):
        init_from_resnet(timm.create_model('resnet50_gc'), state)
