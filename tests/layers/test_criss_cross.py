"""CrissCrossAttention against a brute-force loop over every position's row and column (CCNet)."""
import pytest
import torch
import torch.nn as nn

from gczoo.layers.criss_cross import CrissCrossAttention

C = 16  # rd_channels = 2 with the default ratio 1/8
F64 = torch.float64


def make(recurrence: int = 1, gamma: float = 0.7, dtype=F64, sharpen: float = 3.0, **kwargs) -> CrissCrossAttention:
    """A block with a non-zero gamma and non-trivial biases, so the attention path shows in the output."""
    block = CrissCrossAttention(C, recurrence=recurrence, dtype=dtype, **kwargs)
    with torch.no_grad():
        block.gamma.fill_(gamma)
        for conv in (block.query_conv, block.key_conv, block.value_conv):
            conv.weight.mul_(sharpen)  # > 1: softmax weights far from uniform
            conv.bias.normal_()
    return block


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum('oc,bchw->bohw', conv.weight[:, :, 0, 0], x) + conv.bias.view(1, -1, 1, 1)


def cross(i: int, j: int, height: int, width: int):
    """Positions of the criss-cross of (i, j): its column and its row, (i, j) itself once."""
    return [(r, j) for r in range(height)] + [(i, s) for s in range(width) if s != j]


def brute_force_weights(block, x):
    """{(b, i, j): (positions, softmax weights)} from an explicit loop over every position."""
    q, k = conv1x1(block.query_conv, x), conv1x1(block.key_conv, x)
    batch, _, height, width = x.shape
    out = {}
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                pos = cross(i, j, height, width)
                assert len(pos) == len(set(pos)) == height + width - 1
                keys = torch.stack([k[b, :, r, s] for r, s in pos])  # (H + W - 1, Cr)
                out[(b, i, j)] = (pos, torch.softmax(keys @ q[b, :, i, j], dim=0))
    return out


def brute_force_step(block, x):
    v = conv1x1(block.value_conv, x)
    out = torch.zeros_like(v)
    for (b, i, j), (pos, weights) in brute_force_weights(block, x).items():
        vals = torch.stack([v[b, :, r, s] for r, s in pos])  # (H + W - 1, C)
        out[b, :, i, j] = weights @ vals
    return block.gamma * out + x


def brute_force(block, x, recurrence):
    for _ in range(recurrence):  # the same weights at every step
        x = brute_force_step(block, x)
    return x


SHAPES = [(2, 5, 7), (1, 4, 3), (1, 1, 5), (1, 4, 1), (1, 1, 1)]


@pytest.mark.parametrize('recurrence', [1, 2])
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_matches_brute_force(recurrence, shape):
    batch, height, width = shape
    block = make(recurrence)
    x = torch.randn(batch, C, height, width, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), brute_force(block, x, recurrence), rtol=1e-10, atol=1e-10)


