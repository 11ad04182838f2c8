"""timm train.py's flags that ``gczoo train`` does not implement: their default and why.

Used to explain such a flag on the command line ("a timm train.py flag gczoo train does not
implement: ...") and to read a timm ``args.yaml`` with ``-c``: settings at timm's default are ignored,
any other value is an error naming the flag (never silently dropped). The list is timm train.py at
huggingface/pytorch-image-models@aa4b5850 (171 options; gczoo implements the other 112).
"""
from typing import Any, Dict, Tuple

__all__ = ['MISSING_TIMM_FLAGS', 'is_timm_default']

_STREAMING = 'gczoo trains on map-style datasets only (exact, resumable data order); streaming datasets are refused'
_NAFLEX = 'NaFlex variable-resolution loading is for ViT-style patch models, not the zoo\'s ResNets'
_KD = 'knowledge distillation is not implemented (train the teacher\'s logits in your own loop)'
_SIZES = 'variable-resolution batch schedules are not implemented; one --img-size per run'
_WANDB = 'no experiment-tracker integration; summary.csv and results.json hold the metrics'

# dest -> (flag, timm's default, why gczoo does not have it)
MISSING_TIMM_FLAGS: Dict[str, Tuple[str, Any, str]] = {
    'val_num_samples': ('--val-num-samples', None, _STREAMING),
    'input_img_mode': ('--input-img-mode', None, 'the image mode follows --in-chans (1: L, 3: RGB, 4: RGBA)'),
    'input_key': ('--input-key', None, _STREAMING),
    'target_key': ('--target-key', None, _STREAMING),
    'dataset_trust_remote_code': ('--dataset-trust-remote-code', False, _STREAMING),
    'fuser': ('--fuser', '', 'TorchScript fusers are deprecated in torch; use --torchcompile'),
    'fast_norm': ('--fast-norm', False, 'applies to timm LayerNorm/GroupNorm models, not BatchNorm ResNets'),
    'torchscript': ('--torchscript', False, 'torch.jit.script is deprecated; use --torchcompile'),
    'model_dtype': ('--model-dtype', None, 'low-precision weights break the bit-exact resume and EMA; use --amp'),
    'no_ddp_bb': ('--no-ddp-bb', False, 'per-rank BatchNorm buffers during an epoch would make mid-epoch resume '
                                        'inexact; --dist-bn syncs them at epoch ends'),
    'synchronize_step': ('--synchronize-step', False, 'a device sync per step only changes the timing'),
    'device_modules': ('--device-modules', None, 'out-of-tree device backends (e.g. XLA, HPU) are not supported'),
    'epoch_repeats': ('--epoch-repeats', 0.0, _STREAMING),
    'train_crop_mode': ('--train-crop-mode', None, 'training crops are random-resized crops (--scale, --ratio)'),
    'color_jitter_prob': ('--color-jitter-prob', None, 'color jitter applies to every image (--color-jitter)'),
    'grayscale_prob': ('--grayscale-prob', None, 'not in gczoo\'s augmentation pipeline'),
    'gaussian_blur_prob': ('--gaussian-blur-prob', None, 'not in gczoo\'s augmentation pipeline'),
    'aug_repeats': ('--aug-repeats', 0, 'repeated augmentation needs timm\'s RepeatAugSampler, which has no exact '
                                        'mid-epoch resume'),
    'aug_splits': ('--aug-splits', 0, 'AugMix splits (with --jsd-loss, --split-bn) are not implemented'),
    'jsd_loss': ('--jsd-loss', False, 'needs --aug-splits (AugMix), not implemented'),
    'resplit': ('--resplit', False, 'needs --aug-splits (AugMix), not implemented'),
    'drop_connect': ('--drop-connect', None, 'deprecated in timm; use --drop-path'),
    'bn_momentum': ('--bn-momentum', None, 'the zoo\'s ResNets take no bn_momentum argument'),
    'bn_eps': ('--bn-eps', None, 'the zoo\'s ResNets take no bn_eps argument'),
    'split_bn': ('--split-bn', False, 'needs --aug-splits (AugMix), not implemented'),
    'worker_seeding': ('--worker-seeding', 'all', 'augmentation is seeded per sample from (seed, epoch, index), '
                                                  'whatever the worker'),
    'val_interval': ('--val-interval', 1, 'every epoch is validated (model_best and checkpoint-N need it)'),
    'recovery_interval': ('--recovery-interval', 0, 'use --checkpoint-interval N: last.pth.tar every N updates, '
                                                    'which --resume auto continues exactly'),
    'save_images': ('--save-images', False, 'debugging aid not implemented'),
    'tta': ('--tta', 0, 'test-time augmentation is not implemented in validation'),
    'use_multi_epochs_loader': ('--use-multi-epochs-loader', False, 'the loader restarts each epoch for exact resume'),
    'log_wandb': ('--log-wandb', False, _WANDB),
    'wandb_project': ('--wandb-project', None, _WANDB),
    'wandb_tags': ('--wandb-tags', [], _WANDB),
    'wandb_resume_id': ('--wandb-resume-id', '', _WANDB),
    'train_img_sizes': ('--train-img-sizes', None, _SIZES),
    'train_batch_sizes': ('--train-batch-sizes', None, _SIZES),
    'train_size_probs': ('--train-size-probs', None, _SIZES),
    'train_size_schedule': ('--train-size-schedule', 'constant', _SIZES),
    'train_size_schedule_spread': ('--train-size-schedule-spread', 0.65, _SIZES),
    'train_size_random_mix': ('--train-size-random-mix', 0.1, _SIZES),
    'train_batches_per_epoch': ('--train-batches-per-epoch', None, 'use --train-num-samples (samples per epoch)'),
    'variable_batch_loss_scale': ('--variable-batch-loss-scale', 'none', _SIZES),
    'naflex_loader': ('--naflex-loader', False, _NAFLEX),
    'naflex_train_seq_lens': ('--naflex-train-seq-lens', [128, 256, 576, 784, 1024], _NAFLEX),
    'naflex_max_seq_len': ('--naflex-max-seq-len', 576, _NAFLEX),
    'naflex_patch_sizes': ('--naflex-patch-sizes', None, _NAFLEX),
    'naflex_patch_size_probs': ('--naflex-patch-size-probs', None, _NAFLEX),
    'naflex_loss_scale': ('--naflex-loss-scale', 'linear', _NAFLEX),
    'naflex_patchify_channels_first': ('--naflex-patchify-channels-first', False, _NAFLEX),
    'kd_model_name': ('--kd-model-name', None, _KD),
    'kd_distill_type': ('--kd-distill-type', 'logit', _KD),
    'kd_loss_type': ('--kd-loss-type', 'kl', _KD),
    'distill_loss_weight': ('--distill-loss-weight', None, _KD),
    'task_loss_weight': ('--task-loss-weight', None, _KD),
    'kd_temperature': ('--kd-temperature', 4.0, _KD),
    'kd_student_feature_dim': ('--kd-student-feature-dim', None, _KD),
    'kd_teacher_feature_dim': ('--kd-teacher-feature-dim', None, _KD),
    'kd_token_distill_type': ('--kd-token-distill-type', 'soft', _KD),
}


def is_timm_default(key: str, value: Any) -> bool:
    """Whether ``value`` leaves timm's ``key`` setting off: its default, or an empty/zero/false value."""
    default = MISSING_TIMM_FLAGS[key][1]
    if value == default or (isinstance(default, list) and list(value or []) == default):
        return True
    return value in (None, False, '', 0, []) and default in (None, False, '', 0, [])
