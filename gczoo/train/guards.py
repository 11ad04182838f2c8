"""Stop a diverged run where it diverged, instead of training, checkpointing and exporting NaN weights.

The loss of every micro-batch is checked before the update it belongs to is applied, and the weights
before every validation and checkpoint. Under DDP the ranks agree first (one tiny all-reduce), so
they all stop at the same step with the same message. The error names the step, the likely cause and
the way back (the last checkpoint is finite: change the flags and ``--resume``).
"""
import argparse
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from gczoo.errors import GczooError
from gczoo.layers import frozen_zero_init

__all__ = ['TrainingDiverged', 'any_rank', 'non_finite_tensors', 'likely_cause', 'diverged', 'warn_frozen_attention']


class TrainingDiverged(GczooError, ArithmeticError):
    """The loss or the weights became NaN or infinite."""


def any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` or'ed over all ranks (a collective when a process group is up; every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    box = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item() > 0)


def non_finite_tensors(modules: Iterable[nn.Module]) -> List[str]:
    """Names of the floating parameters and buffers holding NaN or inf (``ema.`` for the second module)."""
    bad = []
    for prefix, module in zip(('', 'ema.'), modules):
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(prefix + name)
    return bad


def likely_cause(args: argparse.Namespace, lr: float, amp_dtype: Optional[torch.dtype]) -> str:
    """What usually makes a run diverge, with the flags that fix it."""
    cause = (f'a learning rate too high for this model and batch (lr {lr:g}'
             + (f', attention blocks x{args.attn_lr_scale:g}' if args.attn_lr_scale != 1 else '') + '): lower --lr, '
             f'or add --warmup-epochs / --clip-grad 1.0')
    if amp_dtype == torch.float16:
        cause += '; or float16 overflow under --amp (--amp-dtype bfloat16 has float32\'s range)'
    return cause


def diverged(what: str, where: str, args: argparse.Namespace, lr: float, amp_dtype: Optional[torch.dtype],
             last_checkpoint: Optional[Path]) -> TrainingDiverged:
    """The error for a run that produced non-finite values: what, at which step, why, and how to go on."""
    back = (f'{last_checkpoint} (written before) is finite: change the flags and continue it with --resume auto'
            if last_checkpoint is not None and last_checkpoint.is_file() else 'Start again with other flags')
    return TrainingDiverged(f'training diverged: {what} at {where}; the run stopped there and exported nothing. '
                            f'Likely cause: {likely_cause(args, lr, amp_dtype)}. {back}')


def warn_frozen_attention(model: nn.Module, log: Callable[[str], None]) -> List[str]:
    """At training start: one line naming the attention blocks' zero-initialised weights that are frozen
    (``timm.layers.freeze_batch_norm_2d`` on the whole model turns the Non-local output BN into
    ``FrozenBatchNorm2d``), which keep those blocks the identity for the whole run. Returns the names."""
    frozen = frozen_zero_init(model)
    if frozen:
        log(f'warning: {len(frozen)} zero-initialised attention weight(s) are frozen, so their blocks stay the '
            f'identity for the whole run: {", ".join(frozen[:6])}' + (' ...' if len(frozen) > 6 else '')
            + '; freeze the backbone with gczoo.layers.freeze_backbone_bn(model) instead of '
              'timm.layers.freeze_batch_norm_2d(model)')
    return frozen
