import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_hub_dir():
    """Tests serve checkpoints from a temporary torch hub folder (torch.hub.set_dir); put torch's back."""
    before = torch.hub.get_dir()
    yield
    torch.hub.set_dir(before)
