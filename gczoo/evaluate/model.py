"""The model ``gczoo eval`` evaluates: built by name, weights through gczoo's one loading path."""
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from gczoo.models.factory import create_model
from gczoo.models.registry import resolve_model_name

__all__ = ['create_eval_model']


def _check_model_name(model_name: str) -> bool:
    """True for ``local-dir:``/``hf-hub:`` names; raises ``ValueError`` for a name timm does not know."""
    resolved = resolve_model_name(model_name, what='--model')
    if resolved.source == 'local-dir' and not Path(resolved.location).is_dir():
        raise ValueError(f'--model {model_name!r}: folder {resolved.location!r} does not exist')
    return resolved.is_folder


def create_eval_model(
        model_name: str,
        *,
        pretrained: bool = False,
        checkpoint: Optional[os.PathLike] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
        **model_kwargs: Any,
) -> nn.Module:
    """The model to evaluate, in eval mode.

    ``local-dir:``/``hf-hub:`` names load their weights; a registered name needs ``pretrained=True``
    or a ``checkpoint`` (a ``.safetensors`` file or a torch file read with ``weights_only=True``; its
    EMA weights with ``use_ema``, as timm's validate.py; ``num_classes`` defaults to the checkpoint's
    classifier size). Random weights are refused: their accuracy means nothing. ``model_kwargs`` go to
    ``timm.create_model`` (``in_chans``, ``global_pool``, ``--model-kwargs``).
    """
    is_hub = _check_model_name(model_name)
    if pretrained and checkpoint is not None:
        raise ValueError('pass either --pretrained or --checkpoint, not both')
    if not (pretrained or checkpoint is not None or is_hub):
        raise ValueError(f'no weights for --model {model_name!r}: pass --pretrained, --checkpoint FILE, or a '
                         f'"local-dir:DIR" / "hf-hub:ORG/REPO" name (evaluating random weights measures nothing)')
    kwargs: Dict[str, Any] = dict(model_kwargs)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = create_model(model_name, pretrained=(pretrained or is_hub) and checkpoint is None,
                         checkpoint_path=checkpoint, use_ema=use_ema, checkpoint_what='--checkpoint', **kwargs)
    return model.eval()
