"""The ResNet depths the zoo builds on: one row per depth, read by the zoo's builder, the model cards
and the checkpoint converter.

A row says which residual block the depth uses, how many per stage (timm's ``layer1``-``layer4``), and
which ImageNet ResNet of timm's (name with tag) a zoo model of that depth transplants its backbone
from (``pretrained_backbone=``, the cards' usage examples). Every backbone key of a zoo model equals
that ResNet's, so the transplant is exact. Strides per stage are not repeated here: timm's ResNet
reports them (``model.feature_info``: 4, 8, 16, 32). Adding a model at a new depth is one row here
and one row in ``ZOO_MODELS``.
"""
import dataclasses
from typing import Dict, Optional, Tuple, Type

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

__all__ = ['Depth', 'DEPTHS', 'get_depth', 'depth_of_layout']


@dataclasses.dataclass(frozen=True)
class Depth:
    """One ResNet depth: ``block`` per stage ``layers`` times; ``imagenet_resnet`` is timm's ImageNet
    ResNet of that depth (``'resnet50.a1_in1k'``) that the zoo's backbones start from."""
    block: Type[nn.Module]
    layers: Tuple[int, int, int, int]
    imagenet_resnet: str

    @property
    def bottleneck(self) -> bool:
        return issubclass(self.block, Bottleneck)


DEPTHS: Dict[int, Depth] = {
    18: Depth(BasicBlock, (2, 2, 2, 2), 'resnet18.a1_in1k'),
    26: Depth(Bottleneck, (2, 2, 2, 2), 'resnet26.bt_in1k'),
    50: Depth(Bottleneck, (3, 4, 6, 3), 'resnet50.a1_in1k'),
    101: Depth(Bottleneck, (3, 4, 23, 3), 'resnet101.a1h_in1k'),
}


def get_depth(depth: int) -> Depth:
    """The row for ``depth``; an unknown depth is a ``ValueError`` naming the known ones."""
    try:
        return DEPTHS[depth]
    except (KeyError, TypeError):
        raise ValueError(f'no ResNet-{depth} in gczoo.models.depths.DEPTHS (known depths: '
                         f'{", ".join(map(str, DEPTHS))}); add a row there for a new depth') from None


def depth_of_layout(bottleneck: bool, layers: Tuple[int, ...]) -> Optional[int]:
    """The depth whose block kind and blocks per stage these are (e.g. read off a checkpoint's keys)."""
    return next((d for d, row in DEPTHS.items() if row.bottleneck == bottleneck and row.layers == tuple(layers)),
                None)
