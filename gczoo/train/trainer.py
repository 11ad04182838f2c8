"""The training run: ``Trainer(args)`` builds it, ``fit()`` trains, validates, checkpoints and exports.

Built from timm's parts (``resolve_data_config``/``create_transform``, ``Mixup``, ``create_optimizer_v2``,
``create_scheduler_v2``, ``ModelEmaV3``, ``NativeScaler``, its losses) and torch DDP
(``ResumableDistributedSampler`` for training, ``ShardSampler`` + ``gczoo.evaluate.validate`` for
validation). What it adds is the bookkeeping that makes a run reproducible and crash-proof:

* the data order of an epoch is a function of ``(seed, epoch)`` and the augmentation of a sample a
  function of ``(seed, epoch, index)`` (``gczoo.data.SeededTransformDataset``);
* checkpoints hold model, optimizer, scheduler, EMA, grad scaler, epoch/step, every rank's RNG states,
  the sampler position, the epoch's running loss, the metric history and the args, so ``--resume``
  continues exactly, mid-epoch included (a run killed with ``kill -9`` and resumed ends bit-identical
  to one never interrupted, on CPU with the same world size);
* under torchrun with ``--max-restarts``, a restarted attempt resumes from ``last.pth.tar`` by itself.
"""
import argparse
import contextlib
import copy
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

import gczoo.models  # noqa: F401  (registers the zoo with timm)
from gczoo.data import ResumableDistributedSampler, SeededTransformDataset
from gczoo.distributed import ShardSampler, distribute_bn, init_distributed
from gczoo.errors import CheckpointError
from gczoo.evaluate import validate
from gczoo.models.weights import load_weights

from .args import FAULT_EXIT_CODE
from .build import ApplyTransform, build_datasets, create_optimization, create_train_model
from .checkpoint import (
    BEST_CHECKPOINT, CHECKPOINT_FORMAT, LAST_CHECKPOINT, atomic_save, capture_rng, load_training_checkpoint, plain,
    restore_rng,
)
from .outputs import EXPORT_DIR, export_best, plot_summary, write_results, write_summary

__all__ = ['Trainer', 'train']


@dataclasses.dataclass
class _Progress:
    """Where the run is, all of it saved in the checkpoint."""
    epoch: int = 0  # the epoch in progress (or the next to start, with batches_done == 0)
    batches_done: int = 0  # micro-batches of `epoch` this rank has trained on
    num_updates: int = 0  # optimizer updates since the start of training
    loss_sum: float = 0.0  # this rank's running train loss sum over the samples of `epoch`
    loss_count: int = 0
    elapsed: float = 0.0  # training wall time of earlier processes of this run (s)
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    best: Optional[Dict[str, Any]] = None  # {'epoch', 'metric', 'top1', 'top5', 'val_loss'}


def _elastic_restart_count() -> int:
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)


def _experiment_name(args: argparse.Namespace) -> str:
    if args.experiment:
        return args.experiment
    slug = args.model.replace('/', '_').replace(':', '_')
    img = args.img_size or 'auto'
    if int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', '0') or 0) > 0:
        # every attempt of a torchrun job with restarts must find the same folder: use its run id
        return f'{slug}-{img}-elastic-{os.environ.get("TORCHELASTIC_RUN_ID", "none")}'
    return f'{time.strftime("%Y%m%d-%H%M%S")}-{slug}-{img}'


def _bn_stats(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: buf for name, buf in module.named_buffers() if 'running_mean' in name or 'running_var' in name}


