"""The CUDA paths, checked against numbers (issue 21): every block's forward and backward in float32,
float16 and bfloat16 (as a half module and under autocast) against a float64 CPU reference; the softmax
blocks on a fused SDPA kernel; every zoo model's training step under AMP and channels_last against the
float32 step; ``torch.compile`` against eager; the ONNX export of a CUDA model in ONNX Runtime.

All tests are marked ``cuda``: without a GPU they skip with the reason (tests/conftest.py);
``scripts/gpu_check.sh`` runs them. ``GCZOO_CUDA_TESTS_ON=cpu`` runs the same arithmetic on the CPU, a
dry run of the tests themselves (the fused-kernel test then skips: the CPU has no flash kernel).
float32 comparisons turn TF32 off (cuDNN's default for convolutions on Ampere and later rounds their
inputs to 10 mantissa bits, which is what the half tolerances are for).
"""
import contextlib
import copy
from typing import Dict, Optional, Tuple

import pytest
import timm
import torch
import torch.nn as nn

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.layers import ATTN_SPECS, attention_modules, create_attn
from gczoo.models import ZOO_MODELS

from _cuda_utils import DEVICE, rel_error

pytestmark = pytest.mark.cuda

CHANNELS = 64
# relative error allowed per precision, ||out - ref|| / ||ref|| (float16: 11 bits, bfloat16: 8 bits of mantissa)
REL_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# parameters whose gradient is a difference of large terms (the attention-pooling logits' conv: the
# softmax's sum of p * (v - mean) over positions; its bias gets exactly 0, softmax being shift-invariant)
CANCELLING = ('conv_mask.weight',)
PRECISIONS = {  # name -> (module dtype, autocast dtype or None)
    'float32': (torch.float32, None),
    'float16': (torch.float16, None),
    'bfloat16': (torch.bfloat16, None),
    'autocast_float16': (torch.float32, torch.float16),
    'autocast_bfloat16': (torch.float32, torch.bfloat16),
}






def perturbed(module: nn.Module, scale: float = 0.2, seed: int = 1) -> nn.Module:
    """Every parameter moved off its init: the zero-inits would otherwise make a block the identity,
    and a wrong attention path would pass unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def autocast(dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(DEVICE.type, dtype=dtype)


def forward_backward(block: nn.Module, x: torch.Tensor, weight: torch.Tensor,
                     amp: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    with autocast(amp):
        y = block(x)
    (y.float() * weight.to(y.device)).sum().backward()
    grads = {n.removeprefix('_orig_mod.'): p.grad for n, p in block.named_parameters() if p.grad is not None}
    return y, x.grad, grads


def nonzero_gradients(grads: Dict[str, torch.Tensor], dx: torch.Tensor) -> list:
    """The parameters whose gradient is not 0 by construction: a bias feeding a train-mode BN (issue 14)
    or a softmax logit's bias gets exactly 0, of which each implementation keeps its own rounding."""
    return [k for k in grads if float(grads[k].norm()) > 1e-6 * float(dx.norm())]


def block_case(name: str, channels_last: bool = False):
    torch.manual_seed(0)
    block = perturbed(create_attn(name, CHANNELS)).double().train()
    # batch 4: BAM's channel gate normalises over the batch, and over 2 samples a BN's output is +-1
    # whatever its input, which leaves the gradient of the layer before it to rounding
    x = torch.randn(4, CHANNELS, 12, 10, dtype=torch.float64)
    weight = torch.randn(4, CHANNELS, 12, 10, dtype=torch.float64)
    return block, x, weight