def test_matches_brute_force_train_mode_and_gradients():
    """Train mode, and gradients (through the -inf self mask) equal those of the brute-force loop."""
    block = make(2).train()
    x = torch.randn(1, C, 3, 4, dtype=F64, requires_grad=True)
    y, y_ref = block(x), brute_force(block, x, 2)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y)
    params = [x] + list(block.parameters())
    grads = torch.autograd.grad((w * y).sum(), params)
    grads_ref = torch.autograd.grad((w * y_ref).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_recurrence_shares_weights():
    block2 = make(2)
    block1 = make(1)
    block1.load_state_dict(block2.state_dict())
    assert sum(p.numel() for p in block2.parameters()) == sum(p.numel() for p in block1.parameters())
    x = torch.randn(2, C, 5, 6, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(block2(x), block1(block1(x)), rtol=0, atol=0)
        assert not torch.allclose(block2(x), block1(x))


def test_official_key_layout():
    keys = set(CrissCrossAttention(C).state_dict())
    assert keys == {'query_conv.weight', 'query_conv.bias', 'key_conv.weight', 'key_conv.bias',
                    'value_conv.weight', 'value_conv.bias', 'gamma'}
    block = CrissCrossAttention(C)
    assert block.query_conv.out_channels == block.key_conv.out_channels == C // 8
    assert block.value_conv.out_channels == C
    assert isinstance(block.gamma, nn.Parameter) and block.gamma.shape == (1,)


def test_rd_channels_overrides_ratio():
    assert CrissCrossAttention(C, rd_channels=5).query_conv.out_channels == 5
    assert CrissCrossAttention(C, rd_ratio=0.25).key_conv.out_channels == 4


# ----------------------------------------------------------------------------------------- init

def test_identity_at_init_and_not_after_perturbing_gamma():
    block = CrissCrossAttention(C, dtype=F64)
    x = torch.randn(2, C, 5, 7, dtype=F64)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.gamma.fill_(0.1)
    assert not torch.allclose(block(x), x)


def test_reset_parameters_restores_identity():
    block = make(2)
    for m in block.modules():  # what timm's ResNet.init_weights does to every conv
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    x = torch.randn(2, C, 5, 7, dtype=F64)
    assert not torch.allclose(block(x), x)
    block.reset_parameters()
    assert block.gamma.item() == 0
    assert torch.equal(block(x), x)


# ------------------------------------------------------------------------------ attention maps

def test_attention_maps_support_is_the_cross_and_equals_brute_force():
    block = make(2)
    batch, height, width = 2, 5, 7
    x = torch.randn(batch, C, height, width, dtype=F64)
    queries = torch.arange(height * width)
    with torch.no_grad():
        maps = block.attention_maps(x, queries)
    assert set(maps) == {'query', 'query_r2'}
    for m in maps.values():
        assert m.shape == (batch, height * width, height, width)
        torch.testing.assert_close(m.sum((-1, -2)), torch.ones(batch, height * width, dtype=F64))
    ref = brute_force_weights(block, x)
    for n in range(height * width):
        i, j = divmod(n, width)
        on_cross = torch.zeros(height, width, dtype=torch.bool)
        on_cross[:, j] = True
        on_cross[i, :] = True
        for b in range(batch):
            row = maps['query'][b, n]
            assert int((row != 0).sum()) == height + width - 1  # each position once, itself included
            assert torch.equal(row != 0, on_cross)
            pos, weights = ref[(b, i, j)]
            torch.testing.assert_close(torch.stack([row[r, s] for r, s in pos]), weights)


@pytest.mark.parametrize('train', [False, True])
def test_attention_maps_reproduce_forward_at_queries(train):
    block = make(2).train(train)
    x = torch.randn(2, C, 4, 6, dtype=F64)
    queries = torch.tensor([0, 5, 13, 23])
    with torch.no_grad():
        maps = block.attention_maps(x, queries)
        x1 = block._step(x)
        for key, inp, out in [('query', x, x1), ('query_r2', x1, block(x))]:
            v = block.value_conv(inp).flatten(2)  # (B, C, N)
            pred = inp.flatten(2)[:, :, queries] + block.gamma * torch.einsum('bkn,bcn->bck', maps[key].flatten(2), v)
            torch.testing.assert_close(pred, out.flatten(2)[:, :, queries])


def test_attention_maps_default_query_is_centre_and_single_key_for_one_step():
    block = make(1)
    x = torch.randn(1, C, 5, 7, dtype=F64)
    maps = block.attention_maps(x)
    assert set(maps) == {'query'} and maps['query'].shape == (1, 1, 5, 7)
    torch.testing.assert_close(maps['query'], block.attention_maps(x, torch.tensor([2 * 7 + 3]))['query'])


def test_attention_maps_bad_queries():
    block = make(1)
    x = torch.randn(1, C, 3, 4, dtype=F64)
    with pytest.raises(TypeError, match='queries'):
        block.attention_maps(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match='queries'):
        block.attention_maps(x, [0, 1])
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([12]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([-1]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([], dtype=torch.long))


# ------------------------------------- pitfall: the self mask follows the input's device and dtype

def test_mask_on_input_device_meta():
    """A mask made with a hard-coded device (CCNet's `.cuda()`, or the CPU) fails on any other device."""
    block = make(2, dtype=torch.float32).to('meta')
    x = torch.randn(2, C, 5, 7, device='meta')
    assert block(x).device.type == 'meta'
    assert block.attention_maps(x, torch.tensor([0, 3]))['query_r2'].device.type == 'meta'


def test_bf16_autocast_finite_and_close():
    block = make(2, dtype=torch.float32, sharpen=1.0)
    x = torch.randn(2, C, 5, 7)
    ref = brute_force(block.double(), x.double(), 2).float()
    block.float()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(x)
        y_big = block(1e3 * x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0.1, atol=0.1)
    assert torch.isfinite(y_big).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_input_without_autocast(dtype):
    """mmcv builds a float32 -inf mask that promotes half energies; the value einsum then fails."""
    try:
        nn.Conv2d(2, 2, 1).to(dtype)(torch.randn(1, 2, 2, 2, dtype=dtype))
        torch.einsum('bij,bjk->bik', torch.randn(1, 2, 2, dtype=dtype), torch.randn(1, 2, 2, dtype=dtype))
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f'{dtype} conv/matmul not supported on this CPU build: {err}')
    block = make(2, sharpen=1.0)
    x = torch.randn(2, C, 5, 7, dtype=F64)
    with torch.no_grad():
        ref = block(x)
        y = block.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=0.05, atol=0.1)


# ---------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize('value, err', [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                        ('2', TypeError)])
def test_bad_recurrence(value, err):
    with pytest.raises(err, match='recurrence'):
        CrissCrossAttention(C, recurrence=value)


def test_ratio_leaving_zero_channels():
    with pytest.raises(ValueError, match='rd_ratio'):
        CrissCrossAttention(4)  # 4 * 1/8 -> 0 channels
    with pytest.raises(ValueError, match='rd_ratio'):
        CrissCrossAttention(C, rd_ratio=0)
    with pytest.raises(ValueError, match='rd_channels'):
        CrissCrossAttention(C, rd_channels=0)
    assert CrissCrossAttention(4, rd_channels=1).query_conv.out_channels == 1


def test_wrong_input_channels_and_ndim():
    block = CrissCrossAttention(C)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(1, C + 1, 4, 4))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(1, C, 4))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(1, C, 2, 4, 4))
    with pytest.raises(ValueError, match='channels'):
        block.attention_maps(torch.randn(1, C - 1, 4, 4))


