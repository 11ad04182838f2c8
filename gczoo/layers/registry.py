"""Attention blocks by name: gczoo's own short names first, then timm's.

``create_attn(name, channels, **kwargs)`` mirrors ``timm.layers.create_attn`` so a name can go
wherever timm takes an ``attn_layer``. Unlike timm's ``get_attn`` (a bare ``assert`` on an unknown
name), an unknown name raises a ``ValueError`` that lists every valid one.
"""
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Type, Union

import torch.nn as nn
from timm.layers import get_attn as timm_get_attn

from .bam import BAM
from .cbam import CBAM
from .criss_cross import CrissCrossAttention
from .global_context import ContextBlock, SimplifiedNonLocal
from .non_local import NonLocal2d
from .self_attention import SelfAttention2d
from .squeeze_excite import SqueezeExcite

__all__ = ['AttnSpec', 'ATTN_SPECS', 'TIMM_ATTN_NAMES', 'attention_modules', 'get_attn', 'create_attn', 'list_attn']


class AttnSpec(NamedTuple):
    cls: Type[nn.Module]
    kwargs: Dict[str, Any]
    summary: str
    paper: str


_NL = 'Wang et al., Non-local Neural Networks, CVPR 2018 (arXiv:1711.07971)'
_GC = 'Cao et al., GCNet, ICCVW 2019 (arXiv:1904.11492)'

# One table is the source of truth for names, defaults, `gczoo list` and the README's block table.
ATTN_SPECS: Dict[str, AttnSpec] = {
    'nl': AttnSpec(NonLocal2d, {}, 'Non-local, embedded Gaussian, inner C/2, BN zero-init', _NL),
    'nl_sub': AttnSpec(NonLocal2d, dict(sub_sample=True), 'Non-local, embedded Gaussian, 2x2 max-pool on phi/g', _NL),
    'nl_gaussian': AttnSpec(NonLocal2d, dict(mode='gaussian'), 'Non-local, Gaussian pairwise function', _NL),
    'nl_dot': AttnSpec(NonLocal2d, dict(mode='dot_product'), 'Non-local, dot-product pairwise function', _NL),
    'nl_concat': AttnSpec(NonLocal2d, dict(mode='concatenation'), 'Non-local, concatenation pairwise function', _NL),
    'snl': AttnSpec(SimplifiedNonLocal, {}, 'Simplified Non-local (query-independent attention)', _GC),
    'gc': AttnSpec(ContextBlock, {}, 'Global context block, ratio 1/16, att pooling, channel_add', _GC),
    'gc_r4': AttnSpec(ContextBlock, dict(rd_ratio=1 / 4), 'Global context block, ratio 1/4', _GC),
    'gc_mul': AttnSpec(ContextBlock, dict(fusion_types=('channel_mul',)), 'Global context block, channel_mul fusion', _GC),
    'gc_avg': AttnSpec(ContextBlock, dict(pooling_type='avg'), 'Global context block, average pooling', _GC),
    'se': AttnSpec(SqueezeExcite, {}, 'Squeeze-and-Excitation, r=16', 'Hu et al., SENet, CVPR 2018 (arXiv:1709.01507)'),
    'cbam': AttnSpec(CBAM, {}, 'CBAM, official semantics (avg+max MLP, cat[max, mean] 7x7)', 'Woo et al., CBAM, ECCV 2018 (arXiv:1807.06521)'),
    'bam': AttnSpec(BAM, {}, 'BAM, official combine (1 + sigmoid(Mc * Ms))', 'Park et al., BAM, BMVC 2018 (arXiv:1807.06514)'),
    'bam_sum': AttnSpec(BAM, dict(combine='sum'), "BAM, the paper's combine (1 + sigmoid(Mc + Ms))", 'Park et al., BAM, BMVC 2018 (arXiv:1807.06514)'),
    'cc': AttnSpec(CrissCrossAttention, {}, 'Criss-cross attention, recurrence 2 (shared weights)', 'Huang et al., CCNet, ICCV 2019 (arXiv:1811.11721)'),
    'sa': AttnSpec(SelfAttention2d, {}, 'SAGAN self-attention, gamma zero-init', 'Zhang et al., SAGAN, ICML 2019 (arXiv:1805.08318)'),
}

# timm 1.0.31's own attention names (timm.layers.create_attn.get_attn); reachable here when gczoo
# has no block of that name. Names gczoo defines itself ('se', 'gc', 'cbam', 'nl') resolve to
# gczoo's; timm's versions stay available with a 'timm:' prefix.
TIMM_ATTN_NAMES: Tuple[str, ...] = (
    'se', 'ese', 'eca', 'ecam', 'ceca', 'ge', 'gc', 'gca', 'cbam', 'lcbam', 'coord', 'scoord', 'ela',
    'strip', 'sk', 'splat', 'lambda', 'bottleneck', 'halo', 'nl', 'bat',
)

AttnFactory = Callable[..., nn.Module]


def list_attn(include_timm: bool = False) -> List[str]:
    """Names accepted by ``get_attn``: gczoo's, and with ``include_timm`` timm's as ``timm:<name>``."""
    names = list(ATTN_SPECS)
    if include_timm:
        names += [f'timm:{n}' for n in TIMM_ATTN_NAMES]
        names += [n for n in TIMM_ATTN_NAMES if n not in ATTN_SPECS]
    return names


def get_attn(attn: Union[str, AttnFactory, None]) -> Optional[AttnFactory]:
    """Resolve an attention name (or pass a class/factory through) to a ``Block(channels, **kw)`` factory."""
    if attn is None or callable(attn):
        return attn
    if not isinstance(attn, str):
        raise TypeError(f'attn must be a block name (str), a block class or None, got {type(attn).__name__}')
    name = attn.lower()
    if name in ATTN_SPECS:
        spec = ATTN_SPECS[name]
        return partial(spec.cls, **spec.kwargs) if spec.kwargs else spec.cls
    timm_name = name[len('timm:'):] if name.startswith('timm:') else name
    if timm_name in TIMM_ATTN_NAMES:
        return timm_get_attn(timm_name)
    raise ValueError(f'unknown attention block {attn!r}; valid names: {", ".join(list_attn(include_timm=True))}')


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every gczoo attention block in ``model``, in forward order."""
    classes = tuple({spec.cls for spec in ATTN_SPECS.values()})
    return [(n, m) for n, m in model.named_modules() if isinstance(m, classes)]


def create_attn(attn: Union[str, AttnFactory, None], channels: int, **kwargs: Any) -> Optional[nn.Module]:
    """Build a block for ``channels`` input channels; ``kwargs`` override the name's defaults."""
    factory = get_attn(attn)
    return None if factory is None else factory(channels, **kwargs)
