"""The model to look at: a zoo (or any timm) name, ``NAME=CHECKPOINT``, ``local-dir:DIR`` or ``hf-hub:ORG/REPO``.

Everything goes through gczoo's one loading path: ``gczoo.models.hub_folder.create_model`` builds
the model (and checks a folder's or the Hub's weights), ``gczoo.models.weights`` reads and checks a
checkpoint file and loads it. The only thing added here is a short mismatch message: loading a
checkpoint of another architecture lists dozens of keys, and the command line shows one line.
"""
import dataclasses
import os
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from gczoo.errors import CheckpointError
from gczoo.layers import attention_modules
from gczoo.models.hub_folder import create_model
from gczoo.models.registry import resolve_model_name
from gczoo.models.weights import classifier_names, compare_state_dicts, format_keys, load_weights, read_state_dict

__all__ = ['LoadedModel', 'parse_model_spec', 'load_model']

PathLike = Union[str, os.PathLike]
_WEIGHTS_FOLDERS = ('local-dir:', 'hf-hub:')
_EXAMPLES = 2  # keys named per kind in a mismatch message


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


def _checkpoint_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, path: str) -> None:
    """One short ``CheckpointError`` (counts and a few keys) if ``state`` does not fit ``model``."""
    mismatch = compare_state_dicts(model.state_dict(), state)
    if not mismatch:
        return
    parts = [f'{len(keys)} {kind} ({format_keys(keys, _EXAMPLES)})' for kind, keys in (
        ('missing keys', mismatch.missing), ('unexpected keys', mismatch.unexpected),
        ('tensors of another shape', mismatch.mis_shaped)) if keys]
    raise CheckpointError(
        f'--checkpoint {path!r} does not fit MODEL {name!r}: {"; ".join(parts)}. Give the MODEL it was saved from')


def _model_from_checkpoint(name: str, path: str) -> nn.Module:
    """``name`` with the weights of ``path``; the number of classes is taken from the checkpoint's classifier."""
    state = read_state_dict(path)
    meta = create_model(name, device='meta')  # for its classifier name and size, without initialising weights
    weight = state.get(f'{classifier_names(meta)[0]}.weight')
    num_classes = weight.shape[0] if weight is not None and weight.dim() == 2 else meta.num_classes
    model = create_model(name, num_classes=num_classes)
    _checkpoint_mismatch(model, state, name, path)
    load_weights(model, state, what=f'--checkpoint {path!r}')
    return model


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
