"""ContextBlock (GC block) and SimplifiedNonLocal against GCNet's equations (arXiv:1904.11492).

The references below are written from the paper (Eq. 2 for SNL, Eq. 3 / Fig. 4(d) for GC) with explicit
loops over positions, using the block's weights; the zero-initialised convs are perturbed first so the
equivalence tests can fail.
"""
import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gczoo.layers.global_context import ContextBlock, SimplifiedNonLocal

DT = torch.float64
B, C, H, W = 2, 16, 5, 7

FUSIONS = [('channel_add',), ('channel_mul',), ('channel_add', 'channel_mul'), ('channel_mul', 'channel_add')]


def _x(seed=0, shape=(B, C, H, W)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def _perturb(module: nn.Module, seed=1, std=0.5):
    """Random values for every parameter (zero-init convs and LayerNorm affine included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
            if p.dim() == 3:  # LayerNorm([P,1,1]) weight/bias: keep the scale away from 0
                p.add_(1.0)
    return module


def _timm_like_init(module: nn.Module, seed=2):
    """What timm's ResNet.init_weights does to every Conv2d (kaiming fan_out), plus non-zero biases."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.normal_(m.bias)


# ---------------------------------------------------------------- references from the paper


def ref_context(x, conv_mask, pooling):
    """Context vector (B, C): sum_j softmax_j(W_k x) x_j (attention) or mean_j x_j (avg), by loops."""
    x = x.detach()
    b_, c_, h_, w_ = x.shape
    n = h_ * w_
    xf = x.reshape(b_, c_, n)
    ctx = torch.zeros(b_, c_, dtype=x.dtype)
    weights = torch.zeros(b_, n, dtype=x.dtype)
    for b in range(b_):
        if pooling == 'att':
            wk = conv_mask.weight.detach().reshape(c_)
            bk = conv_mask.bias.detach().reshape(())
            logits = [float(torch.dot(wk, xf[b, :, j]) + bk) for j in range(n)]
            m = max(logits)
            e = [math.exp(v - m) for v in logits]
            z = sum(e)
            for j in range(n):
                weights[b, j] = e[j] / z
        else:
            weights[b, :] = 1.0 / n
        for j in range(n):
            ctx[b] += weights[b, j] * xf[b, :, j]
    return ctx, weights.reshape(b_, 1, h_, w_)


def ref_transform(seq, ctx):
    """conv1x1 C->P, LayerNorm over the P channels, ReLU, conv1x1 P->C, on a (B, C) context."""
    w1 = seq[0].weight[:, :, 0, 0]
    t = torch.einsum('pc,bc->bp', w1, ctx) + seq[0].bias
    ln = seq[1]
    mu = t.mean(1, keepdim=True)
    var = ((t - mu) ** 2).mean(1, keepdim=True)
    t = (t - mu) / torch.sqrt(var + ln.eps) * ln.weight.reshape(-1) + ln.bias.reshape(-1)
    t = torch.clamp_min(t, 0)
    w2 = seq[3].weight[:, :, 0, 0]
    return torch.einsum('cp,bp->bc', w2, t) + seq[3].bias


def ref_context_block(block, x, pooling, fusions):
    ctx, _ = ref_context(x, block.conv_mask, pooling)
    out = x.clone()
    # the paper/mmcv order: multiply first, then add - whatever order fusion_types lists them in
    if 'channel_mul' in fusions:
        out = out * torch.sigmoid(ref_transform(block.channel_mul_conv, ctx))[:, :, None, None]
    if 'channel_add' in fusions:
        out = out + ref_transform(block.channel_add_conv, ctx)[:, :, None, None]
    return out


def ref_snl(block, x):
    """Eq. 2: z_i = x_i + W_v sum_j softmax_j(W_k x) x_j (W_v outside the pooling, distributive law)."""
    ctx, _ = ref_context(x, block.conv_mask, 'att')
    wv = block.conv_value.weight[:, :, 0, 0]
    return x + (torch.einsum('oc,bc->bo', wv, ctx) + block.conv_value.bias)[:, :, None, None]


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize('pooling', ['att', 'avg'])
@pytest.mark.parametrize('fusions', FUSIONS)
def test_context_block_matches_paper(pooling, fusions):
    block = _perturb(ContextBlock(C, rd_ratio=1 / 4, pooling_type=pooling, fusion_types=fusions, dtype=DT))
    assert block.rd_channels == 4
    x = _x()
    ref = ref_context_block(block, x, pooling, fusions)
    for train in (True, False):
        block.train(train)
        out = block(x)
        assert out.shape == x.shape and out.dtype == DT
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_fusion_order_mul_then_add():
    """Pitfall: with both fusions the paper multiplies first, then adds (not (x + add) * gate)."""
    block = _perturb(ContextBlock(C, rd_channels=3, fusion_types=('channel_add', 'channel_mul'), dtype=DT))
    x = _x()
    ctx, _ = ref_context(x, block.conv_mask, 'att')
    gate = torch.sigmoid(ref_transform(block.channel_mul_conv, ctx))[:, :, None, None]
    add = ref_transform(block.channel_add_conv, ctx)[:, :, None, None]
    out = block(x)
    torch.testing.assert_close(out, x * gate + add, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, (x + add) * gate, atol=1e-3)


def test_snl_matches_paper():
    block = _perturb(SimplifiedNonLocal(C, dtype=DT))
    x = _x()
    ref = ref_snl(block, x)
    for train in (True, False):
        block.train(train)
        torch.testing.assert_close(block(x), ref, rtol=1e-10, atol=1e-10)


def test_snl_has_no_norm_after_wv():
    """The paper's Fig. 3(b): W_k and W_v only; no normalisation layer, parameters of the two convs."""
    block = SimplifiedNonLocal(C)
    assert not any(isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)) for m in block.modules())
    assert sum(p.numel() for p in block.parameters()) == (C + 1) + (C * C + C)


