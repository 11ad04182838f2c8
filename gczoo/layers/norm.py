"""BatchNorm that also accepts a training batch with one value per channel.

PyTorch's BatchNorm raises in training when a channel has a single value (pytorch #13223): BAM's
channel MLP sees ``(1, C/r)`` for a batch of one, and CBAM's spatial gate ``(1, 1, 1, 1)`` for a
batch of one with a 1x1 map. There are no batch statistics then, so that call normalises with the
running statistics (as in eval mode) and leaves them unchanged; any other batch is standard
train-mode BatchNorm. The parameter and buffer names are BatchNorm's, so checkpoints load as is.
"""
from typing import Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['BatchNormAnyBatch1d', 'BatchNormAnyBatch2d', 'batch_norm_any_batch']


@torch.fx.wrap  # a leaf for FX tracing: its branch depends on the input's shape
def batch_norm_any_batch(
        x: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        num_batches_tracked: Optional[torch.Tensor],
        training: bool,
        momentum: Optional[float],
        eps: float,
) -> torch.Tensor:
    if training and x.numel() == x.shape[1] and running_mean is not None:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
    factor = 0.0 if momentum is None else momentum
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average, as nn.BatchNorm does
            factor = 1.0 / float(num_batches_tracked.item())
    use_batch_stats = training or running_mean is None  # no running stats tracked: always batch stats
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, eps)


class BatchNormAnyBatch1d(nn.BatchNorm1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm_any_batch(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.num_batches_tracked,
            self.training and self.track_running_stats, self.momentum, self.eps)


class BatchNormAnyBatch2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm_any_batch(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.num_batches_tracked,
            self.training and self.track_running_stats, self.momentum, self.eps)