# ------------------------------------------------------------- the hand-laid-out sum over the cross
def _cross_inputs(batch=2, channels=3, height=4, width=5, requires_grad=True):
    gen = torch.Generator().manual_seed(3)
    a = torch.softmax(torch.randn(batch, height, width, height + width, generator=gen, dtype=torch.float64), -1)
    a_h, a_w = a[..., :height].clone(), a[..., height:].clone()
    v = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (a_h, a_w, v)]


@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
def test_cross_sum_equals_einsum_with_gradients(layout):
    from gczoo.layers.criss_cross import _cross_sum, _cross_sum_explicit
    a_h, a_w, v = _cross_inputs()
    v = v.detach().contiguous(memory_format=layout).requires_grad_()
    out, ref = _cross_sum(a_h, a_w, v), _cross_sum_explicit(a_h, a_w, v)
    assert type(out.grad_fn).__name__ == '_CrossSumBackward'
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(ref)
    for g, g_ref in zip(torch.autograd.grad((out * weight).sum(), (a_h, a_w, v)),
                        torch.autograd.grad((ref * weight).sum(), (a_h, a_w, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_cross_sum_gradcheck_second_order_partial_grads_and_empty_batch():
    from gczoo.layers.criss_cross import _CrossSum, _cross_sum, _cross_sum_explicit
    inputs = _cross_inputs(batch=1, channels=2, height=3, width=2)
    assert torch.autograd.gradcheck(_CrossSum.apply, inputs)
    assert torch.autograd.gradgradcheck(_CrossSum.apply, inputs)
    a_h, a_w, v = _cross_inputs()
    a_h = a_h.detach()  # only a_w and v need gradients
    grads = torch.autograd.grad(_cross_sum(a_h, a_w, v).sum(), (a_w, v))
    refs = torch.autograd.grad(_cross_sum_explicit(a_h, a_w, v).sum(), (a_w, v))
    for g, g_ref in zip(grads, refs):
        torch.testing.assert_close(g, g_ref)
    with torch.no_grad():
        torch.testing.assert_close(_cross_sum(a_h, a_w, v), _cross_sum_explicit(a_h, a_w, v))
    empty = [t[:0].detach().requires_grad_() for t in _cross_inputs()]
    out = _cross_sum(*empty)
    assert out.shape == (0, 3, 4, 5)
    out.sum().backward()


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore:.*trace_method.*:FutureWarning')
def test_block_graph_capture_and_torch_func_use_einsum():
    block = CrissCrossAttention(16, dtype=torch.float64)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64, requires_grad=True)
    traced = torch.jit.trace(block, (x,))
    assert 'einsum' in str(traced.graph) and 'CrossSum' not in str(traced.graph)
    torch.testing.assert_close(traced(x), block(x))
    grad = torch.func.grad(lambda t: block(t).square().sum())(x.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(block(x).square().sum(), x)[0])
