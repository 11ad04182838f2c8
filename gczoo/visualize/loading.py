"""The model to look at: a zoo (or any timm) name, ``NAME=CHECKPOINT``, ``local-dir:DIR`` or ``hf-hub:ORG/REPO``.

Everything goes through gczoo's one loading path: ``gczoo.models.create_model`` builds the model,
checks a folder's or the Hub's weights, and reads, checks and loads a checkpoint
(``checkpoint_path=``, through ``gczoo.models.weights``).
"""
import dataclasses
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from gczoo.layers import attention_modules
from gczoo.models.factory import create_model
from gczoo.models.registry import resolve_model_name

__all__ = ['LoadedModel', 'parse_model_spec', 'load_model']

PathLike = Union[str, os.PathLike]
_WEIGHTS_FOLDERS = ('local-dir:', 'hf-hub:')


@dataclasses.dataclass
class LoadedModel:
    """A model ready for analysis and what to call it in tables and charts."""
    label: str
    arch: str
    model: nn.Module


def parse_model_spec(spec: str, checkpoint: Optional[PathLike] = None) -> Tuple[str, Optional[str]]:
    """``(model name, checkpoint or None)`` of a MODEL argument (``NAME=CHECKPOINT`` splits in two)."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f'MODEL must be a non-empty str, got {spec!r}')
    checkpoint = None if checkpoint is None else str(checkpoint)
    if spec.startswith(_WEIGHTS_FOLDERS) or '=' not in spec:
        return spec, checkpoint
    name, _, path = spec.partition('=')
    if checkpoint is not None:
        raise ValueError(f'MODEL {spec!r} names a checkpoint and --checkpoint {checkpoint!r} is given too; pick one')
    return name, path


def _model_from_checkpoint(name: str, path: str) -> nn.Module:
    """``name`` with the weights of ``path``; the number of classes is taken from the checkpoint's classifier."""
    return create_model(name, checkpoint_path=path, checkpoint_what='--checkpoint')


def load_model(
        spec: str,
        *,
        pretrained: bool = False,
        checkpoint: Optional[PathLike] = None,
        seed: int = 0,
        device: Union[str, torch.device] = 'cpu',
) -> LoadedModel:
    """Build a model for visualisation/analysis, in eval mode.

    ``spec`` is a zoo (or any timm) model name (random init with ``seed`` unless ``pretrained`` or a
    ``checkpoint`` is given), ``NAME=CHECKPOINT`` (same as ``checkpoint``), or a ``local-dir:DIR`` /
    ``hf-hub:ORG/REPO`` name that timm loads with its weights. Checkpoints are read and checked by
    ``gczoo.models.weights`` (safetensors or ``weights_only`` torch files; keys, shapes, dtypes and
    finite values); the number of classes is taken from the checkpoint's classifier. The caller's
    random state is left as it was.
    """
    name, checkpoint = parse_model_spec(spec, checkpoint)
    resolve_model_name(name, what='MODEL (NAME, NAME=CHECKPOINT, local-dir:DIR or hf-hub:ORG/REPO)')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith(_WEIGHTS_FOLDERS):
            if checkpoint is not None:
                raise ValueError(f'--checkpoint cannot be combined with MODEL {name!r}, which carries its own weights')
            model = create_model(name, pretrained=True)
            label = name
        elif checkpoint is not None:
            if pretrained:
                raise ValueError('pass either --pretrained or --checkpoint, not both')
            model = _model_from_checkpoint(name, checkpoint)
            label = f'{name} ({Path(checkpoint).name})'
        else:
            model = create_model(name, pretrained=pretrained)
            label = f'{name} ({"pretrained" if pretrained else "random init"})'
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or name
    if not attention_modules(model):
        raise ValueError(f'MODEL {spec!r} has no gczoo attention block (see `gczoo list`)')
    return LoadedModel(label=label, arch=arch, model=model.to(device).eval())
