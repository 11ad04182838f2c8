"""The flags of ``gczoo train``: timm train.py's names and meanings, every value checked.

The parser is ``gczoo.args.ArgumentParser`` (a bad flag is one line, exit 2, through ``gczoo.runner.run``)
and every number has a checked type (``--lr nan``, ``--smoothing 2``, ``--workers -1`` are refused:
0 is never a silent stand-in for a default). Flags whose default depends on the data are ``None`` here
and filled by ``gczoo.train.config.parse_args``: timm's defaults for your data (``--data-dir``), a
recipe that trains in minutes for the embedded digits. timm flags gczoo does not implement are listed,
with the reason, in ``gczoo.train.timm_flags``.
"""
import argparse
from typing import Any, Callable, Dict

from timm.utils import ParseKwargs

from gczoo.args import (
    ArgumentParser, device_name, finite_float, fraction, non_negative_float, non_negative_int, positive_float,
    positive_int,
)
from gczoo.distributed import DIST_BN_MODES

__all__ = [
    'FAULT_EXIT_CODE', 'AMP_DTYPES', 'TIMM_DEFAULTS', 'DIGITS_DEFAULTS', 'build_parser', 'uses_embedded_digits',
    'mixup_active', 'probability', 'unit_fraction',
]

FAULT_EXIT_CODE = 75  # exit status of --fail-at-step (a simulated crash)
# --amp-dtype values, and the short forms `--amp bf16` (gczoo's older flag) takes
AMP_DTYPES = {'float16': 'float16', 'bfloat16': 'bfloat16', 'fp16': 'float16', 'bf16': 'bfloat16'}

# Flags whose default depends on the data: timm train.py's for your own data (``--data-dir``), and a
# recipe for the embedded digits set that reaches >= 90% top-1 on 2 CPU cores in a few minutes.
TIMM_DEFAULTS: Dict[str, Any] = dict(
    model='resnet50_gc', img_size=None, epochs=300, batch_size=128, opt='sgd', lr=None, weight_decay=2e-5,
    warmup_epochs=5, smoothing=0.1, hflip=0.5, scale=(0.08, 1.0), color_jitter=0.4, crop_pct=None,
    train_interpolation='random', workers=4, threads=None,
)
DIGITS_DEFAULTS: Dict[str, Any] = dict(
    model='resnet18_gc', img_size=32, epochs=8, batch_size=64, opt='adamw', lr=2e-3, weight_decay=0.05,
    warmup_epochs=0, smoothing=0.1, hflip=0.0, scale=(0.6, 1.0), color_jitter=0.0, crop_pct=1.0,
    train_interpolation='bilinear', workers=0, threads=1,
)


def _checked(kind: Callable[[str], float], what: str, check: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)  # the gczoo.args type: finite, well-formed
        except argparse.ArgumentTypeError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}')
        return value
    parse.__name__ = what
    return parse


probability = _checked(non_negative_float, 'a probability in [0, 1]', lambda v: v <= 1)
unit_fraction = _checked(positive_float, 'a fraction in (0, 1]', lambda v: v <= 1)


def _rank(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f'expected a rank >= 0, or -1 for the last, got {text!r}')
    return value


def _default_help(key: str, fmt: Callable[[Any], str] = str) -> str:
    def show(v: Any) -> str:
        if v is None:
            return 'from the model'
        return ' '.join(str(x) for x in v) if isinstance(v, tuple) else fmt(v)
    timm_v, digits_v = TIMM_DEFAULTS[key], DIGITS_DEFAULTS[key]
    if timm_v == digits_v:
        return f'default: {show(timm_v)}'
    return f'default: {show(timm_v)}; {show(digits_v)} on the embedded digits set'


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults (except the data-dependent ones, whose help says both) and keep the epilog's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ''
        if (action.default in (None, '', argparse.SUPPRESS) or 'default:' in help_text
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return help_text
        if isinstance(action.default, (list, tuple)):
            shown = ' '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in action.default)
            return f'{help_text} (default: {shown})'
        return super()._get_help_string(action)


