"""``gczoo eval``: timm ``validate.py``'s flags and results file, on an ImageNet-layout or ImageFolder dataset.

One model, or many as validate.py runs them (``--model all``: every pretrained gczoo tag; a
wildcard; a text file of names; ``--checkpoint DIR``: every checkpoint in it). Under torchrun each
rank takes every ``world_size``-th image and the metric states are summed. Results: validate.py's
``--results-file`` (CSV rows with its columns, or JSON with ``--results-format json``) and, with
``--output-dir``, ``<model>.csv`` + ``<model>.json`` (everything, including skipped images). A model
that fails in a bulk run is reported on one line and the run exits 2 after the others.
"""
import argparse
import csv
import io
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gczoo.args import ArgumentParser, device_name, fraction, positive_float, positive_int, non_negative_int
from gczoo.errors import one_line
from gczoo.files import atomic_write_text

from .folders import (
    EvalImageFolder, SkippingLoader, collate_skipping, find_eval_folder, resolve_class_mapping, scan_image_folder,
)
from .metrics import validate
from .model import create_eval_model

__all__ = ['CSV_COLUMNS', 'build_parser', 'evaluate', 'main', 'model_runs', 'results_to_csv']

# timm validate.py's columns, in its order
CSV_COLUMNS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation')
CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.safetensors')


def _crop_pct(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f'expected a fraction in (0, 1], got {text!r}')
    return value


def build_parser() -> ArgumentParser:
    from timm.utils import ParseKwargs
    p = ArgumentParser(
        prog='gczoo eval',
        description='Top-1/top-5 of a model on an ImageNet-layout folder (DATA/val/<wnid>/*.JPEG, timm ImageNet '
                    'class order) or a plain ImageFolder, with timm validate.py\'s flags. Run under torchrun '
                    '(scripts/eval.sh) for several processes.')
    p.add_argument('data', nargs='?', metavar='DIR', help='dataset root (deprecated in timm: use --data-dir)')
    p.add_argument('--data-dir', metavar='DIR', help='dataset root (DIR/<split>/<class>/... or DIR/<class>/...)')
    p.add_argument('--dataset', default='', metavar='NAME', help='only "" (an image folder) is supported')
    p.add_argument('--split', default='validation', help='split folder (val and validation stand for each other)')
    p.add_argument('--class-map', default='', metavar='FILENAME',
                   help='class name per line (line = output index, as timm) or a JSON {name: index}; default: automatic')
    p.add_argument('--model', '-m', required=True, metavar='NAME',
                   help='a timm/gczoo model name (with --pretrained or --checkpoint), local-dir:DIR, hf-hub:ORG/REPO; '
                        '"all" (every pretrained gczoo tag), a wildcard, or a file with one name per line')
    p.add_argument('--pretrained', action='store_true', help="the model's pretrained weights")
    p.add_argument('-j', '--workers', type=non_negative_int, default=4, help='data loading processes per rank')
    p.add_argument('-b', '--batch-size', type=positive_int, default=64)
    p.add_argument('--img-size', type=positive_int, default=None, help="input size (default: the model's cfg)")
    p.add_argument('--in-chans', type=positive_int, default=None, help='input channels (default 3)')
    p.add_argument('--input-size', type=positive_int, nargs=3, default=None, metavar='N', help='C H W')
    p.add_argument('--use-train-size', action='store_true', help="the cfg's train size even if it has a test size")
    p.add_argument('--crop-pct', type=_crop_pct, default=None, help="center crop fraction (default: the model's cfg)")
    p.add_argument('--crop-mode', choices=('center', 'squash', 'border'), default=None)
    p.add_argument('--mean', type=fraction, nargs='+', default=None, metavar='MEAN')
    p.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='STD')
    p.add_argument('--interpolation', default='', choices=('', 'bilinear', 'bicubic', 'nearest', 'lanczos', 'box', 'hamming'),
                   help="resize interpolation (default: the model's cfg)")
    p.add_argument('--num-classes', type=positive_int, default=None,
                   help="the model's outputs (default: the checkpoint's classifier size)")
    p.add_argument('--gp', default=None, metavar='POOL', help='global pool type (default: the model\'s)')
    p.add_argument('--checkpoint', default='', metavar='PATH',
                   help='weights file (.safetensors, or .pth/.pth.tar read with weights_only=True), or a folder of them')
    p.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights, if it has them")
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--device', type=device_name, default=None, help='default: cuda if available, else cpu')
    p.add_argument('--amp', action='store_true', help='autocast (mixed precision)')
    p.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--torchcompile', nargs='?', default=None, const='inductor', help='torch.compile backend')
    p.add_argument('--results-file', default='', metavar='FILENAME', help='results of every model (validate.py format)')
    p.add_argument('--results-format', default='csv', choices=('csv', 'json'))
    # gczoo's own
    p.add_argument('--output-dir', default=None, metavar='DIR', help='also write DIR/<model>.csv and DIR/<model>.json')
    p.add_argument('--on-bad-image', choices=('skip', 'error'), default='skip',
                   help='an undecodable image: skip it and count it (default) or stop with its file name')
    p.add_argument('--dataset-name', help='how the results name the dataset (default: the data path and split)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def _data_root(args: argparse.Namespace) -> str:
    root = args.data_dir or args.data
    if not root:
        raise ValueError('no dataset: pass --data-dir DIR')
    if args.dataset:
        raise ValueError(f'--dataset {args.dataset!r}: gczoo eval reads image folders only (ImageNet layout or '
                         f'ImageFolder); omit --dataset')
    return root


def _data_config(args: argparse.Namespace, model: torch.nn.Module) -> Dict[str, Any]:
    from timm.data import resolve_data_config
    overrides = {k: getattr(args, k) for k in ('img_size', 'in_chans', 'input_size', 'crop_pct', 'crop_mode',
                                                'mean', 'std', 'interpolation') if getattr(args, k)}
    config = resolve_data_config(overrides, model=model, use_test_size=not args.use_train_size)
    channels = config['input_size'][0]
    for key in ('mean', 'std'):
        if len(config[key]) == 1:
            config[key] = tuple(config[key]) * channels
        elif channels == 1 and not getattr(args, key):  # an RGB cfg on a grey model: its average, as
            config[key] = (sum(config[key]) / len(config[key]),)  # timm's adapt_input_conv sums conv1
        if len(config[key]) != channels:
            raise ValueError(f'--{key} has {len(config[key])} values but the input has {channels} channels')
    return config


def _eval_model(args: argparse.Namespace) -> nn.Module:
    model_kwargs = dict(args.model_kwargs)
    if args.in_chans:
        model_kwargs['in_chans'] = args.in_chans
    if args.gp:
        model_kwargs['global_pool'] = args.gp
    return create_eval_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint or None,
                             num_classes=args.num_classes, use_ema=args.use_ema, **model_kwargs)


