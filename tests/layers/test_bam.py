"""BAM against a reference written from the paper's equations (both combines) and the official layout."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers.bam import BAM, OFFICIAL_KEY_MAP, official_key_map

D = torch.float64
C, RD = 32, 4  # rd_ratio 1/8


# ----------------------------------------------------------------------------- reference
def conv_ref(x, w, b, dilation):
    """Same-size convolution as unfold + explicit weighted sum (no F.conv2d), stride 1."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    cols = F.unfold(x, k, dilation=dilation, padding=dilation * (k - 1) // 2)
    out = torch.einsum('ok,bkl->bol', w.reshape(w.shape[0], -1), cols) + b[None, :, None]
    return out.reshape(n, w.shape[0], h, wd)


def bn_ref(y, p, train):
    """BatchNorm over every dim but 1. Train: batch stats (biased var), except that a train call with a
    single value per channel uses the running stats (the block's documented rule). Eval: running stats."""
    dims = [0] + list(range(2, y.dim()))
    shape = [1, -1] + [1] * (y.dim() - 2)
    if train and y.numel() != y.shape[1]:
        mean = y.mean(dims, keepdim=True)
        var = ((y - mean) ** 2).mean(dims, keepdim=True)
    else:
        mean, var = p['running_mean'].view(shape), p['running_var'].view(shape)
    return (y - mean) / torch.sqrt(var + 1e-5) * p['weight'].view(shape) + p['bias'].view(shape)


def bam_ref(x, fc_layers, fc_final, reduce, dilated, conv_final, dilation, combine, train):
    """M_c = MLP(avgpool(x)) with BN; M_s = 1x1 -> dilated 3x3 s -> 1x1; out = x * (1 + sigmoid(M_c (x|+) M_s)).
    Each layer is a dict with 'w', 'b' (and 'bn', a dict of BN tensors)."""
    n, c, h, w = x.shape
    v = x.reshape(n, c, h * w).sum(-1) / (h * w)  # mean over every position, H == W or not
    for layer in fc_layers:
        v = torch.relu(bn_ref(v @ layer['w'].T + layer['b'], layer['bn'], train))
    m_c = v @ fc_final['w'].T + fc_final['b']
    y = torch.relu(bn_ref(conv_ref(x, reduce['w'], reduce['b'], 1), reduce['bn'], train))
    for layer in dilated:
        y = torch.relu(bn_ref(conv_ref(y, layer['w'], layer['b'], dilation), layer['bn'], train))
    m_s = conv_ref(y, conv_final['w'], conv_final['b'], 1)
    logits = m_c[:, :, None, None] * m_s if combine == 'mul' else m_c[:, :, None, None] + m_s
    return x * (1 + torch.sigmoid(logits)), m_c, m_s


def _bn(m):
    return {k: getattr(m, k) for k in ('weight', 'bias', 'running_mean', 'running_var')}


def block_ref(block, x, train):
    cg, sg = block.channel_gate, block.spatial_gate
    return bam_ref(
        x,
        [dict(w=layer.fc.weight, b=layer.fc.bias, bn=_bn(layer.bn)) for layer in cg.layers],
        dict(w=cg.proj.weight, b=cg.proj.bias),
        dict(w=sg.reduce.conv.weight, b=sg.reduce.conv.bias, bn=_bn(sg.reduce.bn)),
        [dict(w=layer.conv.weight, b=layer.conv.bias, bn=_bn(layer.bn)) for layer in sg.dilated],
        dict(w=sg.proj.weight, b=sg.proj.bias),
        block.dilation, block.combine, train)


def perturb(block, scale=0.3):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in block.parameters():
            t.add_(scale * torch.randn(t.shape, generator=gen, dtype=t.dtype))
        for m in block.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return block


def make(**kw):
    kw.setdefault('rd_ratio', RD / C)
    return perturb(BAM(C, dtype=D, **kw))


def x_in(b=2, h=5, w=7):
    return torch.randn(b, C, h, w, dtype=D)


