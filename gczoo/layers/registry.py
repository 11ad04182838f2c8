"""Attention blocks by name: gczoo's own short names first, then timm's.

``create_attn(name, channels, **kwargs)`` mirrors ``timm.layers.create_attn`` so a name can go
wherever timm takes an ``attn_layer``. A name gczoo does not define is handed to timm's own
``get_attn`` (so every name timm accepts works, and only those); where timm has no block of that name
either, a ``ValueError`` lists every valid name (timm's ``get_attn`` only ``assert``s).
"""
import functools
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Type, Union

import torch.nn as nn
from timm.layers import get_attn as timm_get_attn

from gczoo.papers import get_paper

from .bam import BAM
from .cbam import CBAM
from .criss_cross import CrissCrossAttention
from .global_context import ContextBlock, SimplifiedNonLocal
from .non_local import NonLocal2d
from .self_attention import SelfAttention2d
from .squeeze_excite import SqueezeExcite

__all__ = [
    'AttnSpec', 'ATTN_SPECS', 'attention_modules', 'get_attn', 'create_attn', 'list_attn', 'timm_attn_names',
]


class AttnSpec(NamedTuple):
    """A registry name: the block class, its settings, a one-line summary and its paper (a
    ``gczoo.papers.PAPERS`` key)."""
    cls: Type[nn.Module]
    kwargs: Dict[str, Any]
    summary: str
    paper: str

    @property
    def citation(self) -> str:
        """``'Cao et al., GCNet, ICCVW 2019 (arXiv:1904.11492)'``, from the papers table."""
        return get_paper(self.paper).citation


# One table is the source of truth for names, defaults, `gczoo list` and the README's block table.
ATTN_SPECS: Dict[str, AttnSpec] = {
    'nl': AttnSpec(NonLocal2d, {}, 'Non-local, embedded Gaussian, inner C/2, BN zero-init', 'nonlocal'),
    'nl_sub': AttnSpec(NonLocal2d, dict(sub_sample=True), 'Non-local, embedded Gaussian, 2x2 max-pool on phi/g', 'nonlocal'),
    'nl_gaussian': AttnSpec(NonLocal2d, dict(mode='gaussian'), 'Non-local, Gaussian pairwise function', 'nonlocal'),
    'nl_dot': AttnSpec(NonLocal2d, dict(mode='dot_product'), 'Non-local, dot-product pairwise function', 'nonlocal'),
    'nl_concat': AttnSpec(NonLocal2d, dict(mode='concatenation'), 'Non-local, concatenation pairwise function', 'nonlocal'),
    'snl': AttnSpec(SimplifiedNonLocal, {}, 'Simplified Non-local (query-independent attention)', 'gcnet'),
    'gc': AttnSpec(ContextBlock, {}, 'Global context block, ratio 1/16, att pooling, channel_add', 'gcnet'),
    'gc_r4': AttnSpec(ContextBlock, dict(rd_ratio=1 / 4), 'Global context block, ratio 1/4', 'gcnet'),
    'gc_mul': AttnSpec(ContextBlock, dict(fusion_types=('channel_mul',)), 'Global context block, channel_mul fusion', 'gcnet'),
    'gc_avg': AttnSpec(ContextBlock, dict(pooling_type='avg'), 'Global context block, average pooling', 'gcnet'),
    'se': AttnSpec(SqueezeExcite, {}, 'Squeeze-and-Excitation, r=16', 'senet'),
    'cbam': AttnSpec(CBAM, {}, 'CBAM, official semantics (avg+max MLP, cat[max, mean] 7x7)', 'cbam'),
    'bam': AttnSpec(BAM, {}, 'BAM, official combine (1 + sigmoid(Mc * Ms))', 'bam'),
    'bam_sum': AttnSpec(BAM, dict(combine='sum'), "BAM, the paper's combine (1 + sigmoid(Mc + Ms))", 'bam'),
    'cc': AttnSpec(CrissCrossAttention, {}, 'Criss-cross attention, recurrence 2 (shared weights)', 'ccnet'),
    'sa': AttnSpec(SelfAttention2d, {}, 'SAGAN self-attention, gamma zero-init', 'sagan'),
}

AttnFactory = Callable[..., nn.Module]


def _timm_factory(name: str) -> Optional[AttnFactory]:
    """timm's block for ``name``, or None where timm has none (its ``get_attn`` asserts on an unknown name)."""
    try:
        return timm_get_attn(name) if name else None
    except AssertionError:
        return None


@functools.lru_cache(maxsize=1)
def timm_attn_names() -> Tuple[str, ...]:
    """The names the installed timm's ``get_attn`` accepts, for listings and error messages.

    timm exports no list of them (they are the branches of ``get_attn``), so they are read from that
    function's string constants and each one kept only if ``get_attn`` itself accepts it; resolving a
    name never depends on this list (``get_attn`` asks timm directly).
    """
    candidates = dict.fromkeys(c for c in timm_get_attn.__code__.co_consts if isinstance(c, str))
    return tuple(name for name in candidates if name.isidentifier() and _timm_factory(name) is not None)


def list_attn(include_timm: bool = False) -> List[str]:
    """Names accepted by ``get_attn``: gczoo's, and with ``include_timm`` timm's as ``timm:<name>`` (and
    bare, where gczoo has no block of that name)."""
    names = list(ATTN_SPECS)
    if include_timm:
        names += [f'timm:{n}' for n in timm_attn_names()]
        names += [n for n in timm_attn_names() if n not in ATTN_SPECS]
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
    factory = _timm_factory(name[len('timm:'):] if name.startswith('timm:') else name)
    if factory is not None:
        return factory
    raise ValueError(f'unknown attention block {attn!r}; valid names: {", ".join(list_attn(include_timm=True))}')


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every gczoo attention block in ``model``, in forward order."""
    classes = tuple({spec.cls for spec in ATTN_SPECS.values()})
    return [(n, m) for n, m in model.named_modules() if isinstance(m, classes)]


def create_attn(attn: Union[str, AttnFactory, None], channels: int, **kwargs: Any) -> Optional[nn.Module]:
    """Build a block for ``channels`` input channels; ``kwargs`` override the name's defaults."""
    factory = get_attn(attn)
    return None if factory is None else factory(channels, **kwargs)
