"""Attention blocks with timm's attention-layer signature ``Block(channels, **kwargs)``.

No model knowledge lives here: the blocks plug into any network, timm's ResNet included
(``timm.create_model('resnet50', block_args=dict(attn_layer=ContextBlock))``).
"""
from .bam import BAM
from .cbam import CBAM
from .criss_cross import CrissCrossAttention
from .freeze import freeze_backbone_bn, frozen_zero_init
from .global_context import ContextBlock, SimplifiedNonLocal
from .non_local import NonLocal, NonLocal1d, NonLocal2d, NonLocal3d
from .registry import ATTN_SPECS, attention_modules, create_attn, get_attn, list_attn
from .self_attention import SelfAttention2d
from .squeeze_excite import SqueezeExcite

__all__ = [
    'BAM', 'CBAM', 'ContextBlock', 'CrissCrossAttention', 'NonLocal', 'NonLocal1d', 'NonLocal2d', 'NonLocal3d',
    'SelfAttention2d', 'SimplifiedNonLocal', 'SqueezeExcite', 'ATTN_SPECS', 'attention_modules', 'create_attn', 'get_attn', 'list_attn',
    'freeze_backbone_bn', 'frozen_zero_init',
]
