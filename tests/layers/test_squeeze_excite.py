"""SqueezeExcite against the SE paper's equations (Hu et al., arXiv:1709.01507, Eq. 2-4)."""
import math

import pytest
import torch
import torch.nn as nn
from timm.layers.squeeze_excite import SEModule

from gczoo.layers.squeeze_excite import SqueezeExcite

DT = torch.float64
B, C, H, W = 2, 32, 5, 7


def _x(seed=0, c=C):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, c, H, W, generator=g, dtype=DT)


def _perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def ref_se(block, x):
    """Squeeze z_c = 1/(HW) sum_ij u_c(i,j); excite s = sigmoid(W2 relu(W1 z + b1) + b2); out_c = s_c u_c. Loops."""
    b_, c_, h_, w_ = x.shape
    w1, b1 = block.fc1.weight[:, :, 0, 0].detach(), block.fc1.bias.detach()
    w2, b2 = block.fc2.weight[:, :, 0, 0].detach(), block.fc2.bias.detach()
    out = torch.empty_like(x)
    gates = torch.empty(b_, c_, dtype=x.dtype)
    for b in range(b_):
        z = torch.zeros(c_, dtype=x.dtype)
        for i in range(h_):
            for j in range(w_):
                z += x[b, :, i, j]
        z /= h_ * w_
        hidden = torch.clamp_min(torch.einsum('rc,c->r', w1, z) + b1, 0)
        s = 1 / (1 + torch.exp(-(torch.einsum('cr,r->c', w2, hidden) + b2)))
        gates[b] = s
        for c in range(c_):
            out[b, c] = x[b, c] * s[c]
    return out, gates


@pytest.mark.parametrize('channels,rd', [(32, 2), (16, 1), (48, 3), (64, 4)])
def test_matches_paper_with_exact_int_width(channels, rd):
    block = _perturb(SqueezeExcite(channels, dtype=DT))
    assert block.rd_channels == rd == int(channels / 16)
    assert block.fc1.weight.shape == (rd, channels, 1, 1) and block.fc2.weight.shape == (channels, rd, 1, 1)
    x = _x(c=channels)
    ref, _ = ref_se(block, x)
    for train in (True, False):
        block.train(train)
        out = block(x)
        assert out.shape == x.shape and out.dtype == DT
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_rd_ratio_and_rd_channels():
    x = _x()
    block = _perturb(SqueezeExcite(C, rd_ratio=1 / 4, dtype=DT))
    assert block.rd_channels == 8
    torch.testing.assert_close(block(x), ref_se(block, x)[0], rtol=1e-10, atol=1e-10)
    block = _perturb(SqueezeExcite(C, rd_ratio=1 / 4, rd_channels=5, dtype=DT))
    assert block.rd_channels == 5
    torch.testing.assert_close(block(x), ref_se(block, x)[0], rtol=1e-10, atol=1e-10)


def test_width_differs_from_timm_make_divisible():
    """Documented: ours is int(C / 16) as the paper; timm rounds up to a multiple of 8 (equal when C / 16 is one)."""
    assert SqueezeExcite(64).rd_channels == 4
    assert SEModule(64).fc1.out_channels == 8
    for c in (256, 512, 1024, 2048):  # every SE of a seresnet50
        assert SqueezeExcite(c).rd_channels == SEModule(c).fc1.out_channels == c // 16


@pytest.mark.parametrize('channels,rd_channels', [(256, None), (64, 8)])
def test_timm_semodule_weights_map_one_to_one(channels, rd_channels):
    torch.manual_seed(0)
    timm_se = _perturb(SEModule(channels).to(DT))
    ours = SqueezeExcite(channels, rd_channels=rd_channels, dtype=DT)
    ours.load_state_dict(timm_se.state_dict(), strict=True)
    assert set(ours.state_dict()) == {'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias'}
    x = torch.randn(B, channels, 4, 3, dtype=DT)
    torch.testing.assert_close(ours(x), timm_se(x), rtol=1e-12, atol=1e-12)


def test_state_dict_keys():
    shapes = {k: tuple(v.shape) for k, v in SqueezeExcite(C).state_dict().items()}
    assert shapes == {'fc1.weight': (2, C, 1, 1), 'fc1.bias': (2,), 'fc2.weight': (C, 2, 1, 1), 'fc2.bias': (C,)}


def test_attention_maps():
    block = _perturb(SqueezeExcite(C, dtype=DT))
    x = _x()
    before = block(x)
    maps = block.attention_maps(x, queries=torch.tensor([1]))
    assert torch.equal(block(x), before)
    assert set(maps) == {'channel'}
    g = maps['channel']
    assert g.shape == (B, C) and g.dtype == DT
    assert ((g > 0) & (g < 1)).all()
    torch.testing.assert_close(g, ref_se(block, x)[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x * g[:, :, None, None], before, rtol=0, atol=0)


def test_gate_and_act_layer_names():
    x = _x()
    by_name = _perturb(SqueezeExcite(C, gate_layer='sigmoid', act_layer='relu', dtype=DT))
    by_cls = SqueezeExcite(C, dtype=DT)
    by_cls.load_state_dict(by_name.state_dict())
    torch.testing.assert_close(by_name(x), by_cls(x), rtol=0, atol=0)
    hard = SqueezeExcite(C, gate_layer='hard_sigmoid', dtype=DT)
    g = hard.attention_maps(x)['channel']
    assert ((g >= 0) & (g <= 1)).all()


def test_no_zero_init_and_reset_parameters_uses_conv_defaults():
    """SE can't be an identity (sigmoid gate): zero fc2 halves the input; reset_parameters = conv defaults."""
    x = _x()
    block = SqueezeExcite(C, dtype=DT)
    assert torch.count_nonzero(block.fc2.weight) > 0
    with torch.no_grad():
        block.fc2.weight.zero_()
        block.fc2.bias.zero_()
    assert torch.equal(block(x), 0.5 * x)
    with torch.no_grad():
        for m in (block.fc1, block.fc2):  # timm's ResNet.init_weights
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    block.reset_parameters()
    for m in (block.fc1, block.fc2):
        bound = 1 / math.sqrt(m.in_channels)  # PyTorch default: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), ..)
        assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
        assert torch.count_nonzero(m.weight) > 0


def test_bf16_autocast_large_inputs_finite():
    block = _perturb(SqueezeExcite(C))
    x = torch.randn(B, C, H, W) * 1e3
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()


def test_device_dtype_kwargs():
    assert all(p.dtype == DT for p in SqueezeExcite(C, device='cpu', dtype=DT).parameters())


def test_rd_ratio_leaving_zero_channels():
    with pytest.raises(ValueError, match='rd_ratio'):
        SqueezeExcite(8)  # int(8 / 16) == 0
    with pytest.raises(ValueError, match='rd_ratio'):
        SqueezeExcite(C, rd_ratio=-0.5)
    with pytest.raises(ValueError, match='rd_channels'):
        SqueezeExcite(C, rd_channels=0)
    assert SqueezeExcite(8, rd_channels=1).rd_channels == 1


def test_bad_channels():
    with pytest.raises(ValueError, match='channels'):
        SqueezeExcite(0, rd_channels=1)
    with pytest.raises(TypeError, match='channels'):
        SqueezeExcite(32.0)


def test_bad_inputs():
    block = SqueezeExcite(C)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(B, C + 1, H, W))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(B, C, H * W))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(B, C, 2, H, W))
    with pytest.raises(ValueError, match='channels'):
        block.attention_maps(torch.randn(B, C - 1, H, W))
