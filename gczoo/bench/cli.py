"""The ``gczoo bench layers|models`` command line: flags, the run, the printed table and written files.

Failures are raised, not printed: ``gczoo.cli.run`` turns them into one line and exit status 2. The
output folder is checked before any measuring, so a run of several minutes cannot end in an
unwritable folder.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from gczoo.args import ArgumentParser, device_name, non_negative_float, non_negative_int, positive_int
from gczoo.models import ZOO_MODELS

from .cchead import add_cchead_parser, bench_cchead, format_cchead_table
from .layers import LAYER_BLOCKS, bench_layers, format_layer_table
from .memory import MEMORY_MODES
from .models import MODEL_MODES, bench_models, format_model_table
from .nonlocal3d import add_nl3d_parser, bench_nl3d, format_nl3d_table
from .report import environment, write_outputs
from .timing import CLOCKS

__all__ = ['build_parser', 'main']


def _device(text: str) -> str:
    """'auto' (CUDA if this machine has it, else the CPU) or a device this machine has."""
    if text == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device_name(text)


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--device', type=_device, default='auto', help="'auto' (CUDA if present), 'cpu' or 'cuda[:i]'")
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='torch intra-op threads (default: torch default)')
    parser.add_argument('--warmup', type=non_negative_int, default=1, help='warmup rounds')
    parser.add_argument('--clock', choices=tuple(CLOCKS), default='wall',
                        help="'wall' or 'cpu' (process CPU time; CPU device only; equals wall time with "
                             "--threads 1 on an idle machine and is far steadier on a shared one)")
    parser.add_argument('--output-dir', type=Path, default=Path('output/bench'), help='where the CSV and JSON go')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='gczoo bench', description='Speed and memory benchmarks of gczoo against naive code and timm.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='what', required=True, metavar='{layers,models,nl3d,cchead}')
    layers = sub.add_parser(
        'layers', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help='every block vs a naive baseline and timm: time and peak extra memory',
        description="Every block vs a naive baseline and timm's counterpart (time and peak extra memory), "
                    'interleaved, medians over rounds, with an A/A control; prints a ratio table, writes '
                    'layers.csv/.json (layers_bwd.* with --backward).')
    layers.add_argument('--blocks', nargs='+', default=list(LAYER_BLOCKS), choices=LAYER_BLOCKS, metavar='BLOCK',
                        help=f'blocks to run, among {" ".join(LAYER_BLOCKS)}')
    layers.add_argument('--batch', type=positive_int, default=8)
    layers.add_argument('--channels', type=positive_int, default=256)
    layers.add_argument('--size', type=positive_int, default=56, help='H = W of the input')
    layers.add_argument('--nl-large-batch', type=positive_int, default=2)
    layers.add_argument('--nl-large-size', type=non_negative_int, default=128,
                        help='extra Non-local case at this H = W (0: skip)')
    layers.add_argument('--backward', action='store_true',
                        help='time forward + backward in train mode (the training step; targets: time and peak '
                             "memory <= the naive version's and timm's)")
    layers.add_argument('--repeats', type=positive_int, default=5, help='timed rounds per case (at least)')
    layers.add_argument('--large-repeats', type=positive_int, default=3,
                        help='timed rounds of the large Non-local case (a naive call takes ~20 s on 2 cores)')
    layers.add_argument('--budget', type=non_negative_float, default=15.0,
                        help='seconds of timed rounds per case: cheap cases get more rounds (up to 6x --repeats)')
    layers.add_argument('--min-time', type=non_negative_float, default=0.2,
                        help='seconds each timed measurement should last: faster calls are repeated back to back')
    layers.add_argument('--memory', choices=MEMORY_MODES, default='subprocess',
                        help="peak extra memory: 'subprocess' (all measurements in one fresh interpreter: "
                             "python -m gczoo.bench.memory_child), 'inprocess' (after the timings, here) or 'off'")
    layers.add_argument('--seed', type=non_negative_int, default=0)
    _common_args(layers)
    models = sub.add_parser(
        'models', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help='zoo model throughput vs timm resnet and timm attention models, with GMAC ratios',
        description="Inference, training-step and torch.compile'd inference throughput of zoo models as time "
                    "ratios to timm's ResNet of the same depth and to timm's nearest attention model, next to the "
                    'GMAC ratio (gczoo complexity), with an A/A control; writes models.csv/.json.')
    models.add_argument('--models', nargs='+', default=list(ZOO_MODELS), choices=list(ZOO_MODELS), metavar='MODEL',
                        help='zoo models (default: all)')
    models.add_argument('--batch', type=positive_int, nargs='+', default=[8], help='batch size(s)')
    models.add_argument('--img-size', type=positive_int, default=224)
    models.add_argument('--steps', type=positive_int, default=3,
                        help='timed rounds per mode (3 keeps the default run near 15 min on 2 busy cores)')
    models.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=MODEL_MODES,
                        help="'compile' (torch.compile'd inference, no target) compiles every model first: minutes")
    models.add_argument('--compile-backend', default='inductor', help='torch.compile backend of --modes compile')
    models.add_argument('--no-control', action='store_true',
                        help='no A/A copy of the plain ResNet (faster, but no noise floor)')
    models.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                        help='autocast (default: on for CUDA, off for CPU)')
    models.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                        help='channels_last memory format (default: on for CUDA, off for CPU)')
    _common_args(models)
    add_nl3d_parser(sub, _common_args)  # the video models' NonLocal3d (gczoo.bench.nonlocal3d)
    add_cchead_parser(sub, _common_args)  # CCNet's segmentation head (gczoo.bench.cchead)
    return parser


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a scratch file in it, so an unwritable one fails before the measuring."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo bench layers|models [options]``; returns 0 (also when a target is missed: it is reported)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _check_writable(args.output_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, progress = args.device, not args.no_progress
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if device == 'cpu' and torch.get_num_threads() > 1 and load >= cpus:
        print(f'gczoo bench: the machine is busy (load average {load:.1f} on {cpus} CPUs): with '
              f'{torch.get_num_threads()} threads every parallel op waits for descheduled threads, which can '
              f'dominate small ops; --threads 1 --clock cpu gives steadier ratios here', file=sys.stderr)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.what == 'layers':
        rows = bench_layers(
            args.blocks, args.batch, args.channels, args.size, args.nl_large_batch, args.nl_large_size,
            backward=args.backward, rounds=args.repeats, large_rounds=args.large_repeats, warmup=args.warmup,
            min_time=args.min_time, budget=args.budget, memory=args.memory, device=device, clock=args.clock,
            seed=args.seed, progress=progress)
        table = format_layer_table(rows)
        paths = write_outputs(rows, {'environment': environment(device), 'args': settings},
                              args.output_dir, 'layers_bwd' if args.backward else 'layers')
        print(f'\ngczoo bench layers ({device}, {torch.get_num_threads()} threads, {args.clock} clock; ratios '
              f'gczoo / other, < 1 = gczoo faster or smaller; medians over the interleaved rounds, see the '
              f'rounds column; t/self (A/A) = an identical copy: the noise floor)')
    elif args.what == 'cchead':
        rows = bench_cchead(args.batch, args.channels, args.height, args.width, rounds=args.repeats,
                            warmup=args.warmup, min_time=args.min_time, memory=args.memory, device=device,
                            clock=args.clock, seed=args.seed)
        table = format_cchead_table(rows)
        paths = write_outputs(rows, {'environment': environment(device), 'args': settings}, args.output_dir, 'cchead')
        print(f'\ngczoo bench cchead ({device}, {torch.get_num_threads()} threads, {args.clock} clock; RCCA, '
              f'recurrence 2; ratios gczoo / mmcv einsum formulation, < 1 = gczoo faster or smaller)')
    elif args.what == 'nl3d':
        rows = bench_nl3d(args.batch, args.channels, args.frames, args.size, rounds=args.repeats, warmup=args.warmup,
                          min_time=args.min_time, memory=args.memory, device=device, clock=args.clock, seed=args.seed)
        table = format_nl3d_table(rows)
        paths = write_outputs(rows, {'environment': environment(device), 'args': settings}, args.output_dir, 'nl3d')
        print(f'\ngczoo bench nl3d ({device}, {torch.get_num_threads()} threads, {args.clock} clock; ratios gczoo / '
              f'naive, < 1 = gczoo faster or smaller; the naive block builds the THW x THW\' matrix)')
    else:
        rows, raw = bench_models(
            args.models, args.batch, args.img_size, steps=args.steps, warmup=args.warmup, modes=args.modes,
            device=device, amp=args.amp, channels_last=args.channels_last, clock=args.clock,
            control=not args.no_control, compile_backend=args.compile_backend, progress=progress)
        table = format_model_table(rows)
        extra = {'models': raw, 'environment': environment(device), 'args': settings}
        paths = write_outputs(rows, extra, args.output_dir, 'models')
        print(f'\ngczoo bench models ({device}, batch {" ".join(map(str, args.batch))} at {args.img_size}, '
              f'{torch.get_num_threads()} threads, {args.clock} clock; time ratios zoo / timm, < 1 = zoo faster; '
              f'medians of {args.steps} interleaved rounds; A/A = a copy of the plain ResNet: the noise floor)')
        for r in rows:
            if r['nearest'] and r['batch'] == args.batch[0]:
                print(f"  {r['model']}: nearest timm = {raw[r['nearest']]['description']}")
    print(table)
    print('\nwrote ' + ', '.join(str(p) for p in paths))
    return 0
