"""CBAM against a reference written from the paper's equations (and the official code's choices)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers.cbam import CBAM, OFFICIAL_KEY_MAP

D = torch.float64
C, RD = 32, 4  # rd_ratio 1/8


# ----------------------------------------------------------------------------- reference
def conv_ref(x, w, padding):
    """Convolution as unfold + explicit weighted sum (no F.conv2d), stride 1, no bias."""
    b, _, h, wd = x.shape
    k = w.shape[-1]
    cols = F.unfold(x, k, padding=padding)  # (B, Cin*k*k, H*W)
    return torch.einsum('ok,bkl->bol', w.reshape(w.shape[0], -1), cols).reshape(b, w.shape[0], h, wd)


def bn_ref(y, p, train):
    """BatchNorm over (N, H, W): batch statistics (biased variance) in train, running ones in eval."""
    if train:
        mean = y.mean((0, 2, 3), keepdim=True)
        var = ((y - mean) ** 2).mean((0, 2, 3), keepdim=True)
    else:
        mean, var = p['running_mean'].view(1, -1, 1, 1), p['running_var'].view(1, -1, 1, 1)
    return (y - mean) / torch.sqrt(var + p['eps']) * p['weight'].view(1, -1, 1, 1) + p['bias'].view(1, -1, 1, 1)


def pool_ref(x, kind):
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    if kind == 'avg':
        return flat.sum(-1) / (h * w)
    if kind == 'max':
        return flat.max(-1).values
    if kind == 'lp':
        ref = flat.pow(2).sum(-1).sqrt()
        # the official code's F.lp_pool2d(x, 2, (H, W)) is the same number
        torch.testing.assert_close(F.lp_pool2d(x, 2, (h, w)).flatten(1), ref)
        return ref
    if kind == 'lse':
        m = flat.max(-1, keepdim=True).values  # shifted so large inputs do not overflow
        return (m + (flat - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)
    raise AssertionError(kind)


def cbam_ref(x, w1, b1, w2, b2, pool_types, conv_w=None, bn=None, train=False):
    """Eq. 2: M_c = sigmoid(sum_p MLP(pool_p(x))); Eq. 3: M_s = sigmoid(BN(conv([max_C, mean_C])))."""
    logits = 0
    for kind in pool_types:
        hidden = torch.relu(pool_ref(x, kind) @ w1.T + b1)
        logits = logits + hidden @ w2.T + b2
    x1 = x * torch.sigmoid(logits)[:, :, None, None]
    if conv_w is None:
        return x1, torch.sigmoid(logits), None
    compress = torch.stack([x1.max(1).values, x1.mean(1)], 1)  # official order: max, then mean
    single = x.shape[0] * x.shape[2] * x.shape[3] == 1
    s = torch.sigmoid(bn_ref(conv_ref(compress, conv_w, conv_w.shape[-1] // 2), bn, train and not single))
    return x1 * s, torch.sigmoid(logits), s


def block_params(block):
    cg, sg = block.channel_gate, block.spatial_gate
    args = [cg.fc1.weight, cg.fc1.bias, cg.fc2.weight, cg.fc2.bias]
    if sg is None:
        return args, {}
    bn = dict(weight=sg.bn.weight, bias=sg.bn.bias, running_mean=sg.bn.running_mean,
              running_var=sg.bn.running_var, eps=sg.bn.eps)
    return args, dict(conv_w=sg.conv.weight, bn=bn)


def perturb(block, scale=0.3):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in list(block.parameters()):
            t.add_(scale * torch.randn(t.shape, generator=gen, dtype=t.dtype))
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
                m.running_var.fill_(1.7)
    return block


def make(**kw):
    kw.setdefault('rd_ratio', RD / C)
    return perturb(CBAM(C, dtype=D, **kw))


def x_in(b=2, h=5, w=7, scale=1.0):
    return scale * torch.randn(b, C, h, w, dtype=D)


# ----------------------------------------------------------------------------- equivalence
POOLS = [('avg',), ('max',), ('lp',), ('lse',), ('avg', 'max'), ('avg', 'max', 'lp', 'lse'), ('lse', 'lp')]


@pytest.mark.parametrize('pool_types', POOLS)
@pytest.mark.parametrize('train', [False, True])
def test_matches_reference(pool_types, train):
    block = make(pool_types=pool_types).train(train)
    x = x_in()
    args, kw = block_params(block)
    ref, _, _ = cbam_ref(x, *args, pool_types, train=train, **kw)
    torch.testing.assert_close(block(x), ref)


@pytest.mark.parametrize('pool_types', [('avg', 'max'), ('lp', 'lse')])
def test_no_spatial_matches_reference(pool_types):
    block = make(pool_types=pool_types, no_spatial=True)
    assert block.spatial_gate is None
    assert not any(k.startswith('spatial_gate') for k in block.state_dict())
    x = x_in()
    args, _ = block_params(block)
    ref, _, _ = cbam_ref(x, *args, pool_types)
    torch.testing.assert_close(block(x), ref)


@pytest.mark.parametrize('k', [3, 1])
def test_spatial_kernel_size(k):
    block = make(spatial_kernel_size=k).eval()
    assert block.spatial_gate.conv.weight.shape == (1, 2, k, k)
    x = x_in()
    args, kw = block_params(block)
    torch.testing.assert_close(block(x), cbam_ref(x, *args, ('avg', 'max'), **kw)[0])


def test_defaults_are_the_papers():
    block = CBAM(64)
    assert block.channel_gate.fc1.weight.shape == (4, 64)  # 64 // 16
    assert block.channel_gate.fc1.bias is not None and block.channel_gate.fc2.bias is not None
    assert block.pool_types == ('avg', 'max')
    conv, bn = block.spatial_gate.conv, block.spatial_gate.bn
    assert conv.kernel_size == (7, 7) and conv.padding == (3, 3) and conv.bias is None
    assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.01, True)
    assert isinstance(block.channel_gate.act, nn.ReLU)


def test_act_layer():
    assert isinstance(CBAM(C, act_layer=nn.GELU).channel_gate.act, nn.GELU)
    assert type(CBAM(C, act_layer='gelu').channel_gate.act).__name__ == 'GELU'  # timm's name lookup


# ----------------------------------------------------------------------------- pitfalls
def test_channel_pool_order_is_max_then_mean():
    """Official ChannelPool is cat[max, mean] (timm: [mean, max]): pin it. A conv that only reads input
    channel 0 at its centre tap makes the spatial logit BN(max over C)."""
    block = CBAM(C, rd_ratio=RD / C, dtype=D).eval()
    with torch.no_grad():
        block.spatial_gate.conv.weight.zero_()
        block.spatial_gate.conv.weight[0, 0, 3, 3] = 1.0
    x = x_in()
    x1 = x * block.attention_maps(x)['channel'][:, :, None, None]
    expect = torch.sigmoid(x1.amax(1, keepdim=True) / (1 + 1e-5) ** 0.5)  # eval BN at init: y / sqrt(1 + eps)
    torch.testing.assert_close(block.attention_maps(x)['spatial'], expect)
    torch.testing.assert_close(block(x), x1 * expect)
    with torch.no_grad():  # reading channel 1 instead gives the mean
        block.spatial_gate.conv.weight.zero_()
        block.spatial_gate.conv.weight[0, 1, 3, 3] = 1.0
    torch.testing.assert_close(block.attention_maps(x)['spatial'],
                               torch.sigmoid(x1.mean(1, keepdim=True) / (1 + 1e-5) ** 0.5))


def test_spatial_bn_momentum_is_official():
    block = CBAM(C, rd_ratio=RD / C, dtype=D).train()
    x = x_in()
    x1 = x * block.attention_maps(x)['channel'][:, :, None, None]
    y = conv_ref(torch.stack([x1.max(1).values, x1.mean(1)], 1), block.spatial_gate.conv.weight, 3)
    block(x)
    bn = block.spatial_gate.bn
    torch.testing.assert_close(bn.running_mean, 0.01 * y.mean().reshape(1))
    torch.testing.assert_close(bn.running_var, 0.99 + 0.01 * y.var(unbiased=True).reshape(1))


def test_lse_is_stable_for_large_inputs():
    """exp(1e3) overflows even float64; the block's log-sum-exp must not."""
    block = make(pool_types=('lse',), no_spatial=True)
    x = x_in(scale=1e3)
    assert torch.isinf(x.exp()).any()
    out = block(x)
    assert torch.isfinite(out).all()
    args, _ = block_params(block)
    torch.testing.assert_close(out, cbam_ref(x, *args, ('lse',))[0])


