"""What the CUDA tests share: the device they run on and the relative error they compare with."""
import os

import torch

# GCZOO_CUDA_TESTS_ON=cpu: the same arithmetic on the CPU, a dry run of the tests themselves
DEVICE = torch.device('cpu' if os.environ.get('GCZOO_CUDA_TESTS_ON') == 'cpu' else 'cuda')


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 on the CPU; a non-finite ``out`` fails the test."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), 'non-finite values'
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