# ----------------------------------------------------------------------------- equivalence
CONFIGS = [
    dict(),  # official: dilation 4, two dilated convs, one hidden channel layer
    dict(dilation=1, num_dilated_convs=0, num_channel_layers=2),
    dict(dilation=2, num_dilated_convs=1, num_channel_layers=3),
]


@pytest.mark.parametrize('cfg', CONFIGS)
@pytest.mark.parametrize('combine', ['mul', 'sum'])
@pytest.mark.parametrize('train', [False, True])
def test_matches_reference(cfg, combine, train):
    block = make(combine=combine, **cfg).train(train)
    x = x_in()
    ref, _, _ = block_ref(block, x, train)
    torch.testing.assert_close(block(x), ref)


def test_default_combine_is_official_mul():
    block = make().eval()
    assert block.combine == 'mul'
    x = x_in()
    out, m_c, m_s = block_ref(block, x, False)
    torch.testing.assert_close(block(x), x * (1 + torch.sigmoid(m_c[:, :, None, None] * m_s)))
    block.combine = 'sum'  # the paper's Eq. 1-2 gives a different result with the same weights
    torch.testing.assert_close(block(x), x * (1 + torch.sigmoid(m_c[:, :, None, None] + m_s)))
    assert not torch.allclose(block(x), out)


def test_defaults_are_the_papers():
    block = BAM(64)
    assert block.channel_gate.layers[0].fc.weight.shape == (4, 64)  # 64 // 16, both branches
    assert block.spatial_gate.reduce.conv.weight.shape == (4, 64, 1, 1)
    assert len(block.channel_gate.layers) == 1 and len(block.spatial_gate.dilated) == 2
    for layer in block.spatial_gate.dilated:
        assert layer.conv.kernel_size == (3, 3) and layer.conv.dilation == (4, 4) and layer.conv.padding == (4, 4)
    assert block.spatial_gate.proj.weight.shape == (1, 4, 1, 1)
    assert isinstance(block.channel_gate.layers[0].bn, nn.BatchNorm1d)


# ----------------------------------------------------------------------------- pitfalls
@pytest.mark.parametrize('hw', [(3, 8), (9, 2)])
def test_non_square_input_pools_every_position(hw):
    """Official avg_pool2d(x, H) breaks for H != W (issue #50); here the pool is the mean over H*W."""
    block = make().eval()
    x = x_in(h=hw[0], w=hw[1])
    out = block(x)
    ref, m_c, _ = block_ref(block, x, False)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(block.attention_maps(x)['channel'], torch.sigmoid(m_c))


def test_batch_one_train_uses_running_stats_for_bn1d():
    """pytorch #13223: BatchNorm1d on (1, C/r) raises in train mode. For that call the channel BN
    normalises with its running statistics (= eval-mode BN) and does not update them."""
    block = make().train()
    x = x_in(b=1)
    bn1d = block.channel_gate.layers[0].bn
    bn2d = block.spatial_gate.reduce.bn
    before1d = {k: v.clone() for k, v in bn1d.state_dict().items()}
    before2d = bn2d.running_mean.clone()
    out = block(x)
    torch.testing.assert_close(out, block_ref(block, x, True)[0])
    for k, v in bn1d.state_dict().items():
        assert torch.equal(v, before1d[k]), k
    assert not torch.equal(bn2d.running_mean, before2d)  # 2-D BNs see H*W > 1 values: standard train BN

    # the same as switching only that BN to eval mode
    eval_bn = copy.deepcopy(block)
    eval_bn.channel_gate.layers[0].bn.eval()
    torch.testing.assert_close(block(x), eval_bn(x))

    # gradients still reach the BN's affine parameters
    block.zero_grad()
    block(x).square().sum().backward()
    assert bn1d.weight.grad.abs().sum() > 0 and bn1d.bias.grad.abs().sum() > 0

    # and TorchScript takes the same branch
    torch.testing.assert_close(torch.jit.script(block)(x), block(x))