_EPILOG = """\
outputs (OUT = --output/--experiment; timm train.py's names):
  OUT/args.yaml                        the run's flags: -c OUT/args.yaml reproduces it
  OUT/last.pth.tar                     training checkpoint (atomic; torch.load(weights_only=True) reads it)
  OUT/model_best.pth.tar               the best epoch's checkpoint (--eval-metric)
  OUT/checkpoint-N.pth.tar             the --checkpoint-hist best epochs' checkpoints (N = epoch, from 0 as timm)
  OUT/summary.csv, OUT/curves.png      per epoch: train_loss, eval_loss, eval_top1, eval_top5, lr, ...; curves
  OUT/results.json                     best and final metrics, data, args
  OUT/export/                          best model in timm's Hub layout:
                                       timm.create_model('local-dir:OUT/export', pretrained=True)

config files: -c FILE.yaml sets defaults (a timm or gczoo args.yaml); flags on the command line win.
resuming: --resume auto (or OUT/last.pth.tar) continues exactly, mid-epoch included; the lr schedule follows
the new --epochs. A torchrun restart (--max-restarts) resumes from OUT/last.pth.tar by itself (pass
--experiment so every attempt uses the same OUT, or let gczoo derive it from torchrun's run id). Calling
torchrun yourself with --max-restarts, set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as scripts/train.sh does
(pytorch/pytorch#135712: otherwise a restarted worker group can read the dead group's addresses).
OUT is locked while a run writes to it (OUT/.lock names the holder's pid).
user errors (bad data, flags or checkpoints, a full disk, a diverged run) print one line and exit with
status 2; set GCZOO_DEBUG=1 for a traceback.
"""


def _interpolation(text: str) -> str:
    names = ('', 'random', 'bilinear', 'bicubic', 'nearest', 'lanczos', 'box', 'hamming')
    if text not in names:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(repr(n) for n in names)}, got {text!r}")
    return text


def build_parser() -> ArgumentParser:
    """The command line of ``python -m gczoo.train`` / ``gczoo train`` / ``scripts/train.sh`` (timm train.py's
    flags, one group per function below)."""
    p = ArgumentParser(
        prog='gczoo train', description=(
            'Train or fine-tune a gczoo (or any timm) model: one CPU process, 8 GPUs, or several nodes, with timm '
            "train.py's flags. With no --data-dir it trains resnet18_gc on scikit-learn's handwritten digits "
            '(written once as an ImageFolder tree under $GCZOO_DATA_HOME, default ~/.cache/gczoo; nothing is '
            'downloaded).'),
        formatter_class=_Formatter, epilog=_EPILOG)
    p.add_argument('-c', '--config', default='', metavar='FILE',
                   help='YAML file of flag values (e.g. an OUT/args.yaml, gczoo\'s or timm\'s) used as defaults; '
                        'flags given on the command line win (as timm train.py)')
    _data_flags(p)
    _model_flags(p)
    _speed_flags(p)
    _optimizer_flags(p)
    _schedule_flags(p)
    _augmentation_flags(p)
    _ema_flags(p)
    _run_flags(p)
    return p


