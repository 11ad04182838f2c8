"""Deployment: every attention block and every zoo model exports and matches eager.

Exporters: ``torch.export.export`` (run as ``ExportedProgram.module()``), ``torch.onnx.export(dynamo=False)``
(the TorchScript-based exporter, opset 17) and ``torch.onnx.export(dynamo=True)`` (opset 18, fed the same
ExportedProgram); the ONNX graphs run in ONNX Runtime. Batch and spatial axes are dynamic, and every
export is checked at two input sizes against eager PyTorch: max abs error <= 1e-4, and <= 1e-4 of the
output's largest magnitude (so small outputs do not pass trivially).

Coverage (kept to ~3 minutes on one CPU thread):
* all 16 registry blocks x all three exporters x two sizes;
* all 12 zoo models x ``torch.export`` and the TorchScript-based ONNX exporter x two sizes (64x64, 96x80);
* the dynamo ONNX exporter on resnet50_nl (``DYNAMO_MODELS``) and, through ``gczoo export``,
  resnet18_gc only: it translates the same ExportedProgram ``torch.export`` produced, block by block,
  and every block is translated above. ``GCZOO_EXPORT_ALL=1`` runs it on all 12 models (about 4 more
  minutes);
* ``gczoo export``: ONNX (dynamo) with its preprocessing metadata, ``.pt2``, a static TorchScript-based
  graph, and its one-line errors (nothing written when the check fails).
"""
import io
import json
import os
import sys
import warnings
from typing import Dict, List, Tuple

import pytest
import timm
import torch
import torch.nn as nn

import gczoo  # noqa: F401  (registers the zoo models with timm)
from gczoo.layers import ATTN_SPECS, create_attn

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')
pytestmark = pytest.mark.onnx  # every test here exports ONNX (or checks the export command) and runs ONNX Runtime

TOL = 1e-4
BLOCK_CHANNELS = 32
BLOCK_SIZES = ((2, 8, 8), (3, 12, 10))  # (batch, H, W): the export example, then another size
MODEL_SIZES = ((2, 64, 64), (1, 96, 80))
# Smallest spatial size each export is asked to support. torch.export specialises a size of 1, so a
# 2x2 max-pool (nl_sub) needs inputs >= 4; in a ResNet the last stage (stride 32) and the sub-sampled
# Non-local blocks after res4 (stride 16, then 2x2 pooling) need inputs >= 64.
BLOCK_MIN_SIZE = {'nl_sub': 4}
MODEL_MIN_SIZE = 64
DYNAMO_MODELS = ('resnet50_nl',)  # and resnet18_gc through `gczoo export` below
MODELS = sorted(timm.list_models(module='gczoo'))


def _perturbed(block: nn.Module, std: float = 0.2) -> nn.Module:
    """Every parameter off its init, so zero-initialised branches are exercised by the export."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return block


def _dynamic_shapes(min_size: int) -> Tuple[Dict[int, torch.export.Dim], ...]:
    return ({0: torch.export.Dim('batch', min=1, max=1024),
             2: torch.export.Dim('height', min=min_size, max=4096),
             3: torch.export.Dim('width', min=min_size, max=4096)},)


def _inputs(channels: int, sizes) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(b, channels, h, w, generator=gen) for b, h, w in sizes]


def _max_error(outputs, references) -> Tuple[float, float]:
    """(max abs error, max abs error / max |reference|) over the input sizes."""
    errors = [float((torch.as_tensor(o) - r).abs().max()) for o, r in zip(outputs, references)]
    scale = max(float(r.abs().max()) for r in references)
    return max(errors), max(errors) / scale


def _ort_outputs(onnx_bytes: bytes, inputs: List[torch.Tensor]) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x.numpy()})[0] for x in inputs]


def _onnx_torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            model, (example,), f, dynamo=False, opset_version=17, input_names=['x'], output_names=['y'],
            dynamic_axes={'x': {0: 'batch', 2: 'height', 3: 'width'}, 'y': {0: 'batch'}})
    return f.getvalue()


def _onnx_dynamo(program: torch.export.ExportedProgram) -> bytes:
    pytest.importorskip('onnxscript')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=18, verbose=False)
    return onnx_program.model_proto.SerializeToString()


def _check_exports(model: nn.Module, inputs: List[torch.Tensor], min_size: int, dynamo_onnx: bool) -> Dict[str, object]:
    """Export ``model`` every way asked; returns {exporter: (abs, rel) error or the failure}, asserts nothing."""
    with torch.no_grad():
        references = [model(x) for x in inputs]
    results: Dict[str, object] = {}
    program = None
    try:
        program = torch.export.export(model, (inputs[0],), dynamic_shapes=_dynamic_shapes(min_size))
        with torch.no_grad():
            results['torch.export'] = _max_error([program.module()(x) for x in inputs], references)
    except Exception as e:  # noqa: BLE001  (reported with the exporter's name below)
        results['torch.export'] = f'{type(e).__name__}: {str(e).strip().splitlines()[0]}'
    try:
        onnx_bytes = _onnx_torchscript(model, inputs[0])
        results['onnx (TorchScript)'] = _max_error(_ort_outputs(onnx_bytes, inputs), references)
    except Exception as e:  # noqa: BLE001
        results['onnx (TorchScript)'] = f'{type(e).__name__}: {str(e).strip().splitlines()[-1]}'
    if dynamo_onnx:
        if program is None:
            results['onnx (dynamo)'] = 'not run: torch.export failed'
        else:
            try:
                results['onnx (dynamo)'] = _max_error(_ort_outputs(_onnx_dynamo(program), inputs), references)
            except Exception as e:  # noqa: BLE001
                results['onnx (dynamo)'] = f'{type(e).__name__}: {str(e).strip().splitlines()[-1]}'
    return results


def _assert_all_match(what: str, results: Dict[str, object]) -> None:
    """Every exporter ran, and its max abs error and its error relative to the output's scale are <= TOL."""
    bad = {k: v for k, v in results.items() if not (isinstance(v, tuple) and max(v) <= TOL)}
    assert not bad, f'{what}: exports failing or off by more than {TOL} (abs, rel): {bad} (all: {results})'


