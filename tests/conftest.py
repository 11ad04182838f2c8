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


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at(n)``: the n-th fsync of a regular file fails with ENOSPC, as a full disk does when
    the data reaches it (folder fsyncs are not counted). Every gczoo output goes through
    ``gczoo.files.atomic_write``, which fsyncs each file before moving it into place."""
    import errno
    import stat

    def arm(n: int) -> None:
        real_fsync = os.fsync
        calls = []

        def fsync_until_full(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                calls.append(fd)
                if len(calls) == n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, 'fsync', fsync_until_full)
    return arm


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, with the reason, where no CUDA device is present (CI, the CPU
    machines); ``scripts/gpu_check.sh`` runs them where one is. ``GCZOO_CUDA_TESTS_ON=cpu`` runs
    their arithmetic on the CPU instead (a dry run of the tests themselves; see tests/cuda/)."""
    if torch.cuda.is_available() or os.environ.get('GCZOO_CUDA_TESTS_ON') == 'cpu':
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (torch.cuda.is_available() is False); '
                                   'run scripts/gpu_check.sh on a GPU machine')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
