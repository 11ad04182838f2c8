"""``gczoo eval-seg``: mIoU, per-class IoU and pixel accuracy of a segmentor on a Cityscapes- or ADE20K-layout
folder, as mmseg's ``IoUMetric`` computes them.

Each image goes through the tag's test pipeline (``gczoo.seg.inference.segment_image``: mmseg's resize,
mean/std, whole or slide mode, logits back at the image's size); the predictions and the ground truth
(train ids, 255 ignored; ``gczoo.seg.data``) fill one confusion matrix (torchmetrics'
``MulticlassConfusionMatrix``, summed over torchrun ranks, each rank taking every ``world_size``-th image,
as ``gczoo eval``). From it, over the whole dataset: IoU_k = TP / (TP + FP + FN), mIoU the mean over the
classes that occur (in the ground truth or the predictions; a class with no pixel in either has no IoU,
as mmseg's nan-mean), aAcc = correct / labelled pixels, Acc_k = TP / (TP + FN). Percent, like mmseg.
"""
import argparse
import json
import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from gczoo.args import ArgumentParser, device_name, non_negative_int, positive_int
from gczoo.files import check_output_dir, write_files

from .create import create_segmentor
from .data import LAYOUTS, SegFolder, find_samples, masks_without_images
from .datasets import IGNORE_INDEX, dataset_info
from .inference import check_slide_window, segment_image
from .tags import MMSEG_MEAN, MMSEG_STD, SEG_DATA

__all__ = ['build_parser', 'iou_from_confusion', 'resolve_seg_config', 'evaluate_segmentation', 'main']

_DEFAULT_SETTING = {'cityscapes': ('cityscapes', '512x1024'), 'ade20k': ('ade20k', '512x512')}


def _window(text: str) -> int:
    return positive_int(text)


def build_parser(prog: str = 'gczoo eval-seg') -> ArgumentParser:
    p = ArgumentParser(prog=prog, description='mIoU / per-class IoU / pixel accuracy of a segmentor (mmseg\'s test '
                                              'pipeline of its tag) on a Cityscapes- or ADE20K-layout folder. '
                                              'Run under torchrun for several processes.')
    p.add_argument('--model', '-m', required=True, metavar='NAME',
                   help='a segmentor, optionally with its tag: ccnet_r50_d8.cityscapes_512x1024_80k')
    p.add_argument('--pretrained', action='store_true', help="the tag's mmseg weights (default tag if none named)")
    p.add_argument('--checkpoint', default='', metavar='PATH', help='weights file (mmseg\'s layout or gczoo\'s)')
    p.add_argument('--data-dir', required=True, metavar='DIR', help='dataset root')
    p.add_argument('--dataset', choices=LAYOUTS, default=None, help="layout (default: the tag's dataset)")
    p.add_argument('--split', default=None, help='split folder (default: Cityscapes val, ADE20K validation)')
    p.add_argument('--num-classes', type=positive_int, default=None, help="classes (default: the tag's or dataset's)")
    p.add_argument('--mode', choices=('whole', 'slide'), default=None, help="inference mode (default: the tag's)")
    p.add_argument('--crop-size', type=_window, nargs=2, default=None, metavar=('H', 'W'), help='slide window')
    p.add_argument('--stride', type=_window, nargs=2, default=None, metavar=('H', 'W'), help='slide stride')
    p.add_argument('--scale', type=positive_int, nargs=2, default=None, metavar=('LONG', 'SHORT'),
                   help="keep-ratio test resize (default: the tag's, e.g. 2048 1024)")
    p.add_argument('--no-resize', action='store_true', help='no test resize (images at their own size)')
    p.add_argument('-j', '--workers', type=non_negative_int, default=2, help='data loading processes per rank')
    p.add_argument('--device', type=device_name, default=None, help='default: cuda if available, else cpu')
    p.add_argument('--output-dir', default=None, metavar='DIR', help='write DIR/<model>.json and DIR/<model>.csv')
    p.add_argument('--no-progress', action='store_true')
    return p