@pytest.mark.slow  # 1-5 s each on one core (three exports and ONNX Runtime per block)
@pytest.mark.parametrize('name', sorted(ATTN_SPECS))
def test_block_exports_and_matches_eager(name):
    block = _perturbed(create_attn(name, BLOCK_CHANNELS)).eval()
    inputs = _inputs(BLOCK_CHANNELS, BLOCK_SIZES)
    _assert_all_match(name, _check_exports(block, inputs, BLOCK_MIN_SIZE.get(name, 2), dynamo_onnx=True))


@pytest.mark.slow  # 2-35 s each on one core
@pytest.mark.parametrize('name', MODELS)
def test_model_exports_and_matches_eager(name):
    dynamo = name in DYNAMO_MODELS or os.environ.get('GCZOO_EXPORT_ALL', '') not in ('', '0')
    model = timm.create_model(name, num_classes=10).eval()
    for _, block in gczoo.layers.attention_modules(model):
        # the blocks are the identity at init: make them count (0.05 changes the logits by ~70%; 0.2
        # makes five Non-local blocks blow the logits up to ~80, where float32 round-off alone is ~1e-4)
        _perturbed(block, std=0.05)
    inputs = _inputs(3, MODEL_SIZES)
    _assert_all_match(name, _check_exports(model, inputs, MODEL_MIN_SIZE, dynamo_onnx=dynamo))


def test_every_zoo_model_is_covered():
    assert len(MODELS) == 12 and set(DYNAMO_MODELS) <= set(MODELS)
    assert len(ATTN_SPECS) == 16


def test_exported_concatenation_has_no_n_by_m_tensor():
    """Exported, the concatenation mode is sort-based: no intermediate is N x M (eager chunks would be
    one (1, M, N) block here: 2**24 weights per chunk allow all N = 1024 queries at once)."""
    block = create_attn('nl_concat', 8).eval()
    program = torch.export.export(block, (torch.randn(1, 8, 32, 32),))
    largest = max(node.meta['val'].numel() for node in program.graph.nodes
                  if isinstance(node.meta.get('val'), torch.Tensor))
    assert largest < (32 * 32) ** 2 / 50, largest


# ---------------------------------------------------------------------------------------------
# gczoo export
# ---------------------------------------------------------------------------------------------
def _export_command(argv) -> int:
    from gczoo.cli import run
    from gczoo.export import main
    return run(main, [str(a) for a in argv], 'gczoo export')


def _checkpoint(tmp_path, model_name: str) -> Tuple[nn.Module, str]:
    from safetensors.torch import save_file
    model = timm.create_model(model_name, num_classes=10).eval()
    for _, block in gczoo.layers.attention_modules(model):
        _perturbed(block, std=0.05)
    path = tmp_path / f'{model_name}.safetensors'
    save_file(model.state_dict(), str(path))
    return model, str(path)


@pytest.mark.slow  # ~14 s
def test_export_command_onnx_with_preprocessing(tmp_path, capsys):
    import onnx

    from gczoo.export import preprocessing
    model, checkpoint = _checkpoint(tmp_path, 'resnet18_gc')
    out = tmp_path / 'deploy' / 'gc18.onnx'
    assert _export_command(['resnet18_gc', '--checkpoint', checkpoint, '--input-size', 3, 64, 64, '-o', out]) == 0
    assert 'wrote' in capsys.readouterr().out
    proto = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    expected = preprocessing(model)
    assert {k: meta[k] for k in expected} == expected
    assert set(expected) >= {'input_size', 'mean', 'std', 'interpolation', 'crop_pct'}
    assert meta['model'] == 'resnet18_gc' and meta['num_classes'] == 10 and meta['min_input_size'] == 64
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']
    x = torch.randn(3, 3, 80, 112)  # a third size, neither checked by the command
    with torch.no_grad():
        ref = model(x)
    assert _max_error(_ort_outputs(out.read_bytes(), [x]), [ref])[0] <= TOL


