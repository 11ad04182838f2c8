"""The training run: ``Trainer(args)`` builds it, ``fit()`` trains, validates, checkpoints and exports.

Built from timm's parts (``resolve_data_config``/``create_transform``, ``Mixup``, ``create_optimizer_v2``,
``create_scheduler_v2``, ``ModelEmaV3``, ``NativeScaler``, ``distribute_bn``, its losses) and torch
DDP (``ResumableDistributedSampler`` for training, ``ShardSampler`` + ``gczoo.evaluate.validate`` for
validation). What it adds is the bookkeeping that makes a run reproducible and crash-proof:

* the data order of an epoch is a function of ``(seed, epoch)`` and the augmentation of a sample a
  function of ``(seed, epoch, index)`` (``gczoo.data.SeededTransformDataset``);
* checkpoints (``state``) continue exactly, mid-epoch included: a run killed with ``kill -9`` and
  resumed ends bit-identical to one never interrupted (CPU, same world size); under torchrun with
  ``--max-restarts`` a restarted attempt resumes from ``last.pth.tar`` by itself;
* nothing silent (``guards``, ``rundir``): a diverged run stops at the step, a second run on the
  same folder stops at once, bad validation images are skipped and counted, never replaced.
"""
import argparse
import contextlib
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.layers import convert_sync_batchnorm
from timm.utils import dispatch_clip_grad, random_seed
from torch.nn.parallel import DistributedDataParallel

import gczoo.models  # noqa: F401  (registers the zoo with timm)
from gczoo.distributed import distribute_bn, gather_across_ranks, init_distributed
from gczoo.evaluate import SkippingLoader, validate
from gczoo.models.hub_folder import export_metadata
from gczoo.video import is_video_model

from .args import FAULT_EXIT_CODE
from .build import build_datasets, create_optimization, create_train_model
from .checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, CheckpointFiles, load_training_checkpoint, plain
from .config import args_yaml
from .guards import any_rank, diverged, non_finite_tensors, warn_frozen_attention
from .loaders import build_loaders, train_data_config
from .outputs import EXPORT_DIR, export_best, plot_summary, write_args, write_results, write_summary
from .rundir import RunLock, claim_run_dir, elastic_restart_count
from .state import Progress, RunData, TrainingState, checkpoint_payload, rank_states, restore_training_state

__all__ = ['Trainer', 'train']


