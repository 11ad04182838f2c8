"""The chunked softmax attention (unequal head sizes on the CPU) against the explicit formula in float64."""
import pytest
import torch

from gczoo.layers import _attention, _chunked_attention
from gczoo.layers._chunked_attention import ChunkedSoftmaxAttention, chunked_path_applies, chunked_softmax_attention

F64 = torch.float64


def explicit(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def inputs(batch=3, heads=1, queries=7, keys=5, d=2, e=6, requires_grad=True):
    gen = torch.Generator().manual_seed(0)
    return [(2 * torch.randn(batch, heads, n, w, generator=gen, dtype=F64)).requires_grad_(requires_grad)
            for n, w in ((queries, d), (keys, d), (keys, e))]


# chunk budgets: several batch rows per tile, one batch row per tile, query rows split with a remainder,
# a single query row per tile (budget below one row of logits)
@pytest.mark.parametrize('budget', [1000, 35, 15, 1], ids=['batch_groups', 'batch_rows', 'query_rows', 'one_row'])
@pytest.mark.parametrize('scale', [1.0, 0.3])
def test_forward_and_gradients_match_explicit(monkeypatch, budget, scale):
    monkeypatch.setattr(_chunked_attention, 'CHUNK_ELEMENTS', budget)
    q, k, v = inputs(heads=2)
    out = chunked_softmax_attention(q, k, v, scale)
    ref = explicit(q, k, v, scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((weights * out).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((weights * ref).sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_second_order(monkeypatch):
    """The backward is exact (gradcheck) and itself differentiable (gradient penalties need that)."""
    monkeypatch.setattr(_chunked_attention, 'CHUNK_ELEMENTS', 10)
    q, k, v = (t[:, 0] for t in inputs(batch=2, queries=4, keys=3, d=2, e=3))
    fn = lambda q, k, v: ChunkedSoftmaxAttention.apply(q, k, v, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_only_some_inputs_require_grad():
    q, k, v = inputs()
    k = k.detach()
    out = chunked_softmax_attention(q, k, v, 1.0)
    out.sum().backward()
    ref_q, ref_v = q.detach().requires_grad_(), v.detach().requires_grad_()
    explicit(ref_q, k, ref_v, 1.0).sum().backward()
    torch.testing.assert_close(q.grad, ref_q.grad)
    torch.testing.assert_close(v.grad, ref_v.grad)


def test_no_graph_without_grad_and_empty_batch():
    q, k, v = inputs(requires_grad=False)
    out = chunked_softmax_attention(q, k, v, 1.0)
    assert out.grad_fn is None
    torch.testing.assert_close(out, explicit(q, k, v, 1.0))
    empty = [t[:0].requires_grad_() for t in inputs(requires_grad=False)]
    out = chunked_softmax_attention(*empty, 1.0)
    assert out.shape == (0, 1, 7, 6)
    out.sum().backward()
    assert empty[1].grad.shape == empty[1].shape


def test_which_inputs_take_the_chunked_path():
    q, k, v = inputs(requires_grad=False)
    assert chunked_path_applies(q, k, v)
    assert chunked_path_applies(q.float(), k.float(), v.float())
    assert not chunked_path_applies(q, k, v[..., :2])  # equal head sizes: SDPA's fused kernel
    assert not chunked_path_applies(q.half(), k.half(), v.half())  # half: SDPA accumulates in float32
    assert not chunked_path_applies(q.float(), k, v)  # mixed dtypes
    assert chunked_path_applies(q.to('meta'), k.to('meta'), v.to('meta'))  # complexity counts the true products
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not chunked_path_applies(q.float(), k.float(), v.float())


def test_torch_func_transforms_fall_back_to_sdpa():
    """torch.func.grad/vmap cannot run this autograd Function: softmax_attention uses SDPA there."""
    q, k, v = inputs(requires_grad=False)
    grad_q = torch.func.grad(lambda q: _attention.softmax_attention(q, k, v, 1.0).sum())(q)
    ref_q = q.detach().requires_grad_()
    explicit(ref_q, k, v, 1.0).sum().backward()
    torch.testing.assert_close(grad_q, ref_q.grad)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shapes read while tracing a bare function
def test_graph_capture_keeps_sdpa():
    """Traced and exported graphs hold SDPA, not a Python loop over chunks."""
    q, k, v = (t.float() for t in inputs(requires_grad=False))
    fn = lambda q, k, v: _attention.softmax_attention(q, k, v, 1.0)  # noqa: E731
    traced = torch.jit.trace(fn, (q, k, v))
    assert 'scaled_dot_product_attention' in str(traced.graph)
    torch.testing.assert_close(traced(q, k, v), explicit(q, k, v, 1.0), rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(_attention.softmax_attention)
    torch.testing.assert_close(scripted(q, k, v, 1.0), explicit(q, k, v, 1.0), rtol=1e-5, atol=1e-5)
