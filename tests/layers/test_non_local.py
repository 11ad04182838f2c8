"""Tests of gczoo.layers.non_local against an explicit N x N float64 reference of the paper's equations.

Generic checks (jit of the default block, compile, autocast, channels_last, timm plug-in, gradients)
live in test_common.py; this file covers every mode and option of Non-local.
"""
import math

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from gczoo.layers import _chunked_attention
from gczoo.layers.non_local import NonLocal, NonLocal1d, NonLocal2d, NonLocal3d

MODES = ('gaussian', 'embedded_gaussian', 'dot_product', 'concatenation')
SHAPES = {1: (2, 8, 7), 2: (2, 8, 5, 6), 3: (2, 8, 3, 4, 6)}
CLASSES = {1: NonLocal1d, 2: NonLocal2d, 3: NonLocal3d}
POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Independent reference, written from Eq. 1, 2-4, 6, 7 of the paper with explicit N x N tensors.
# It reads the block's weights but none of its modules or code paths.
# ---------------------------------------------------------------------------------------------
def _pointwise(conv: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A 1x1(x1) conv as an explicit channel contraction: (B, Cin, *S) -> (B, Cout, *S)."""
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    out = torch.einsum('oc,bc...->bo...', w, t)
    if conv.bias is not None:
        out = out + conv.bias.reshape([1, -1] + [1] * (t.dim() - 2))
    return out


def _max_pool(t: torch.Tensor, kernel) -> torch.Tensor:
    """Non-overlapping max pool (stride = kernel, floor) by cropping, reshaping and taking the max."""
    for i, k in enumerate(kernel):
        dim = 2 + i
        n = t.shape[dim] // k
        t = t.narrow(dim, 0, n * k)
        t = t.reshape(t.shape[:dim] + (n, k) + t.shape[dim + 1:]).amax(dim + 1)
    return t


def _norm(block, t: torch.Tensor) -> torch.Tensor:
    if isinstance(block.norm, nn.Identity):
        return t
    bn = block.norm
    view = [1, -1] + [1] * (t.dim() - 2)
    if block.training:
        dims = [0] + list(range(2, t.dim()))
        mean = t.mean(dims)
        var = t.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (t - mean.reshape(view)) / torch.sqrt(var.reshape(view) + bn.eps) * bn.weight.reshape(view) \
        + bn.bias.reshape(view)


def reference(block, x: torch.Tensor):
    """Returns (z, p): the block output and the (B, N, M) matrix of normalised pairwise weights f / C(x)."""
    mode = block.mode
    spatial = x.shape[2:]
    batch = x.shape[0]
    if mode == 'gaussian':
        theta, phi = x, x
    else:
        theta, phi = _pointwise(block.theta, x), _pointwise(block.phi, x)
    g = _pointwise(block.g, x)
    if block.sub_sample:
        phi = _max_pool(phi, POOL[len(spatial)])
        g = _max_pool(g, POOL[len(spatial)])
    theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)  # (B, d, N), (B, d, M), (B, c, M)
    num_keys = phi.shape[2]
    if mode in ('gaussian', 'embedded_gaussian'):
        logits = torch.einsum('bdi,bdj->bij', theta, phi)
        if mode == 'embedded_gaussian' and block.use_scale:
            logits = logits / math.sqrt(theta.shape[1])
        f = torch.exp(logits - logits.amax(-1, keepdim=True))
        p = f / f.sum(-1, keepdim=True)  # C(x) = sum_j f(x_i, x_j)
    elif mode == 'dot_product':
        p = torch.einsum('bdi,bdj->bij', theta, phi) / num_keys
    else:
        n = theta.shape[2]
        pairs = torch.cat([theta.transpose(1, 2)[:, :, None, :].expand(-1, -1, num_keys, -1),
                           phi.transpose(1, 2)[:, None, :, :].expand(-1, n, -1, -1)], dim=-1)  # (B, N, M, 2d)
        w_f = block.concat_project.weight.reshape(-1)
        p = torch.relu(torch.einsum('bijk,k->bij', pairs, w_f)) / num_keys
    y = torch.einsum('bij,bcj->bci', p, g).reshape((batch, g.shape[1]) + tuple(spatial))
    z = _norm(block, _pointwise(block.conv_out, y)) + x
    return z, p


def _perturb(block, std: float = 0.5) -> None:
    """Non-zero everything, including the zero-initialised residual branch and BN running stats."""
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, std)
        if isinstance(block.norm, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            block.norm.running_mean.normal_(0.0, 0.3)
            block.norm.running_var.uniform_(0.5, 2.0)


def _make(dims, mode, **kw):
    return CLASSES[dims](SHAPES[dims][1], mode=mode, dtype=F64, **kw)


# ---------------------------------------------------------------------------------------------
# Equivalence with the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('norm', ['none', 'bn_eval', 'bn_train'])
def test_matches_reference(dims, mode, sub_sample, norm):
    block = _make(dims, mode, sub_sample=sub_sample, norm_layer=None if norm == 'none' else 'batchnorm')
    _perturb(block)
    block.train(norm == 'bn_train')
    x = torch.randn(SHAPES[dims], dtype=F64)
    expected, _ = reference(block, x)
    out = block(x)
    assert out.dtype == F64 and out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('use_scale', [False, True])
@pytest.mark.parametrize('mode', ['gaussian', 'embedded_gaussian'])
def test_use_scale_matches_reference(dims, use_scale, mode):
    block = _make(dims, mode, use_scale=use_scale, norm_layer=None).eval()
    _perturb(block, std=1.0)
    x = torch.randn(SHAPES[dims], dtype=F64)
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('rd', [dict(rd_channels=3), dict(rd_channels=12), dict(rd_ratio=0.01)])
def test_inner_width_matches_reference(mode, rd):
    # rd_channels=3 / 12 make the gaussian head sizes (C=8 for theta/phi) differ from g's both ways,
    # which _softmax_attention zero-pads; rd_ratio=0.01 clamps the inner width to 1.
    block = _make(2, mode, norm_layer=None, **rd).eval()
    assert block.inner_channels == rd.get('rd_channels', 1)
    _perturb(block)
    x = torch.randn(SHAPES[2], dtype=F64)
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)


def test_generic_class_equals_subclass():
    torch.manual_seed(1)
    a = NonLocal(8, spatial_dims=3, mode='dot_product', sub_sample=True, dtype=F64)
    torch.manual_seed(1)
    b = NonLocal3d(8, mode='dot_product', sub_sample=True, dtype=F64)
    _perturb(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(SHAPES[3], dtype=F64)
    assert torch.equal(a(x), b(x))
    assert NonLocal(8).spatial_dims == 2 and isinstance(NonLocal(8).norm, nn.BatchNorm2d)
    assert isinstance(NonLocal1d(8).norm, nn.BatchNorm1d) and isinstance(NonLocal3d(8).g, nn.Conv3d)


def test_gaussian_mode_has_no_embeddings():
    block = NonLocal2d(8, mode='gaussian')
    names = {n for n, _ in block.named_parameters()}
    assert not any(n.startswith(('theta', 'phi', 'concat_project')) for n in names)
    assert {'g.weight', 'g.bias', 'conv_out.weight', 'norm.weight', 'norm.bias'} <= names
    assert 'concat_project.weight' in dict(NonLocal2d(8, mode='concatenation').named_parameters())
    assert NonLocal2d(8, mode='concatenation').concat_project.weight.shape == (1, 8, 1, 1)  # 2 * inner -> 1
    assert NonLocal2d(8, mode='concatenation').concat_project.bias is None


# ---------------------------------------------------------------------------------------------
# Pitfall regressions: the scale divides; sub-sampling pools after phi/g; chunked concatenation
# ---------------------------------------------------------------------------------------------
def test_scale_divides_logits_by_sqrt_inner():
    # mmdetection #1447: `pairwise_weight /= d ** -0.5` multiplies by sqrt(d) instead of dividing.
    block = NonLocal2d(32, mode='embedded_gaussian', rd_channels=16, norm_layer=None, dtype=F64).eval()
    assert block.scale == 0.25
    _perturb(block, std=0.6)
    x = torch.randn(2, 32, 4, 5, dtype=F64)
    queries = torch.arange(20)
    rows = block.attention_maps(x, queries)['query'].flatten(2)
    theta = block.theta(x).flatten(2)
    phi = block.phi(x).flatten(2)
    logits = torch.einsum('bdi,bdj->bij', theta, phi)
    assert logits.abs().max() > 4  # otherwise the three candidates below would be hard to tell apart
    torch.testing.assert_close(rows, torch.softmax(logits / 4.0, -1), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(rows, torch.softmax(logits * 4.0, -1), atol=1e-3)
    assert not torch.allclose(rows, torch.softmax(logits, -1), atol=1e-3)
    # ...and the forward (SDPA) uses the same division.
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)
    unscaled = NonLocal2d(32, mode='embedded_gaussian', rd_channels=16, use_scale=False, norm_layer=None)
    assert unscaled.scale == 1.0
    assert NonLocal2d(32, mode='gaussian', use_scale=True).scale == 1.0  # exp(x_i^T x_j), unscaled
    assert NonLocal2d(32, mode='dot_product').scale == 1.0


def test_sub_sample_pools_after_projection_not_before():
    # mmcv / AlexHex7 pool the outputs of phi and g; Caffe2 pools the input (not equivalent).
    block = NonLocal2d(8, sub_sample=True, norm_layer=None, dtype=F64).eval()
    _perturb(block)
    x = torch.randn(2, 8, 6, 6, dtype=F64)
    out = block(x)
    torch.testing.assert_close(out, reference(block, x)[0], rtol=1e-10, atol=1e-10)
    pooled = nn.functional.max_pool2d(x, 2)
    theta = block.theta(x).flatten(2).transpose(1, 2)
    p = torch.softmax(theta @ block.phi(pooled).flatten(2) * block.scale, -1)
    y = (p @ block.g(pooled).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, -1, 6, 6)
    caffe2_style = x + block.norm(block.conv_out(y))
    assert not torch.allclose(out, caffe2_style, atol=1e-6)
    assert block.attention_maps(x)['query'].shape == (2, 1, 3, 3)
    assert NonLocal3d(8, sub_sample=True).attention_maps(torch.randn(1, 8, 3, 4, 6))['query'].shape == (1, 1, 3, 2, 3)
    assert NonLocal1d(8, sub_sample=True).attention_maps(torch.randn(1, 8, 7))['query'].shape == (1, 1, 3)


@pytest.mark.parametrize('chunk_size', [1, 7, 29, 30, 1000])
@pytest.mark.parametrize('sub_sample', [False, True])
def test_chunked_concatenation_equals_reference(chunk_size, sub_sample):
    block = _make(2, 'concatenation', sub_sample=sub_sample, chunk_size=chunk_size).eval()
    _perturb(block)
    x = torch.randn(SHAPES[2], dtype=F64)  # N = 30 queries: chunk sizes below, at and above N
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)
    block.chunk_size = None
    torch.testing.assert_close(block(x), reference(block, x)[0], rtol=1e-10, atol=1e-10)


def test_auto_chunk_bounds_pairwise_block():
    block = NonLocal2d(8, mode='concatenation')
    assert block._chunk(2, 16384) * 2 * 16384 <= 2 ** 24
    assert block._chunk(2, 16384) == 512
    assert block._chunk(1, 2 ** 26) == 1
    assert NonLocal2d(8, mode='concatenation', chunk_size=5)._chunk(2, 16384) == 5


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_no_n_by_n_allocation(mode, channels_last, monkeypatch):
    # N = 1600 positions: a (B, N, N) float32 matrix would be 20 MB; q, k, v, g are ~0.1 MB each.
    # The Gaussian mode's keys (C) are wider than its values (C/2): chunked attention, 1 MB chunks here.
    monkeypatch.setattr(_chunked_attention, 'CHUNK_ELEMENTS', 2 ** 18)
    block = NonLocal2d(16, mode=mode, chunk_size=100).eval()
    x = torch.randn(2, 16, 40, 40)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    nxn_bytes = 2 * 1600 * 1600 * 4
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block(x)
    events = prof.events()  # one entry per op call; self memory = what that call itself allocated
    biggest = max(e.self_cpu_memory_usage for e in events)
    assert biggest < nxn_bytes / 10, [(e.name, e.self_cpu_memory_usage) for e in events
                                      if e.self_cpu_memory_usage > nxn_bytes / 10]
    assert biggest > 0  # the profiler did record allocations
    keys = {e.name for e in events}
    assert not any('attention_math' in k for k in keys), keys  # SDPA did not fall back to the math path
    if mode == 'embedded_gaussian':  # equal head sizes: SDPA's fused kernel
        assert any('scaled_dot_product' in k for k in keys), keys
    if mode == 'gaussian':  # keys wider than values: chunked attention, no SDPA and its padding
        assert not any('scaled_dot_product' in k for k in keys), keys


# ---------------------------------------------------------------------------------------------
# Identity at init, reset_parameters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('norm_layer', ['batchnorm', None])
def test_identity_at_init_and_reset(dims, mode, norm_layer):
    block = CLASSES[dims](8, mode=mode, norm_layer=norm_layer, sub_sample=dims != 1)
    x = torch.randn(SHAPES[dims])
    for training in (True, False):
        block.train(training)
        assert torch.equal(block(x), x)
    # The zero-initialised parameters are what make it the identity: perturb them only.
    zeroed = [block.norm.weight, block.norm.bias] if norm_layer else [block.conv_out.weight, block.conv_out.bias]
    with torch.no_grad():
        for p in zeroed:
            p.normal_()
    assert not torch.allclose(block(x), x, atol=1e-4)
    # timm's ResNet.init_weights re-initialises every conv with kaiming; BN weights go back to 1.
    for m in block.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
    assert not torch.allclose(block(x), x, atol=1e-4)
    block.reset_parameters()
    assert torch.equal(block(x), x)
    if norm_layer is not None:
        assert block.conv_out.bias is None and block.conv_out.weight.abs().sum() > 0
    std = block.g.weight.std().item()
    assert 0.003 < std < 0.03  # official CONV_INIT_STD = 0.01


def test_identity_with_custom_norm_layer():
    block = NonLocal2d(8, norm_layer=lambda c, **dd: nn.GroupNorm(2, c, **dd))
    x = torch.randn(2, 8, 5, 6)
    assert torch.equal(block(x), x)
    assert isinstance(block.norm, nn.GroupNorm)


# ---------------------------------------------------------------------------------------------
# attention_maps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('sub_sample', [False, True])
def test_attention_maps_contract(dims, mode, sub_sample):
    block = _make(dims, mode, sub_sample=sub_sample, norm_layer=None).eval()
    _perturb(block)
    x = torch.randn(SHAPES[dims], dtype=F64)
    num_pos = math.prod(SHAPES[dims][2:])
    queries = torch.tensor([0, num_pos - 1, num_pos // 3, 0])
    out_before = block(x)
    rows = block.attention_maps(x, queries)['query']
    assert torch.equal(block(x), out_before)  # attention_maps leaves forward alone

    key_spatial = SHAPES[dims][2:]
    if sub_sample:
        key_spatial = tuple(s // k for s, k in zip(key_spatial, POOL[dims]))
    assert rows.shape == (2, 4) + key_spatial
    flat = rows.flatten(2)
    if mode in ('gaussian', 'embedded_gaussian'):
        torch.testing.assert_close(flat.sum(-1), torch.ones(2, 4, dtype=F64))
        assert (flat >= 0).all()
    # Rows are the reference's f / C(x) ...
    _, p = reference(block, x)
    torch.testing.assert_close(flat, p[:, queries], rtol=1e-10, atol=1e-12)
    # ... and the rows the forward applied: recompute the output at the queried positions from them.
    g = block.pool(block.g(x)).flatten(2)  # (B, c, M)
    y = torch.einsum('bkj,bcj->bkc', flat, g)
    w = block.conv_out.weight.flatten(1)
    z = x.flatten(2)[:, :, queries].transpose(1, 2) + y @ w.T + block.conv_out.bias
    torch.testing.assert_close(z, out_before.flatten(2)[:, :, queries].transpose(1, 2), rtol=1e-10, atol=1e-10)


def test_attention_maps_default_query_is_centre():
    block = NonLocal2d(8, dtype=F64)
    _perturb(block)
    x = torch.randn(2, 8, 5, 6, dtype=F64)
    rows = block.attention_maps(x)['query']
    assert rows.shape == (2, 1, 5, 6)
    torch.testing.assert_close(rows, block.attention_maps(x, torch.tensor([2 * 6 + 3]))['query'])


def test_attention_maps_bad_queries():
    block = NonLocal2d(8)
    x = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([16]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([-1]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match='queries'):
        block.attention_maps(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match='queries'):
        block.attention_maps(x, torch.tensor([[1]]))
    with pytest.raises(ValueError, match='3-D'):
        NonLocal1d(8).attention_maps(x)


# ---------------------------------------------------------------------------------------------
# Bad arguments and inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('cls, x', [
    (NonLocal1d, torch.randn(2, 8, 4, 4)),
    (NonLocal2d, torch.randn(2, 8, 4)),
    (NonLocal3d, torch.randn(2, 8, 4, 4)),
])
def test_wrong_ndim(cls, x):
    with pytest.raises(ValueError, match=rf'{cls.__name__}: input x must be a {cls(8).spatial_dims + 2}-D'):
        cls(8)(x)


def test_wrong_channels():
    with pytest.raises(ValueError, match='8 channels'):
        NonLocal2d(8)(torch.randn(2, 6, 4, 4))


@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(mode='embedded'), ValueError, 'mode'),
    (dict(mode=None), TypeError, 'mode'),
    (dict(rd_ratio=0), ValueError, 'rd_ratio'),
    (dict(rd_ratio=-0.5), ValueError, 'rd_ratio'),
    (dict(rd_ratio=float('nan')), ValueError, 'rd_ratio'),
    (dict(rd_ratio='half'), TypeError, 'rd_ratio'),
    (dict(rd_channels=0), ValueError, 'rd_channels'),
    (dict(rd_channels=1.5), TypeError, 'rd_channels'),
    (dict(spatial_dims=4), ValueError, 'spatial_dims'),
    (dict(spatial_dims=0), ValueError, 'spatial_dims'),
    (dict(spatial_dims=True), TypeError, 'spatial_dims'),
    (dict(norm_layer='layernorm'), ValueError, 'norm_layer'),
    (dict(norm_layer=3), TypeError, 'norm_layer'),
    (dict(sub_sample='yes'), TypeError, 'sub_sample'),
    (dict(use_scale=1), TypeError, 'use_scale'),
    (dict(chunk_size=0), ValueError, 'chunk_size'),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NonLocal(8, **kwargs)


def test_bad_channels():
    with pytest.raises(ValueError, match='channels'):
        NonLocal2d(0)


def test_sub_sample_too_small_input():
    with pytest.raises(ValueError, match='sub_sample'):
        NonLocal2d(8, sub_sample=True)(torch.randn(1, 8, 1, 5))
    NonLocal3d(8, sub_sample=True)(torch.randn(1, 8, 1, 2, 2))  # time is not pooled


def test_rd_ratio_clamps_to_one():
    assert NonLocal2d(8, rd_ratio=0.05).inner_channels == 1
    assert NonLocal2d(8).inner_channels == 4
    assert NonLocal2d(8, rd_ratio=0.05, rd_channels=3).inner_channels == 3


# ---------------------------------------------------------------------------------------------
# Every mode through TorchScript and bf16 autocast (test_common covers the default mode only)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', MODES)
def test_script_every_mode(mode):
    dims = 2 if mode != 'concatenation' else 3
    block = CLASSES[dims](8, mode=mode, sub_sample=True, chunk_size=5 if mode == 'concatenation' else None)
    _perturb(block)
    scripted = torch.jit.script(block)
    x = torch.randn(SHAPES[dims])
    torch.testing.assert_close(scripted(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('mode', MODES)
def test_autocast_bf16_finite(dims, mode):
    block = CLASSES[dims](8, mode=mode)
    _perturb(block)
    x = torch.randn(SHAPES[dims]) * 1e3
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize('dims', [1, 2, 3])
@pytest.mark.parametrize('mode', MODES)
def test_autocast_fp16_finite(dims, mode):
    """float16 autocast (CPU here; the casts CUDA's autocast makes): the dot-product and concatenation
    sums over the positions are taken in float32, and so are W_z and the norm on them."""
    block = CLASSES[dims](8, mode=mode)
    _perturb(block)
    x = torch.randn(SHAPES[dims]) * 1e3
    assert torch.isfinite(block(x)).all()
    with torch.autocast('cpu', dtype=torch.float16):
        out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize('mode', MODES)
def test_identity_at_init_under_fp16_autocast(mode):
    """A freshly inserted block is the identity also in float16: an overflowing W_z output would
    make the zero-initialised BatchNorm compute inf * 0 = NaN."""
    block = NonLocal2d(64, mode=mode).eval()
    x = torch.randn(2, 64, 6, 5) * 1e3
    with torch.autocast('cpu', dtype=torch.float16):
        out = block(x)
    torch.testing.assert_close(out.float(), x)


def _concat_inputs(batch=2, queries=30, keys=12, width=5, dtype=F64):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(batch, queries, generator=gen, dtype=dtype)
    b = torch.randn(batch, keys, generator=gen, dtype=dtype)
    g = torch.randn(batch, width, keys, generator=gen, dtype=dtype)
    # ties: a key equal to another key, and queries exactly on a key (a_i + b_j = 0 contributes 0)
    b[:, 1] = b[:, 0]
    a[:, :3] = -b[:, :3]
    return a, b, g


def test_sorted_concatenation_equals_chunked():
    """The traced/exported form (one sort of [-a, b], cumulative sums) gives the chunked sums."""
    from gczoo.layers import non_local
    a, b, g = _concat_inputs()
    expected = non_local._concat_chunked(a, b, g, 7)
    brute = (torch.relu(a[:, None, :] + b[:, :, None])[:, None] * g[..., None]).sum(2) / b.shape[1]
    torch.testing.assert_close(expected, brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(non_local._concat_sorted(a, b, g), expected, rtol=1e-12, atol=1e-12)
    a, b, g = _concat_inputs(dtype=torch.float16)
    y = non_local._concat_sorted(a, b, g)  # half inputs: float32 sums
    assert y.dtype == torch.float32
    expected = non_local._concat_chunked(a.float(), b.float(), g.float(), None)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings('ignore:`torch.jit.trace_method` is deprecated:FutureWarning')
@pytest.mark.parametrize('sub_sample', [False, True])
def test_concatenation_traced_and_exported_match_reference(sub_sample):
    """torch.jit.trace (the TorchScript ONNX exporter's tracer) and torch.export take the sort-based
    path; traced at one size, both stay exact at another (no loop unrolled to the example's chunks)."""
    block = _make(2, 'concatenation', sub_sample=sub_sample, chunk_size=4).eval()
    _perturb(block)
    example, other = torch.randn(2, 8, 5, 6, dtype=F64), torch.randn(3, 8, 7, 4, dtype=F64)
    traced = torch.jit.trace(block, (example,), check_trace=False)
    dims = {0: torch.export.Dim('batch', min=1), 2: torch.export.Dim('h', min=4), 3: torch.export.Dim('w', min=4)}
    exported = torch.export.export(block, (example,), dynamic_shapes=(dims,)).module()
    for x in (example, other):
        ref = reference(block, x)[0]
        torch.testing.assert_close(traced(x), ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(exported(x), ref, rtol=1e-10, atol=1e-10)