def _data_flags(p: ArgumentParser) -> None:
    """The data flags."""
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', '--data', dest='data_dir', metavar='DIR', default=None,
                   help='dataset root; ImageNet/ImageFolder layout DIR/<split>/<class>/<image> '
                        '(default: the embedded handwritten digits)')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="'' (default) for a folder dataset, 'digits' for the embedded one, or any name timm's "
                        "create_dataset knows (e.g. torch/cifar10; map-style datasets only)")
    g.add_argument('--train-split', default='train', metavar='NAME', help='training split (sub-folder)')
    g.add_argument('--val-split', default='validation', metavar='NAME',
                   help='validation split (sub-folder; val/valid/validation/eval are all found)')
    g.add_argument('--train-num-samples', type=positive_int, default=None, metavar='N',
                   help='samples per epoch: each epoch trains on the first N of its shuffled order (a new subset '
                        'every epoch; at most the split\'s size). timm uses it for streaming datasets only')
    g.add_argument('--dataset-download', action='store_true', help='let torch/* datasets download themselves')
    g.add_argument('--class-map', default='', metavar='FILE',
                   help='class name -> output index: a text file (one class folder name per line, line = index, as '
                        'timm) or a JSON object; default: the sorted class folders')
    g.add_argument('-j', '--workers', type=non_negative_int, default=None, metavar='N',
                   help='data loading worker processes per rank (' + _default_help('workers') + ')')
    g.add_argument('--pin-mem', action='store_true', help='pin host memory in the loaders (faster copies to GPU)')