# ---------------------------------------------------------------- init


@pytest.mark.parametrize('pooling', ['att', 'avg'])
def test_channel_add_is_identity_at_init(pooling):
    x = _x()
    block = ContextBlock(C, rd_ratio=1 / 4, pooling_type=pooling, dtype=DT)  # default fusion: channel_add
    for train in (True, False):
        block.train(train)
        assert torch.equal(block(x), x)
    with torch.no_grad():
        block.channel_add_conv[3].bias.add_(0.1)
    assert not torch.allclose(block(x), x)
    block.reset_parameters()
    with torch.no_grad():
        block.channel_add_conv[3].weight.normal_()
    assert not torch.allclose(block(x), x)


def test_default_width_identity_at_init():
    """The defaults (rd_ratio 1/16, channel_add, att) are the identity at init too."""
    x = _x(shape=(B, 32, H, W))
    block = ContextBlock(32, dtype=DT)
    assert block.rd_channels == 2
    assert torch.equal(block(x), x)


def test_single_channel_bottleneck_warns():
    """P = 1 with LayerNorm: LN over one channel returns its bias, so the transform ignores the context."""
    with pytest.warns(UserWarning, match='rd_channels=1'):
        block = ContextBlock(C, dtype=DT)  # int(16 / 16) == 1
    _perturb(block)
    x = _x()
    out = block(x)
    const = out - x
    assert torch.allclose(const, const[:1, :, :1, :1].expand_as(const))  # same for every image / position
    assert torch.allclose(block(_x(seed=5)) - _x(seed=5), const)


@pytest.mark.parametrize('fusions', [('channel_mul',), ('channel_add', 'channel_mul')])
def test_channel_mul_halves_at_init(fusions):
    """Documented: the zero last conv gives sigmoid(0) = 0.5 for channel_mul (as mmcv); NOT the identity."""
    x = _x()
    block = ContextBlock(C, rd_ratio=1 / 4, fusion_types=fusions, dtype=DT)
    out = block(x)
    assert torch.equal(out, 0.5 * x)
    assert not torch.allclose(out, x)


def test_snl_is_identity_at_init():
    x = _x()
    block = SimplifiedNonLocal(C, dtype=DT)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.conv_value.bias.add_(0.1)
    assert not torch.allclose(block(x), x)


