"""torchrun/DDP plumbing shared by training and evaluation: gloo on CPU, NCCL on CUDA.

* ``init_distributed``/``cleanup_distributed``: join and leave the process group torchrun describes;
* ``ShardSampler``: every sample exactly once across ranks (evaluation);
* ``distribute_bn``: timm's ``--dist-bn``, every rank's BatchNorm statistics made the same before they
  are validated or saved.
"""
import dataclasses
import os
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from timm.utils import distribute_bn as timm_distribute_bn
from torch.utils.data import Sampler

__all__ = [
    'DIST_BN_MODES', 'DistEnv', 'init_distributed', 'cleanup_distributed', 'ShardSampler', 'is_main_process',
    'distribute_bn', 'gather_across_ranks',
]

DIST_BN_MODES = ('', 'broadcast', 'reduce')  # timm train.py's --dist-bn choices ('' = leave each rank's own)


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: Optional[str] = None) -> DistEnv:
    """Join the process group torchrun describes in the environment (if any) and pick the device.

    ``device``: 'cpu', 'cuda' or None (CUDA when available). CUDA uses NCCL and one GPU per local
    rank; CPU uses gloo.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith('cuda')
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class ShardSampler(Sampler[int]):
    """Every sample exactly once across ranks (rank r takes r, r+W, ...): no padding duplicates, as
    evaluation needs. ``DistributedSampler`` pads the last batch with repeats, which biases accuracy."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices: List[int] = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def distribute_bn(module: torch.nn.Module, mode: str, device: torch.device) -> bool:
    """timm's ``--dist-bn``: give every rank the same BatchNorm running statistics, averaged over ranks
    (``'reduce'``) or rank 0's (``'broadcast'``); ``''`` leaves them. Returns whether anything was synced.

    Under DDP each rank's running mean/var follow its own batches, so without this the ranks validate
    different models and rank 0 saves one of them: the logged accuracy is not the saved weights'.
    Every rank must call it (a collective). Uses ``timm.utils.distribute_bn``; statistics kept on
    another device than ``device`` (an EMA on the CPU under NCCL) travel through ``device``.
    """
    if mode not in DIST_BN_MODES:
        raise ValueError(f"--dist-bn must be one of {', '.join(repr(m) for m in DIST_BN_MODES)}, got {mode!r}")
    if not mode or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return False
    world_size = dist.get_world_size()
    stats = [buf for name, buf in module.named_buffers() if 'running_mean' in name or 'running_var' in name]
    if all(buf.device == device for buf in stats):
        timm_distribute_bn(module, world_size, reduce=mode == 'reduce')
        return bool(stats)
    for buf in stats:
        moved = buf.to(device)
        if mode == 'reduce':
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            moved /= float(world_size)
        else:
            dist.broadcast(moved, 0)
        buf.copy_(moved)
    return bool(stats)


def gather_across_ranks(items: List[str]) -> List[str]:
    """Every rank's ``items`` (the files each skipped), sorted, under a process group; without one this
    rank's own, in their order."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: List[List[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(items))
    return sorted(item for rank_items in gathered for item in rank_items)
