import os

import pytest
import torch

# At most two threads (the CI machine's cores); OMP_NUM_THREADS, when set, wins.
if 'OMP_NUM_THREADS' not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
