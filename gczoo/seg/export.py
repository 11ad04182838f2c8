"""torch.export and ONNX of the segmentors, with dynamic batch and spatial axes, checked in ONNX Runtime.

:func:`export_segmentor` is ``torch.export.export`` with ``Dim.DYNAMIC`` batch, height and width: the
dilated ResNet's size arithmetic (``(H - 1) // 8 + 1`` at stride 8, the logits resized back to ``H x W``)
produces guards that a fixed lower bound such as ``Dim(min=64)`` cannot prove for every size, so the
exporter infers the ranges itself (height and width >= 9 at the time of writing; see the program's
``range_constraints``). The example's batch must be >= 2 (torch.export specialises a size of 1).
:func:`export_segmentor_onnx` converts that program with the dynamo ONNX exporter (input ``'input'``,
output ``'logits'``: (B, K, H, W), mmseg's ``encode_decode``); :func:`check_onnx` runs the graph in ONNX
Runtime and compares it with eager PyTorch, raising a ``ValueError`` when they differ.
"""
import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn

__all__ = ['export_segmentor', 'export_segmentor_onnx', 'check_onnx']


def _example(example: Optional[torch.Tensor]) -> torch.Tensor:
    if example is None:
        return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if example.dim() != 4 or example.shape[0] < 2:
        raise ValueError(f'the example must be (B >= 2, 3, H, W) (torch.export specialises a batch of 1), got '
                         f'{tuple(example.shape)}')
    return example


def export_segmentor(model: nn.Module, example: Optional[torch.Tensor] = None) -> torch.export.ExportedProgram:
    """``torch.export`` of an eval-mode segmentor with dynamic batch, height and width."""
    dyn = torch.export.Dim.DYNAMIC
    model.eval()
    return torch.export.export(model, (_example(example),), dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},))


def export_segmentor_onnx(model: nn.Module, example: Optional[torch.Tensor] = None, *, opset: int = 18):
    """The ``onnx.ModelProto`` of a segmentor (dynamo exporter on :func:`export_segmentor`'s program)."""
    program = export_segmentor(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=['input'],
                                         output_names=['logits'], verbose=False)
    return onnx_program.model_proto


def check_onnx(proto, model: nn.Module, inputs: Sequence[torch.Tensor], rtol: float = 1e-4) -> float:
    """Run ``proto`` in ONNX Runtime on each input; the worst max-abs error relative to eager's logits scale."""
    import onnxruntime
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            reference = model(x)
        out = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
        if out.shape != reference.shape:
            raise ValueError(f'ONNX Runtime gives logits of shape {tuple(out.shape)} for input {tuple(x.shape)}, eager '
                             f'{tuple(reference.shape)}')
        error = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
        if not error <= rtol:
            raise ValueError(f'ONNX Runtime differs from eager PyTorch by {error:.3g} (relative) at input '
                             f'{tuple(x.shape)}; allowed {rtol:g}')
        worst = max(worst, error)
    return worst
