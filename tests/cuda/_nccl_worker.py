"""One torchrun worker of tests/cuda/test_cuda_train.py: an NCCL process group, a zoo model with
SyncBatchNorm in DDP, one bf16-autocast channels_last training step, compared with the same step of the
plain model in this process; prints one JSON line (rank 0)."""
import copy
import json
import os

import timm
import torch
import torch.distributed as dist
import torch.nn as nn

import gczoo  # noqa: F401

device_type = os.environ.get('GCZOO_CUDA_TESTS_ON', 'cuda')
backend = 'nccl' if device_type == 'cuda' else 'gloo'
local_rank = int(os.environ['LOCAL_RANK'])
if device_type == 'cuda':
    torch.cuda.set_device(local_rank)
device = torch.device(device_type, local_rank) if device_type == 'cuda' else torch.device('cpu')
dist.init_process_group(backend)
torch.manual_seed(0)
plain = timm.create_model('resnet18_gc', num_classes=5).to(device).to(memory_format=torch.channels_last)
wrapped = copy.deepcopy(plain)
if device_type == 'cuda':  # torch's SyncBatchNorm runs on GPUs only (the CPU dry run keeps BatchNorm)
    wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
ddp_model = nn.parallel.DistributedDataParallel(wrapped, device_ids=[local_rank] if device_type == 'cuda' else None)
x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
x = x.contiguous(memory_format=torch.channels_last)
target = torch.tensor([0, 1, 2, 3], device=device)
grads = []
for model in (plain, ddp_model):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), target)
    loss.backward()
    grads.append(torch.cat([p.grad.flatten().double() for p in model.parameters()]))
total = torch.ones(1, device=device) * (dist.get_rank() + 1)
dist.all_reduce(total)
if dist.get_rank() == 0:
    print(json.dumps(dict(backend=dist.get_backend(), world_size=dist.get_world_size(), all_reduce=float(total),
                          grad_rel_error=float((grads[0] - grads[1]).norm() / grads[0].norm()),
                          sync_bn=sum(isinstance(m, nn.SyncBatchNorm) for m in ddp_model.modules()))))
dist.destroy_process_group()
