"""Weights in the Hugging Face Hub's layout: save, publish, load."""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch.nn as nn

__all__ = ['save_pretrained']

# factory kwargs that are about how weights were obtained, not about the architecture
_NON_ARCH_ARGS = ('pretrained_backbone', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'features_only')


def save_pretrained(
        model: nn.Module,
        out_dir: Union[str, os.PathLike],
        *,
        data_config: Optional[Dict[str, Any]] = None,
        label_names: Optional[list] = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` in timm's Hub layout (``local-dir:`` loads it).

    Uses timm's own ``save_for_hf`` (safetensors only, no pickle).
    """
    from timm.models import save_for_hf
    out = Path(out_dir)
    model_args = {k: v for k, v in getattr(model, '_model_args', {}).items() if k not in _NON_ARCH_ARGS}
    model_config = {'num_classes': model.num_classes}
    if label_names is not None:
        model_config['label_names'] = list(label_names)
    save_for_hf(model, str(out), model_config=model_config, model_args=model_args,
                safe_serialization=True, data_config=data_config)
    return out
