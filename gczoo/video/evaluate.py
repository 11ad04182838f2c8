"""``gczoo eval-video``: top-1/top-5 of a video model on a folder of clips, with mmaction2's test-time
sampling (clips x crops, softmax scores averaged: ``average_clips='prob'``), under torchrun for DDP.

    gczoo eval-video DATA --model i3d_r50_nl --pretrained          # 10 clips x 3 crops of 256, as mmaction2
    gczoo eval-video DATA --model i3d_r50 --checkpoint ft.pth --num-classes 10 --num-clips 2 --num-crops 1
    torchrun --nproc-per-node 8 -m gczoo.video.evaluate DATA --model i3d_r50_nl --pretrained

``DATA/<class>/<clip>`` (see ``gczoo.video.clips``). A clip that cannot be decoded is skipped, counted
and named in the results (JSON with ``--results-file``); accuracy is over the clips that were read.
Classes: ``--class-map FILE`` (one class per line, line = output index, e.g. mmaction2's
``label_map_k400.txt``; folder names match with ``_`` for spaces), else the sorted folder names, which
must then be as many as the model's outputs. The metrics are ``gczoo.evaluate.validate``'s
(torchmetrics, summed over ranks; each rank reads its own shard of the clips, none twice).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gczoo.args import ArgumentParser, non_negative_int, positive_int
from gczoo.evaluate import SkippingLoader, collate_skipping, read_class_map, validate
from gczoo.files import atomic_write_text, check_output_dir

from .clips import ClipFolder, ClipSampling, empty_classes, scan_clip_folder
from .factory import VIDEO_MODELS, create_video_model

__all__ = ['ViewAverage', 'map_classes', 'build_parser', 'evaluate_video', 'main']


class ViewAverage(nn.Module):
    """(B, V, 3, T, H, W) -> log of the softmax scores averaged over the V views (mmaction2's 'prob').

    The log keeps the ranking of the averaged probabilities (top-k) and makes the cross-entropy loss
    the negative log of the averaged probability of the true class."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        b, v = views.shape[:2]
        logits = self.model(views.flatten(0, 1)).float()
        if not bool(torch.isfinite(logits).all()):  # torchmetrics would drop NaNs from the loss silently
            raise ValueError('the model produced non-finite scores: its weights (or the input normalisation) are '
                             'broken; check the checkpoint')
        probs = logits.softmax(dim=-1)
        return probs.view(b, v, -1).mean(dim=1).clamp_min(1e-30).log()


def map_classes(class_names: Sequence[str], num_classes: int, class_map: Optional[str]) -> Dict[str, int]:
    """Class folder -> output index (see the module docstring); ``ValueError`` saying what does not fit."""
    if class_map:
        table = read_class_map(class_map)
        table.update({k.replace(' ', '_'): v for k, v in list(table.items())})
        missing = [n for n in class_names if n not in table]
        if missing:
            raise ValueError(f'--class-map {class_map!r} has no entry for {len(missing)} of the {len(class_names)} '
                             f'class folders (e.g. {", ".join(missing[:5])})')
        outside = [n for n in class_names if not 0 <= table[n] < num_classes]
        if outside:
            raise ValueError(f'--class-map {class_map!r} maps {outside[0]!r} to {table[outside[0]]}, outside the '
                             f"model's {num_classes} outputs")
        return {n: table[n] for n in class_names}
    if len(class_names) != num_classes:
        raise ValueError(
            f'the clip folder has {len(class_names)} class folders but the model has {num_classes} outputs: pass '
            f'--class-map FILE (one class name per line, e.g. mmaction2\'s label_map_k400.txt) or --num-classes '
            f'{len(class_names)} with a checkpoint trained on these classes')
    return {n: i for i, n in enumerate(class_names)}


def build_parser() -> ArgumentParser:
    d = ClipSampling()
    p = ArgumentParser(prog='gczoo eval-video', description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('data_dir', type=Path, help='DATA/<class>/<video file or frame folder>')
    p.add_argument('--model', default='i3d_r50_nl', choices=sorted(VIDEO_MODELS), help='video model')
    p.add_argument('--pretrained', action='store_true', help="the model's default tag (mmaction2's Kinetics-400)")
    p.add_argument('--checkpoint', default='', help='weights file (gczoo or mmaction2 layout) instead')
    p.add_argument('--num-classes', type=positive_int, default=None, help='head size (default: the tag\'s 400)')
    p.add_argument('--class-map', default='', help='one class name per line (line number = output index)')
    p.add_argument('--clip-len', type=positive_int, default=d.clip_len)
    p.add_argument('--frame-interval', type=positive_int, default=d.frame_interval)
    p.add_argument('--num-clips', type=positive_int, default=d.num_clips)
    p.add_argument('--num-crops', type=int, choices=(1, 3), default=d.num_crops, help='3: ThreeCrop, 1: centre')
    p.add_argument('--resize-short', type=positive_int, default=d.resize_short)
    p.add_argument('--crop-size', type=positive_int, default=d.crop_size)
    p.add_argument('-b', '--batch-size', type=positive_int, default=1, help='clips per batch (each has all its views)')
    p.add_argument('-j', '--workers', type=non_negative_int, default=2)
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: CUDA if present)")
    p.add_argument('--results-file', default='', help='write the results as JSON here (atomically)')
    p.add_argument('--no-progress', action='store_true')
    return p


def evaluate_video(args: argparse.Namespace) -> Dict[str, Any]:
    """One evaluation; returns the results (the same on every rank)."""
    from torch.utils.data import DataLoader

    from gczoo.distributed import ShardSampler, gather_across_ranks, init_distributed

    samples, class_names = scan_clip_folder(args.data_dir)  # before building the model: fail fast
    if args.results_file:  # before hours of decoding, not after
        if Path(args.results_file).is_dir():
            raise ValueError(f'--results-file {args.results_file!r} is a folder; give a file name (results.json)')
        check_output_dir(Path(args.results_file).resolve().parent, '--results-file')
    env = init_distributed(args.device)
    overlay = dict(file=args.checkpoint) if args.checkpoint else None
    model = create_video_model(args.model, pretrained=bool(args.pretrained or args.checkpoint),
                               num_classes=args.num_classes, pretrained_cfg_overlay=overlay)
    cfg = model.pretrained_cfg
    trained = cfg.get('checkpoint_num_classes')
    if trained is not None and trained != model.num_classes:
        raise ValueError(f'the weights\' classifier has {trained} classes but the model {model.num_classes} '
                         f'(--num-classes {args.num_classes or "default"}): its fc would be random, not evaluated; '
                         f'pass --num-classes {trained}, or --class-map for these weights\' classes')
    class_to_idx = map_classes(class_names, model.num_classes, args.class_map or None)
    sampling = ClipSampling(args.clip_len, args.frame_interval, args.num_clips, args.num_crops, args.resize_short,
                            args.crop_size, tuple(cfg['mean']), tuple(cfg['std']))
    sampling.check_fits(args.model, model.min_input_size)
    dataset = ClipFolder(samples, class_to_idx, sampling)
    loader = DataLoader(dataset, batch_size=args.batch_size,
                        sampler=ShardSampler(len(dataset), env.rank, env.world_size),
                        num_workers=args.workers, collate_fn=collate_skipping)
    skipping = SkippingLoader(loader)
    empty = empty_classes(samples, class_names)
    if env.is_main and empty:
        print(f'gczoo eval-video: note: {len(empty)} class folder(s) hold no clip ({", ".join(empty[:5])}); they '
              f'keep their class index', flush=True)
    if env.is_main:
        print(f'gczoo eval-video: {args.model} ({model.num_classes} classes) on {args.data_dir}: {len(dataset)} clips, '
              f'{len(class_names)} classes; {sampling.num_clips} clips x {sampling.num_crops} crops of '
              f'{sampling.clip_len}x{sampling.crop_size}x{sampling.crop_size} (interval {sampling.frame_interval}); '
              f'world size {env.world_size}', flush=True)
    metrics = validate(ViewAverage(model.to(env.device)), skipping, num_classes=model.num_classes, device=env.device,
                       criterion=nn.NLLLoss(), progress=None if args.no_progress or not env.is_main else 'eval-video')
    bad = sorted(gather_across_ranks(skipping.bad_files))
    if int(metrics['count']) == 0:
        raise ValueError(f'none of the {len(dataset)} clips in {str(args.data_dir)!r} could be read '
                         f'(e.g. {bad[0] if bad else "?"})')
    return {
        'model': args.model, 'weights': args.checkpoint or (cfg.get('url') if args.pretrained else 'random init'),
        'top1': round(metrics['top1'], 4), 'top5': round(metrics['top5'], 4), 'loss': round(metrics['loss'], 6),
        'count': int(metrics['count']), 'skipped_clips': len(bad), 'skipped': bad,
        'num_classes': model.num_classes, 'data_classes': len(class_names),
        'sampling': {k: list(v) if isinstance(v, tuple) else v for k, v in vars(sampling).items()},
        'world_size': env.world_size,
    }


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo eval-video``: prints the results (and skipped clips), writes ``--results-file``."""
    from gczoo.distributed import cleanup_distributed, is_main_process
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        results = evaluate_video(args)
        main_rank = is_main_process()  # asked before the process group is gone
    finally:
        cleanup_distributed()
    if main_rank:
        skipped = results['skipped_clips']
        print(f"gczoo eval-video: {results['model']}: top-1 {results['top1']:.2f}, top-5 {results['top5']:.2f} "
              f"over {results['count']} clips; skipped {skipped} unreadable clip{'s' if skipped != 1 else ''}"
              + (f" (e.g. {results['skipped'][0]})" if skipped else ''), flush=True)
        if args.results_file:
            atomic_write_text(args.results_file, json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    from gczoo.runner import run
    sys.exit(run(main, sys.argv[1:], 'gczoo eval-video'))