def resolve_seg_config(args: argparse.Namespace, model: torch.nn.Module) -> Dict[str, Any]:
    """The test pipeline: the model's tag (its ``pretrained_cfg``), else the dataset's default setting;
    command-line flags override."""
    cfg = dict(getattr(model, 'pretrained_cfg', {}) or {})
    if 'mode' not in cfg:
        layout = args.dataset or 'cityscapes'
        cfg.update(SEG_DATA[_DEFAULT_SETTING[layout]], mean=MMSEG_MEAN, std=MMSEG_STD,
                   align_corners=model.align_corners)
    if getattr(args, 'pretrained', False) and args.dataset and cfg.get('tag') and args.dataset != cfg['dataset']:
        raise ValueError(f'--dataset {args.dataset}: the tag {cfg["tag"]!r} was trained on {cfg["dataset"]}, its class '
                         f'ids are not {args.dataset}\'s; use a {args.dataset} tag (gczoo list) or drop --dataset')
    cfg['dataset'] = args.dataset or cfg['dataset']
    if args.no_resize and args.scale:
        raise ValueError('--scale and --no-resize contradict each other; pass one')
    if (args.mode or cfg['mode']) == 'whole' and (args.crop_size or args.stride):
        raise ValueError('--crop-size / --stride are the slide window: they need --mode slide (this run is whole '
                         'mode, they would be ignored)')
    if args.mode:
        cfg['mode'] = args.mode
    for key in ('crop_size', 'stride', 'scale'):
        if getattr(args, key):
            cfg[key] = tuple(getattr(args, key))
    if args.no_resize:
        cfg['scale'] = None
    if cfg['mode'] == 'slide' and not (cfg.get('crop_size') and cfg.get('stride')):
        raise ValueError('--mode slide needs --crop-size H W and --stride H W (the tag has none)')
    if cfg['mode'] == 'slide':  # checked before any image is read: a bad window fails at once, in one line
        try:
            cfg['crop_size'], cfg['stride'] = check_slide_window(cfg['crop_size'], cfg['stride'])
        except ValueError as e:
            raise ValueError(f'--crop-size / --stride: {e}') from None
    return cfg


def iou_from_confusion(confusion: torch.Tensor) -> Dict[str, Any]:
    """mmseg's IoU metrics (percent) from a (K, K) confusion matrix ``[target, prediction]``."""
    conf = confusion.double()
    tp = conf.diag()
    target, pred = conf.sum(1), conf.sum(0)
    union = target + pred - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float('nan')))
    acc = torch.where(target > 0, tp / target.clamp_min(1), torch.full_like(tp, float('nan')))
    total = float(target.sum())
    return {
        'mIoU': 100 * float(iou.nanmean()) if bool((union > 0).any()) else float('nan'),
        'mAcc': 100 * float(acc.nanmean()) if bool((target > 0).any()) else float('nan'),
        'aAcc': 100 * float(tp.sum()) / total if total else float('nan'),
        'IoU': [100 * float(v) for v in iou], 'Acc': [100 * float(v) for v in acc], 'pixels': int(total),
    }


