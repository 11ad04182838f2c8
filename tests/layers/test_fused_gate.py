"""The hand-written backwards of SE and BAM (``_fused_gate``) against autograd through the blocks' plain
ops, in float64: outputs, every gradient, BN statistics; layouts, frozen parts, retained graphs,
autocast and graph capture. (CBAM's, which shares the helpers, is tested in test_cbam.py.)"""
import copy

import pytest
import torch
import torch.nn as nn

from gczoo.layers import BAM, SqueezeExcite
from gczoo.layers._fused_gate import channel_dots, weighted_channel_sum, weighted_position_sum

D = torch.float64
C = 32


def _randomise(block, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.5 if p.dim() > 1 else 0.3))
    return block


BLOCKS = {
    'se': lambda: SqueezeExcite(C, rd_ratio=1 / 8, dtype=D),
    'bam_mul': lambda: BAM(C, rd_ratio=1 / 8, dtype=D),
    'bam_sum': lambda: BAM(C, rd_ratio=1 / 8, combine='sum', dtype=D),
    'bam_prelu': lambda: BAM(C, rd_ratio=1 / 8, num_dilated_convs=1, act_layer=nn.PReLU).double(),
}
FUNCTIONS = {'se': '_SEFunctionBackward', 'bam_mul': '_BAMFunctionBackward', 'bam_sum': '_BAMFunctionBackward',
             'bam_prelu': '_BAMFunctionBackward'}


def _grads(run, block, x, weight):
    x = x.detach().requires_grad_()
    out = run(x)
    grads = torch.autograd.grad((out * weight).sum(), [x, *block.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize('name', list(BLOCKS))
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@pytest.mark.parametrize('batch', [1, 3])
def test_fused_backward_equals_autograd_of_the_plain_ops(name, train, layout, batch):
    block = _randomise(BLOCKS[name]()).train(train)
    ref = copy.deepcopy(block)
    x = torch.randn(batch, C, 5, 7, dtype=D)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(batch, C, 5, 7, dtype=D)
    probe = copy.deepcopy(block)(x.detach().requires_grad_())
    assert type(probe.grad_fn).__name__ == FUNCTIONS[name]  # the hand-written backward ran
    out, grads = _grads(block, block, x, weight)
    ref_out, ref_grads = _grads(ref._forward_ops, ref, x, weight)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    names = ['x'] + [n for n, _ in block.named_parameters()]
    for n, a, b in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f'{n}: {m}')
    for (n, a), b in zip(block.named_buffers(), ref.buffers()):  # BN statistics updated once, equally
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f'{n}: {m}')


@pytest.mark.parametrize('name', ['se', 'bam_mul'])
def test_expanded_grad_frozen_parts_and_retained_graph(name):
    block = _randomise(BLOCKS[name]()).train()
    ref = copy.deepcopy(block)
    x = torch.randn(2, C, 6, 4, dtype=D)
    # the loss .sum() hands the backward an expanded (stride 0) gradient; run it twice on one graph
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = block(xa)
    out.sum().backward(retain_graph=True)
    out.sum().backward()
    ref_out = ref._forward_ops(xb)
    ref_out.sum().backward(retain_graph=True)
    ref_out.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for a, b in zip(block.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    # a frozen block on a trainable input, and a trainable block on a frozen input (a first layer)
    for requires_x, requires_params in ((True, False), (False, True)):
        block.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        block.requires_grad_(requires_params)
        ref.requires_grad_(requires_params)
        xa, xb = x.clone().requires_grad_(requires_x), x.clone().requires_grad_(requires_x)
        block.eval()(xa).square().sum().backward()
        ref.eval()._forward_ops(xb).square().sum().backward()
        if requires_x:
            torch.testing.assert_close(xa.grad, xb.grad)
        for a, b in zip(block.parameters(), ref.parameters()):
            assert (a.grad is None) == (b.grad is None) == (not requires_params)
            if requires_params:
                torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize('name', ['se', 'bam_mul'])
def test_autocast_bf16_paths_agree(name):
    block = _randomise(BLOCKS[name]()).float().train()
    ref = copy.deepcopy(block)
    x = torch.randn(2, C, 6, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(xa)
        ref_out = ref._forward_ops(xb)
    assert out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out)
    out.float().sum().backward()
    ref_out.float().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('name', ['se', 'bam_mul'])
@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore:.*trace_method.*:FutureWarning')
def test_graph_capture_and_torch_func_see_the_plain_ops(name):
    block = _randomise(BLOCKS[name]()).eval()
    x = torch.randn(2, C, 5, 5, dtype=D, requires_grad=True)
    traced = torch.fx.symbolic_trace(copy.deepcopy(block))
    assert 'Function' not in traced.code
    torch.testing.assert_close(traced(x), block._forward_ops(x))
    jit = torch.jit.trace(block, (x,))
    assert 'Function' not in str(jit.graph)
    torch.testing.assert_close(jit(x), block._forward_ops(x))
    grad = torch.func.grad(lambda t: block(t).sum())(x.detach())
    ref = torch.autograd.grad(block._forward_ops(x).sum(), x)[0]
    torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
def test_reductions_match_their_definitions(layout):
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 5, 4, 6, generator=gen, dtype=D).contiguous(memory_format=layout) for _ in range(2))
    w_pos, w_ch = torch.randn(3, 1, 4, 6, generator=gen, dtype=D), torch.randn(3, 5, generator=gen, dtype=D)
    torch.testing.assert_close(channel_dots(a, b), (a * b).sum((2, 3)))
    torch.testing.assert_close(weighted_position_sum(a, w_pos), (a * w_pos).sum((2, 3)))
    torch.testing.assert_close(weighted_channel_sum(a, w_ch), (a * w_ch[:, :, None, None]).sum(1, keepdim=True))


@pytest.mark.parametrize('name', ['se', 'bam', 'cbam', 'cc', 'sa'])
@pytest.mark.parametrize('use_reentrant', [False, True])
def test_hand_written_backwards_under_activation_checkpointing(name, use_reentrant):
    """timm's --grad-checkpointing re-runs the forward in backward: the Functions give autograd's gradients."""
    from torch.utils.checkpoint import checkpoint

    from gczoo.layers import create_attn
    block = _randomise(create_attn(name, C).double()).train()
    ref = copy.deepcopy(block)
    x = torch.randn(2, C, 6, 5, dtype=D)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    checkpoint(block, xa, use_reentrant=use_reentrant).square().sum().backward()
    ref(xb).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for (n, a), b in zip(block.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m: f'{n}: {m}')
