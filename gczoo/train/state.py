"""What a training checkpoint holds, and how a run continues from one exactly.

A checkpoint is plain data (``weights_only=True`` reads it): the weights (model, EMA), optimizer and
loss-scaler states, where the run is (epoch, batch, update), every rank's RNG states and running loss,
the metric history, the data it trained on (classes, sizes) and the args. Resuming restores all of
it, except the learning-rate schedule, which is rebuilt from the new command line as timm's train.py
does: ``--epochs 100`` on a 90-epoch checkpoint extends the schedule instead of training the rest at lr 0.

What is saved and restored is passed in explicitly, as timm's ``CheckpointSaver`` takes its model,
optimizer, args, EMA and loss scaler: a :class:`TrainingState` holds the run's args and process group,
the model, its :class:`~gczoo.train.build.Optimization` (optimizer, schedule, loss scaler, EMA) and
the :class:`RunData` it trains on; :class:`Progress` is where the run is.
"""
import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.scheduler import PlateauLRScheduler

from gczoo.errors import CheckpointError
from gczoo.models.weights import format_keys, load_weights

from .build import Optimization
from .checkpoint import CHECKPOINT_FORMAT, capture_rng, plain, restore_rng

__all__ = ['Progress', 'RunData', 'TrainingState', 'bn_stats', 'rank_states', 'checkpoint_payload',
           'restore_training_state']


@dataclasses.dataclass
class Progress:
    """Where the run is, all of it saved in the checkpoint."""
    epoch: int = 0  # the epoch in progress (or the next to start, with batches_done == 0)
    batches_done: int = 0  # micro-batches of `epoch` this rank has trained on
    num_updates: int = 0  # optimizer updates since the start of training
    loss_sum: float = 0.0  # this rank's running train loss sum over the samples of `epoch`
    loss_count: int = 0
    elapsed: float = 0.0  # training wall time of earlier processes of this run (s)
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    best: Optional[Dict[str, Any]] = None  # {'epoch', 'metric', 'eval_metric', 'top1', 'top5', 'eval_loss', 'ema'}


@dataclasses.dataclass
class RunData:
    """What the run trains on, as a checkpoint records and a resume checks it."""
    class_names: Sequence[str]
    train_images: int
    val_images: int
    what: str  # the data, for messages ('--data-dir ...', 'the embedded digits')
    batches_per_epoch: int  # micro-batches per epoch on each rank
    loader_generator: torch.Generator  # the training loader's shuffling/augmentation stream


@dataclasses.dataclass
class TrainingState:
    """The objects a checkpoint saves and a resume restores (as timm's ``CheckpointSaver`` takes them)."""
    args: argparse.Namespace
    env: Any  # gczoo.distributed's process-group view: rank, world_size, distributed
    model: nn.Module
    optimization: Optimization
    data: RunData
    log: Callable[[str], None]