def _broadcast(value: Any, env: Any) -> Any:
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Trainer:
    """One training run: ``Trainer(args)`` builds it (data, model, optimizer, schedule, EMA, DDP) and
    restores a checkpoint if asked; ``fit()`` trains, validates, checkpoints and exports.

    Every rank builds the same objects; rank 0 alone writes files. Collectives (checkpoint gathering,
    validation, the epoch's loss reduction) are entered by every rank in the same order.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from timm.utils import random_seed

        self.args = args
        self.started = time.time()
        use_cuda = torch.cuda.is_available() if args.device is None else args.device.startswith('cuda')
        if args.sync_bn and int(os.environ.get('WORLD_SIZE', '1')) > 1 and not use_cuda:
            raise ValueError('--sync-bn: torch\'s SyncBatchNorm runs on GPUs only, and this is a multi-process CPU '
                             'run; drop --sync-bn (each rank normalizes its own batch) or use --freeze-bn-stats')
        if args.threads:
            torch.set_num_threads(args.threads)
        self.env = init_distributed(args.device)
        self.device = self.env.device
        if args.fail_rank < 0:
            args.fail_rank = self.env.world_size - 1
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
        self.show_progress = self.env.is_main and not args.no_progress

        self.out_dir = self._make_output_dir()
        self.resume_path, ckpt = self._read_resume_checkpoint()
        random_seed(args.seed, 0)  # same init on every rank (DDP broadcasts rank 0's weights anyway)
        self._build_data_and_model(ckpt)
        self._build_optimization()
        self.progress = _Progress()
        if ckpt is not None:
            self._restore(ckpt)
        else:
            random_seed(args.seed, self.env.rank)  # per-rank streams for mixup, dropout, drop-path (as timm)
        if self.env.is_main:  # the files always agree with the checkpoint the run continues from
            write_summary(self.out_dir, self.progress.history)
        self._wrap_model()
        self.process_started = time.time()

    # -- setup -------------------------------------------------------------------------------

    def _log(self, *msg: Any) -> None:
        if self.env.is_main:
            print(*msg, flush=True)

    def _make_output_dir(self) -> Path:
        out_dir = Path(self.args.output) / _broadcast(_experiment_name(self.args), self.env)  # rank 0 names it
        if self.env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in out_dir.glob('.*.tmp'):  # temp files of a process killed while writing
                with contextlib.suppress(OSError):
                    stale.unlink()
        return out_dir

    def _read_resume_checkpoint(self) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        resume = self.args.resume
        restart = _elastic_restart_count()
        if resume is None and restart > 0:
            resume = 'auto'  # a torchrun restart continues from the last checkpoint
            self._log(f'torchrun restart {restart}: resuming from {self.out_dir / LAST_CHECKPOINT} if present')
        if resume == 'auto':
            path = self.out_dir / LAST_CHECKPOINT
            return (path, load_training_checkpoint(path)) if path.is_file() else (None, None)
        if resume:
            return Path(resume), load_training_checkpoint(resume)
        return None, None

    def _build_data_and_model(self, ckpt: Optional[Dict[str, Any]]) -> None:
        from timm.data import create_transform, resolve_data_config
        from timm.layers import convert_sync_batchnorm
        from torch.utils.data import DataLoader

        args, env = self.args, self.env
        train_ds, val_ds, self.class_names, self.data_what = build_datasets(args, env)
        self.num_classes = len(self.class_names)
        if args.num_classes is not None and args.num_classes != self.num_classes:
            raise ValueError(f'--num-classes {args.num_classes} does not match the data: {self.data_what} has '
                             f'{self.num_classes} classes')
        if ckpt is not None and ckpt.get('num_classes') not in (None, self.num_classes):
            raise CheckpointError(f'--resume {str(self.resume_path)!r} was trained on {ckpt["num_classes"]} classes; '
                                  f'{self.data_what} has {self.num_classes}')
        self.model = create_train_model(args, self.num_classes, log=self._log)

        self.data_config = resolve_data_config(
            {k: getattr(args, k) for k in ('img_size', 'mean', 'std', 'crop_pct', 'interpolation') if getattr(args, k)},
            model=self.model)
        train_config = {k: v for k, v in self.data_config.items() if k not in ('crop_pct', 'crop_mode')}
        train_config['interpolation'] = args.train_interpolation or self.data_config['interpolation']
        train_transform = create_transform(
            **train_config, is_training=True, no_aug=args.no_aug, scale=tuple(args.scale), ratio=tuple(args.ratio),
            hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
            re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
        self.train_set = SeededTransformDataset(train_ds, train_transform, seed=args.seed)
        self.val_set = ApplyTransform(val_ds, create_transform(**self.data_config, is_training=False))

        # the order of an epoch is f(seed, epoch); a dedicated generator keeps DataLoader off the global RNG
        self.sampler = ResumableDistributedSampler(self.train_set, num_replicas=env.world_size, rank=env.rank,
                                                   shuffle=True, seed=args.seed)
        self.loader_generator = torch.Generator()
        self.loader_generator.manual_seed(args.seed + env.rank)
        pin = args.pin_mem and self.device.type == 'cuda'
        self.train_loader = DataLoader(self.train_set, batch_size=args.batch_size, sampler=self.sampler,
                                       num_workers=args.workers, drop_last=True, pin_memory=pin,
                                       generator=self.loader_generator)
        self.val_loader = DataLoader(self.val_set, batch_size=args.validation_batch_size or args.batch_size,
                                     sampler=ShardSampler(len(self.val_set), env.rank, env.world_size),
                                     num_workers=args.workers, pin_memory=pin)
        self.batches_per_epoch = self.sampler.num_samples // args.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f'{self.data_what}: the training split has {len(self.train_set)} images, fewer than one global batch '
                f'(--batch-size {args.batch_size} x {env.world_size} processes); lower --batch-size')

        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            if env.distributed:
                self.model = convert_sync_batchnorm(self.model)  # timm's: also converts its BatchNormAct layers
            else:
                self._log('--sync-bn: one process, nothing to synchronize; BatchNorm left as is')
        if args.freeze_bn_stats:
            self._log('--freeze-bn-stats: BatchNorm uses its running statistics; affine weights train')

    def _build_optimization(self) -> None:
        parts = create_optimization(self.args, self.model, num_classes=self.num_classes,
                                    world_size=self.env.world_size, batches_per_epoch=self.batches_per_epoch,
                                    device=self.device, amp_dtype=self.amp_dtype, log=self._log)
        for field in dataclasses.fields(parts):
            setattr(self, field.name, getattr(parts, field.name))

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        """Everything the checkpoint holds, then this rank's RNG states: the run goes on as if never stopped."""
        args, env, where = self.args, self.env, f'--resume {str(self.resume_path)!r}'
        hint = (f'The checkpoint was written by --model {ckpt.get("arch")!r}; this run builds --model {args.model!r}.')
        load_weights(self.model, ckpt['state_dict'], what=where, hint=hint)
        try:
            self.optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f'{where}: the optimizer state does not fit this run '
                                  f'(another --opt or --attn-lr-scale?): {e}') from e
        if self.scheduler is not None and ckpt.get('scheduler') is not None:
            self.scheduler.load_state_dict(ckpt['scheduler'])
        if self.model_ema is not None:
            if ckpt.get('state_dict_ema') is None:
                self._log(f'{where} has no EMA weights; the EMA starts from the current weights')
                self.model_ema.module.load_state_dict(self.model.state_dict())
            else:
                load_weights(self.model_ema.module, ckpt['state_dict_ema'], what=f'{where} (EMA)', hint=hint)
        if self.loss_scaler is not None and ckpt.get('scaler') is not None:
            self.loss_scaler.load_state_dict(ckpt['scaler'])

        progress = _Progress(epoch=int(ckpt['epoch']), batches_done=int(ckpt['batches_done']),
                             num_updates=int(ckpt['num_updates']), elapsed=float(ckpt.get('elapsed') or 0.0),
                             history=list(ckpt.get('history') or []), best=ckpt.get('best'))
        rank_states = ckpt.get('rank_states') or []
        if env.rank < len(rank_states):
            state = rank_states[env.rank]
            restore_rng(state['rng'])
            self.loader_generator.set_state(state['loader_generator'])
            progress.loss_sum, progress.loss_count = float(state['loss_sum']), int(state['loss_count'])
            if self.model_ema is not None and state.get('ema_bn_stats'):
                with torch.no_grad():
                    for name, buf in _bn_stats(self.model_ema.module).items():
                        buf.copy_(state['ema_bn_stats'][name])
        layout = (ckpt.get('world_size'), ckpt.get('batch_size'), ckpt.get('grad_accum_steps'))
        if layout != (env.world_size, args.batch_size, args.grad_accum_steps):
            # skip the same share of the epoch; which samples the rest of it holds differs
            old_world, old_batch = int(layout[0] or 1), int(layout[1] or args.batch_size)
            samples_done = progress.batches_done * old_batch * old_world
            progress.batches_done = min(self.batches_per_epoch, samples_done // (env.world_size * args.batch_size))
            # the epoch's running loss: all of it on rank 0 (the epoch end sums over ranks)
            progress.loss_sum = sum(float(st['loss_sum']) for st in rank_states) if env.rank == 0 else 0.0
            progress.loss_count = sum(int(st['loss_count']) for st in rank_states) if env.rank == 0 else 0
            self._log(f'{where}: the checkpoint ran with world size, batch, accumulation {layout}; this run uses '
                      f'{(env.world_size, args.batch_size, args.grad_accum_steps)}: it continues, but not exactly')
        self.progress = progress
        self._log(f'resumed from {self.resume_path}: epoch {progress.epoch + 1}, batch {progress.batches_done}/'
                  f'{self.batches_per_epoch}, update {progress.num_updates}')

    def _wrap_model(self) -> None:
        from torch.nn.parallel import DistributedDataParallel
        self.train_model: nn.Module = self.model
        if self.args.compile:
            self.train_model = torch.compile(self.model, backend=self.args.compile)
        if self.env.distributed:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)

    # -- checkpoints -------------------------------------------------------------------------

    def _rank_states(self) -> List[Dict[str, Any]]:
        """Every rank's RNG states and running loss (a collective: all ranks call it)."""
        state = {'rng': capture_rng(), 'loader_generator': self.loader_generator.get_state(),
                 'loss_sum': self.progress.loss_sum, 'loss_count': self.progress.loss_count}
        if self.env.distributed and self.model_ema is not None:
            # ModelEmaV3 averages each rank's own BatchNorm statistics: until --dist-bn syncs them at the
            # epoch end they differ by rank, and an exact mid-epoch resume needs every rank's
            state['ema_bn_stats'] = {k: v.detach().cpu().clone() for k, v in _bn_stats(self.model_ema.module).items()}
        if not self.env.distributed:
            return [state]
        states: List[Any] = [None] * self.env.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, best: bool = False) -> None:
        """Write ``last.pth.tar`` (and ``best.pth.tar``) atomically; every rank must call it."""
        rank_states = self._rank_states()
        if not self.env.is_main:
            return
        args, p = self.args, self.progress
        payload = {
            'format': CHECKPOINT_FORMAT,
            'arch': args.model,
            'num_classes': self.num_classes,
            'class_names': list(self.class_names),
            'epoch': p.epoch,
            'batches_done': p.batches_done,
            'num_updates': p.num_updates,
            'elapsed': p.elapsed + time.time() - self.process_started,
            'world_size': self.env.world_size,
            'batch_size': args.batch_size,
            'grad_accum_steps': args.grad_accum_steps,
            'sampler': {'epoch': p.epoch, 'seed': args.seed, 'samples_done_per_rank': p.batches_done * args.batch_size},
            'state_dict': self.model.state_dict(),
            'optimizer': plain(self.optimizer.state_dict()),
            'scheduler': plain(self.scheduler.state_dict()) if self.scheduler is not None else None,
            'state_dict_ema': self.model_ema.module.state_dict() if self.model_ema is not None else None,
            'scaler': plain(self.loss_scaler.state_dict()) if self.loss_scaler is not None else None,
            'rank_states': rank_states,
            'history': plain(p.history),
            'best': plain(p.best),
            'metric': p.best['metric'] if p.best else None,
            'args': plain(vars(args)),
            'torch_version': str(torch.__version__),
        }
        if best:
            atomic_save(payload, self.out_dir / BEST_CHECKPOINT)
        atomic_save(payload, self.out_dir / LAST_CHECKPOINT)

    # -- training ----------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to the last epoch, then export the best model and write ``results.json``."""
        n_params = sum(p.numel() for p in self.model.parameters())
        a = self.args
        self._log(f'{a.model}: {n_params / 1e6:.2f}M parameters, {self.num_classes} classes | {self.data_what}: '
                  f'{len(self.train_set)} train / {len(self.val_set)} val images | {self.env.world_size} process(es) '
                  f'on {self.device}, batch {a.batch_size} x {self.env.world_size} x {a.grad_accum_steps} accum, '
                  f'lr {self.lr:g}, {self.num_epochs} epochs | output {self.out_dir}')
        while self.progress.epoch < self.num_epochs:
            epoch_start = time.time()
            images = self.train_epoch()
            self.end_epoch(images, train_time=time.time() - epoch_start, epoch_start=epoch_start)
        self._finish()
        return 0

    def _set_train_mode(self) -> None:
        self.train_model.train()
        if self.args.freeze_bn_stats:  # eval-mode BN: normalizes with (and never updates) its running stats
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _backward(self, loss: torch.Tensor, need_update: bool) -> None:
        """timm train.py's backward: ``NativeScaler`` (backward, unscale, clip, step) under float16, else plain."""
        from timm.utils import dispatch_clip_grad
        args = self.args
        if self.loss_scaler is not None:
            self.loss_scaler(loss, self.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                             parameters=self.model.parameters(), need_update=need_update)
            return
        loss.backward()
        if need_update:
            if args.clip_grad is not None:
                dispatch_clip_grad(self.model.parameters(), value=args.clip_grad, mode=args.clip_mode)
            self.optimizer.step()

    def train_epoch(self) -> int:
        """The rest of the current epoch (all of it unless resumed mid-epoch); returns this rank's image count."""
        from tqdm import tqdm

        args, env, p = self.args, self.env, self.progress
        epoch = p.epoch
        if self.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(p.batches_done * args.batch_size)
        self.train_set.set_epoch(epoch)
        self._set_train_mode()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        bar = tqdm(total=self.batches_per_epoch, initial=p.batches_done, desc=f'epoch {epoch + 1}/{self.num_epochs}',
                   unit='batch', leave=False, dynamic_ncols=True, disable=not self.show_progress)
        images_seen = 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch_idx, (images, targets) in enumerate(self.train_loader, start=p.batches_done):
            # the update groups are fixed by the position in the epoch, so a resumed epoch keeps them
            group_start = (batch_idx // args.grad_accum_steps) * args.grad_accum_steps
            group_size = min(args.grad_accum_steps, self.batches_per_epoch - group_start)
            need_update = batch_idx == group_start + group_size - 1
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixup_fn is not None:
                images, targets = self.mixup_fn(images, targets)
            # DDP all-reduces gradients on the last micro-batch of an update only
            sync = self.train_model.no_sync() if env.distributed and not need_update else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss = self.train_loss_fn(self.train_model(images), targets)
                self._backward(loss / group_size, need_update)
            p.loss_sum += float(loss.detach().float().item()) * images.shape[0]
            p.loss_count += images.shape[0]
            images_seen += images.shape[0]
            p.batches_done = batch_idx + 1
            bar.update(1)
            if not need_update:
                continue

            self.optimizer.zero_grad(set_to_none=True)
            p.num_updates += 1
            if self.model_ema is not None:
                self.model_ema.update(self.model, step=p.num_updates)
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=p.num_updates)
            lr = self.optimizer.param_groups[0]['lr']
            bar.set_postfix(loss=f'{p.loss_sum / max(p.loss_count, 1):.4f}', lr=f'{lr:.3g}')
            if (args.fail_at_step == p.num_updates and env.rank == args.fail_rank
                    and _elastic_restart_count() == 0):
                print(f'--fail-at-step {args.fail_at_step}: rank {env.rank} exits with status {FAULT_EXIT_CODE} '
                      f'(simulated crash)', file=sys.stderr, flush=True)
                os._exit(FAULT_EXIT_CODE)
            if not self.show_progress and p.num_updates % args.log_interval == 0:
                self._log(f'epoch {epoch + 1} [{p.batches_done}/{self.batches_per_epoch}] update {p.num_updates} '
                          f'loss {p.loss_sum / max(p.loss_count, 1):.4f} lr {lr:.3g}')
            if (args.checkpoint_interval and p.num_updates % args.checkpoint_interval == 0
                    and p.batches_done < self.batches_per_epoch):
                self.save_checkpoint()
        bar.close()
        return images_seen

    def _validate(self, model: nn.Module, label: str) -> Dict[str, float]:
        if next(model.parameters()).device != self.device:  # an EMA kept on the CPU (--model-ema-force-cpu)
            model = copy.deepcopy(model).to(self.device)
        return validate(model, self.val_loader, num_classes=self.num_classes, device=self.device,
                        amp_dtype=self.amp_dtype, channels_last=self.args.channels_last, criterion=self.val_loss_fn,
                        progress=label if self.show_progress else None)

    def end_epoch(self, images_seen: int, train_time: float, epoch_start: float) -> None:
        """Global train loss, validation (EMA too), schedule step, best/last checkpoints, summary files."""
        args, p = self.args, self.progress
        epoch = p.epoch
        totals = torch.tensor([p.loss_sum, float(p.loss_count), float(images_seen)], dtype=torch.float64,
                              device=self.device)
        if self.env.distributed:
            dist.all_reduce(totals)
        lr = self.optimizer.param_groups[0]['lr']
        # the ranks' BatchNorm statistics differ (each followed its own batches): make them one model's, so
        # what every rank validates is what rank 0 saves (timm's --dist-bn)
        distribute_bn(self.model, args.dist_bn, self.device)
        metrics = self._validate(self.model, 'validate')
        row: Dict[str, Any] = {
            'epoch': epoch + 1, 'train_loss': float(totals[0] / totals[1]) if totals[1] > 0 else float('nan'),
            'val_loss': metrics['loss'], 'top1': metrics['top1'], 'top5': metrics['top5'], 'lr': lr,
            'images_per_s': float(totals[2]) / train_time if train_time > 0 else float('nan'), 'epoch_time': 0.0}
        chosen = metrics
        if self.model_ema is not None:
            distribute_bn(self.model_ema.module, args.dist_bn, self.device)  # ModelEmaV3 averages each rank's buffers
            chosen = self._validate(self.model_ema.module, 'validate EMA')
            row.update(ema_val_loss=chosen['loss'], ema_top1=chosen['top1'], ema_top5=chosen['top5'])
        row['epoch_time'] = time.time() - epoch_start
        metric = chosen[args.eval_metric]
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1, metric)
        is_best = p.best is None or (metric < p.best['metric'] if args.eval_metric == 'loss'
                                     else metric > p.best['metric'])
        if is_best:
            p.best = {'epoch': epoch + 1, 'metric': metric, 'eval_metric': args.eval_metric, 'top1': chosen['top1'],
                      'top5': chosen['top5'], 'val_loss': chosen['loss'], 'ema': self.model_ema is not None}
        p.history.append(row)
        p.epoch, p.batches_done, p.loss_sum, p.loss_count = epoch + 1, 0, 0.0, 0
        self.save_checkpoint(best=is_best)
        if self.env.is_main:
            write_summary(self.out_dir, p.history)
            plot_summary(self.out_dir, p.history)
            ema = f"  EMA top-1 {row['ema_top1']:.2f}" if self.model_ema is not None else ''
            print(f"epoch {epoch + 1}/{self.num_epochs}  train_loss {row['train_loss']:.4f}  val_loss "
                  f"{row['val_loss']:.4f}  top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}{ema}  lr {lr:.3g}  "
                  f"{row['images_per_s']:.0f} img/s  {row['epoch_time']:.1f} s", flush=True)

    def _finish(self) -> None:
        """Export the best weights in timm's Hub layout and write results.json (rank 0)."""
        p, out_dir = self.progress, self.out_dir
        if self.env.is_main:
            export_dir = None
            best_path = out_dir / BEST_CHECKPOINT
            if not self.args.no_export and best_path.is_file():
                ckpt = load_training_checkpoint(best_path)
                use_ema = ckpt.get('state_dict_ema') is not None
                weights = ckpt['state_dict_ema'] if use_ema else ckpt['state_dict']
                export_dir = export_best(self.model, weights, f'{best_path}{" (EMA)" if use_ema else ""}',
                                         out_dir / EXPORT_DIR, self.data_config, self.class_names)
            final = p.history[-1] if p.history else {}
            results = {
                'model': self.args.model, 'num_classes': self.num_classes, 'class_names': self.class_names,
                'data': self.data_what, 'train_images': len(self.train_set), 'val_images': len(self.val_set),
                'world_size': self.env.world_size, 'epochs': self.num_epochs, 'num_updates': p.num_updates,
                'best': p.best, 'final': final,
                'wall_time_s': p.elapsed + time.time() - self.process_started,
                'this_process_s': time.time() - self.started,
                'output': str(out_dir), 'export': str(export_dir) if export_dir else None,
                'checkpoints': {'last': str(out_dir / LAST_CHECKPOINT), 'best': str(best_path)},
                'args': plain(vars(self.args)),
            }
            write_results(out_dir, results)
            best = p.best or {}
            print(f"done: best top-1 {best.get('top1', float('nan')):.2f} (epoch {best.get('epoch')}), final top-1 "
                  f"{final.get('top1', float('nan')):.2f}, {results['wall_time_s']:.0f} s | {out_dir}"
                  + (f' | export: {export_dir}' if export_dir else ''), flush=True)
        if self.env.distributed:
            dist.barrier()


def train(args: argparse.Namespace) -> int:
    """Run training as ``args`` (from ``parse_args``) says; returns the exit status."""
    return Trainer(args).fit()
