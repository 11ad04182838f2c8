"""Every segmentor through torch.export (dynamic batch and spatial axes) and, one per head type, through
ONNX (the dynamo exporter) checked in ONNX Runtime against eager at two non-square sizes and batch 1."""
import pytest
import torch

from gczoo.seg import SEGMENTORS, create_segmentor
from gczoo.seg.export import check_onnx, export_segmentor, export_segmentor_onnx


def _model(name):
    torch.manual_seed(0)
    model = create_segmentor(name, num_classes=5).eval()
    with torch.no_grad():  # the attention blocks away from their identity init
        for p in model.decode_head.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_example_batch_of_one_is_refused():
    with pytest.raises(ValueError, match='batch of 1'):
        export_segmentor(torch.nn.Identity(), torch.randn(1, 3, 64, 64))


@pytest.mark.slow  # ~10-20 s each on one core
@pytest.mark.parametrize('name', list(SEGMENTORS))
def test_torch_export_dynamic(name):
    model = _model(name)
    program = export_segmentor(model, torch.randn(2, 3, 64, 72))
    for shape in ((2, 3, 64, 64), (1, 3, 41, 57)):
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
            got = program.module()(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.parametrize('name', ['ccnet_r50_d8', 'nlnet_r50_d8', 'gcnet_r50_d8'])
def test_onnx_runtime_matches_eager(name):
    pytest.importorskip('onnxruntime')
    model = _model(name)
    proto = export_segmentor_onnx(model, torch.randn(2, 3, 64, 72))
    assert check_onnx(proto, model, [torch.randn(1, 3, 64, 72), torch.randn(2, 3, 80, 57)]) < 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::DeprecationWarning', 'ignore::FutureWarning')
@pytest.mark.parametrize('name', ['ccnet_r50_d8', 'nlnet_r50_d8', 'gcnet_r50_d8'])
def test_torchscript(name):
    model = _model(name)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)
        assert float((scripted(x) - expected).abs().max() / expected.abs().max()) < 1e-5
