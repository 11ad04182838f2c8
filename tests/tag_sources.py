"""Random weights at every pretrained tag's source, in that source's own format, for offline tests.

* A Hub source (``timm/resnet50.a1_in1k``...) is written the way timm publishes it -- timm's own
  ``save_for_hf`` on the source model (``model.safetensors`` and timm's ``config.json``) -- and put
  into a Hub cache by ``huggingface_hub.hf_hub_download`` itself (``hub_cache.fill_hub_cache``).
* A URL source (GCNet's mmdetection checkpoints) is written into torch's checkpoint folder under the
  URL's file name, in mmdetection's published layout (the layout ``gczoo.models.convert`` documents):
  ``{'meta': {...}, 'state_dict': {'backbone.layerS.B.context_block.*', 'backbone.*', 'neck.*',
  'rpn_head.*', 'roi_head.*'}}``, saved with the legacy (non-zip) serialisation ``publish_model.py``
  used.

Then ``HF_HUB_OFFLINE=1`` with that cache and ``TORCH_HOME`` (or ``torch.hub.set_dir``) on those
folders loads every tag exactly as on a connected machine, through timm's own loaders.
"""
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Union
from urllib.parse import urlparse

import timm
import torch

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.models.tags import TAGS, Tag
from hub_cache import fill_hub_cache

__all__ = ['randomize_', 'source_file_name', 'write_hub_source', 'write_url_source', 'write_sources']

PathLike = Union[str, os.PathLike]


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every floating tensor off its init, deterministically (BN statistics too, variances positive),
    so a tensor that is not loaded, or loaded into the wrong place, changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
            if name.endswith('running_var'):
                tensor.copy_(noise.abs() * 0.05 + 0.5)
            elif name.endswith('.weight') and tensor.ndim == 1:  # norm scales near 1
                tensor.copy_(noise * 0.05 + 1.0)
            elif tensor.ndim > 1:  # fan-in scaled, so activations stay O(1) through 100 layers
                tensor.copy_(noise * tensor[0].numel() ** -0.5)
            else:
                tensor.copy_(noise * 0.05)
    return model.eval()


def source_file_name(row: Tag) -> str:
    """The file name timm's URL loader caches a URL source under (torch.hub's: the URL's base name)."""
    return os.path.basename(urlparse(row.source).path)


def write_hub_source(hub_cache: PathLike, row: Tag, seed: int = 0) -> Dict[str, torch.Tensor]:
    """timm's published repo for ``row.source`` (random weights) in ``hub_cache``; returns its state dict."""
    from timm.models import save_for_hf
    model = randomize_(timm.create_model(row.source_name, pretrained=False), seed)
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hf(model, tmp, safe_serialization=True)
        fill_hub_cache(hub_cache, row.source, {name: Path(tmp) / name for name in ('config.json', 'model.safetensors')})
    return model.state_dict()


def _mmdet_layout(backbone: Dict[str, torch.Tensor], gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """A zoo GC backbone's tensors under mmdetection's Mask R-CNN names, with (small) detector parts."""
    state = {}
    for key, value in backbone.items():
        state['backbone.' + key.replace('.se.', '.context_block.')] = value
    detector = (('neck.lateral_convs.0.conv.weight', (256, 256, 1, 1)), ('neck.lateral_convs.0.conv.bias', (256,)),
                ('rpn_head.rpn_conv.weight', (256, 256, 3, 3)), ('rpn_head.rpn_cls.weight', (3, 256, 1, 1)),
                ('roi_head.bbox_head.fc_cls.weight', (81, 1024)),
                ('roi_head.mask_head.conv_logits.weight', (80, 256, 1, 1)))
    for key, shape in detector:
        state[key] = torch.randn(shape, generator=gen) * 0.01
    return state


def write_url_source(checkpoint_dir: PathLike, row: Tag, seed: int = 0) -> Dict[str, torch.Tensor]:
    """GCNet's mmdetection checkpoint for ``row`` (random weights) in torch's checkpoint folder;
    returns the backbone's state dict in the zoo model's keys (what the tag must load)."""
    model = randomize_(timm.create_model(row.model, num_classes=0), seed)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    checkpoint = {
        'meta': {'mmdet_version': '2.0.0', 'mmcv_version': '0.5.1', 'config': f'# {row.source_name}.py',
                 'CLASSES': ('person', 'bicycle', 'car'), 'epoch': 12, 'iter': 87960,
                 'time': 'Fri May 15 21:19:15 2020'},
        'state_dict': _mmdet_layout(backbone, torch.Generator().manual_seed(seed + 1)),
    }
    path = Path(checkpoint_dir) / source_file_name(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return backbone


def write_sources(
        hub_cache: PathLike,
        checkpoint_dir: PathLike,
        rows: Iterable[Tag] = TAGS,
        seed: int = 0,
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Write every distinct source of ``rows``; returns ``{row.source: state dict}`` (a Hub source's own
    state dict; a URL source's backbone in the zoo model's keys)."""
    written: Dict[str, Dict[str, torch.Tensor]] = {}
    for i, row in enumerate(rows):
        if row.source in written:
            continue
        if row.is_url:
            written[row.source] = write_url_source(checkpoint_dir, row, seed=seed + i)
        else:
            written[row.source] = write_hub_source(hub_cache, row, seed=seed + i)
    return written