def test_lp_gradient_finite_on_zero_map():
    block = make(pool_types=('lp',))
    x = x_in()
    x[:, :4] = 0  # e.g. channels killed by a ReLU
    x.requires_grad_()
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_batch_one_one_pixel_train_uses_running_stats():
    """Train mode with one value per channel: the spatial BN normalises with its running stats."""
    block = make().train()
    x = x_in(b=1, h=1, w=1)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    args, kw = block_params(block)
    ref = cbam_ref(x, *args, ('avg', 'max'), train=True, **kw)[0]  # ref uses running stats when single
    torch.testing.assert_close(block(x), ref)
    eval_bn = copy.deepcopy(block)
    eval_bn.spatial_gate.bn.eval()
    torch.testing.assert_close(block(x), eval_bn(x))
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(torch.jit.script(block)(x), ref)


def test_batch_one_train_normal_map_is_standard_bn():
    block = make().train()
    x = x_in(b=1)
    args, kw = block_params(block)
    torch.testing.assert_close(block(x), cbam_ref(x, *args, ('avg', 'max'), train=True, **kw)[0])


# ----------------------------------------------------------------------------- official checkpoints
def official_state_dict(prefix='module.layer1.0.cbam.'):
    """The layout of Jongchan/attention-module's CBAM(gate_channels=C, reduction_ratio=C // RD), by hand."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D)  # noqa: E731
    sd = {
        'ChannelGate.mlp.1.weight': r(RD, C), 'ChannelGate.mlp.1.bias': r(RD),
        'ChannelGate.mlp.3.weight': r(C, RD), 'ChannelGate.mlp.3.bias': r(C),
        'SpatialGate.spatial.conv.weight': r(1, 2, 7, 7),
        'SpatialGate.spatial.bn.weight': r(1), 'SpatialGate.spatial.bn.bias': r(1),
        'SpatialGate.spatial.bn.running_mean': r(1), 'SpatialGate.spatial.bn.running_var': r(1).abs() + 0.5,
        'SpatialGate.spatial.bn.num_batches_tracked': torch.tensor(1234),
    }
    return {prefix + k: v for k, v in sd.items()}


def test_official_key_map_loads_official_layout():
    prefix = 'module.layer1.0.cbam.'
    official = official_state_dict(prefix)
    converted = {OFFICIAL_KEY_MAP[k[len(prefix):]]: v for k, v in official.items()}
    block = CBAM(C, rd_ratio=RD / C, dtype=D).eval()
    assert set(OFFICIAL_KEY_MAP.values()) == set(block.state_dict())
    block.load_state_dict(converted, strict=True)
    o = {k[len(prefix):]: v for k, v in official.items()}
    bn = {k: o[f'SpatialGate.spatial.bn.{k}'] for k in ('weight', 'bias', 'running_mean', 'running_var')}
    x = x_in()
    ref = cbam_ref(x, o['ChannelGate.mlp.1.weight'], o['ChannelGate.mlp.1.bias'], o['ChannelGate.mlp.3.weight'],
                   o['ChannelGate.mlp.3.bias'], ('avg', 'max'), o['SpatialGate.spatial.conv.weight'],
                   dict(bn, eps=1e-5))[0]
    torch.testing.assert_close(block(x), ref)


def test_official_key_map_no_spatial():
    block = CBAM(C, rd_ratio=RD / C, no_spatial=True)
    channel_only = {k: v for k, v in OFFICIAL_KEY_MAP.items() if k.startswith('ChannelGate.')}
    assert set(channel_only.values()) == set(block.state_dict())


# ----------------------------------------------------------------------------- attention maps, init
@pytest.mark.parametrize('train', [False, True])
def test_attention_maps_equal_forward(train):
    block = make().train(train)
    x = x_in()
    buffers = [b.clone() for b in block.buffers()]
    maps = block.attention_maps(x, queries=torch.tensor([0, 3]))
    assert set(maps) == {'channel', 'spatial'}
    assert maps['channel'].shape == (2, C) and maps['spatial'].shape == (2, 1, 5, 7)
    for m in maps.values():
        assert ((m > 0) & (m < 1)).all()
    assert all(torch.equal(a, b) for a, b in zip(block.buffers(), buffers))  # running stats untouched
    args, kw = block_params(block)
    _, ref_c, ref_s = cbam_ref(x, *args, ('avg', 'max'), train=train, **kw)
    torch.testing.assert_close(maps['channel'], ref_c)
    torch.testing.assert_close(maps['spatial'], ref_s)
    torch.testing.assert_close(block(x), x * maps['channel'][:, :, None, None] * maps['spatial'])


def test_attention_maps_no_spatial():
    block = make(no_spatial=True)
    x = x_in()
    maps = block.attention_maps(x)
    assert set(maps) == {'channel'}
    torch.testing.assert_close(block(x), x * maps['channel'][:, :, None, None])


def test_reset_parameters_restores_defaults():
    block = make()
    for m in block.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.constant_(m.weight, 5.0)
    block.reset_parameters()
    bn = block.spatial_gate.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(bn.running_mean, torch.zeros(1, dtype=D)) and torch.equal(bn.running_var, torch.ones(1, dtype=D))
    for m in block.modules():  # PyTorch default: kaiming_uniform(a=sqrt(5)) -> |w| <= 1 / sqrt(fan_in)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            assert m.weight.abs().max() <= fan_in ** -0.5


def test_not_identity_at_init():
    """No zero-init: a sigmoid gate cannot be the identity (documented in reset_parameters)."""
    block = CBAM(C, dtype=D).eval()
    x = x_in()
    assert not torch.allclose(block(x), x)


# ----------------------------------------------------------------------------- bad settings and inputs
def test_bad_settings():
    with pytest.raises(ValueError, match='rd_ratio'):
        CBAM(C, rd_ratio=1 / 64)
    with pytest.raises(ValueError, match='rd_ratio'):
        CBAM(C, rd_ratio=0)
    with pytest.raises(ValueError, match='rd_channels'):
        CBAM(C, rd_channels=0)
    with pytest.raises(ValueError, match='pool_types'):
        CBAM(C, pool_types=('avg', 'median'))
    with pytest.raises(ValueError, match='pool_types'):
        CBAM(C, pool_types=())
    with pytest.raises(ValueError, match='pool_types'):
        CBAM(C, pool_types=('avg', 'avg'))
    with pytest.raises(TypeError, match='pool_types'):
        CBAM(C, pool_types=3)
    with pytest.raises(ValueError, match='spatial_kernel_size'):
        CBAM(C, spatial_kernel_size=4)
    with pytest.raises(ValueError, match='spatial_kernel_size'):
        CBAM(C, spatial_kernel_size=0)
    with pytest.raises(TypeError, match='no_spatial'):
        CBAM(C, no_spatial='yes')
    with pytest.raises(ValueError, match='channels'):
        CBAM(0)
    assert CBAM(C, pool_types='lse').pool_types == ('lse',)


def test_bad_inputs():
    block = CBAM(C)
    with pytest.raises(ValueError, match='32 channels'):
        block(torch.randn(2, C - 1, 5, 7))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(2, C, 5))
    with pytest.raises(ValueError, match='4-D'):
        block.attention_maps(torch.randn(2, C, 5, 7, 1))


# ----------------------------------------------------------------------------- gradients and the fast paths
GRAD_CASES = [
    dict(pool_types=('avg', 'max')), dict(pool_types=('max', 'avg')), dict(pool_types=('max',)),
    dict(pool_types=('avg',)), dict(pool_types=('avg', 'max'), no_spatial=True),
    dict(pool_types=('avg', 'max'), spatial_kernel_size=3), dict(pool_types=('lp', 'lse')),  # the last: plain ops
]


def grads_of(fn, x, params, weight):
    """(output, d x, d params) of sum(fn(x) * weight); a non-uniform weight so every term matters."""
    x = x.detach().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad((out * weight).sum(), [x, *params])
    return out.detach(), grads[0], grads[1:]


@pytest.mark.parametrize('kw', GRAD_CASES, ids=lambda kw: '-'.join(f'{k}={v}' for k, v in kw.items()))
@pytest.mark.parametrize('train', [False, True])
def test_gradients_match_reference(kw, train):
    """x's and every parameter's gradient equal autograd's through the explicit reference (float64)."""
    block = make(**kw).train(train)
    ref_block = copy.deepcopy(block)  # the reference's own BN buffers (train mode updates them)
    x, weight = x_in(), torch.randn(2, C, 5, 7, dtype=D)
    params = list(block.parameters())
    out, dx, dp = grads_of(block, x, params, weight)
    if set(kw['pool_types']) <= {'avg', 'max'}:  # the hand-written backward ran, not autograd's
        probe = block(x.detach().requires_grad_())
        assert type(probe.grad_fn).__name__ == '_CBAMFunctionBackward'
        block.load_state_dict(ref_block.state_dict())
    args, bkw = block_params(ref_block)

    def reference(xr):
        return cbam_ref(xr, *args, kw['pool_types'], train=train, **bkw)[0]
    ref_params = list(ref_block.parameters())
    ref_out, ref_dx, ref_dp = grads_of(reference, x, ref_params, weight)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(dx, ref_dx)
    names = [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, dp, ref_dp):
        torch.testing.assert_close(a, b, msg=lambda m: f'{name}: {m}')


