"""SelfAttention2d (SAGAN) against the paper's equations written as an explicit N x N einsum."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers.self_attention import SelfAttention2d

C = 16  # rd_channels = 2 with the default ratio 1/8
F64 = torch.float64


def make(gamma: float = 0.7, dtype=F64, channels: int = C, sharpen: float = 3.0, **kwargs) -> SelfAttention2d:
    block = SelfAttention2d(channels, dtype=dtype, **kwargs)
    with torch.no_grad():
        block.gamma.fill_(gamma)
        block.f.weight.mul_(sharpen)  # > 1: softmax rows far from uniform
        block.g.weight.mul_(sharpen)
    return block


def w(conv: nn.Conv2d) -> torch.Tensor:
    assert conv.bias is None
    return conv.weight[:, :, 0, 0]


def reference(block, x):
    """beta_{j,i} = softmax_i(f(x_j) . g(x_i)), o_j = W_v sum_i beta_{j,i} h(x_i), y = gamma o + x."""
    batch, channels, height, width = x.shape
    xf = x.flatten(2)  # (B, C, N)
    f = torch.einsum('oc,bcn->bon', w(block.f), xf)
    g = torch.einsum('oc,bcn->bon', w(block.g), xf)
    h = torch.einsum('oc,bcn->bon', w(block.h), xf)
    beta = torch.softmax(torch.einsum('bcj,bci->bji', f, g), dim=-1)  # (B, N, N), no scaling
    o = torch.einsum('oc,bcj->boj', w(block.v), torch.einsum('bji,bci->bcj', beta, h))
    return (block.gamma * o + xf).reshape(batch, channels, height, width), beta


@pytest.mark.parametrize('shape', [(2, 5, 7), (1, 4, 3), (1, 1, 6), (1, 1, 1)], ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('train', [False, True])
def test_matches_einsum_reference(shape, train):
    block = make().train(train)
    x = torch.randn(shape[0], C, shape[1], shape[2], dtype=F64)
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kwargs', [dict(rd_ratio=0.25), dict(rd_channels=16), dict(rd_channels=24)],
                         ids=['ratio_quarter', 'rd_equal_channels', 'rd_wider_than_channels'])
def test_matches_reference_other_widths(kwargs):
    """Covers the three padding branches (q/k padded, none, v padded)."""
    block = make(**kwargs)
    x = torch.randn(2, C, 4, 5, dtype=F64)
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_float32_fast_path_matches_reference(memory_format):
    block = make(dtype=torch.float32)
    x = torch.randn(2, C, 6, 5).contiguous(memory_format=memory_format)
    ref = reference(copy.deepcopy(block).double(), x.double())[0].float()
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


def test_gradients_match_reference():
    block = make()
    x = torch.randn(1, C, 3, 4, dtype=F64, requires_grad=True)
    y, y_ref = block(x), reference(block, x)[0]
    weights = torch.randn_like(y)
    params = [x] + list(block.parameters())
    for g, g_ref in zip(torch.autograd.grad((weights * y).sum(), params),
                        torch.autograd.grad((weights * y_ref).sum(), params)):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_layout():
    block = SelfAttention2d(C)
    assert set(block.state_dict()) == {'f.weight', 'g.weight', 'h.weight', 'v.weight', 'gamma'}
    assert block.f.out_channels == block.g.out_channels == C // 8
    assert block.h.out_channels == block.v.out_channels == C


# ------------------------------------------------------- pitfall: SDPA must take its O(N) kernel

def test_sdpa_gets_contiguous_equal_width_inputs(monkeypatch):
    """Where SDPA runs (autocast, half precision, graph capture, CUDA): a transposed view, or q/k
    narrower than v, would silently fall back to SDPA's N x N math path."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q, k, v, kwargs))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    block = make(dtype=torch.float32)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            block(torch.randn(2, C, 6, 5).contiguous(memory_format=memory_format))
    assert len(seen) == 2
    for q, k, v, kwargs in seen:
        assert kwargs.get('scale') == 1.0
        assert q.dim() == k.dim() == v.dim() == 4
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        assert q.shape[-1] == k.shape[-1] == v.shape[-1]
        choice = getattr(torch, '_fused_sdp_choice', None)
        if choice is not None:  # private API: 0 is the math (N x N) backend
            assert choice(q, k, v, scale=1.0) != 0