class Trainer:
    """One training run: ``Trainer(args)`` builds it (data, model, optimizer, schedule, EMA, DDP) and
    restores a checkpoint if asked; ``fit()`` trains, validates, checkpoints and exports; ``close()``
    releases the output folder (``train()`` does it in every case).

    Every rank builds the same objects; rank 0 alone writes files. Collectives (checkpoint gathering,
    validation, the epoch's loss reduction, the divergence checks) are entered by every rank in the same order.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.args_text = args_yaml(args)  # as parsed, before the run adds anything (as timm's args.yaml)
        self.started = time.time()
        self.lock: Optional[RunLock] = None
        use_cuda = torch.cuda.is_available() if args.device is None else args.device.startswith('cuda')
        if args.sync_bn and int(os.environ.get('WORLD_SIZE', '1')) > 1 and not use_cuda:
            raise ValueError('--sync-bn: torch\'s SyncBatchNorm runs on GPUs only, and this is a multi-process CPU '
                             'run; drop --sync-bn (each rank normalizes its own batch) or use --freeze-bn-stats')
        if args.local_rank is not None and args.local_rank != int(os.environ.get('LOCAL_RANK', '0')):
            raise ValueError(f'--local-rank {args.local_rank} disagrees with $LOCAL_RANK '
                             f'{os.environ.get("LOCAL_RANK", "(unset)")}: launch with torchrun (scripts/train.sh)')
        if args.threads:
            torch.set_num_threads(args.threads)
        self.env = init_distributed(args.device)
        self.device = self.env.device
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        args = self.args
        if args.fail_rank < 0:
            args.fail_rank = self.env.world_size - 1
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = (torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16) if args.amp else None
        if args.sync_bn and self.env.distributed:
            args.dist_bn = ''  # SyncBatchNorm's statistics are the same on every rank already (timm does the same)
        self.show_progress = self.env.is_main and not args.no_progress

        self.out_dir, self.lock = claim_run_dir(args, self.env, self.log)
        if self.env.is_main:
            write_args(self.out_dir, self.args_text)
            if getattr(args, 'config_ignored', None):
                self.log(f'--config {args.config}: timm train.py settings at their defaults, which gczoo does not '
                         f'have, ignored: {", ".join(args.config_ignored)}')
        self.resume_path, ckpt = self._read_resume_checkpoint()
        random_seed(args.seed, 0)  # same init on every rank (DDP broadcasts rank 0's weights anyway)
        self._build_data_and_model()
        self._build_optimization()
        self.progress = Progress()
        self.process_started = time.time()
        self.checkpoint_files = CheckpointFiles(self.out_dir, args.checkpoint_hist,
                                                decreasing=args.eval_metric == 'loss')
        if ckpt is not None:
            self.progress = restore_training_state(self.state, ckpt, self.resume_path)
            self.checkpoint_files.load(ckpt.get('history_files'))
            self.log(f'resumed from {self.resume_path}: epoch {self.progress.epoch}, batch '
                     f'{self.progress.batches_done}/{self.batches_per_epoch}, update {self.progress.num_updates}')
        else:
            random_seed(args.seed, self.env.rank)  # per-rank streams for mixup, dropout, drop-path (as timm)
        if args.start_epoch is not None:
            self._start_at(args.start_epoch)
        if self.env.is_main:  # the files always agree with the checkpoint the run continues from
            write_summary(self.out_dir, self.progress.history)
        self._wrap_model()

    def _start_at(self, epoch: int) -> None:
        """``--start-epoch`` (timm's: counted from 0, it overrides the resumed epoch; the schedule starts there)."""
        p = self.progress
        p.epoch, p.batches_done, p.loss_sum, p.loss_count = epoch, 0, 0.0, 0
        p.num_updates = epoch * self.optimization.updates_per_epoch
        p.history = [row for row in p.history if row['epoch'] < epoch]  # rows count epochs from 0, as timm's
        if self.optimization.scheduler is not None:
            self.optimization.scheduler.step(epoch)
            self.optimization.scheduler.step_update(p.num_updates)
        self.log(f'--start-epoch {epoch}: training starts at epoch {epoch} (epochs count from 0, as timm\'s; '
                 f'{self.optimization.num_epochs} in all)')

    def close(self) -> None:
        """Release the output folder's lock (rank 0)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- setup -------------------------------------------------------------------------------

    def log(self, *msg: Any) -> None:
        if self.env.is_main:
            print(*msg, flush=True)

    def _read_resume_checkpoint(self) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        resume = self.args.resume
        restart = elastic_restart_count()
        if resume is None and restart > 0:
            resume = 'auto'  # a torchrun restart continues from the last checkpoint
            self.log(f'torchrun restart {restart}: resuming from {self.out_dir / LAST_CHECKPOINT} if present')
        if resume == 'auto':
            path = self.out_dir / LAST_CHECKPOINT
            return (path, load_training_checkpoint(path)) if path.is_file() else (None, None)
        if resume:
            return Path(resume), load_training_checkpoint(resume)
        return None, None

    def _build_data_and_model(self) -> None:
        args, env = self.args, self.env
        if isinstance(args.model, str) and is_video_model(args.model):  # clip folders, gczoo.video (issue 19)
            from gczoo.video.finetune import build_video_training
            self.model, self.data_config, self.class_names, self.data_what, loaders = build_video_training(
                args, env, self.device, self.log)
            self.num_classes = len(self.class_names)
        else:
            train_ds, val_ds, self.class_names, self.data_what = build_datasets(args, env)
            self.num_classes = len(self.class_names)
            if args.num_classes is not None and args.num_classes != self.num_classes:
                raise ValueError(f'--num-classes {args.num_classes} does not match the data: {self.data_what} has '
                                 f'{self.num_classes} classes')
            self.model = create_train_model(args, self.num_classes, log=self.log)
            warn_frozen_attention(self.model, self.log)
            self.data_config = train_data_config(args, self.model)
            loaders = build_loaders(args, env, self.device, train_ds, val_ds, self.data_config, self.data_what)
        self.train_set, self.val_set, self.sampler = loaders.train_set, loaders.val_set, loaders.sampler
        self.loader_generator, self.train_loader, self.val_loader = (loaders.generator, loaders.train_loader,
                                                                     loaders.val_loader)
        self.batches_per_epoch = loaders.batches_per_epoch

        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            if env.distributed:
                self.model = convert_sync_batchnorm(self.model)  # timm's: also converts its BatchNormAct layers
            else:
                self.log('--sync-bn: one process, nothing to synchronize; BatchNorm left as is')
        if args.freeze_bn_stats:
            self.log('--freeze-bn-stats: BatchNorm uses its running statistics; affine weights train')

    def _build_optimization(self) -> None:
        self.optimization = create_optimization(
            self.args, self.model, num_classes=self.num_classes, world_size=self.env.world_size,
            batches_per_epoch=self.batches_per_epoch, device=self.device, amp_dtype=self.amp_dtype, log=self.log)
        # what a checkpoint saves and a resume restores, passed explicitly (as timm's CheckpointSaver takes them)
        self.state = TrainingState(
            self.args, self.env, self.model, self.optimization,
            RunData(list(self.class_names), len(self.train_set), len(self.val_set), self.data_what,
                    self.batches_per_epoch, self.loader_generator),
            self.log)

    def _wrap_model(self) -> None:
        self.train_model: nn.Module = self.model
        if self.args.torchcompile:
            self.train_model = torch.compile(self.model, backend=self.args.torchcompile,
                                             mode=self.args.torchcompile_mode)
        if self.env.distributed:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)

    # -- checkpoints and guards --------------------------------------------------------------

    def save_checkpoint(self, metric: Optional[float] = None, best: bool = False) -> None:
        """Write ``last.pth.tar``; with an epoch's ``metric`` also ``model_best.pth.tar`` (if ``best``) and
        ``checkpoint-<epoch>.pth.tar`` (if it ranks). Every rank must call it."""
        ranks = rank_states(self.state, self.progress)
        if not self.env.is_main:
            return
        # checkpoint-<epoch> counts from 0 like summary.csv and timm's CheckpointSaver (progress.epoch is epochs done)
        epoch = self.progress.epoch - 1 if metric is not None else None
        elapsed = self.progress.elapsed + time.time() - self.process_started
        self.checkpoint_files.save(checkpoint_payload(self.state, self.progress, ranks, elapsed), epoch=epoch,
                                   metric=metric, best=best)

    def _where(self, after_update: bool = False) -> str:
        p, batches = self.progress, self.batches_per_epoch
        if after_update:
            return f'epoch {p.epoch}, after update {p.num_updates} (batch {p.batches_done}/{batches})'
        return f'epoch {p.epoch}, update {p.num_updates + 1} (batch {p.batches_done + 1}/{batches})'

    def _check_weights_finite(self, before: str) -> None:
        """Stop before validating or saving weights that hold NaN/inf (a collective)."""
        ema = self.optimization.model_ema
        modules = [self.model] + ([ema.module] if ema is not None else [])
        bad = non_finite_tensors(modules)
        if any_rank(bool(bad), self.device):
            what = f'the weights hold NaN or infinite values ({", ".join(bad[:6]) or "on another rank"})'
            raise diverged(what, f'{self._where(after_update=True)}, {before}', self.args, self.optimization.lr,
                           self.amp_dtype, self.out_dir / LAST_CHECKPOINT)

    # -- training ----------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to the last epoch, then export the best model and write ``results.json``."""
        n_params = sum(p.numel() for p in self.model.parameters())
        a = self.args
        self.log(f'{a.model}: {n_params / 1e6:.2f}M parameters, {self.num_classes} classes | {self.data_what}: '
                 f'{len(self.train_set)} train / {len(self.val_set)} val images | {self.env.world_size} process(es) '
                 f'on {self.device}, batch {a.batch_size} x {self.env.world_size} x {a.grad_accum_steps} accum, '
                 f'lr {self.optimization.lr:g}, {self.optimization.num_epochs} epochs | output {self.out_dir}')
        if self.progress.epoch >= self.optimization.num_epochs:
            self.log(f'the checkpoint is at epoch {self.progress.epoch}, the schedule has '
                     f'{self.optimization.num_epochs}: nothing left to train')
        while self.progress.epoch < self.optimization.num_epochs:
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
        args = self.args
        if self.optimization.loss_scaler is not None:
            self.optimization.loss_scaler(loss, self.optimization.optimizer, clip_grad=args.clip_grad,
                                          clip_mode=args.clip_mode, parameters=self.model.parameters(),
                                          need_update=need_update)
            return
        loss.backward()
        if need_update:
            if args.clip_grad is not None:
                dispatch_clip_grad(self.model.parameters(), value=args.clip_grad, mode=args.clip_mode)
            self.optimization.optimizer.step()

    def train_epoch(self) -> int:
        """The rest of the current epoch (all of it unless resumed mid-epoch); returns this rank's image count."""
        from tqdm import tqdm  # the train extra, imported where used: gczoo.cli names a missing extra

        args, env, p = self.args, self.env, self.progress
        epoch = p.epoch
        if self.optimization.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.optimization.mixup_fn.mixup_enabled = False
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(p.batches_done * args.batch_size)
        self.train_set.set_epoch(epoch)
        self._set_train_mode()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        bar = tqdm(total=self.batches_per_epoch, initial=p.batches_done,
                   desc=f'epoch {epoch} ({epoch + 1}/{self.optimization.num_epochs})', unit='batch', leave=False,
                   dynamic_ncols=True, disable=not self.show_progress)
        images_seen = 0
        bad_loss: Optional[float] = None  # a non-finite loss in the update being accumulated
        self.optimization.optimizer.zero_grad(set_to_none=True)
        for batch_idx, (images, targets) in enumerate(self.train_loader, start=p.batches_done):
            # the update groups are fixed by the position in the epoch, so a resumed epoch keeps them
            group_start = (batch_idx // args.grad_accum_steps) * args.grad_accum_steps
            group_size = min(args.grad_accum_steps, self.batches_per_epoch - group_start)
            need_update = batch_idx == group_start + group_size - 1
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.optimization.mixup_fn is not None:
                images, targets = self.optimization.mixup_fn(images, targets)
            # DDP all-reduces gradients on the last micro-batch of an update only
            sync = self.train_model.no_sync() if env.distributed and not need_update else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss = self.optimization.train_loss_fn(self.train_model(images), targets)
                loss_value = float(loss.detach().float().item())
                if not math.isfinite(loss_value):
                    bad_loss = loss_value
                if need_update and any_rank(bad_loss is not None, self.device):  # before the update is applied
                    what = f'the training loss is {bad_loss if bad_loss is not None else "NaN/inf on another rank"}'
                    raise diverged(what, self._where(), args, self.optimization.lr, self.amp_dtype,
                                   self.out_dir / LAST_CHECKPOINT)
                self._backward(loss / group_size, need_update)
            p.loss_sum += loss_value * images.shape[0]
            p.loss_count += images.shape[0]
            images_seen += images.shape[0]
            p.batches_done = batch_idx + 1
            bar.update(1)
            if not need_update:
                continue

            self.optimization.optimizer.zero_grad(set_to_none=True)
            p.num_updates += 1
            if self.optimization.model_ema is not None:
                self.optimization.model_ema.update(self.model, step=p.num_updates)
            if self.optimization.scheduler is not None:
                self.optimization.scheduler.step_update(num_updates=p.num_updates)
            lr = self.optimization.optimizer.param_groups[0]['lr']
            bar.set_postfix(loss=f'{p.loss_sum / max(p.loss_count, 1):.4f}', lr=f'{lr:.3g}')
            if (args.fail_at_step == p.num_updates and env.rank == args.fail_rank
                    and elastic_restart_count() == 0):
                print(f'--fail-at-step {args.fail_at_step}: rank {env.rank} exits with status {FAULT_EXIT_CODE} '
                      f'(simulated crash)', file=sys.stderr, flush=True)
                os._exit(FAULT_EXIT_CODE)
            if not self.show_progress and p.num_updates % args.log_interval == 0:
                self.log(f'epoch {epoch} [{p.batches_done}/{self.batches_per_epoch}] update {p.num_updates} '
                         f'loss {p.loss_sum / max(p.loss_count, 1):.4f} lr {lr:.3g}')
            if (args.checkpoint_interval and p.num_updates % args.checkpoint_interval == 0
                    and p.batches_done < self.batches_per_epoch):
                self._check_weights_finite('before writing the checkpoint')
                self.save_checkpoint()
        bar.close()
        return images_seen

    def _validate(self, model: nn.Module, label: str) -> Dict[str, Any]:
        """``validate`` over every rank's shard; unreadable images are skipped and counted over all ranks."""
        if next(model.parameters()).device != self.device:  # an EMA kept on the CPU (--model-ema-force-cpu)
            model = copy.deepcopy(model).to(self.device)
        loader = SkippingLoader(self.val_loader)
        metrics = validate(model, loader, num_classes=self.num_classes, device=self.device, amp_dtype=self.amp_dtype,
                           channels_last=self.args.channels_last, criterion=self.optimization.val_loss_fn,
                           progress=label if self.show_progress else None)
        metrics['skipped'] = gather_across_ranks(loader.bad_files)
        return metrics

    def end_epoch(self, images_seen: int, train_time: float, epoch_start: float) -> None:
        """Global train loss, validation (EMA too), schedule step, best/last checkpoints, summary files."""
        args, p = self.args, self.progress
        epoch = p.epoch
        totals = torch.tensor([p.loss_sum, float(p.loss_count), float(images_seen)], dtype=torch.float64,
                              device=self.device)
        if self.env.distributed:
            dist.all_reduce(totals)
        lr = self.optimization.optimizer.param_groups[0]['lr']
        # the ranks' BatchNorm statistics differ (each followed its own batches): make them one model's, so
        # what every rank validates is what rank 0 saves (timm's --dist-bn)
        distribute_bn(self.model, args.dist_bn, self.device)
        if self.optimization.model_ema is not None:
            # ModelEmaV3 averages each rank's own BN statistics
            distribute_bn(self.optimization.model_ema.module, args.dist_bn, self.device)
        self._check_weights_finite('before validation')
        metrics = self._validate(self.model, 'validate')
        row: Dict[str, Any] = {
            'epoch': epoch, 'train_loss': float(totals[0] / totals[1]) if totals[1] > 0 else None,  # from 0, as timm
            'eval_loss': metrics['loss'], 'eval_top1': metrics['top1'], 'eval_top5': metrics['top5'], 'lr': lr,
            'images_per_s': float(totals[2]) / train_time if train_time > 0 else None, 'epoch_time': 0.0}
        chosen = metrics
        if self.optimization.model_ema is not None:
            chosen = self._validate(self.optimization.model_ema.module, 'validate EMA')
            row.update(ema_eval_loss=chosen['loss'], ema_eval_top1=chosen['top1'], ema_eval_top5=chosen['top5'])
        row['epoch_time'] = time.time() - epoch_start
        self.val_counts = {'evaluated': int(metrics['count']), 'skipped': len(metrics['skipped']),
                           'skipped_files': metrics['skipped'][:20]}
        if metrics['skipped']:
            self.log(f'validation skipped {len(metrics["skipped"])} unreadable image(s), counted nowhere: '
                     f'{", ".join(metrics["skipped"][:5])}' + (' ...' if len(metrics['skipped']) > 5 else ''))
        metric = chosen[args.eval_metric]
        if self.optimization.scheduler is not None:
            self.optimization.scheduler.step(epoch + 1, metric)
        is_best = p.best is None or (metric < p.best['metric'] if args.eval_metric == 'loss'
                                     else metric > p.best['metric'])
        if is_best:
            p.best = self._epoch_result(row)
        p.history.append(row)
        p.epoch, p.batches_done, p.loss_sum, p.loss_count = epoch + 1, 0, 0.0, 0
        self.save_checkpoint(metric=metric, best=is_best)
        if self.env.is_main:
            write_summary(self.out_dir, p.history)
            plot_summary(self.out_dir, p.history)
            ema = f"  EMA top-1 {row['ema_eval_top1']:.2f}" if self.optimization.model_ema is not None else ''
            speed = f"{row['images_per_s']:.0f} img/s  " if row['images_per_s'] is not None else ''
            train_loss = row['train_loss'] if row['train_loss'] is not None else float('nan')
            print(f"epoch {epoch} ({epoch + 1}/{self.optimization.num_epochs})  train_loss {train_loss:.4f}  eval_loss "
                  f"{row['eval_loss']:.4f}  top-1 {row['eval_top1']:.2f}  top-5 {row['eval_top5']:.2f}{ema}  "
                  f"lr {lr:.3g}  "
                  f"{speed}{row['epoch_time']:.1f} s", flush=True)

    def _epoch_result(self, row: Dict[str, Any]) -> Dict[str, Any]:
        """An epoch's tracked metrics (the EMA's under --model-ema), as results.json's best/final hold them."""
        prefix = 'ema_eval_' if 'ema_eval_top1' in row else 'eval_'
        result = {'epoch': row['epoch'], 'eval_metric': self.args.eval_metric, 'top1': row[prefix + 'top1'],
                  'top5': row[prefix + 'top5'], 'eval_loss': row[prefix + 'loss'], 'ema': prefix == 'ema_eval_'}
        result['metric'] = result['eval_loss'] if self.args.eval_metric == 'loss' else result[self.args.eval_metric]
        return result

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
                                         out_dir / EXPORT_DIR, self.data_config, self.class_names,
                                         export_metadata(vars(self.args), self.model.pretrained_cfg))
            final = {**self._epoch_result(p.history[-1]), 'train_loss': p.history[-1]['train_loss'],
                     'lr': p.history[-1]['lr']} if p.history else {}
            counts = getattr(self, 'val_counts', {})
            results = {
                'model': self.args.model, 'num_classes': self.num_classes, 'class_names': self.class_names,
                'data': self.data_what, 'train_images': len(self.train_set), 'val_images': len(self.val_set),
                'val_images_evaluated': counts.get('evaluated'), 'val_images_skipped': counts.get('skipped'),
                'val_skipped_files': counts.get('skipped_files'),
                'world_size': self.env.world_size, 'epochs': self.optimization.num_epochs, 'num_updates': p.num_updates,
                'best': p.best, 'final': final,
                'wall_time_s': p.elapsed + time.time() - self.process_started,
                'this_process_s': time.time() - self.started,
                'output': str(out_dir), 'export': str(export_dir) if export_dir else None,
                'checkpoints': {'last': str(out_dir / LAST_CHECKPOINT), 'best': str(best_path),
                                'history': [name for name, _ in self.checkpoint_files.files]},
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
    """Run training as ``args`` (from ``parse_args``) says; returns the exit status. The output folder is
    released however the run ends."""
    trainer = Trainer(args)
    try:
        return trainer.fit()
    finally:
        trainer.close()