@pytest.mark.parametrize('cls,kwargs', [
    (ContextBlock, dict(rd_ratio=1 / 4)),
    (ContextBlock, dict(pooling_type='avg', rd_ratio=1 / 4)),
    (ContextBlock, dict(rd_ratio=1 / 4, fusion_types=('channel_add', 'channel_mul'))),
    (SimplifiedNonLocal, {}),
])
def test_reset_parameters_restores_init_after_timm_init(cls, kwargs):
    """Pitfall (mmdetection #2525, timm ResNet.init_weights): a kaiming re-init destroys the zero-init."""
    x = _x()
    block = cls(C, dtype=DT, **kwargs)
    expected = block(x)  # x, or 0.5 x with channel_mul
    _timm_like_init(block)
    assert not torch.allclose(block(x), expected)
    block.reset_parameters()
    assert torch.equal(block(x), expected)
    if 'fusion_types' not in kwargs:
        assert torch.equal(expected, x)


def test_reset_parameters_in_a_timm_resnet():
    """timm's ResNet re-inits the block's convs at construction; reset_parameters() brings the zeros back."""
    from timm.models.resnet import BasicBlock, ResNet
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), num_classes=10, block_args=dict(attn_layer=ContextBlock))
    blocks = [m for m in model.modules() if isinstance(m, ContextBlock)]
    assert len(blocks) == 4
    assert all(b.channel_add_conv[3].weight.abs().sum() > 0 for b in blocks)  # destroyed by init_weights
    for b in blocks:
        b.reset_parameters()
    assert all(torch.count_nonzero(b.channel_add_conv[3].weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.channel_add_conv[3].bias) == 0 for b in blocks)


def test_conv_mask_init_is_kaiming_fan_in():
    torch.manual_seed(0)
    c = 4096
    block = ContextBlock(c, rd_channels=2)
    w = block.conv_mask.weight
    assert torch.count_nonzero(block.conv_mask.bias) == 0
    assert abs(w.std().item() / math.sqrt(2.0 / c) - 1) < 0.1
    ln = block.channel_add_conv[1]
    assert torch.equal(ln.weight, torch.ones(2, 1, 1)) and torch.equal(ln.bias, torch.zeros(2, 1, 1))
    snl = SimplifiedNonLocal(1024)
    assert abs(snl.conv_mask.weight.std().item() / math.sqrt(2.0 / 1024) - 1) < 0.1
    assert torch.count_nonzero(snl.conv_mask.bias) == 0


# ---------------------------------------------------------------- attention maps


@pytest.mark.parametrize('pooling', ['att', 'avg'])
@pytest.mark.parametrize('fusions', FUSIONS[:3])
def test_context_block_attention_maps(pooling, fusions):
    block = _perturb(ContextBlock(C, rd_ratio=1 / 4, pooling_type=pooling, fusion_types=fusions, dtype=DT)).eval()
    x = _x()
    before = block(x)
    maps = block.attention_maps(x)
    assert torch.equal(block(x), before)
    assert set(maps) == ({'context', 'channel'} if 'channel_mul' in fusions else {'context'})
    ctx_map = maps['context']
    assert ctx_map.shape == (B, 1, H, W) and ctx_map.dtype == DT
    assert (ctx_map >= 0).all()
    torch.testing.assert_close(ctx_map.sum((1, 2, 3)), torch.ones(B, dtype=DT))
    _, ref_w = ref_context(x, block.conv_mask, pooling)
    torch.testing.assert_close(ctx_map, ref_w, rtol=1e-10, atol=1e-12)
    if pooling == 'avg':
        assert torch.equal(ctx_map, torch.full_like(ctx_map, 1.0 / (H * W)))
    # the forward is recomputed from the returned maps
    ctx = torch.einsum('bkhw,bchw->bc', ctx_map, x)[:, :, None, None]
    out = x
    if 'channel_mul' in fusions:
        assert maps['channel'].shape == (B, C)
        assert ((maps['channel'] > 0) & (maps['channel'] < 1)).all()
        out = out * maps['channel'][:, :, None, None]
    if 'channel_add' in fusions:
        out = out + block.channel_add_conv(ctx)
    torch.testing.assert_close(out, before, rtol=1e-10, atol=1e-10)


