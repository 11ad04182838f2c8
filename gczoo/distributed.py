"""torchrun/DDP plumbing shared by training and evaluation: gloo on CPU, NCCL on CUDA."""
import dataclasses
import os
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ['DistEnv', 'init_distributed', 'cleanup_distributed', 'ShardSampler', 'is_main_process']


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
