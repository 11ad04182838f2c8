"""The two commands: ``gczoo visualize`` (attention-map PNGs) and ``gczoo analyze-attention`` (GCNet's
query-independence table and chart).

Each ``main`` parses its flags with ``gczoo.args`` (checked types; a bad flag is one ``UsageError``),
checks the output folder before any model is loaded, and raises on failure: ``gczoo.runner.run`` prints
one line and exits 2.
"""
import argparse
import math
from typing import Any, Dict, List, Optional, Tuple

from gczoo.args import ArgumentParser, device_name, non_negative_int, positive_int

from . import images
from .analysis import analyze_attention, write_analysis
from .images import find_image_files, load_images, sample_images
from .loading import load_model
from gczoo.files import check_output_dir
from .pictures import visualize

__all__ = ['main', 'analyze_main', 'visualize_parser', 'analyze_parser']

_MODEL_HELP = 'zoo model name (random init unless --pretrained/--checkpoint), NAME=CHECKPOINT, local-dir:DIR or ' \
              'hf-hub:ORG/REPO'


def _query_point(text: str) -> Tuple[float, float]:
    """``Y,X``: a point in pixels of the model input."""
    try:
        y, x = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected y,x (pixels of the model input), got {text!r}') from None
    if not (math.isfinite(y) and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f'expected finite y,x (pixels of the model input), got {text!r}')
    return y, x


def _query_pairs(text: str) -> int:
    """An integer >= 2: the analysis compares the maps of pairs of queries."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f'expected an integer >= 2 (the maps of pairs of queries are compared), '
                                         f'got {text!r}')
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--pretrained', action='store_true', help='load the published weights of (the first) MODEL')
    parser.add_argument('--checkpoint', default=None, help='weights file (.safetensors, or a torch file read with '
                                                           'weights_only=True) for (the single) MODEL')
    parser.add_argument('--blocks', nargs='+', default=None, metavar='GLOB',
                        help='only the attention blocks whose module name matches (e.g. "layer3.*")')
    parser.add_argument('--img-size', type=positive_int, default=None,
                        help="input size (default: the model's data config)")
    parser.add_argument('--seed', type=non_negative_int, default=0, help='seed of the random init (default 0)')
    parser.add_argument('--device', type=device_name, default='cpu', help='torch device (default cpu)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def visualize_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='gczoo visualize', description=(
            'PNG grids of what each attention block of MODEL attends to: the query points on the image and each '
            "query's map (Non-local, SAGAN, criss-cross), the context mask (GC, Simplified NL) and the spatial gate "
            "(CBAM, BAM), overlaid on the model's input image. Without IMAGE: scikit-image's sample photos."))
    parser.add_argument('model', metavar='MODEL', help=_MODEL_HELP)
    parser.add_argument('images', metavar='IMAGE', nargs='*', help='image files (default: the sample photos)')
    parser.add_argument('--queries', type=positive_int, default=4, help='query points on a grid (default 4)')
    parser.add_argument('--query-points', nargs='+', type=_query_point, default=None, metavar='Y,X',
                        help='query points in pixels of the model input image (overrides --queries)')
    parser.add_argument('--out', default='attention_maps', help='output directory (default ./attention_maps)')
    _add_model_args(parser)
    return parser


def analyze_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='gczoo analyze-attention', description=(
            "GCNet's query-independence measure: the mean cosine distance and Jensen-Shannon divergence between "
            'the attention maps of different query positions, per attention block, over a folder of images '
            "(default: scikit-image's sample photos). Non-local and SAGAN: the query maps; criss-cross: the "
            'effective map through its recurrent steps, next to the same measure for uniform weights; GC / '
            'Simplified NL: 0 by construction (reference rows).'))
    parser.add_argument('models', metavar='MODEL', nargs='+', help=_MODEL_HELP)
    parser.add_argument('--compare', nargs='+', default=[], metavar='MODEL',
                        help='more models for the same table and chart, e.g. local-dir:OUT/export')
    parser.add_argument('--data-dir', default=None,
                        help='ImageFolder, ImageNet layout (its val/ split is used) or a flat folder of images')
    parser.add_argument('--max-images', type=positive_int, default=None,
                        help='use at most this many images (evenly spaced)')
    parser.add_argument('--queries', type=_query_pairs, default=32,
                        help='query positions per block, on a grid (default 32)')
    parser.add_argument('--batch-size', type=positive_int, default=4, help='images per forward (default 4)')
    parser.add_argument('--out', default='attention_analysis', help='output directory (default ./attention_analysis)')
    _add_model_args(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo visualize MODEL [IMAGE ...]``: one PNG of attention maps per image."""
    args = visualize_parser().parse_args(argv)
    check_output_dir(args.out, '--out')
    inputs = load_images(args.images) if args.images else sample_images()
    loaded = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, seed=args.seed,
                        device=args.device)
    paths = visualize(loaded.model, inputs, args.out, num_queries=args.queries, query_points=args.query_points,
                      blocks=args.blocks, img_size=args.img_size, model_label=loaded.label,
                      progress=not args.no_progress)
    for path in paths:
        print(path)
    return 0


def analyze_main(argv: Optional[List[str]] = None) -> int:
    """``gczoo analyze-attention MODEL [MODEL ...] [--compare MODEL ...]``: CSV, JSON and bar chart."""
    args = analyze_parser().parse_args(argv)
    specs = list(args.models) + list(args.compare)
    if args.checkpoint is not None and len(args.models) != 1:
        raise ValueError('--checkpoint applies to a single MODEL; use NAME=CHECKPOINT to give several')
    if args.data_dir is not None:
        find_image_files(args.data_dir)  # a missing or empty folder fails now, not after loading the models
    check_output_dir(args.out, '--out')
    rows: List[Dict[str, Any]] = []
    for i, spec in enumerate(specs):
        first = i == 0
        loaded = load_model(spec, pretrained=args.pretrained and first, seed=args.seed, device=args.device,
                            checkpoint=args.checkpoint if first else None)
        rows += analyze_attention(loaded, data_dir=args.data_dir, num_queries=args.queries, blocks=args.blocks,
                                  img_size=args.img_size, batch_size=args.batch_size, max_images=args.max_images,
                                  progress=not args.no_progress)
    if not rows:
        raise ValueError('MODEL: none of the selected blocks has query-based or context attention '
                         '(Non-local, SAGAN, criss-cross, GC, Simplified NL)')
    samples = 'scikit-image samples: ' + ', '.join(images.SAMPLE_IMAGES)
    config = dict(models=specs, checkpoint=args.checkpoint, pretrained=args.pretrained, queries=args.queries,
                  data_dir=args.data_dir or samples, img_size=args.img_size, seed=args.seed, blocks=args.blocks,
                  max_images=args.max_images)
    paths = write_analysis(rows, args.out, config=config)
    _print_table(rows)
    for path in paths.values():
        print(path)
    return 0


def _print_table(rows: List[Dict[str, Any]]) -> None:
    print(f'{"label":<32} {"block":<14} {"type":<20} {"map":<18} {"cos dist":>9} {"JS":>9} {"imgs":>5} {"K":>4}')
    for r in rows:
        print(f'{r["label"][:32]:<32} {r["block"]:<14} {r["block_type"]:<20} {r["map"]:<18} '
              f'{r["cosine_distance"]:>9.4g} {r["js_divergence"]:>9.4g} {r["n_images"]:>5} {r["n_queries"]:>4}')