@pytest.mark.parametrize('precision', list(PRECISIONS))
@pytest.mark.parametrize('name', sorted(ATTN_SPECS))
def test_block_forward_backward_against_float64_cpu(name, precision):
    """Output, input gradient and parameter gradients of the CUDA block against the float64 CPU block
    (train mode: batch statistics, the training paths). Non-square 12x10, batch 4."""
    dtype, amp = PRECISIONS[precision]
    reference, x, weight = block_case(name)
    block = copy.deepcopy(reference).to(DEVICE, dtype)
    y_ref, dx_ref, grads_ref = forward_backward(reference, x, weight, None)
    y, dx, grads = forward_backward(block, x.to(DEVICE, dtype), weight, amp)
    tol = REL_TOL[amp or dtype]
    if amp is None:
        assert y.dtype == dtype, f'{name} {precision}: output dtype {y.dtype}'
    assert rel_error(y, y_ref) <= tol, f'{name} {precision}: output'
    assert rel_error(dx, dx_ref) <= 4 * tol, f'{name} {precision}: input gradient'
    assert grads.keys() == grads_ref.keys()
    # all parameter gradients as one vector; per tensor in float32. In half precision a gradient that is a
    # difference of large terms (GC's attention logits: the softmax's p * (v - mean)) keeps few correct
    # bits, as it would in any half-precision implementation: there the direction must still agree.
    # (GC with 64 channels also normalises over 4 values in its LayerNorm): 8x the output's tolerance.
    nonzero = nonzero_gradients(grads_ref, dx_ref)
    keys = [k for k in nonzero if dtype == torch.float32 and amp is None or not k.endswith(CANCELLING)]
    flat = torch.cat([grads[k].flatten().double().cpu() for k in keys])
    flat_ref = torch.cat([grads_ref[k].flatten() for k in keys])
    assert rel_error(flat, flat_ref) <= 8 * tol, f'{name} {precision}: parameter gradients'
    for key in set(nonzero) - set(keys):
        cosine = nn.functional.cosine_similarity(grads[key].double().cpu().flatten(), grads_ref[key].flatten(), 0)
        assert cosine >= 0.8, f'{name} {precision}: gradient of {key} points elsewhere (cosine {cosine:.3f})'
    if dtype == torch.float32 and amp is None:
        for key in nonzero:
            assert rel_error(grads[key], grads_ref[key]) <= 8 * tol, f'{name} {precision}: gradient of {key}'


@pytest.mark.parametrize('name', sorted(ATTN_SPECS))
def test_block_channels_last_equals_contiguous(name):
    reference, x, weight = block_case(name)
    block = copy.deepcopy(reference).to(DEVICE, torch.float32)
    y_ref, dx_ref, _ = forward_backward(copy.deepcopy(block), x.to(DEVICE, torch.float32), weight, None)
    y, dx, _ = forward_backward(block.to(memory_format=torch.channels_last),
                                x.to(DEVICE, torch.float32).contiguous(memory_format=torch.channels_last), weight,
                                None)
    assert rel_error(y, y_ref) <= 1e-5 and rel_error(dx, dx_ref) <= 1e-5