def evaluate_segmentation(args: argparse.Namespace) -> Dict[str, Any]:
    """One evaluation as ``gczoo eval-seg`` does it; returns the results (the same on every rank)."""
    import torchmetrics
    from torch.utils.data import DataLoader

    from gczoo.distributed import ShardSampler, init_distributed

    if args.pretrained and args.checkpoint:
        raise ValueError('pass --pretrained or --checkpoint, not both')
    if args.output_dir:  # before the evaluation: a mistyped folder fails now, not after the last image
        check_output_dir(args.output_dir, '--output-dir')
    num_classes = args.num_classes
    if num_classes is None and args.dataset and '.' not in args.model and not args.pretrained:
        num_classes = SEG_DATA[_DEFAULT_SETTING[args.dataset]]['num_classes']  # an untagged model: the dataset's
    model = create_segmentor(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint or None,
                             num_classes=num_classes)
    if args.pretrained and model.num_classes != model.pretrained_cfg.get('num_classes', model.num_classes):
        raise ValueError(f'--num-classes {model.num_classes} with --pretrained: the tag\'s classifiers have '
                         f'{model.pretrained_cfg["num_classes"]} classes, so the heads would be evaluated untrained; '
                         f'drop --num-classes, or pass --checkpoint of a model fine-tuned to {model.num_classes}')
    config = resolve_seg_config(args, model)
    if not args.pretrained and not args.checkpoint:  # as gczoo eval: checked before any image is read
        raise ValueError(f'no weights for --model {args.model!r}: pass --pretrained (the tag\'s mmseg weights) or '
                         f'--checkpoint FILE (evaluating random weights measures nothing)')
    if args.split is None:  # each layout's own name: ADE20K has no 'val' folder
        args.split = {'cityscapes': 'val', 'ade20k': 'validation'}[config['dataset']]
    samples = find_samples(args.data_dir, config['dataset'], args.split)
    env = init_distributed(args.device)
    model.to(env.device).eval()
    classes, _ = dataset_info(config['dataset'])
    num_classes = model.num_classes
    names = list(classes) if len(classes) == num_classes else [f'class{i}' for i in range(num_classes)]
    loader = DataLoader(SegFolder(samples, num_classes), batch_size=None,
                        sampler=ShardSampler(len(samples), env.rank, env.world_size), num_workers=args.workers)
    confusion = torchmetrics.classification.MulticlassConfusionMatrix(
        num_classes, ignore_index=IGNORE_INDEX, validate_args=False).to(env.device)
    if env.is_main:
        print(f'{args.model}: {len(samples)} images of {args.data_dir} ({config["dataset"]}, {args.split}); mode '
              f'{config["mode"]}, scale {config.get("scale")}, align_corners {config["align_corners"]}; world size '
              f'{env.world_size}', flush=True)
        orphans = masks_without_images(args.data_dir, config['dataset'], args.split, samples)
        if orphans:  # not an error (a subset of the images is a valid evaluation), never silent
            print(f'note: {len(orphans)} masks have no image and are not evaluated (first: {str(orphans[0])!r}); '
                  f'the mIoU is over the {len(samples)} images found', flush=True)
    progress = loader
    if env.is_main and not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(loader, desc='eval-seg', leave=False)
    with torch.no_grad():
        for image, mask, index in progress:
            if image is None:
                raise ValueError(index)
            pred = segment_image(model, image, config).argmax(0)
            confusion.update(pred.flatten(), mask.to(env.device).flatten())
    metrics = iou_from_confusion(confusion.compute().cpu())
    return {'model': args.model, 'dataset': config['dataset'], 'split': args.split, 'images': len(samples),
            'mode': config['mode'], 'scale': config.get('scale'), 'crop_size': config.get('crop_size'),
            'stride': config.get('stride'), 'align_corners': config['align_corners'], 'world_size': env.world_size,
            'classes': names, **metrics}


def _report(results: Dict[str, Any]) -> List[str]:
    lines = [f'{"class":<24} {"IoU":>7} {"Acc":>7}']
    for name, iou, acc in zip(results['classes'], results['IoU'], results['Acc']):
        lines.append(f'{name:<24} {iou:7.2f} {acc:7.2f}')
    lines.append(f'mIoU {results["mIoU"]:.2f}  mAcc {results["mAcc"]:.2f}  aAcc {results["aAcc"]:.2f}  '
                 f'({results["images"]} images, {results["pixels"]} labelled pixels)')
    return lines


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    from gczoo.distributed import cleanup_distributed, is_main_process
    args = build_parser().parse_args(argv)
    try:
        results = evaluate_segmentation(args)
        main_process = is_main_process()
    finally:
        cleanup_distributed()
    if not main_process:
        return 0
    print('\n'.join(_report(results)))
    if args.output_dir:
        from pathlib import Path
        out = Path(args.output_dir)
        stem = args.model.replace('/', '_')
        rows = ['class,IoU,Acc'] + [f'{n},{i:.4f},{a:.4f}' for n, i, a in
                                    zip(results['classes'], results['IoU'], results['Acc'])]
        csv_text = '\n'.join(rows) + '\n'
        json_text = json.dumps({k: _json_safe(v) for k, v in results.items()}, indent=2)
        write_files({out / f'{stem}.csv': lambda f: f.write(csv_text.encode('utf-8')),  # both or neither
                     out / f'{stem}.json': lambda f: f.write(json_text.encode('utf-8'))})
        print(f'wrote {out / stem}.json and .csv')
    return 0