def bn_stats(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The BatchNorm running means and variances of ``module`` (what ``--dist-bn`` syncs)."""
    return {name: buf for name, buf in module.named_buffers() if 'running_mean' in name or 'running_var' in name}


def rank_states(state: TrainingState, progress: Progress) -> List[Dict[str, Any]]:
    """Every rank's RNG states, loader generator and running loss (a collective: all ranks call it)."""
    mine = {'rng': capture_rng(), 'loader_generator': state.data.loader_generator.get_state(),
            'loss_sum': progress.loss_sum, 'loss_count': progress.loss_count}
    model_ema = state.optimization.model_ema
    if state.env.distributed and model_ema is not None:
        # ModelEmaV3 averages each rank's own BatchNorm statistics: until --dist-bn syncs them at the
        # epoch end they differ by rank, and an exact mid-epoch resume needs every rank's
        mine['ema_bn_stats'] = {k: v.detach().cpu().clone() for k, v in bn_stats(model_ema.module).items()}
    if not state.env.distributed:
        return [mine]
    states: List[Any] = [None] * state.env.world_size
    dist.all_gather_object(states, mine)
    return states


def checkpoint_payload(state: TrainingState, progress: Progress, ranks: List[Dict[str, Any]],
                       elapsed: float) -> Dict[str, Any]:
    """The checkpoint as the run is now (rank 0's weights; ``ranks`` from ``rank_states``; ``elapsed``: the
    run's training wall time so far, s)."""
    args, p, opt = state.args, progress, state.optimization
    return {
        'format': CHECKPOINT_FORMAT,
        'arch': args.model,
        'num_classes': len(state.data.class_names),
        'class_names': list(state.data.class_names),
        'train_images': state.data.train_images,
        'val_images': state.data.val_images,
        'epoch': p.epoch,
        'batches_done': p.batches_done,
        'num_updates': p.num_updates,
        'elapsed': elapsed,
        'world_size': state.env.world_size,
        'batch_size': args.batch_size,
        'grad_accum_steps': args.grad_accum_steps,
        'sampler': {'epoch': p.epoch, 'seed': args.seed, 'samples_done_per_rank': p.batches_done * args.batch_size},
        'state_dict': state.model.state_dict(),
        'optimizer': plain(opt.optimizer.state_dict()),
        'scheduler': plain(opt.scheduler.state_dict()) if opt.scheduler is not None else None,
        'state_dict_ema': opt.model_ema.module.state_dict() if opt.model_ema is not None else None,
        'scaler': plain(opt.loss_scaler.state_dict()) if opt.loss_scaler is not None else None,
        'rank_states': ranks,
        'history': plain(p.history),
        'best': plain(p.best),
        'metric': p.best['metric'] if p.best else None,
        'args': plain(vars(args)),
        'torch_version': str(torch.__version__),
    }


def _check_same_data(data: RunData, ckpt: Dict[str, Any], where: str, log: Callable[[str], None]) -> None:
    """Another class list is an error (the classifier's outputs would mean other things); other image
    counts are said (the rest of the epoch then holds other samples)."""
    names = ckpt.get('class_names')
    if names is not None and list(names) != list(data.class_names):
        gone = [n for n in names if n not in data.class_names]
        new = [n for n in data.class_names if n not in names]
        detail = (f'classes only in the checkpoint: {format_keys(gone)}; only in the data: {format_keys(new)}'
                  if gone or new else 'the same names in another order')
        raise CheckpointError(
            f'{where} was trained on {len(names)} classes that are not those of {data.what} '
            f'({len(data.class_names)}; {detail}); resume on the same data, or start a new run from its weights '
            f'with --initial-checkpoint')
    sizes = (ckpt.get('train_images'), ckpt.get('val_images'))
    now = (data.train_images, data.val_images)
    if sizes != (None, None) and sizes != now:
        log(f'{where}: the checkpoint trained on {sizes[0]} train / {sizes[1]} val images, this data has '
            f'{now[0]} / {now[1]}: the run continues, but the rest of the epoch holds other samples')


def restore_training_state(state: TrainingState, ckpt: Dict[str, Any], path: Path) -> Progress:
    """Load everything ``ckpt`` holds into ``state``'s objects, then this rank's RNG states and loader
    generator; returns the run's progress."""
    args, env, where = state.args, state.env, f'--resume {str(path)!r}'
    opt, log = state.optimization, state.log
    _check_same_data(state.data, ckpt, where, log)
    hint = f'The checkpoint was written by --model {ckpt.get("arch")!r}; this run builds --model {args.model!r}.'
    load_weights(state.model, ckpt['state_dict'], what=where, hint=hint)
    if opt.model_ema is not None:
        if ckpt.get('state_dict_ema') is None:
            log(f'{where} has no EMA weights; the EMA starts from the current weights')
            opt.model_ema.module.load_state_dict(state.model.state_dict())
        else:
            load_weights(opt.model_ema.module, ckpt['state_dict_ema'], what=f'{where} (EMA)', hint=hint)
    if args.no_resume_opt:
        log(f'{where}: --no-resume-opt: the optimizer and loss scaler start fresh')
    else:
        try:
            opt.optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f'{where}: the optimizer state does not fit this run (another --opt, --attn-lr-scale '
                                  f'or --layer-decay?); pass --no-resume-opt to start it fresh: {e}') from e
        if opt.loss_scaler is not None and ckpt.get('scaler') is not None:
            opt.loss_scaler.load_state_dict(ckpt['scaler'])

    progress = Progress(epoch=int(ckpt['epoch']), batches_done=int(ckpt['batches_done']),
                        num_updates=int(ckpt['num_updates']), elapsed=float(ckpt.get('elapsed') or 0.0),
                        history=list(ckpt.get('history') or []), best=ckpt.get('best'))
    ranks = ckpt.get('rank_states') or []
    if env.rank < len(ranks):
        mine = ranks[env.rank]
        restore_rng(mine['rng'])
        state.data.loader_generator.set_state(mine['loader_generator'])
        progress.loss_sum, progress.loss_count = float(mine['loss_sum']), int(mine['loss_count'])
        if opt.model_ema is not None and mine.get('ema_bn_stats'):
            with torch.no_grad():
                for name, buf in bn_stats(opt.model_ema.module).items():
                    buf.copy_(mine['ema_bn_stats'][name])
    layout = (ckpt.get('world_size'), ckpt.get('batch_size'), ckpt.get('grad_accum_steps'))
    if layout != (env.world_size, args.batch_size, args.grad_accum_steps):
        # skip the same share of the epoch; which samples the rest of it holds differs
        old_world, old_batch = int(layout[0] or 1), int(layout[1] or args.batch_size)
        samples_done = progress.batches_done * old_batch * old_world
        progress.batches_done = min(state.data.batches_per_epoch, samples_done // (env.world_size * args.batch_size))
        # the epoch's running loss: all of it on rank 0 (the epoch end sums over ranks)
        progress.loss_sum = sum(float(st['loss_sum']) for st in ranks) if env.rank == 0 else 0.0
        progress.loss_count = sum(int(st['loss_count']) for st in ranks) if env.rank == 0 else 0
        log(f'{where}: the checkpoint ran with world size, batch, accumulation {layout}; this run uses '
            f'{(env.world_size, args.batch_size, args.grad_accum_steps)}: it continues, but not exactly')
    _restore_schedule(state, ckpt, progress)
    return progress


def _restore_schedule(state: TrainingState, ckpt: Dict[str, Any], progress: Progress) -> None:
    """The lr schedule comes from this run's args (as timm's train.py): stepped to where the run is. Only a
    plateau schedule, whose state is the metric history, is loaded from the checkpoint."""
    scheduler = state.optimization.scheduler
    if scheduler is None:
        return
    if isinstance(scheduler, PlateauLRScheduler):
        if ckpt.get('scheduler') is not None:
            scheduler.load_state_dict(ckpt['scheduler'])
        return
    scheduler.step(progress.epoch)
    scheduler.step_update(progress.num_updates)
    old_epochs = (ckpt.get('args') or {}).get('epochs')
    if old_epochs is not None and old_epochs != state.args.epochs:
        state.log(f'the schedule follows this run\'s --epochs {state.args.epochs} (the checkpoint\'s run had '
                  f'{old_epochs}): {state.optimization.num_epochs} scheduled epochs, continuing at epoch '
                  f'{progress.epoch + 1}')