@pytest.mark.skipif(DEVICE.type != 'cuda', reason='the fused SDPA kernels are CUDA kernels')
@pytest.mark.parametrize('name', ['nl', 'nl_sub', 'sa'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_softmax_blocks_run_on_a_fused_sdpa_kernel(name, dtype):
    """With SDPA restricted to the flash and memory-efficient kernels (no math fallback, which builds the
    N x N matrix), the block still runs forward and backward, and matches the float64 reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    reference, x, weight = block_case(name)
    block = copy.deepcopy(reference).to(DEVICE, dtype)
    y_ref, dx_ref, _ = forward_backward(reference, x, weight, None)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        y, dx, _ = forward_backward(block, x.to(DEVICE, dtype), weight, None)
    assert rel_error(y, y_ref) <= REL_TOL[dtype] and rel_error(dx, dx_ref) <= 4 * REL_TOL[dtype]


@pytest.mark.parametrize('name', ['nl', 'gc', 'se', 'cbam', 'bam', 'cc', 'sa', 'snl'])
def test_block_torch_compile_equals_eager(name):
    reference, x, weight = block_case(name)
    block = copy.deepcopy(reference).to(DEVICE, torch.float32)
    y_ref, dx_ref, grads_ref = forward_backward(copy.deepcopy(block), x.to(DEVICE, torch.float32), weight, None)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=False)
    y, dx, grads = forward_backward(compiled, x.to(DEVICE, torch.float32), weight, None)
    assert rel_error(y, y_ref) <= 1e-5 and rel_error(dx, dx_ref) <= 1e-5
    for key in nonzero_gradients(grads_ref, dx_ref):
        assert rel_error(grads[key], grads_ref[key]) <= 1e-4, key


def model_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp: Optional[torch.dtype],
               scaler: Optional[torch.amp.GradScaler] = None) -> Tuple[float, torch.Tensor, Dict[str, torch.Tensor]]:
    """One training step's loss, logits and gradients (SGD step taken, so BN statistics move too)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with autocast(amp):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), target)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(loss), logits.detach(), grads


def zoo_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    for _, block in attention_modules(model):  # off the identity: the blocks must count in the step
        perturbed(block, scale=0.05)
    return model.train()


@pytest.mark.parametrize('amp', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', list(ZOO_MODELS))
def test_zoo_model_training_step_amp_channels_last(name, amp):
    """The AMP + channels_last training step (GradScaler for float16) against the float32 contiguous one:
    loss, logits and the gradient of every parameter group agree to the half precision's tolerance."""
    reference = zoo_model(name).to(DEVICE)
    model = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 96, 80, generator=gen).to(DEVICE)
    target = torch.randint(0, 10, (4,), generator=gen).to(DEVICE)
    loss_ref, logits_ref, grads_ref = model_step(reference, x, target, None)
    # float16: a GradScaler as in training; its first scale is 2**10 (not 2**16, whose first step
    # overflows and is skipped by design) so that this one step is taken and compared
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 10) if amp == torch.float16 else None
    loss, logits, grads = model_step(model, x.contiguous(memory_format=torch.channels_last), target, amp, scaler)
    tol = REL_TOL[amp]
    assert abs(loss - loss_ref) <= 4 * tol * abs(loss_ref), (loss, loss_ref)
    assert rel_error(logits, logits_ref) <= 4 * tol
    flat = torch.cat([g.flatten().double() for g in grads.values()])
    flat_ref = torch.cat([grads_ref[k].flatten().double() for k in grads])
    assert grads.keys() == grads_ref.keys()
    assert rel_error(flat, flat_ref) <= 20 * tol  # the whole gradient: per-tensor errors of tiny BN grads are noise
    if scaler is not None:
        assert scaler.get_scale() > 0 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize('name', ['resnet50_gc', 'resnet50_nl', 'resnet50_cc'])
def test_zoo_model_torch_compile_training_equals_eager(name):
    reference = zoo_model(name).to(DEVICE)
    model = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=gen).to(DEVICE)
    target = torch.randint(0, 10, (2,), generator=gen).to(DEVICE)
    loss_ref, logits_ref, _ = model_step(reference, x, target, None)
    torch._dynamo.reset()
    loss, logits, _ = model_step(torch.compile(model), x, target, None)
    assert abs(loss - loss_ref) <= 1e-4 * abs(loss_ref) and rel_error(logits, logits_ref) <= 1e-4


@pytest.mark.onnx
@pytest.mark.parametrize('name', ['resnet50_nl', 'resnet50_cc', 'resnet50_sa'])
def test_onnx_export_of_a_cuda_model_matches_in_onnx_runtime(name):
    """The ONNX graph of a model living on the GPU (exported from CUDA tensors) runs in ONNX Runtime on
    the CPU and gives the CUDA model's float32 logits."""
    pytest.importorskip('onnxruntime')
    from gczoo.export import export_onnx
    import onnxruntime
    model = zoo_model(name).eval().to(DEVICE)
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))  # batch 1 would specialise
    with torch.no_grad():
        expected = model(x.to(DEVICE)).cpu()
    proto = export_onnx(model, x.to(DEVICE), exporter='dynamo')
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    out = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
    assert rel_error(out, expected) <= 1e-4
