import os

import pytest
import torch

# One intra-op thread unless OMP_NUM_THREADS says otherwise: the tests use small tensors, where a
# second thread mostly spins, and several tests start torchrun workers that need the other core.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