def test_snl_attention_maps():
    block = _perturb(SimplifiedNonLocal(C, dtype=DT))
    x = _x()
    maps = block.attention_maps(x, queries=torch.tensor([0, 3]))
    assert set(maps) == {'context'}
    m = maps['context']
    assert m.shape == (B, 1, H, W)
    torch.testing.assert_close(m.sum((1, 2, 3)), torch.ones(B, dtype=DT))
    ctx = torch.einsum('bkhw,bchw->bc', m, x)[:, :, None, None]
    torch.testing.assert_close(x + block.conv_value(ctx), block(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- pitfalls: memory, precision


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize('cls,kwargs', [
    (ContextBlock, dict(rd_ratio=1 / 4, fusion_types=('channel_add', 'channel_mul'))),
    (SimplifiedNonLocal, {}),
])
def test_no_hw_by_hw_tensor(cls, kwargs):
    """Attention pooling is a (B,C,HW)@(B,HW,1) matmul: no tensor larger than the input is created."""
    block = _perturb(cls(C, **kwargs))
    x = torch.randn(1, C, 32, 48)
    with _MaxNumel() as mode:
        block(x)
        block.attention_maps(x)
    assert mode.max_numel <= x.numel()


@pytest.mark.parametrize('cls,kwargs', [
    (ContextBlock, dict(rd_ratio=1 / 4, fusion_types=('channel_add', 'channel_mul'))),
    (ContextBlock, dict(rd_ratio=1 / 4, pooling_type='avg', fusion_types=('channel_add', 'channel_mul'))),
    (SimplifiedNonLocal, {}),
])
def test_bf16_autocast_large_inputs_finite(cls, kwargs):
    block = _perturb(cls(C, **kwargs))
    x = torch.randn(B, C, H, W) * 1e3
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
        maps = block.attention_maps(x)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(v).all() for v in maps.values())
    torch.testing.assert_close(maps['context'].float().sum((1, 2, 3)), torch.ones(B), rtol=0, atol=2e-2)
    ref = block(x)
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_half_softmax_computed_in_float32():
    """A pure bfloat16 block (no autocast): the pooling softmax is taken in float32, weights sum to 1."""
    block = _perturb(ContextBlock(C, rd_ratio=1 / 4, fusion_types=('channel_mul',))).to(torch.bfloat16)
    x = (torch.randn(B, C, H, W) * 1e3).to(torch.bfloat16)
    out = block(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    m = block.attention_maps(x)['context']
    assert m.dtype == torch.bfloat16
    torch.testing.assert_close(m.float().sum((1, 2, 3)), torch.ones(B), rtol=0, atol=2e-2)


# ---------------------------------------------------------------- checkpoint layout (mmcv / official GCNet)


def test_state_dict_keys_match_mmcv():
    p = 4
    block = ContextBlock(C, rd_channels=p, fusion_types=('channel_add', 'channel_mul'))
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    expected = {'conv_mask.weight': (1, C, 1, 1), 'conv_mask.bias': (1,)}
    for name in ('channel_add_conv', 'channel_mul_conv'):
        expected.update({
            f'{name}.0.weight': (p, C, 1, 1), f'{name}.0.bias': (p,),
            f'{name}.1.weight': (p, 1, 1), f'{name}.1.bias': (p, 1, 1),
            f'{name}.3.weight': (C, p, 1, 1), f'{name}.3.bias': (C,),
        })
    assert shapes == expected
    assert isinstance(block.channel_add_conv, nn.Sequential) and len(block.channel_add_conv) == 4
    assert isinstance(block.channel_add_conv[1], nn.LayerNorm) and isinstance(block.channel_add_conv[2], nn.ReLU)

    avg = ContextBlock(C, rd_channels=p, pooling_type='avg')
    assert set(avg.state_dict()) == {f'channel_add_conv.{i}.{t}' for i in (0, 1, 3) for t in ('weight', 'bias')}
    assert avg.conv_mask is None and avg.channel_mul_conv is None


def test_snl_state_dict_keys():
    shapes = {k: tuple(v.shape) for k, v in SimplifiedNonLocal(C).state_dict().items()}
    assert shapes == {'conv_mask.weight': (1, C, 1, 1), 'conv_mask.bias': (1,),
                      'conv_value.weight': (C, C, 1, 1), 'conv_value.bias': (C,)}


def test_norm_layer_options():
    x = _x()
    no_norm = _perturb(ContextBlock(C, rd_channels=3, norm_layer=None, dtype=DT))
    assert isinstance(no_norm.channel_add_conv[1], nn.Identity)
    ctx, _ = ref_context(x, no_norm.conv_mask, 'att')
    seq = no_norm.channel_add_conv
    t = torch.clamp_min(torch.einsum('pc,bc->bp', seq[0].weight[:, :, 0, 0], ctx) + seq[0].bias, 0)
    ref = x + (torch.einsum('cp,bp->bc', seq[3].weight[:, :, 0, 0], t) + seq[3].bias)[:, :, None, None]
    torch.testing.assert_close(no_norm(x), ref, rtol=1e-10, atol=1e-10)
    bn = ContextBlock(C, rd_channels=3, norm_layer=nn.BatchNorm2d, dtype=DT)
    assert isinstance(bn.channel_add_conv[1], nn.BatchNorm2d) and bn.channel_add_conv[1].num_features == 3
    assert torch.equal(bn(x), x)


def test_device_dtype_kwargs():
    block = ContextBlock(C, rd_ratio=1 / 4, fusion_types=('channel_add', 'channel_mul'), device='cpu', dtype=DT)
    assert all(p.dtype == DT for p in block.parameters())
    assert all(p.dtype == DT for p in SimplifiedNonLocal(C, dtype=DT).parameters())


# ---------------------------------------------------------------- bad arguments / inputs


def test_rd_ratio_leaving_zero_channels():
    """Pitfall GCNet #48: int(C * ratio) == 0 is refused at construction, naming rd_ratio."""
    with pytest.raises(ValueError, match='rd_ratio'):
        ContextBlock(8)  # int(8 / 16) == 0
    with pytest.raises(ValueError, match='rd_ratio'):
        ContextBlock(C, rd_ratio=0.0)
    with pytest.raises(ValueError, match='rd_channels'):
        ContextBlock(C, rd_channels=0)
    assert ContextBlock(8, rd_ratio=1 / 4).rd_channels == 2
    assert ContextBlock(8, rd_ratio=1 / 8, norm_layer=None).rd_channels == 1
    assert ContextBlock(8, rd_channels=2).rd_channels == 2


@pytest.mark.parametrize('kwargs,match', [
    (dict(pooling_type='max'), 'pooling_type'),
    (dict(pooling_type='ATT'), 'pooling_type'),
    (dict(fusion_types=('channel_add', 'channel_concat')), 'fusion_types'),
    (dict(fusion_types='add'), 'fusion_types'),
    (dict(fusion_types=()), 'fusion_types'),
    (dict(fusion_types=[]), 'fusion_types'),
    (dict(fusion_types=('channel_add', 'channel_add')), 'fusion_types'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContextBlock(C, **kwargs)


def test_fusion_types_accepts_str_and_list():
    assert ContextBlock(C, rd_ratio=1 / 4, fusion_types='channel_mul').fusion_types == ('channel_mul',)
    both = ContextBlock(C, rd_ratio=1 / 4, fusion_types=['channel_add', 'channel_mul'])
    assert both.fusion_types == ('channel_add', 'channel_mul')


@pytest.mark.parametrize('bad', [0, -4])
def test_bad_channels(bad):
    with pytest.raises(ValueError, match='channels'):
        ContextBlock(bad, rd_channels=1)
    with pytest.raises(ValueError, match='channels'):
        SimplifiedNonLocal(bad)
    with pytest.raises(TypeError, match='channels'):
        SimplifiedNonLocal(16.0)


@pytest.mark.parametrize('cls', [ContextBlock, SimplifiedNonLocal])
def test_bad_inputs(cls):
    block = cls(32)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(B, 33, H, W))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(B, 32, H * W))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(B, 32, 2, H, W))
    with pytest.raises(ValueError, match='channels'):
        block.attention_maps(torch.randn(B, 31, H, W))
