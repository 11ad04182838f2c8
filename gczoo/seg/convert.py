"""mmsegmentation checkpoints -> gczoo segmentor keys (no mmcv, no mmseg: only the key layout).

mmseg's ``EncoderDecoder`` with a ``ResNetV1c`` backbone saves ``{'meta': {...}, 'state_dict': {...}}``
with keys that differ from :class:`gczoo.seg.Segmentor` in four places:

===========================================  ================================================
mmseg                                         gczoo
===========================================  ================================================
``backbone.stem.{0,1,3,4,6}.*``               ``backbone.conv1.{0,1,3,4,6}.*`` (timm's deep stem)
``backbone.stem.7.*`` (the stem's last BN)    ``backbone.bn1.*``
``decode_head.cca.gamma`` (mmcv < 1.3.13) or  ``decode_head.cca.gamma`` of shape (1,)
``decode_head.cca.gamma.scale`` (``Scale``, 0-d)
``decode_head.nl_block.{g,theta,phi}.conv.*``  ``decode_head.nl_block.{g,theta,phi}.*``
``decode_head.nl_block.conv_out.conv.*`` /    ``decode_head.nl_block.conv_out.*`` /
``decode_head.nl_block.conv_out.bn.*``        ``decode_head.nl_block.norm.*``
===========================================  ================================================

Everything else (``backbone.layerN``, the heads' ``convs``/``conv_cat``/``conv_seg``, the GC block,
``auxiliary_head``) has the same name. A key this table does not know is kept as it is, so the one
loading path (``gczoo.models.weights.check_state_dict``) names it as unexpected instead of dropping it.
"""
import re
from typing import Any, Mapping, Optional, Tuple

from gczoo.errors import CheckpointError
from gczoo.models.weights import StateDict, unwrap_state_dict

__all__ = ['convert_mmseg_state_dict', 'is_mmseg_layout', 'mmseg_meta', 'mmseg_decode_head']

_RULES: Tuple[Tuple[re.Pattern, str], ...] = (
    (re.compile(r'^backbone\.stem\.7\.'), 'backbone.bn1.'),
    (re.compile(r'^backbone\.stem\.([01346])\.'), r'backbone.conv1.\1.'),
    (re.compile(r'^decode_head\.cca\.gamma\.scale$'), 'decode_head.cca.gamma'),
    (re.compile(r'^decode_head\.nl_block\.(g|theta|phi|conv_out)\.conv\.'), r'decode_head.nl_block.\1.'),
    (re.compile(r'^decode_head\.nl_block\.conv_out\.bn\.'), 'decode_head.nl_block.norm.'),
)


# the first sub-module name of mmseg's decode heads that tells them apart (mmseg's configs/<system>/)
_HEAD_MARKS: Tuple[Tuple[str, str], ...] = (
    ('cca', 'ccnet'), ('nl_block', 'nlnet'), ('gc_block', 'gcnet'), ('psp_modules', "PSPNet's PPM head"),
    ('aspp_modules', "DeepLabV3's ASPP head"), ('c1_bottleneck', "DeepLabV3+'s head"), ('da_head', "DANet's head"),
    ('psa', "PSANet's head"), ('ema_module', "EMANet's head"), ('apc_modules', "APCNet's head"),
)


def mmseg_decode_head(state: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """(system, key prefix) of the decode head a state dict holds: ``('ccnet', 'decode_head.cca')``, nlnet,
    gcnet, or another of mmseg's heads in words (PSPNet, DeepLabV3, ...); None if its keys name none of them."""
    parts = {k.split('.')[1] for k in state if k.startswith('decode_head.') and k.count('.') >= 2}
    for mark, system in _HEAD_MARKS:
        if mark in parts:
            return system, f'decode_head.{mark}'
    return None


def is_mmseg_layout(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is in mmseg's layout (its ResNetV1c stem is ``backbone.stem.*``)."""
    return any(k.startswith('backbone.stem.') for k in state)


def mmseg_meta(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``meta`` dict of an mmseg checkpoint (``{}`` if it has none)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def convert_mmseg_state_dict(checkpoint: Mapping[str, Any], source: str = 'mmseg checkpoint') -> StateDict:
    """gczoo's keys for an mmseg checkpoint (the whole file's dict, or its ``state_dict``)."""
    state = unwrap_state_dict(checkpoint, source=source)
    if not is_mmseg_layout(state):
        raise CheckpointError(f'{source} is not in mmsegmentation layout (no backbone.stem.* keys of a ResNetV1c '
                              f'backbone); pass a checkpoint of an mmseg EncoderDecoder with a ResNetV1c backbone')
    out: StateDict = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RULES:
            new, hits = pattern.subn(repl, new)
            if hits:
                break
        if new == 'decode_head.cca.gamma' and value.dim() == 0:
            value = value.reshape(1)  # mmcv's Scale holds a 0-d parameter, gczoo's gamma is (1,)
        if new in out:
            raise CheckpointError(f'{source} holds both the old and the new name of {new!r}; it is not a checkpoint '
                                  f'mmseg wrote')
        out[new] = value
    return out

