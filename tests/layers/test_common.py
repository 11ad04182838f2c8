"""Checks every registered block must pass, whatever its equation: the tests specific to one block
(equivalence to the paper, identity at init, bad settings) live in that block's own test file."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from gczoo.layers import ATTN_SPECS, create_attn

NAMES = sorted(ATTN_SPECS)
CHANNELS = 64


def make(name: str, **kwargs) -> nn.Module:
    return create_attn(name, CHANNELS, **kwargs)


def perturbed(block: nn.Module) -> nn.Module:
    """The block with every parameter moved off its init, so zero-inits no longer hide a path."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return block


def inputs(b=2, h=6, w=5, scale=1.0, dtype=torch.float32):
    return scale * torch.randn(b, CHANNELS, h, w, dtype=dtype)


@pytest.mark.parametrize('name', NAMES)
def test_shape_dtype_non_square(name):
    block = make(name)
    for shape in [(2, 6, 5), (1, 3, 9), (2, 8, 8)]:
        x = inputs(*shape)
        y = block(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()


class _BiasFeedsBatchNormTracer(torch.fx.Tracer):
    """Keeps Linear/Conv and every BatchNorm as single nodes, so the graph shows which feeds which."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)) \
            or super().is_leaf_module(m, qualname)


def biases_feeding_batch_norm(block: nn.Module) -> set:
    """Names of the biases whose layer's output goes only into a train-mode BatchNorm.

    BatchNorm subtracts the batch mean per channel, so in training such a bias cancels exactly and its
    gradient is zero by construction; what a kernel leaves of it (0 or ~1e-9) depends on the CPU
    (issue 14). They stay in the blocks because the official checkpoints (BAM, CBAM) have them.
    """
    tracer = _BiasFeedsBatchNormTracer()
    graph = tracer.trace(block.train())
    modules = dict(block.named_modules())
    found = set()
    for node in graph.nodes:
        if node.op != 'call_module' or getattr(modules[node.target], 'bias', None) is None:
            continue
        if not isinstance(modules[node.target], (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        users = list(node.users)
        if users and all(u.op == 'call_module' and isinstance(modules[u.target], nn.modules.batchnorm._BatchNorm)
                         and modules[u.target].training for u in users):
            found.add(f'{node.target}.bias')
    return found


def test_biases_feeding_batch_norm_found_from_structure():
    """The finder sees BAM's and CBAM's bias-before-BN layers and nothing in a block without BN."""
    assert 'channel_gate.layers.0.fc.bias' in biases_feeding_batch_norm(make('bam_sum'))
    assert 'spatial_gate.reduce.conv.bias' in biases_feeding_batch_norm(make('bam'))
    assert biases_feeding_batch_norm(make('gc')) == set()


@pytest.mark.parametrize('name', NAMES)
def test_gradients_reach_every_parameter(name):
    """Every parameter gets a non-zero gradient, except biases that feed a train-mode BatchNorm: their
    gradient is exactly zero in exact arithmetic, so they are asserted ~0 (round-off only) instead."""
    block = perturbed(make(name))
    cancelled = biases_feeding_batch_norm(block)
    x = inputs().requires_grad_()
    block(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = {pname: p.grad for pname, p in block.named_parameters()}
    assert all(g is not None for g in grads.values()), f'{name}: no gradient for {[k for k, g in grads.items() if g is None]}'
    largest = max(g.abs().max().item() for g in grads.values())
    for pname, grad in grads.items():
        if pname in cancelled:
            assert grad.abs().max().item() <= 1e-5 * largest, f'{name}: {pname} feeds a BatchNorm, its gradient must be ~0'
        else:
            assert grad.abs().sum() > 0, f'{name}: {pname} got a zero gradient'


@pytest.mark.parametrize('name', NAMES)
def test_batch_one_train_mode(name):
    block = perturbed(make(name)).train()
    y = block(inputs(b=1))
    assert y.shape == (1, CHANNELS, 6, 5) and torch.isfinite(y).all()


@pytest.mark.parametrize('name', NAMES)
def test_float64_construction(name):
    block = make(name, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in block.state_dict().values() if t.is_floating_point())
    assert block(inputs(dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize('name', NAMES)
def test_channels_last_same_output(name):
    block = perturbed(make(name)).eval()
    x = inputs(h=7, w=6)
    ref = block(x)
    out = block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    cl_block = copy.deepcopy(block).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl_block(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [1e2, 1e3])
def test_bf16_autocast_large_inputs_finite(name, scale):
    block = perturbed(make(name)).eval()
    x = inputs(scale=scale)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all(), f'{name}: non-finite output under bf16 autocast'


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [1e2, 1e3])
def test_fp16_autocast_large_inputs_finite(name, scale):
    """CPU autocast to float16 casts what CUDA's does (convolutions and matmuls run in float16): with
    |x| up to 1e3 every block's output stays finite wherever float32's is."""
    block = perturbed(make(name)).eval()
    x = inputs(scale=scale)
    assert torch.isfinite(block(x)).all()  # float32 is finite: the float16 check below means something
    with torch.autocast('cpu', dtype=torch.float16):
        y = block(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all(), f'{name}: non-finite output under float16 autocast at |x| ~ {scale:g}'


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_attention_maps_finite_under_autocast(name, dtype):
    """The maps' logits (q . k over the channels) are computed in float32 as the forward's are."""
    block = perturbed(make(name)).eval()
    with torch.autocast('cpu', dtype=dtype):
        maps = block.attention_maps(inputs(scale=1e3), queries=torch.tensor([0, 7, 29]))
    for key, m in maps.items():
        assert torch.isfinite(m).all(), f'{name}: attention map {key!r} not finite under {dtype} autocast'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_autocast_large_inputs_finite(name, dtype):
    """The real CUDA path (fused SDPA kernels, cuBLAS in half precision), forward and backward."""
    block = perturbed(make(name)).cuda()
    for scale in (1e2, 1e3):
        x = inputs(scale=scale).cuda().requires_grad_()
        with torch.autocast('cuda', dtype=dtype):
            y = block.eval()(x)
        assert torch.isfinite(y).all(), f'{name}: non-finite {dtype} autocast output at |x| ~ {scale:g}'
    x = inputs(scale=1.0).cuda().requires_grad_()
    with torch.autocast('cuda', dtype=dtype):
        y = block.train()(x)
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('name', NAMES)
def test_half_module_matches_float(name):
    """A ``.half()`` block (float16 weights and input, CPU kernels) agrees with float32 at |x| ~ 10,
    where every intermediate of the blocks fits float16 but unnormalised sums over the positions
    (dot-product Non-local: ~1e5) did not before they were taken in float32."""
    block = perturbed(make(name)).eval()
    x = inputs(scale=10.0)
    half = copy.deepcopy(block).half()
    ref = block.float()(x.half().float())  # the same rounded input
    y = half(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all(), name
    error = (y.float() - ref).abs().max().item()
    assert error <= 2e-2 * ref.abs().max().item(), (name, error, ref.abs().max().item())


@pytest.mark.parametrize('name', NAMES)
def test_empty_spatial_input_raises_own_error(name):
    block = make(name)
    for shape in [(2, CHANNELS, 0, 5), (2, CHANNELS, 6, 0), (0, CHANNELS, 0, 0)]:
        with pytest.raises(ValueError, match=r'input x must have non-empty spatial dimensions.*\[' + str(shape[0])):
            block(torch.randn(shape))
        with pytest.raises(ValueError, match='non-empty spatial'):
            block.attention_maps(torch.randn(shape))
    with pytest.raises(Exception, match='non-empty spatial'):  # the check is part of the scripted forward
        torch.jit.script(block)(torch.randn(2, CHANNELS, 0, 5))


@pytest.mark.parametrize('name', NAMES)
def test_empty_batch_gives_empty_output(name):
    """A batch of 0 is not an error (as for convolutions); BN running statistics stay finite."""
    for train in (False, True):
        block = make(name).train(train)
        y = block(torch.randn(0, CHANNELS, 6, 5))
        assert y.shape == (0, CHANNELS, 6, 5)
        assert all(torch.isfinite(b.float()).all() for b in block.buffers())


@pytest.mark.parametrize('name', NAMES)
def test_torchscript_matches_eager(name):
    block = perturbed(make(name)).eval()
    scripted = torch.jit.script(block)
    x = inputs()
    torch.testing.assert_close(scripted(x), block(x))


@pytest.mark.slow  # torch.compile: 1-8 s per block on one core
@pytest.mark.parametrize('name', NAMES)
def test_torch_compile_matches_eager(name):
    torch._dynamo.reset()
    block = perturbed(make(name)).eval()
    compiled = torch.compile(block, backend='aot_eager', fullgraph=True)
    x = inputs()
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # inductor codegen: 2-8 s per block
@pytest.mark.parametrize('name', ['gc', 'nl'])
def test_torch_compile_inductor(name):
    """The real compiler (C++ codegen) on two blocks; the rest use aot_eager above to keep CI short."""
    torch._dynamo.reset()
    block = perturbed(make(name)).eval()
    x = inputs()
    torch.testing.assert_close(torch.compile(block)(x), block(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_attention_maps_do_not_change_forward(name):
    block = perturbed(make(name)).eval()
    x = inputs()
    before = block(x)
    maps = block.attention_maps(x, queries=torch.tensor([0, 7, 29]))
    assert isinstance(maps, dict) and maps
    assert all(torch.isfinite(m).all() for m in maps.values())
    torch.testing.assert_close(block(x), before, rtol=0, atol=0)


@pytest.mark.parametrize('name', NAMES)
def test_wrong_channels_and_ndim_raise(name):
    block = make(name)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(2, CHANNELS + 1, 6, 5))
    with pytest.raises(ValueError, match='D'):
        block(torch.randn(2, CHANNELS, 6))


@pytest.mark.parametrize('name', NAMES)
def test_integer_input_raises_own_error(name):
    """An integer tensor (an image not converted) is named as such, not a conv's dtype error."""
    block = make(name).train()
    for dtype in (torch.uint8, torch.int64, torch.bool):
        x = torch.ones(2, CHANNELS, 6, 5, dtype=dtype)
        with pytest.raises(TypeError, match=r'input x must be a floating-point tensor, got torch\.'):
            block(x)
        with pytest.raises(TypeError, match='floating-point'):
            block.attention_maps(x)


@pytest.mark.parametrize('name', NAMES)
def test_plugs_into_timm_resnet(name):
    """timm passes device=/dtype= to attn_layer: the block class must take them."""
    from gczoo.layers import get_attn
    model = timm.create_model('resnet50', num_classes=4, block_args=dict(attn_layer=get_attn(name)))
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 4)
    out.sum().backward()


@pytest.mark.parametrize('name', NAMES)
def test_fx_symbolic_trace_train_and_eval(name):
    """torchvision's FX feature extraction traces both modes through every block."""
    block = perturbed(make(name))
    x = inputs()
    for train in (False, True):
        block.train(train)
        traced = torch.fx.symbolic_trace(block)
        torch.testing.assert_close(traced(x), block(x))