def test_gradients_channels_last_and_expanded_grad():
    block = make().train()
    ref = copy.deepcopy(block)
    x = x_in()
    xs = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    block(xs).sum().backward()  # grad_out is an expanded (stride 0) tensor
    xr = x.clone().requires_grad_()
    ref._forward_ops(xr, inplace=False, index_max=True).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad)
    for (name, a), b in zip(block.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m: f'{name}: {m}')


def test_gradients_frozen_parts():
    """Only the parameters (first layer: x needs no grad), only x (frozen block), or some parameters."""
    block = make().train()
    ref = copy.deepcopy(block)
    x = x_in()
    block(x).sum().backward()
    ref._forward_ops(x, inplace=False, index_max=True).sum().backward()
    for a, b in zip(block.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    block.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    for m in (block, ref):
        m.channel_gate.requires_grad_(False)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    block(xa).sum().backward()
    ref._forward_ops(xb, inplace=False, index_max=True).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    assert block.channel_gate.fc1.weight.grad is None
    torch.testing.assert_close(block.spatial_gate.conv.weight.grad, ref.spatial_gate.conv.weight.grad)
    block.requires_grad_(False)
    xa.grad = None
    out = block(xa)
    assert out.grad_fn is not None
    out.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


def test_backward_twice_with_retain_graph():
    block = make().train()
    x = x_in().requires_grad_()
    out = block(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_inference_in_place_path_matches_reference():
    for train in (False, True):
        block = make().train(train)
        args, kw = block_params(copy.deepcopy(block))
        x = x_in()
        with torch.no_grad():
            out = block(x)
        torch.testing.assert_close(out, cbam_ref(x, *args, ('avg', 'max'), train=train, **kw)[0])
    with torch.inference_mode():
        torch.testing.assert_close(block.eval()(x), cbam_ref(x, *block_params(block)[0], ('avg', 'max'),
                                                             **block_params(block)[1])[0])


def test_autocast_bf16_paths_agree():
    """Under CPU bf16 autocast the fused training path gives the plain ops' output dtype, values and grads."""
    block = CBAM(C, rd_ratio=RD / C).train()
    ref = copy.deepcopy(block)
    x = torch.randn(2, C, 6, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(xa)
        ref_out = ref._forward_ops(xb, inplace=False, index_max=True)
        with torch.no_grad():
            inference = copy.deepcopy(ref)(x)
    assert out.dtype == ref_out.dtype == inference.dtype
    torch.testing.assert_close(out, ref_out)
    out.float().sum().backward()
    ref_out.float().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for a, b in zip(block.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore:.*trace_method.*:FutureWarning')
def test_graph_capture_sees_the_plain_ops():
    """FX / jit.trace record the same plain ops with and without grad (no custom autograd node)."""
    block = make().train()
    x = x_in()
    args, kw = block_params(copy.deepcopy(block))
    ref = cbam_ref(x, *args, ('avg', 'max'), train=True, **kw)[0]
    traced = torch.fx.symbolic_trace(copy.deepcopy(block))
    torch.testing.assert_close(traced(x), ref)
    assert '_CBAMFunction' not in traced.code
    block.eval()
    torch.testing.assert_close(torch.jit.trace(block, (x,))(x), block(x))  # check_trace re-traces: same graph
