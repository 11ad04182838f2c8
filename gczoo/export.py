"""``gczoo export MODEL``: a model as an ONNX graph (or a ``torch.export`` program) that is checked
against eager PyTorch and carries its own preprocessing.

What the command adds to a bare ``torch.onnx.export`` call:

* the weights through gczoo's one loading path (``--pretrained``, ``--checkpoint``, ``hf-hub:``,
  ``local-dir:``), in eval mode;
* dynamic batch and spatial axes with a lower bound the zoo's models need (``torch.export``
  specialises sizes 0 and 1, so the last stage of a ResNet and the 2x2 pooling of a sub-sampled
  Non-local block need inputs of at least 64 pixels; ``--min-size``, or ``--static`` for one size);
* the preprocessing a runtime must reproduce (timm's ``resolve_data_config``: input size, mean, std,
  interpolation, crop_pct, crop_mode) as ONNX ``metadata_props`` next to the graph (values in JSON),
  or as ``gczoo_preprocessing.json`` inside a ``.pt2`` archive;
* a check before anything is written: ONNX Runtime (or the exported program) at the example size and
  at a second size, against eager, within ``--atol`` (relative to the logits' scale when they exceed 1);
* the file written whole or not at all (``gczoo.files.atomic_write``).
"""
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gczoo import __version__
from gczoo.args import ArgumentParser, non_negative_float, positive_int
from gczoo.errors import GczooError, UsageError
from gczoo.evaluate import create_eval_model
from gczoo.files import atomic_write

__all__ = ['FORMATS', 'EXPORTERS', 'MIN_OPSET', 'preprocessing', 'export_program', 'export_onnx', 'main']

FORMATS = ('onnx', 'pt2')
EXPORTERS = ('dynamo', 'torchscript')
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = 'input', 'logits'
_AXES = ('batch', 'height', 'width')


def preprocessing(model: nn.Module) -> Dict[str, Any]:
    """timm's data config of ``model`` (what its images must look like), JSON-ready."""
    from timm.data import resolve_data_config
    config = resolve_data_config({}, model=model)
    keys = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
    return {k: list(config[k]) if isinstance(config[k], tuple) else config[k] for k in keys if k in config}


def _dynamic_shapes(min_size: int) -> Tuple[Dict[int, Any], ...]:
    return ({0: torch.export.Dim('batch', min=1),
             2: torch.export.Dim('height', min=min_size),
             3: torch.export.Dim('width', min=min_size)},)