def _model_flags(p: ArgumentParser) -> None:
    """The model flags."""
    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, metavar='NAME',
                   help='any timm model name; gczoo registers its zoo (' + _default_help('model') + ')')
    g.add_argument('--pretrained', action='store_true',
                   help="start from the model's pretrained weights (timm's pretrained=True)")
    g.add_argument('--pretrained-path', default=None, metavar='FILE',
                   help='load this .safetensors file as the pretrained weights, adapted as timm adapts them (the '
                        'classifier is left at init); implies --pretrained')
    g.add_argument('--pretrained-backbone', default=None, metavar='SOURCE',
                   help='gczoo models: transplant an ImageNet ResNet (timm name with tag, e.g. resnet50.a1_in1k, '
                        'or a .safetensors/.pth file) into the backbone; attention blocks start at identity')
    g.add_argument('--initial-checkpoint', default=None, metavar='PATH',
                   help='start from these weights (safetensors or a torch file read with weights_only=True); '
                        'a classifier of another size is left at init')
    g.add_argument('--resume', default=None, metavar='PATH|auto',
                   help="continue a run from a training checkpoint exactly; 'auto' = OUT/last.pth.tar if it exists")
    g.add_argument('--no-resume-opt', action='store_true',
                   help='with --resume: restore the weights, EMA and position but start the optimizer and loss scaler '
                        'fresh (e.g. after changing --opt)')
    g.add_argument('--num-classes', type=positive_int, default=None, metavar='N',
                   help='classes of the classifier; must match the class count of the data (default: from the data)')
    g.add_argument('--gp', default=None, metavar='POOL',
                   help="global pool type: avg, max, avgmax, catavgmax, '' (default: the model's)")
    g.add_argument('--img-size', type=positive_int, default=None, metavar='PX',
                   help='input image size (' + _default_help('img_size') + ')')
    g.add_argument('--in-chans', type=positive_int, default=None, metavar='N',
                   help='image channels: 1 (grey, images read as L), 3 (RGB) or 4 (RGBA) (default: 3)')
    g.add_argument('--input-size', type=positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                   help='input size C H W (overrides --img-size and --in-chans)')
    g.add_argument('--crop-pct', type=unit_fraction, default=None, metavar='PCT',
                   help='validation center-crop fraction (' + _default_help('crop_pct') + ')')
    g.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='M',
                   help='normalization mean, one value per channel or one for all (default: model)')
    g.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='S',
                   help='normalization std, one value per channel or one for all (default: model)')
    g.add_argument('--interpolation', type=_interpolation, default='', metavar='NAME',
                   help='validation resize interpolation (default: model)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='more keyword arguments for timm.create_model, e.g. --model-kwargs attn_layer=se')
    g.add_argument('--drop', type=fraction, default=0.0, metavar='P', help='dropout before the classifier')
    g.add_argument('--drop-path', type=fraction, default=None, metavar='P',
                   help='stochastic depth rate (default: model)')
    g.add_argument('--drop-block', type=fraction, default=None, metavar='P', help='DropBlock rate (default: model)')
    g.add_argument('--head-init-scale', type=finite_float, default=None, metavar='S',
                   help='multiply the classifier\'s initial weights and bias by S')
    g.add_argument('--head-init-bias', type=finite_float, default=None, metavar='B',
                   help='initial value of the classifier\'s bias')
    g.add_argument('--grad-checkpointing', action='store_true',
                   help='recompute activations in the backward pass (less memory, more compute)')
    g.add_argument('--attn-lr-scale', type=positive_float, default=1.0, metavar='S',
                   help='learning rate of the attention blocks (gczoo.models.attention_modules) = lr x S; '
                        'e.g. 10 when fine-tuning a transplanted backbone (--pretrained-backbone)')
    g.add_argument('--freeze-bn-stats', action='store_true',
                   help='BatchNorm layers use (and keep) their running statistics during training, their affine '
                        'weights still train: results no longer depend on how the global batch is split across '
                        'ranks; usual for fine-tuning with small per-GPU batches')


def _speed_flags(p: ArgumentParser) -> None:
    """The batch, precision and speed flags."""
    g = p.add_argument_group('batch, precision and speed')
    g.add_argument('-b', '--batch-size', type=positive_int, default=None, metavar='N',
                   help='batch size per process (' + _default_help('batch_size') + ')')
    g.add_argument('-vb', '--validation-batch-size', type=positive_int, default=None, metavar='N',
                   help='validation batch size per process (default: --batch-size)')
    g.add_argument('--grad-accum-steps', type=positive_int, default=1, metavar='N',
                   help='micro-batches per optimizer update (DDP syncs gradients only on the last one)')
    g.add_argument('--amp', nargs='?', const=True, default=False, metavar='DTYPE',
                   choices=(True, *AMP_DTYPES),
                   help='mixed precision autocast in --amp-dtype (as timm: --amp alone is float16, with loss scaling '
                        'on CUDA); gczoo also takes the dtype here: --amp bf16 = --amp --amp-dtype bfloat16')
    g.add_argument('--amp-dtype', default=None, choices=tuple(AMP_DTYPES), metavar='DTYPE',
                   help='float16 or bfloat16 (default: float16)')
    g.add_argument('--channels-last', action='store_true', help='channels-last memory layout for model and inputs')
    g.add_argument('--torchcompile', '--compile', dest='torchcompile', nargs='?', const='inductor', default=None,
                   metavar='BACKEND', help='torch.compile the training model (alone: inductor)')
    g.add_argument('--torchcompile-mode', default=None, metavar='MODE',
                   help='torch.compile mode, e.g. max-autotune (default: torch\'s)')
    g.add_argument('--sync-bn', action='store_true',
                   help='convert BatchNorm to SyncBatchNorm (CUDA multi-process runs; torch has no CPU SyncBatchNorm: '
                        'an error on CPU with several processes, a no-op with one); --dist-bn is then not needed')
    g.add_argument('--dist-bn', default='reduce', choices=DIST_BN_MODES,
                   help="multi-process runs: before every validation (and so in every epoch-end checkpoint) make the "
                        "ranks' BatchNorm running statistics the same: 'reduce' averages them, 'broadcast' takes rank "
                        "0's (timm's --dist-bn); '' leaves each rank its own, and the metrics are then not the saved "
                        "weights'")
    g.add_argument('--device', type=device_name, default=None, metavar='DEV',
                   help="'cpu', 'cuda' (one GPU per local rank) or None: CUDA when available")
    g.add_argument('--threads', type=positive_int, default=None, metavar='N',
                   help='CPU threads per process (torch.set_num_threads) (default: torch\'s, one per core, or '
                        '$OMP_NUM_THREADS; 1 on the embedded digits set unless $OMP_NUM_THREADS is set: on a '
                        'shared 2-core machine, OpenMP threads spin-waiting on each other made 2 threads 2-17x '
                        'slower than 1 for that small model)')
    g.add_argument('--local-rank', '--local_rank', dest='local_rank', type=non_negative_int, default=None,
                   metavar='N', help='for torch.distributed.launch, which passes it; must agree with $LOCAL_RANK '
                                     '(torchrun sets only that)')
    g.add_argument('--no-prefetcher', action='store_true',
                   help='accepted for timm command lines: gczoo has no GPU prefetcher, images are normalized in the '
                        'loader (what timm does with this flag)')
    g.add_argument('--deterministic', action='store_true',
                   help='torch.use_deterministic_algorithms and deterministic cuDNN (CPU runs are already)')


def _optimizer_flags(p: ArgumentParser) -> None:
    """The optimizer flags."""
    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default=None, metavar='NAME',
                   help="any timm optimizer: sgd, momentum, adamw, lamb, ... (" + _default_help('opt') + ')')
    g.add_argument('--opt-eps', type=positive_float, default=None, metavar='EPS',
                   help='optimizer epsilon (default: optimizer)')
    g.add_argument('--opt-betas', type=fraction, nargs='+', default=None, metavar='B',
                   help='optimizer betas (default: optimizer)')
    g.add_argument('--momentum', type=fraction, default=0.9, metavar='M', help='momentum (SGD-like optimizers)')
    g.add_argument('--weight-decay', type=non_negative_float, default=None, metavar='WD',
                   help='weight decay; biases and norm weights get none (' + _default_help('weight_decay') + ')')
    g.add_argument('--clip-grad', type=positive_float, default=None, metavar='NORM',
                   help='clip gradients (default: off)')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'), help='gradient clipping mode')
    g.add_argument('--layer-decay', type=positive_float, default=None, metavar='D',
                   help="layer-wise lr decay: each layer group deeper from the head gets lr x D (timm's group_matcher)")
    g.add_argument('--layer-decay-min-scale', type=non_negative_float, default=0.0, metavar='S',
                   help='lower bound of the layer-decay lr scale')
    g.add_argument('--layer-decay-no-opt-scale', type=non_negative_float, default=None, metavar='S',
                   help='layers whose layer-decay scale falls below S are not optimized (frozen)')
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='more keyword arguments for the optimizer')