def test_batch_two_train_is_standard_bn():
    block = make().train()
    x = x_in(b=2)
    bn1d = block.channel_gate.layers[0].bn
    plain = copy.deepcopy(bn1d)  # a stock BatchNorm1d fed the same pre-BN activations
    pre = x.mean((2, 3)) @ block.channel_gate.layers[0].fc.weight.T + block.channel_gate.layers[0].fc.bias
    expect = plain(pre)
    out = block(x)
    torch.testing.assert_close(out, block_ref(block, x, True)[0])
    torch.testing.assert_close(bn1d.running_mean, plain.running_mean)
    torch.testing.assert_close(bn1d.running_var, plain.running_var)
    assert int(bn1d.num_batches_tracked) == 1
    m = pre.mean(0)
    torch.testing.assert_close(expect, (pre - m) / ((pre - m).pow(2).mean(0) + 1e-5).sqrt() * bn1d.weight + bn1d.bias)


def test_batch_one_one_pixel_train():
    """Batch 1 with a 1x1 map: every BN sees one value per channel; all use running stats."""
    block = make().train()
    x = x_in(b=1, h=1, w=1)
    torch.testing.assert_close(block(x), block_ref(block, x, True)[0])
    torch.testing.assert_close(block(x), copy.deepcopy(block).eval()(x))