def export_program(model: nn.Module, example: torch.Tensor, *, dynamic: bool = True,
                   min_size: int = 64) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``example``; dynamic batch/height/width unless ``dynamic=False``."""
    from torch._dynamo.exc import UserError
    try:
        return torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(min_size) if dynamic else None)
    except UserError as e:  # a constraint violation: the graph would only be right for some sizes
        guards = [line.strip(' -') for line in str(e).splitlines() if 'generated guard' in line]
        raise ValueError(f'torch.export cannot keep the batch and spatial axes dynamic for this model down to '
                         f'--min-size {min_size}: {guards[0] if guards else str(e).strip().splitlines()[0]}; '
                         f'pass --static (one input size), a larger --min-size, or --exporter torchscript') from e


def _rename_dims(proto, names: Dict[str, str]) -> None:
    """Give the dynamo exporter's symbolic dimensions (s77, ...) readable names everywhere in the graph."""
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def export_onnx(model: nn.Module, example: torch.Tensor, *, exporter: str = 'dynamo', opset: int = 18,
                dynamic: bool = True, min_size: int = 64):
    """The ``onnx.ModelProto`` of ``model`` (input ``'input'``, output ``'logits'``)."""
    import onnx
    if exporter == 'dynamo':
        program = export_program(model, example, dynamic=dynamic, min_size=min_size)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                             output_names=[OUTPUT_NAME], verbose=False)
        proto = onnx_program.model_proto
        if dynamic:
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            _rename_dims(proto, {dims[i].dim_param: name for i, name in zip((0, 2, 3), _AXES) if dims[i].dim_param})
        return proto
    f = io.BytesIO()
    axes = {INPUT_NAME: dict(zip((0, 2, 3), _AXES)), OUTPUT_NAME: {0: 'batch'}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(model, (example,), f, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


def _check_sizes(example: torch.Tensor, dynamic: bool) -> List[torch.Tensor]:
    """The example, and with dynamic axes another batch and a non-square larger size."""
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = example.shape
    sizes = [(b, c, h, w)] + ([(1, c, h + 32, w + 16)] if dynamic else [])
    return [torch.randn(s, generator=gen) for s in sizes]


def _compare(what: str, outputs: Sequence[Any], references: Sequence[torch.Tensor], atol: float) -> float:
    worst = 0.0
    for out, ref in zip(outputs, references):
        error = float((torch.as_tensor(out) - ref).abs().max())
        worst = max(worst, error)
        allowed = atol * max(1.0, float(ref.abs().max()))
        if not error <= allowed:  # also catches NaN
            raise ValueError(f'{what} differs from eager PyTorch by {error:.3g} at input size {list(ref.shape)} '
                             f'(allowed {allowed:.3g}); nothing was written. Try --exporter torchscript, or '
                             f'report the model; --atol raises the bar, --no-check skips the check')
    return worst


def _check_onnx(data: bytes, inputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor], atol: float) -> float:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(data, options, providers=['CPUExecutionProvider'])
    outputs = [session.run(None, {INPUT_NAME: x.numpy()})[0] for x in inputs]
    return _compare('ONNX Runtime', outputs, references, atol)


@contextlib.contextmanager
def _exporter_errors(model_name: str, exporter: str) -> Iterator[None]:
    """An exporter's own failure (an unsupported op, a tracing error) as one line naming the model."""
    try:
        yield
    except (GczooError, ValueError, OSError, ModuleNotFoundError):  # the runner shows these (and names an extra)
        raise
    except Exception as e:  # noqa: BLE001  (torch's exporters raise many kinds; the runner shows one line)
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise GczooError(f'{exporter} failed on {model_name}: {type(e).__name__}: {lines[0] if lines else ""} '
                         f'(try the other --exporter, or --static; GCZOO_DEBUG=1 shows the traceback)') from e


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog='gczoo export',
        description='Export a model to ONNX (or a torch.export .pt2 program) with dynamic batch and spatial axes, '
                    'check it against eager PyTorch, and store its preprocessing (input size, mean/std, '
                    'interpolation, crop_pct) as metadata next to the graph.')
    p.add_argument('model', help='gczoo/timm model name, hf-hub:ORG/REPO or local-dir:DIR')
    p.add_argument('-o', '--output', default=None, metavar='FILE', help='output file (default: MODEL.onnx / MODEL.pt2)')
    p.add_argument('--format', choices=FORMATS, default='onnx', help='onnx (default) or pt2 (torch.export.save)')
    weights = p.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help="the model's pretrained weights")
    weights.add_argument('--checkpoint', default=None, metavar='FILE',
                         help='weights file (.safetensors or a torch file)')
    p.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights")
    p.add_argument('--num-classes', type=positive_int, default=None, help='classifier size (default: from the weights)')
    p.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                   help='ONNX exporter: dynamo (torch.export based, default) or torchscript (tracing)')
    p.add_argument('--opset', type=positive_int, default=18, help=f'ONNX opset (>= {MIN_OPSET}; default 18)')
    p.add_argument('--input-size', type=positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                   help="example input size (default: the model's data config)")
    p.add_argument('--static', action='store_true', help='fixed batch and input size instead of dynamic axes')
    p.add_argument('--min-size', type=positive_int, default=64,
                   help='smallest height/width the dynamic graph must accept (default 64)')
    p.add_argument('--atol', type=non_negative_float, default=1e-4,
                   help='allowed max abs error against eager (x the logits scale when above 1; default 1e-4)')
    p.add_argument('--no-check', action='store_true', help='skip the comparison with eager PyTorch')
    return p


