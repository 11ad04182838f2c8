"""Parameters, multiply-accumulates (GMACs) and FLOPs of a model at any input size.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass in eval mode. By default
the model is built on the ``meta`` device, so no arithmetic runs and ResNet-50 at 224 takes well
under a second; a module passed in is counted where it lives.

Counting convention (timm's): 1 MAC = one multiply-add, reported as GMACs; GFLOPs are 2 x GMACs and
labelled as such. timm's published tables (e.g. ``resnet50``: 4.11 GMACs at 224, 11.11 M activations)
were measured with fvcore's ``FlopCountAnalysis`` at its defaults, and this module counts the same
operations:

* convolutions and every matrix product (``mm``/``addmm``/``bmm``/``baddbmm``: linear layers,
  ``torch.matmul``/``einsum``) - ``FlopCounterMode``'s own formulas, divided by 2 (it counts 2
  FLOPs per multiply-add);
* ``F.scaled_dot_product_attention`` as its two matrix products (``q k^T`` and ``attn v``). On CUDA
  ``FlopCounterMode`` counts the fused kernels itself; on CPU the call lands in
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which it does not count, so a formula is
  added here (``custom_mapping``, no monkeypatching); on ``meta`` SDPA runs its math path and the two
  ``bmm`` are counted as such. The Non-local, SAGAN and Simplified-NL/GC attention products are all
  counted;
* normalisation layers with fvcore's formulas, which is what takes ResNet-50 from 4.09 (convolutions
  + classifier only: 4.0892) to timm's 4.11: eval-mode batch norm 2 MACs per element with an
  affine, 1 without; training-mode batch norm and layer/group norm 5 per element with an affine, 4
  without.

Not counted, as in fvcore/timm: element-wise ops (activations, residual adds, attention gating,
sigmoid), softmax, pooling and other reductions (fvcore counts ``adaptive_avg_pool2d`` as one per
input element: 0.0001 G for ResNet-50, below the second decimal).

Papers use other counters; ``gczoo.papers`` records what each paper's ResNet-50 figure means
(``PAPERS[key].reported``), and the tests compare each paper's ratio (model / its own ResNet-50) with
ours.
"""
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from gczoo.args import ArgumentParser, positive_int
from gczoo.errors import UsageError
from gczoo.files import atomic_write_text, check_output_dir, write_files
from gczoo.models import ZOO_MODELS  # importing gczoo.models registers the zoo with timm
from gczoo.models.registry import resolve_model_name

__all__ = [
    'BASELINE_MODEL', 'count_complexity', 'complexity_table', 'markdown_table', 'write_json', 'main',
]

BASELINE_MODEL = 'resnet50'  # timm's resnet50: the reference every ratio is taken against
aten = torch.ops.aten

# ---------------------------------------------------------------------------------------------------
# Extra FlopCounterMode formulas. FlopCounterMode counts 2 FLOPs per multiply-add, so every formula
# below returns 2 x (MACs) to stay in its unit; count_complexity divides the total by 2.


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _batch_norm_flops(input_shape, weight_shape, bias_shape, running_mean, running_var, training, *args,
                      out_shape=None, **kwargs) -> int:
    """fvcore's batch-norm rule: eval 2 (affine) / 1 MAC per element; training 5 / 4."""
    affine = weight_shape is not None
    per_element = (5 if affine else 4) if training else (2 if affine else 1)
    return 2 * per_element * _numel(input_shape)


def _batch_norm_no_training_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * (2 if weight_shape is not None else 1) * _numel(input_shape)