@pytest.mark.slow  # ~18 s
def test_export_command_pt2_and_static_torchscript(tmp_path, capsys):
    model, checkpoint = _checkpoint(tmp_path, 'resnet18_gc')
    out = tmp_path / 'gc18.pt2'
    assert _export_command(['resnet18_gc', '--checkpoint', checkpoint, '--format', 'pt2', '--input-size', 3, 64, 64,
                            '-o', out]) == 0
    extra = {'gczoo_preprocessing.json': ''}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra['gczoo_preprocessing.json'])['mean'] == [0.485, 0.456, 0.406]
    x = torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)

    # timm's resnet10t (average-pool downsampling, ceil mode) is exact for some sizes only: torch.export
    # refuses dynamic axes, and the command says what to do instead
    import onnx
    _, checkpoint = _checkpoint(tmp_path, 'resnet10t')
    out = tmp_path / 'r10.onnx'
    assert _export_command(['resnet10t', '--checkpoint', checkpoint, '--input-size', 3, 64, 64, '-o', out]) == 2
    err = capsys.readouterr().err
    assert 'cannot keep the batch and spatial axes dynamic' in err and '--static' in err and not out.exists()
    assert _export_command(['resnet10t', '--checkpoint', checkpoint, '--exporter', 'torchscript', '--opset', 17,
                            '--static', '--input-size', 3, 64, 64, '-o', out]) == 0
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert proto.opset_import[0].version == 17


@pytest.mark.parametrize('argv, message', [
    (['resnet18_gc', '--pretrained', '--opset', 16], '--opset: must be >= 17'),
    (['resnet18_gc', '--pretrained', '-o', 'x.onnx2'], 'must end in .onnx'),
    (['resnet18_gc', '--pretrained', '--format', 'pt2', '-o', 'x.onnx'], 'must end in .pt2'),
    (['resnet18_gc', '--pretrained', '--format', 'pt2', '--exporter', 'torchscript'], '--exporter applies to'),
    (['resnet18_gc'], 'no weights'),
    (['resnet18_gc', '--pretrained', '--checkpoint', 'a.safetensors'], 'not allowed with'),
    (['resnet18_gc', '--pretrained', '--atol', 'nan'], '--atol'),
    (['resnet18_gc', '--pretrained', '--format', 'tflite'], '--format'),
])
def test_export_command_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _export_command(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('gczoo export: error:') and message in err and '\n' not in err
    assert not list(tmp_path.iterdir())


def test_export_command_input_below_min_size_and_bad_output(tmp_path, capsys):
    _, checkpoint = _checkpoint(tmp_path, 'resnet10t')
    assert _export_command(['resnet10t', '--checkpoint', checkpoint, '--input-size', 3, 32, 32,
                            '-o', tmp_path / 'a.onnx']) == 2
    assert 'below --min-size 64' in capsys.readouterr().err
    blocker = tmp_path / 'file'
    blocker.write_text('')
    assert _export_command(['resnet10t', '--checkpoint', checkpoint, '-o', blocker / 'a.onnx']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('gczoo export: error:') and 'file' in err and '\n' not in err


def test_export_command_writes_nothing_when_the_check_fails(tmp_path, capsys, monkeypatch):
    """ONNX Runtime disagreeing with eager (here: a session returning zeros) is an error, and no file
    (not even a partial one) is left behind."""
    class WrongSession:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, _, feeds):
            return [torch.zeros(feeds['input'].shape[0], 10).numpy()]

    _, checkpoint = _checkpoint(tmp_path, 'resnet10t')
    monkeypatch.setattr(ort, 'InferenceSession', WrongSession)
    out = tmp_path / 'out' / 'r10.onnx'
    assert _export_command(['resnet10t', '--checkpoint', checkpoint, '--exporter', 'torchscript', '--static',
                            '--input-size', 3, 64, 64, '-o', out]) == 2
    err = capsys.readouterr().err
    assert 'differs from eager PyTorch' in err and 'nothing was written' in err
    assert not out.exists() and not list(out.parent.iterdir())


def test_export_command_names_the_missing_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxscript', None)  # `import onnxscript` now fails as if not installed
    assert _export_command(['resnet18_gc', '--pretrained', '-o', tmp_path / 'a.onnx']) == 2
    err = capsys.readouterr().err.strip()
    assert "'onnxscript'" in err and "gczoo[onnx]" in err and '\n' not in err