def _output_path(args) -> Path:
    suffix = f'.{args.format}'
    if args.output is None:
        name = args.model.split(':', 1)[-1].rstrip('/')
        return Path(''.join(c if c.isalnum() or c in '._-' else '_' for c in Path(name).name) + suffix)
    path = Path(args.output)
    if path.suffix != suffix:
        raise UsageError(f'--output {args.output!r}: a --format {args.format} file must end in {suffix}')
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo export`` (errors are printed by ``gczoo.runner.run``)."""
    args = _parser().parse_args(argv)
    if args.opset < MIN_OPSET:
        raise UsageError(f'argument --opset: must be >= {MIN_OPSET}, got {args.opset}')
    if args.format == 'pt2' and args.exporter != 'dynamo':
        raise UsageError('--exporter applies to --format onnx only')
    output = _output_path(args)
    output.parent.mkdir(parents=True, exist_ok=True)  # an unusable --output fails before the export
    if not (args.pretrained or args.checkpoint or args.model.startswith(('hf-hub:', 'local-dir:'))):
        raise UsageError(f'no weights for {args.model!r}: pass --pretrained, --checkpoint FILE, or an hf-hub:ORG/REPO '
                         f'or local-dir:DIR name (an export of random weights deploys nothing)')
    if args.format == 'onnx':  # the extra's packages, before the slow part (the runner names a missing one)
        import onnx  # noqa: F401
        if args.exporter == 'dynamo':
            import onnxscript  # noqa: F401
        if not args.no_check:
            import onnxruntime  # noqa: F401
    model = create_eval_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                              num_classes=args.num_classes, use_ema=args.use_ema)
    meta: Dict[str, Any] = dict(preprocessing(model))
    channels, height, width = args.input_size or meta['input_size']
    if not args.static and min(height, width) < args.min_size:
        raise UsageError(f'--input-size {height}x{width} is below --min-size {args.min_size}')
    example = torch.randn(1 if args.static else 2, channels, height, width)  # batch 2: 1 would be specialised
    inputs = _check_sizes(example, dynamic=not args.static)
    with torch.no_grad():
        references = [model(x) for x in inputs]
    meta.update(model=args.model, num_classes=int(references[0].shape[-1]), input_name=INPUT_NAME,
                output_name=OUTPUT_NAME, dynamic_axes=None if args.static else list(_AXES),
                min_input_size=None if args.static else args.min_size, gczoo_version=__version__,
                torch_version=torch.__version__)

    if args.format == 'pt2':
        with _exporter_errors(args.model, 'torch.export'):
            program = export_program(model, example, dynamic=not args.static, min_size=args.min_size)
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={'gczoo_preprocessing.json': json.dumps(meta)})
        data = buffer.getvalue()
        if not args.no_check:
            loaded = torch.export.load(io.BytesIO(data)).module()
            with torch.no_grad():
                worst = _compare('the exported program', [loaded(x) for x in inputs], references, args.atol)
    else:
        with _exporter_errors(args.model, f'the {args.exporter} ONNX exporter'):
            proto = export_onnx(model, example, exporter=args.exporter, opset=args.opset, dynamic=not args.static,
                                min_size=args.min_size)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        data = proto.SerializeToString()
        if not args.no_check:
            worst = _check_onnx(data, inputs, references, args.atol)
    atomic_write(output, lambda f: f.write(data))
    checked = 'not checked' if args.no_check else f'max abs error vs eager {worst:.2g} at sizes ' + ', '.join(
        'x'.join(map(str, x.shape)) for x in inputs)
    print(f'gczoo export: wrote {output} ({len(data) / 2 ** 20:.1f} MiB, {args.format}'
          f'{"" if args.format == "pt2" else f" opset {args.opset}, {args.exporter} exporter"}; {checked})')
    return 0


if __name__ == '__main__':
    from gczoo.runner import run_main
    run_main(main, 'gczoo export')