def _schedule_flags(p: ArgumentParser) -> None:
    """The learning rate schedule flags."""
    g = p.add_argument_group('learning rate schedule')
    g.add_argument('--sched', default='cosine', metavar='NAME',
                   help='cosine, tanh, step, multistep, plateau, poly, wsd, rsqrt, constant or none (timm schedulers)')
    g.add_argument('--sched-on-updates', action='store_true', help='step the schedule every update, not every epoch')
    g.add_argument('--lr', type=positive_float, default=None, metavar='LR',
                   help='learning rate (' + _default_help('lr', fmt=lambda v: f'{v:g}').replace(
                       'from the model', 'lr-base x global batch / lr-base-size') + ')')
    g.add_argument('--lr-base', type=positive_float, default=0.1, metavar='LR',
                   help='base lr for --lr-base-size images (used when --lr is unset)')
    g.add_argument('--lr-base-size', type=positive_int, default=256, metavar='N', help='global batch size of --lr-base')
    g.add_argument('--lr-base-scale', default='', choices=('', 'linear', 'sqrt'),
                   help="how lr scales with the global batch (default '': sqrt for adam-like optimizers, else linear)")
    g.add_argument('--lr-noise', type=positive_float, nargs='+', default=None, metavar='PCT',
                   help='lr noise on/off epoch fractions (timm schedulers)')
    g.add_argument('--lr-noise-pct', type=non_negative_float, default=0.67, metavar='P', help='lr noise limit')
    g.add_argument('--lr-noise-std', type=non_negative_float, default=1.0, metavar='S', help='lr noise std')
    g.add_argument('--lr-cycle-mul', type=positive_float, default=1.0, metavar='M', help='lr cycle length multiplier')
    g.add_argument('--lr-cycle-decay', type=positive_float, default=0.5, metavar='D', help='lr decay per cycle')
    g.add_argument('--lr-cycle-limit', type=positive_int, default=1, metavar='N', help='number of lr cycles')
    g.add_argument('--lr-k-decay', type=positive_float, default=1.0, metavar='K', help='lr k-decay (cosine/poly)')
    g.add_argument('--warmup-lr', type=non_negative_float, default=1e-5, metavar='LR', help='lr at the start of warmup')
    g.add_argument('--min-lr', type=non_negative_float, default=0.0, metavar='LR',
                   help='lower bound of cyclic schedules')
    g.add_argument('--epochs', type=positive_int, default=None, metavar='N',
                   help='epochs to train (' + _default_help('epochs') + ')')
    g.add_argument('--start-epoch', type=non_negative_int, default=None, metavar='N',
                   help='start (or, with --resume, restart) at epoch N, counted from 0 as timm; the schedule starts '
                        'there too')
    g.add_argument('--warmup-epochs', type=non_negative_int, default=None, metavar='N',
                   help='epochs of linear warmup (' + _default_help('warmup_epochs') + ')')
    g.add_argument('--warmup-prefix', action='store_true',
                   help='warmup epochs come before --epochs instead of within them')
    g.add_argument('--cooldown-epochs', type=non_negative_int, default=0, metavar='N',
                   help='epochs at min-lr after the schedule')
    g.add_argument('--decay-epochs', type=positive_float, default=90, metavar='N',
                   help='step schedule: epochs between decays')
    g.add_argument('--decay-milestones', type=positive_int, nargs='+', default=[90, 180, 270], metavar='E',
                   help='multistep schedule: epochs to decay at')
    g.add_argument('--decay-rate', '--dr', type=positive_float, default=0.1, metavar='R',
                   help='step/multistep/plateau decay factor')
    g.add_argument('--patience-epochs', type=non_negative_int, default=10, metavar='N',
                   help='plateau schedule patience')