def _layer_norm_flops(input_shape, normalized_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """fvcore's layer/group/instance-norm rule: 5 MACs per element with an affine, 4 without."""
    return 2 * (5 if weight_shape is not None else 4) * _numel(input_shape)


def _group_norm_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * (5 if weight_shape is not None else 4) * _numel(input_shape)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The two products of attention: (..., Lq, d) @ (..., d, Lk) and (..., Lq, Lk) @ (..., Lk, dv)."""
    *batch, lq, d = query_shape
    lk = key_shape[-2]
    dv = value_shape[-1]
    b = _numel(batch)
    return 2 * b * lq * lk * (d + dv)


def _custom_mapping() -> Dict[Any, Callable[..., int]]:
    mapping: Dict[Any, Callable[..., int]] = {
        aten.native_batch_norm: _batch_norm_flops,
        aten._native_batch_norm_legit: _batch_norm_flops,
        aten._native_batch_norm_legit_no_training: _batch_norm_no_training_flops,
        aten.native_layer_norm: _layer_norm_flops,
        aten.native_group_norm: _group_norm_flops,
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    }
    if hasattr(aten, 'cudnn_batch_norm'):
        mapping[aten.cudnn_batch_norm] = _batch_norm_flops
    return mapping


_NORM_OPS = ('batch_norm', 'layer_norm', 'group_norm')

def _category(op: Any) -> str:
    name = str(op)  # an OpOverloadPacket prints as 'aten.convolution'
    if any(key in name for key in _NORM_OPS):
        return 'norm'
    if 'conv' in name:
        return 'conv'
    return 'matmul'  # mm, addmm, bmm, baddbmm, sdpa: every other counted op is a matrix product


# ---------------------------------------------------------------------------------------------------


def _as_hw(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(img_size, bool):
        raise TypeError(f'img_size must be an int or (height, width), got {img_size!r}')
    if isinstance(img_size, int):
        hw = (img_size, img_size)
    elif isinstance(img_size, (tuple, list)) and len(img_size) == 2 and all(isinstance(v, int) for v in img_size):
        hw = (int(img_size[0]), int(img_size[1]))
    else:
        raise TypeError(f'img_size must be an int or (height, width), got {img_size!r}')
    if min(hw) < 1:
        raise ValueError(f'img_size must be positive, got {img_size!r}')
    return hw


def _create_on_meta(model_name: str, **kwargs: Any) -> nn.Module:
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f'model must be a timm model name or an nn.Module, got {model_name!r}')
    resolve_model_name(model_name, what='model', folders=False)
    with torch.device('meta'):
        return timm.create_model(model_name, pretrained=False, **kwargs)


def _in_chans(model: nn.Module) -> int:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    input_size = cfg.get('input_size') if isinstance(cfg, dict) else None
    return int(input_size[0]) if input_size else 3


def count_complexity(
        model_or_name: Union[str, nn.Module],
        img_size: Union[int, Sequence[int]] = 224,
        *,
        batch_size: int = 1,
        in_chans: Optional[int] = None,
        **create_kwargs: Any,
) -> Dict[str, Any]:
    """Parameters and per-image GMACs/GFLOPs of a model at ``img_size``, in timm's counting convention.

    ``model_or_name``: a timm/gczoo model name (built on the ``meta`` device: nothing is computed and
    no weights are allocated; ``create_kwargs`` go to ``timm.create_model``) or an ``nn.Module``
    (counted on its own device, in eval mode; its train/eval state is restored). ``in_chans``: input
    channels (default: the model's pretrained cfg, else 3), e.g. to count a single attention block.

    Returns ``dict(model, img_size, params_m, gmacs, gflops, gmacs_conv, gmacs_matmul, gmacs_norm)``:
    ``gflops`` = 2 x ``gmacs``; the three parts sum to ``gmacs`` (``gmacs_matmul`` holds linear layers
    and the attention products).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    if in_chans is not None and (not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1):
        raise ValueError(f'in_chans must be a positive int, got {in_chans!r}')
    height, width = _as_hw(img_size)
    if isinstance(model_or_name, nn.Module):
        model = model_or_name
        cfg = getattr(model, 'pretrained_cfg', None)
        name = cfg.get('architecture') if isinstance(cfg, dict) and cfg.get('architecture') else type(model).__name__
    elif isinstance(model_or_name, str):
        if in_chans is not None:
            create_kwargs['in_chans'] = in_chans
        model, name = _create_on_meta(model_or_name, **create_kwargs), model_or_name
    else:
        raise TypeError(f'model_or_name must be a model name or an nn.Module, got {type(model_or_name).__name__}')

    params = sum(p.numel() for p in model.parameters())
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device('cpu'), torch.get_default_dtype()
    x = torch.zeros(batch_size, in_chans or _in_chans(model), height, width, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    parts = {'conv': 0, 'matmul': 0, 'norm': 0}
    for op, flops in counter.get_flop_counts().get('Global', {}).items():
        parts[_category(op)] += flops
    per_image_gmacs = {k: v / 2 / batch_size / 1e9 for k, v in parts.items()}
    gmacs = sum(per_image_gmacs.values())
    return {
        'model': name,
        'img_size': height if height == width else [height, width],
        'params_m': params / 1e6,
        'gmacs': gmacs,
        'gflops': 2 * gmacs,
        'gmacs_conv': per_image_gmacs['conv'],
        'gmacs_matmul': per_image_gmacs['matmul'],
        'gmacs_norm': per_image_gmacs['norm'],
    }


# ---------------------------------------------------------------------------------------------------
# Tables and the command.

_COLUMNS = ('model', 'img_size', 'params_m', 'gmacs', 'gflops', 'gmacs_vs_resnet50', 'gmacs_conv', 'gmacs_matmul',
            'gmacs_norm')


def complexity_table(
        models: Sequence[Union[str, nn.Module]],
        img_size: Union[int, Sequence[int]] = 224,
        *,
        baseline: Optional[str] = BASELINE_MODEL,
        progress: bool = False,
) -> List[Dict[str, Any]]:
    """``count_complexity`` of each model, plus ``gmacs_vs_resnet50`` (ratio to ``baseline`` at the same size)."""
    names = list(models)
    if baseline is not None and baseline not in names:
        names = [baseline] + names
    iterator = names
    if progress:
        from tqdm import tqdm  # an optional extra (gczoo[train]): imported only when progress is shown
        iterator = tqdm(names, desc='complexity', leave=False, disable=None)  # None: only on a terminal
    rows = [count_complexity(m, img_size) for m in iterator]
    base = next((r for r in rows if r['model'] == baseline), None)
    for row in rows:
        row['gmacs_vs_resnet50'] = row['gmacs'] / base['gmacs'] if base else float('nan')
    return rows


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of ``complexity_table`` rows (GFLOPs = 2 x GMACs)."""
    lines = [
        '| model | img size | params (M) | GMACs | GFLOPs (2 x MACs) | GMACs vs resnet50 |',
        '|---|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        size = r['img_size'] if isinstance(r['img_size'], int) else 'x'.join(str(v) for v in r['img_size'])
        lines.append(f"| {r['model']} | {size} | {r['params_m']:.2f} | {r['gmacs']:.3f} | {r['gflops']:.3f} | "
                     f"{r.get('gmacs_vs_resnet50', float('nan')):.3f} |")
    return '\n'.join(lines)


def _csv_text(rows: Sequence[Dict[str, Any]]) -> str:
    buffer = io.StringIO(newline='')
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, extrasaction='ignore')
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def _json_text(rows: Sequence[Dict[str, Any]]) -> str:
    payload = {
        'convention': ('timm/fvcore: 1 MAC = 1 multiply-add; conv, linear/matmul/bmm, SDPA products, '
                       'norm layers (fvcore rules); GFLOPs = 2 x GMACs; per image, eval mode'),
        'counter': f'torch.utils.flop_counter.FlopCounterMode (torch {torch.__version__})',
        'models': {r['model']: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != 'model'}
                   for r in rows},
    }
    return json.dumps(payload, indent=2) + '\n'


def write_json(rows: Sequence[Dict[str, Any]], path: Union[str, Path]) -> Path:
    """``complexity_table`` rows as JSON ``{convention, counter, models: {name: row}}`` (written whole or not at all)."""
    return atomic_write_text(Path(path), _json_text(rows))


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog='gczoo complexity',
        description='Parameters, GMACs (multiply-adds, timm convention) and GFLOPs (= 2 x GMACs) of models, '
                    'counted with torch FlopCounterMode on the meta device. Prints a Markdown table and '
                    'writes CSV + JSON.')
    p.add_argument('models', nargs='*', help='timm/gczoo model names')
    p.add_argument('--all', action='store_true', help="every gczoo model (and timm's resnet50 as the baseline)")
    p.add_argument('--img-size', type=positive_int, nargs='+', default=[224], metavar='N',
                   help='input size: N, or H W (default 224)')
    p.add_argument('--output', default='output/complexity', metavar='PREFIX',
                   help='write PREFIX.csv and PREFIX.json (default output/complexity)')
    p.add_argument('--no-baseline', action='store_true', help='do not add resnet50 to the table')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo complexity`` (errors are printed by ``gczoo.cli.run``)."""
    args = _parser().parse_args(argv)
    models = list(args.models)
    if args.all:
        models += [m for m in ZOO_MODELS if m not in models]
    if not models:
        raise UsageError('name at least one model or pass --all (see gczoo complexity --help)')
    if len(args.img_size) not in (1, 2):
        raise UsageError(f'--img-size takes N or H W, got {len(args.img_size)} numbers')
    img_size = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    csv_path, json_path = Path(f'{args.output}.csv'), Path(f'{args.output}.json')
    check_output_dir(csv_path.parent, '--output')  # an unusable --output fails before the counting
    rows = complexity_table(models, img_size, baseline=None if args.no_baseline else BASELINE_MODEL, progress=True)
    csv_text, json_text = _csv_text(rows), _json_text(rows)
    write_files({csv_path: lambda f: f.write(csv_text.encode()), json_path: lambda f: f.write(json_text.encode())})
    print(markdown_table(rows))
    print(f'\nwrote {csv_path} and {json_path}')
    return 0


if __name__ == '__main__':
    from gczoo.runner import run_main
    run_main(main, 'gczoo complexity')