# ----------------------------------------------------------------------------- official checkpoints
def official_state_dict(prefix='module.bam1.'):
    """The layout of Jongchan/attention-module's BAM(C) with reduction C // RD, by hand with its shapes."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D)  # noqa: E731

    def bn(name, n):
        return {f'{name}.weight': r(n), f'{name}.bias': r(n), f'{name}.running_mean': r(n),
                f'{name}.running_var': r(n).abs() + 0.5, f'{name}.num_batches_tracked': torch.tensor(99)}

    c, s = 'channel_att.gate_c.', 'spatial_att.gate_s.'
    sd = {
        f'{c}gate_c_fc_0.weight': r(RD, C), f'{c}gate_c_fc_0.bias': r(RD),
        **bn(f'{c}gate_c_bn_1', RD),
        f'{c}gate_c_fc_final.weight': r(C, RD), f'{c}gate_c_fc_final.bias': r(C),
        f'{s}gate_s_conv_reduce0.weight': r(RD, C, 1, 1), f'{s}gate_s_conv_reduce0.bias': r(RD),
        **bn(f'{s}gate_s_bn_reduce0', RD),
        f'{s}gate_s_conv_di_0.weight': r(RD, RD, 3, 3), f'{s}gate_s_conv_di_0.bias': r(RD),
        **bn(f'{s}gate_s_bn_di_0', RD),
        f'{s}gate_s_conv_di_1.weight': r(RD, RD, 3, 3), f'{s}gate_s_conv_di_1.bias': r(RD),
        **bn(f'{s}gate_s_bn_di_1', RD),
        f'{s}gate_s_conv_final.weight': r(1, RD, 1, 1), f'{s}gate_s_conv_final.bias': r(1),
    }
    return {prefix + k: v for k, v in sd.items()}


def test_official_key_map_loads_official_layout():
    prefix = 'module.bam1.'
    official = official_state_dict(prefix)
    converted = {OFFICIAL_KEY_MAP[k[len(prefix):]]: v for k, v in official.items()}
    block = BAM(C, rd_ratio=RD / C, dtype=D).eval()
    assert set(OFFICIAL_KEY_MAP) == {k[len(prefix):] for k in official}
    assert set(OFFICIAL_KEY_MAP.values()) == set(block.state_dict())
    block.load_state_dict(converted, strict=True)

    o = {k[len(prefix):]: v for k, v in official.items()}
    c, s = 'channel_att.gate_c.', 'spatial_att.gate_s.'

    def layer(conv, bn=None):
        d = dict(w=o[f'{conv}.weight'], b=o[f'{conv}.bias'])
        if bn:
            d['bn'] = {k: o[f'{bn}.{k}'] for k in ('weight', 'bias', 'running_mean', 'running_var')}
        return d

    x = x_in()
    ref, _, _ = bam_ref(
        x, [layer(f'{c}gate_c_fc_0', f'{c}gate_c_bn_1')], layer(f'{c}gate_c_fc_final'),
        layer(f'{s}gate_s_conv_reduce0', f'{s}gate_s_bn_reduce0'),
        [layer(f'{s}gate_s_conv_di_{i}', f'{s}gate_s_bn_di_{i}') for i in range(2)],
        layer(f'{s}gate_s_conv_final'), 4, 'mul', False)
    torch.testing.assert_close(block(x), ref)


@pytest.mark.parametrize('n_ch,n_di', [(2, 3), (1, 0)])
def test_official_key_map_other_depths(n_ch, n_di):
    block = BAM(C, rd_ratio=RD / C, num_channel_layers=n_ch, num_dilated_convs=n_di)
    key_map = official_key_map(n_ch, n_di)
    assert set(key_map.values()) == set(block.state_dict())
    assert f'channel_att.gate_c.gate_c_bn_{n_ch}.weight' in key_map  # official BN indices start at 1
    assert f'channel_att.gate_c.gate_c_fc_{n_ch - 1}.weight' in key_map


# ----------------------------------------------------------------------------- attention maps, init
@pytest.mark.parametrize('combine', ['mul', 'sum'])
@pytest.mark.parametrize('train', [False, True])
def test_attention_maps(combine, train):
    block = make(combine=combine).train(train)
    x = x_in()
    buffers = [b.clone() for b in block.buffers()]
    maps = block.attention_maps(x, queries=torch.tensor([1]))
    assert set(maps) == {'channel', 'spatial'}
    assert maps['channel'].shape == (2, C) and maps['spatial'].shape == (2, 1, 5, 7)
    for m in maps.values():
        assert ((m > 0) & (m < 1)).all()
    assert all(torch.equal(a, b) for a, b in zip(block.buffers(), buffers))  # running stats untouched
    _, m_c, m_s = block_ref(block, x, train)
    torch.testing.assert_close(maps['channel'], torch.sigmoid(m_c))
    torch.testing.assert_close(maps['spatial'], torch.sigmoid(m_s))
    # the forward's scale is rebuilt from the two maps' logits
    lc, ls = torch.logit(maps['channel'])[:, :, None, None], torch.logit(maps['spatial'])
    logits = lc * ls if combine == 'mul' else lc + ls
    torch.testing.assert_close(block(x), x * (1 + torch.sigmoid(logits)))


def test_reset_parameters_restores_defaults():
    block = make()
    for m in block.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.constant_(m.weight, 5.0)
    block.reset_parameters()
    for m in block.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        if isinstance(m, (nn.Linear, nn.Conv2d)):  # PyTorch default bound 1 / sqrt(fan_in)
            assert m.weight.abs().max() <= m.weight[0].numel() ** -0.5


def test_scale_is_between_one_and_two():
    """No zero-init: 1 + sigmoid(.) lies in (1, 2), so BAM is never the identity (documented)."""
    block = make().eval()
    x = x_in().abs() + 0.1
    ratio = block(x) / x
    assert (ratio > 1).all() and (ratio < 2).all()


# ----------------------------------------------------------------------------- bad settings and inputs
def test_bad_settings():
    with pytest.raises(ValueError, match='rd_ratio'):
        BAM(C, rd_ratio=1 / 64)
    with pytest.raises(ValueError, match='rd_channels'):
        BAM(C, rd_channels=0)
    with pytest.raises(ValueError, match='combine'):
        BAM(C, combine='add')
    with pytest.raises(ValueError, match='dilation'):
        BAM(C, dilation=0)
    with pytest.raises(TypeError, match='dilation'):
        BAM(C, dilation=1.5)
    with pytest.raises(ValueError, match='num_dilated_convs'):
        BAM(C, num_dilated_convs=-1)
    with pytest.raises(TypeError, match='num_dilated_convs'):
        BAM(C, num_dilated_convs=2.0)
    with pytest.raises(ValueError, match='num_channel_layers'):
        BAM(C, num_channel_layers=0)
    with pytest.raises(ValueError, match='channels'):
        BAM(0)


def test_bad_inputs():
    block = BAM(C)
    with pytest.raises(ValueError, match='32 channels'):
        block(torch.randn(2, C + 1, 5, 7))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(2, C, 5))
    with pytest.raises(ValueError, match='4-D'):
        block.attention_maps(torch.randn(C, 5, 7))