def _augmentation_flags(p: ArgumentParser) -> None:
    """The augmentation, regularization and loss flags."""
    g = p.add_argument_group('augmentation, regularization and loss')
    g.add_argument('--no-aug', action='store_true', help='no training augmentation (resize + center crop only)')
    g.add_argument('--scale', type=unit_fraction, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range (' + _default_help('scale') + ')')
    g.add_argument('--ratio', type=positive_float, nargs=2, default=(3. / 4., 4. / 3.), metavar=('MIN', 'MAX'),
                   help='random-resized-crop aspect ratio range')
    g.add_argument('--hflip', type=probability, default=None, metavar='P',
                   help='horizontal flip probability (' + _default_help('hflip') + ')')
    g.add_argument('--vflip', type=probability, default=0.0, metavar='P', help='vertical flip probability')
    g.add_argument('--color-jitter', type=non_negative_float, default=None, metavar='F',
                   help='color jitter strength (' + _default_help('color_jitter') + ')')
    g.add_argument('--aa', default=None, metavar='POLICY',
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 or original (default: off)")
    g.add_argument('--train-interpolation', type=_interpolation, default=None, metavar='NAME',
                   help='training resize interpolation (' + _default_help('train_interpolation') + ')')
    g.add_argument('--reprob', type=probability, default=0.0, metavar='P', help='random erasing probability')
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'), help='random erasing mode')
    g.add_argument('--recount', type=positive_int, default=1, metavar='N', help='random erasing count')
    g.add_argument('--mixup', type=non_negative_float, default=0.0, metavar='ALPHA', help='mixup alpha (on if > 0)')
    g.add_argument('--cutmix', type=non_negative_float, default=0.0, metavar='ALPHA', help='cutmix alpha (on if > 0)')
    g.add_argument('--cutmix-minmax', type=unit_fraction, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='cutmix box ratio range (overrides --cutmix alpha)')
    g.add_argument('--mixup-prob', type=probability, default=1.0, metavar='P',
                   help='probability of mixup/cutmix per batch')
    g.add_argument('--mixup-switch-prob', type=probability, default=0.5, metavar='P',
                   help='probability of cutmix instead of mixup when both are on')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='draw mixup/cutmix parameters per batch, per pair of samples or per sample')
    g.add_argument('--mixup-off-epoch', type=non_negative_int, default=0, metavar='E',
                   help='turn mixup/cutmix off from this epoch (0: never)')
    g.add_argument('--smoothing', type=fraction, default=None, metavar='EPS',
                   help='label smoothing in [0, 1) (' + _default_help('smoothing') + ')')
    g.add_argument('--bce-loss', action='store_true',
                   help="binary cross-entropy (timm's BinaryCrossEntropy) instead of softmax cross-entropy")
    g.add_argument('--bce-sum', action='store_true', help='BCE: sum over classes instead of the mean')
    g.add_argument('--bce-target-thresh', type=probability, default=None, metavar='T',
                   help='BCE: binarize (soft) targets at this threshold')
    g.add_argument('--bce-pos-weight', type=positive_float, default=None, metavar='W',
                   help='BCE: weight of positive targets')


def _ema_flags(p: ArgumentParser) -> None:
    """The model EMA flags."""
    g = p.add_argument_group('model EMA')
    g.add_argument('--model-ema', action='store_true',
                   help='keep an exponential moving average of the weights (timm ModelEmaV3); validated each epoch, '
                        'and it chooses model_best.pth.tar and is what the export holds')
    g.add_argument('--model-ema-decay', type=fraction, default=0.9998, metavar='D',
                   help='EMA decay per update (weight of the old average)')
    g.add_argument('--model-ema-warmup', action='store_true', help='EMA decay warmup')
    g.add_argument('--model-ema-force-cpu', action='store_true', help='keep the EMA on the CPU')


def _run_flags(p: ArgumentParser) -> None:
    """The run, output and checkpoints flags."""
    g = p.add_argument_group('run, output and checkpoints')
    g.add_argument('--seed', type=non_negative_int, default=42, metavar='S',
                   help='seed of init, data order and augmentation')
    g.add_argument('--output', default='output/train', metavar='DIR', help='parent folder of the run folder OUT')
    g.add_argument('--experiment', default=None, metavar='NAME',
                   help='run folder name: OUT = --output/NAME (default: <timestamp>-<model>-<img-size>, -1, -2 ... '
                        'if a run started in the same second took it)')
    g.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'),
                   help='metric choosing model_best.pth.tar')
    g.add_argument('--checkpoint-hist', type=positive_int, default=10, metavar='N',
                   help='keep the checkpoints of the N best epochs as OUT/checkpoint-<epoch>.pth.tar')
    g.add_argument('--checkpoint-interval', type=non_negative_int, default=0, metavar='N',
                   help='also write last.pth.tar every N optimizer updates (0: at epoch ends only)')
    g.add_argument('--log-interval', type=positive_int, default=50, metavar='N',
                   help='print a progress line every N updates')
    g.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
    g.add_argument('--no-export', action='store_true', help='do not write OUT/export at the end')
    g.add_argument('--fail-at-step', type=positive_int, default=None, metavar='N',
                   help='testing: exit abruptly (status %d) after update N, only on the first attempt '
                        '(TORCHELASTIC_RESTART_COUNT 0 or unset), to exercise --resume and torchrun restarts'
                        % FAULT_EXIT_CODE)
    g.add_argument('--fail-rank', type=_rank, default=-1, metavar='R',
                   help='testing: the rank that --fail-at-step stops (-1: the last rank)')


def uses_embedded_digits(args: argparse.Namespace) -> bool:
    """True when the run trains on the embedded digits (no --data-dir, --dataset '' or 'digits')."""
    return args.data_dir is None and args.dataset in ('', 'digits')


def mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
