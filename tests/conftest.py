import os

import pytest
import torch

# Two cores are shared by the test process and the subprocesses some tests start.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