def _describe_transform(data_config: Dict[str, Any]) -> str:
    return (f'input {tuple(data_config["input_size"])}, crop_pct {data_config["crop_pct"]}, '
            f'{data_config["crop_mode"]}, {data_config["interpolation"]}, '
            f'mean {tuple(round(m, 4) for m in data_config["mean"])}, std {tuple(round(s, 4) for s in data_config["std"])}')


def evaluate(args: argparse.Namespace, command: str = '') -> Dict[str, Any]:
    """One evaluation as ``gczoo eval`` does it (any torchrun process group is joined as the caller set it
    up); returns the results dict (the same on every rank)."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from gczoo.distributed import ShardSampler, gather_across_ranks, init_distributed

    folder = find_eval_folder(_data_root(args), args.split)  # before building the model: fail fast
    env = init_distributed(args.device)
    model = _eval_model(args)
    num_classes = int(model.num_classes)
    if num_classes < 1:
        raise ValueError(f'--model {args.model!r} has no classifier head (num_classes={num_classes})')
    samples, class_names = scan_image_folder(folder)
    label_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    mapping = resolve_class_mapping(class_names, num_classes, class_map=args.class_map or None, label_names=label_names)

    data_config = _data_config(args, model)
    transform = create_transform(**data_config, is_training=False)
    dataset = EvalImageFolder([(path, mapping.class_to_idx[name]) for path, name in samples], transform,
                              on_bad_image=args.on_bad_image, in_chans=data_config['input_size'][0])
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=ShardSampler(len(dataset), env.rank, env.world_size),
        num_workers=args.workers, collate_fn=collate_skipping, pin_memory=env.device.type == 'cuda',
        persistent_workers=False)
    skipping = SkippingLoader(loader)

    model.to(env.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    if env.is_main:
        print(f'gczoo eval: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
              f'{num_classes} classes) on {folder}: {len(dataset)} images, {len(class_names)} class folders; '
              f'labels: {mapping.description}; world size {env.world_size}', flush=True)
        print(f'gczoo eval: transform: {_describe_transform(data_config)}', flush=True)
    metrics = validate(model, skipping, num_classes=num_classes, device=env.device, amp_dtype=amp_dtype,
                       channels_last=args.channels_last, progress=None if args.no_progress or not env.is_main else 'eval')
    if not all(torch.isfinite(torch.tensor([metrics['top1'], metrics['top5'], metrics['loss']]))):
        raise ValueError(f'--model {args.model!r}: the evaluation produced non-finite results (loss '
                         f'{metrics["loss"]}); the weights or the input preprocessing are broken')

    bad_files = gather_across_ranks(skipping.bad_files)
    top1, top5 = round(metrics['top1'], 4), round(metrics['top5'], 4)
    params = sum(p.numel() for p in model.parameters())
    return {
        'model': args.model,
        'architecture': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture'),
        'top1': top1, 'top1_err': round(100 - top1, 4),
        'top5': top5, 'top5_err': round(100 - top5, 4),
        'param_count': round(params / 1e6, 2),
        'img_size': int(data_config['input_size'][-1]),
        'crop_pct': data_config['crop_pct'],
        'interpolation': data_config['interpolation'],
        'loss': round(metrics['loss'], 6),
        'count': int(metrics['count']),
        'skipped_images': len(bad_files),
        'skipped_files': bad_files,
        'dataset': args.dataset_name or f'{_data_root(args)} ({folder.name})',
        'data_dir': str(_data_root(args)),
        'eval_folder': str(folder),
        'num_classes': num_classes,
        'data_classes': len(class_names),
        'label_mapping': mapping.kind,
        'label_mapping_description': mapping.description,
        'data_config': {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()},
        'weights': ('pretrained' if args.pretrained else str(args.checkpoint) if args.checkpoint else args.model),
        'use_ema': bool(args.use_ema),
        'world_size': env.world_size,
        'command': command,
    }


def model_runs(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """``(model, checkpoint)`` pairs to evaluate, as validate.py expands ``--model``/``--checkpoint``."""
    import timm
    if args.checkpoint and os.path.isdir(args.checkpoint):
        found = sorted(str(p) for p in Path(args.checkpoint).iterdir()
                       if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
        if not found:
            raise ValueError(f'--checkpoint folder {args.checkpoint!r} holds no {", ".join(CHECKPOINT_SUFFIXES)} files')
        return [(args.model, c) for c in found]
    if args.model == 'all':
        names = timm.list_models(module='gczoo', pretrained=True)
        if not names:
            raise ValueError('--model all: no gczoo model has pretrained weights registered')
        args.pretrained = True
        return [(n, '') for n in names]
    if args.model.startswith(('local-dir:', 'hf-hub:')) or timm.is_model(args.model):
        return [(args.model, args.checkpoint)]
    if any(c in args.model for c in '*?['):
        names = timm.list_models(args.model, pretrained=True)
        if not names:
            raise ValueError(f'--model {args.model!r} matches no model with pretrained weights')
        args.pretrained = True
        return [(n, '') for n in names]
    if os.path.isfile(args.model):
        names = [line.strip() for line in Path(args.model).read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f'--model file {args.model!r} lists no model names')
        return [(n, args.checkpoint) for n in names]
    return [(args.model, args.checkpoint)]  # create_eval_model explains an unknown name


def results_to_csv(rows: Sequence[Dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def _safe_name(model_name: str) -> str:
    name = model_name
    if name.startswith('local-dir:'):
        name = Path(name[len('local-dir:'):]).resolve().name or 'local-dir'
    elif name.startswith('hf-hub:'):
        name = name[len('hf-hub:'):]
    return ''.join(c if c.isalnum() or c in '._-' else '_' for c in name)


def _print_result(results: Dict[str, Any]) -> None:
    print(f' * Acc@1 {results["top1"]:.3f} ({results["top1_err"]:.3f}) '
          f'Acc@5 {results["top5"]:.3f} ({results["top5_err"]:.3f}) on {results["count"]} images')
    if results['skipped_images']:
        shown = ', '.join(results['skipped_files'][:5])
        more = f' (+{results["skipped_images"] - 5} more)' if results['skipped_images'] > 5 else ''
        print(f'gczoo eval: skipped {results["skipped_images"]} unreadable images: {shown}{more}')


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo eval`` (errors are printed by ``gczoo.runner.run``)."""
    from gczoo.distributed import cleanup_distributed, is_main_process
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    command = ('gczoo eval ' if world == 1 else f'NPROC={world} scripts/eval.sh ') + shlex.join(argv)
    runs = model_runs(args)
    rows: List[Dict[str, Any]] = []
    failed: List[str] = []
    try:
        for model_name, checkpoint in runs:
            args.model, args.checkpoint = model_name, checkpoint
            if len(runs) == 1:
                results = evaluate(args, command)
            else:
                try:
                    results = evaluate(args, command)
                except (ValueError, OSError) as e:  # bulk runs go on, as validate.py's
                    failed.append(f'{model_name}{" " + checkpoint if checkpoint else ""}: {one_line(e)}')
                    print(f'gczoo eval: {failed[-1]}', file=sys.stderr, flush=True)
                    continue
            if checkpoint and len(runs) > 1:
                results['checkpoint'] = checkpoint
            rows.append(results)
            if is_main_process():
                _print_result(results)
                if args.output_dir:
                    stem = _safe_name(results['model'] + (f'-{Path(checkpoint).name}' if len(runs) > 1 and checkpoint else ''))
                    csv_path = atomic_write_text(Path(args.output_dir) / f'{stem}.csv', results_to_csv([results]))
                    json_path = atomic_write_text(Path(args.output_dir) / f'{stem}.json', json.dumps(results, indent=2) + '\n')
                    print(f'gczoo eval: wrote {csv_path} and {json_path}')
    finally:
        cleanup_distributed()
    rows.sort(key=lambda r: r['top1'], reverse=True)
    if is_main_process() and args.results_file and rows:
        text = (json.dumps(rows if len(runs) > 1 else rows[0], indent=4) + '\n' if args.results_format == 'json'
                else results_to_csv(rows, list(CSV_COLUMNS) + (['checkpoint'] if any('checkpoint' in r for r in rows) else [])))
        print(f'gczoo eval: wrote {atomic_write_text(args.results_file, text)}')
    if failed:
        raise ValueError(f'{len(failed)} of {len(runs)} evaluations failed: {"; ".join(failed)}')
    return 0
