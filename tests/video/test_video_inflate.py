"""2D -> 3D inflation: a clip of one repeated frame gives the 2D ResNet's features (away from the temporal
borders, where the zero padding of the 3D convs sees fewer frames), in float64."""
import pytest
import timm
import torch

import gczoo  # noqa: F401  (registers the zoo models)
from gczoo.errors import CheckpointError
from gczoo.video import create_video_model, inflate_from_2d, inflate_state_dict

# Temporal receptive field of i3d_r50's layer4 output i: input frames 8i-62 .. 8i+66 (stem 5-frame conv,
# stride 2; pool1 stride 2; 3x1x1 convs in 9 blocks; pool2), so i = 8 of a 136-frame clip sees no padding.
FRAMES, CENTRE = 136, 8


def _randomize_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if name.endswith('running_mean'):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    return model


def _boring_clip(frame):
    return frame.unsqueeze(2).expand(-1, -1, FRAMES, -1, -1).contiguous()


def _check_identity(model_2d, model_3d, height, width):
    model_2d, model_3d = model_2d.double().eval(), model_3d.double().eval()  # inflate in float64 too
    report = inflate_from_2d(model_3d, model_2d)
    frame = torch.randn(1, 3, height, width, dtype=torch.float64)
    with torch.no_grad():
        f2 = model_2d.forward_features(frame)
        f3 = model_3d.forward_features(_boring_clip(frame))
    assert f3.shape[2] == 17 and f3.shape[3:] == f2.shape[2:]
    torch.testing.assert_close(f3[:, :, CENTRE], f2, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(f3[:, :, 0], f2, rtol=1e-3, atol=1e-3)  # the border sees the zero padding
    return report


def test_timm_resnet50_inflates_to_i3d_r50():
    model_2d = _randomize_bn(timm.create_model('resnet50', num_classes=400))
    report = _check_identity(model_2d, create_video_model('i3d_r50'), 16, 16)
    assert 'layer1.0.conv1.weight' in report.inflated and 'fc.weight' in report.copied
    assert not report.unused and not report.kept_init


def test_zoo_model_inflates_to_i3d_r50_nl():
    # a gczoo model (GC blocks at their zero init) into the NL model (NL blocks at theirs), non-square frames
    model_2d = _randomize_bn(timm.create_model('resnet50_gc'))
    report = _check_identity(model_2d, create_video_model('i3d_r50_nl'), 24, 20)
    assert any('.non_local.' in k for k in report.kept_init) and 'fc.weight' in report.kept_init
    assert any(k.startswith('layer3.') and 'fc.' not in k for k in report.unused)  # the GC blocks
    assert 'fc.weight' in report.unused  # 1000 ImageNet classes, the 3D model has 400


def test_weights_are_repeated_and_divided_by_the_kernel_depth():
    model_3d = create_video_model('i3d_r50')
    state_2d = timm.create_model('resnet50').state_dict()
    state, _ = inflate_state_dict(state_2d, model_3d)
    w2, w3 = state_2d['conv1.weight'], state['conv1.weight']
    assert w3.shape == (64, 3, 5, 7, 7)
    torch.testing.assert_close(w3.sum(2), w2)
    torch.testing.assert_close(w3[:, :, 0], w2 / 5)


def test_another_depth_is_refused_by_name():
    message = r'layer1\.0\.conv1\.weight has shape \[64, 64, 3, 3\], which does not inflate'
    with pytest.raises(CheckpointError, match=message):
        inflate_from_2d(create_video_model('i3d_r50'), timm.create_model('resnet18'))


def test_inflates_from_a_weights_file(tmp_path):
    from safetensors.torch import save_file
    model_2d = timm.create_model('resnet50', num_classes=400)
    save_file(model_2d.state_dict(), str(tmp_path / 'r50.safetensors'))
    model_3d = create_video_model('i3d_r50')
    report = inflate_from_2d(model_3d, tmp_path / 'r50.safetensors')
    assert 'conv1.weight' in report.inflated and "r50.safetensors" not in str(report)
    torch.testing.assert_close(model_3d.conv1.weight.sum(2), model_2d.conv1.weight)