@pytest.mark.parametrize('grad', [False, True], ids=['inference', 'training'])
def test_float32_cpu_takes_the_chunked_path_and_builds_no_n_by_n_tensor(monkeypatch, grad):
    """Eager float32 on the CPU: q/k at their own C/8 width, in chunks (no padding to C, no SDPA,
    no tensor of N x N logits in forward or backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gczoo.layers import _chunked_attention

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    monkeypatch.setattr(F, 'scaled_dot_product_attention', None)  # any SDPA call fails
    positions = 8 * 8
    monkeypatch.setattr(_chunked_attention, 'CHUNK_ELEMENTS', positions * positions // 8)
    block = make(dtype=torch.float32)
    x = torch.randn(2, C, 8, 8, requires_grad=grad)
    ref = reference(copy.deepcopy(block).double(), x.detach().double())[0]
    with torch.set_grad_enabled(grad), LargestOutput():
        y = block(x)
        if grad:
            y.square().sum().backward()
    assert LargestOutput.largest < positions * positions  # x itself is 2 x 16 x 64 = 2048 < 4096
    torch.testing.assert_close(y.detach().double(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ pitfall: gamma must be a real Parameter

def test_gamma_is_a_parameter_saved_and_zero():
    block = SelfAttention2d(C)
    assert isinstance(block.gamma, nn.Parameter) and block.gamma.requires_grad
    assert 'gamma' in dict(block.named_parameters())
    assert any(p is block.gamma for p in block.parameters())
    assert 'gamma' in block.state_dict()
    assert torch.equal(block.gamma.detach(), torch.zeros(1))


def test_gamma_gets_a_gradient_and_trains():
    block = SelfAttention2d(C)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    x = torch.randn(2, C, 4, 5)
    block(x).square().sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs().item() > 0
    opt.step()
    assert block.gamma.item() != 0


def test_gamma_moves_with_the_module_and_round_trips_state_dict():
    block = make(gamma=0.3, dtype=torch.float32).to(F64)
    assert block.gamma.dtype == F64
    assert all(p.dtype == F64 for p in block.parameters())
    assert SelfAttention2d(C, device='meta').gamma.device.type == 'meta'
    fresh = SelfAttention2d(C, dtype=F64)
    fresh.load_state_dict(block.state_dict())
    assert fresh.gamma.item() == pytest.approx(0.3)
    x = torch.randn(1, C, 3, 3, dtype=F64)
    torch.testing.assert_close(fresh(x), block(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- init

def test_identity_at_init_and_not_after_perturbing_gamma():
    block = SelfAttention2d(C, dtype=F64)
    x = torch.randn(2, C, 5, 7, dtype=F64)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.gamma.fill_(0.1)
    assert not torch.allclose(block(x), x)


def test_reset_parameters_restores_identity():
    block = make()
    for m in block.modules():  # what timm's ResNet.init_weights does to every conv
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    x = torch.randn(2, C, 5, 7, dtype=F64)
    assert not torch.allclose(block(x), x)
    block.reset_parameters()
    assert block.gamma.item() == 0 and isinstance(block.gamma, nn.Parameter)
    assert torch.equal(block(x), x)


# ------------------------------------------------------------------------------ attention maps

@pytest.mark.parametrize('train', [False, True])
def test_attention_maps_rows_of_beta_and_reproduce_forward(train):
    block = make().train(train)
    batch, height, width = 2, 4, 6
    x = torch.randn(batch, C, height, width, dtype=F64)
    queries = torch.tensor([0, 5, 13, 23])
    with torch.no_grad():
        maps = block.attention_maps(x, queries)
        y = block(x)
    assert set(maps) == {'query'}
    rows = maps['query']
    assert rows.shape == (batch, len(queries), height, width)
    torch.testing.assert_close(rows.sum((-1, -2)), torch.ones(batch, len(queries), dtype=F64))
    beta = reference(block, x)[1]
    torch.testing.assert_close(rows.flatten(2), beta[:, queries])
    # y_j = x_j + gamma * W_v sum_i beta_{j,i} h(x_i) at the query positions, from the returned rows alone
    h = torch.einsum('oc,bcn->bon', w(block.h), x.flatten(2))
    o = torch.einsum('oc,bck->bok', w(block.v), torch.einsum('bkn,bcn->bck', rows.flatten(2), h))
    torch.testing.assert_close(x.flatten(2)[:, :, queries] + block.gamma * o, y.flatten(2)[:, :, queries])


def test_attention_maps_default_query_is_centre():
    block = make()
    x = torch.randn(1, C, 5, 7, dtype=F64)
    torch.testing.assert_close(block.attention_maps(x)['query'],
                               block.attention_maps(x, torch.tensor([2 * 7 + 3]))['query'])


def test_attention_maps_bad_queries():
    block = make()
    x = torch.randn(1, C, 3, 4, dtype=F64)
    with pytest.raises(TypeError, match='queries'):
        block.attention_maps(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([[0]]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([12]))


# ----------------------------------------------------------------------- dtypes and bad inputs

@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_input_without_autocast(dtype):
    try:
        nn.Conv2d(2, 2, 1).to(dtype)(torch.randn(1, 2, 2, 2, dtype=dtype))
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f'{dtype} conv not supported on this CPU build: {err}')
    block = make(sharpen=1.0)
    x = torch.randn(2, C, 5, 7, dtype=F64)
    with torch.no_grad():
        ref = block(x)
        y = block.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=0.05, atol=0.1)


def test_bf16_autocast_large_inputs():
    block = make(dtype=torch.float32, sharpen=1.0)
    x = torch.randn(2, C, 5, 7)
    with torch.no_grad():
        ref = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = block(x)
            y_big = block(1e3 * x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0.1, atol=0.1)
    assert torch.isfinite(y_big).all()


def test_ratio_leaving_zero_channels():
    with pytest.raises(ValueError, match='rd_ratio'):
        SelfAttention2d(4)  # 4 * 1/8 -> 0 channels
    with pytest.raises(ValueError, match='rd_ratio'):
        SelfAttention2d(C, rd_ratio=-0.5)
    with pytest.raises(TypeError, match='rd_ratio'):
        SelfAttention2d(C, rd_ratio='1/8')
    with pytest.raises(ValueError, match='rd_channels'):
        SelfAttention2d(C, rd_channels=0)
    with pytest.raises(TypeError, match='channels'):
        SelfAttention2d(16.0)


def test_wrong_input_channels_and_ndim():
    block = SelfAttention2d(C)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(1, C + 1, 4, 4))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(1, C, 16))
    with pytest.raises(ValueError, match='4-D'):
        block(torch.randn(1, C, 2, 4, 4))
    with pytest.raises(ValueError, match='channels'):
        block.attention_maps(torch.randn(1, C - 1, 4, 4))
