"""ResNets with attention blocks placed where their papers put them, registered with timm.

Every backbone parameter keeps the state-dict key of timm's (and torchvision's) ``resnet50``; the
attention blocks are extra keys:

* inside a residual block (after the last conv/BN, before the residual add) a block sits in timm's
  ``se`` slot: ``layer2.0.se.*`` (GC, SE, CBAM — as in the GCNet, SENet and CBAM papers);
* after a whole residual block, a block is inserted into the stage's ``nn.Sequential`` under the
  name ``attn{i}`` (after block ``i``): ``layer3.attn1.*`` (Non-local, Simplified NL, BAM, CCNet,
  SAGAN). The stage stays an ``nn.Sequential``, so timm's ``forward_intermediates``, gradient
  checkpointing, ``features_only`` and FX feature extraction see the blocks as part of the stage.

Each model's configuration is one row of ``ZOO_MODELS``; the entrypoints below only name it.
"""
import dataclasses
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Set, Tuple

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import ResNet

from gczoo.layers import attention_modules, get_attn
from gczoo.papers import get_paper

from .depths import get_depth
from .errors import PretrainedWeightsError, explain_download_errors  # noqa: F401  (PretrainedWeightsError re-exported)
from .pretrained import init_from_resnet
from .registry import resolve_model_name
from .tags import HUB_ORG, check_weights_available, filter_pretrained, pretrained_cfgs

__all__ = [
    'Placement', 'ZooModel', 'ZOO_MODELS', 'ZooResNet', 'PretrainedWeightsError', 'HUB_ORG',
    'attention_modules',
]

ALL_BLOCKS = None  # a Placement.stages value: every residual block of that stage


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one kind of attention block goes.

    attn: a ``gczoo.layers`` registry name.
    stages: ``{stage: block indices}`` with stages numbered 1-4 (timm's ``layer1``-``layer4``, the
        papers' res2-res5 / c2-c5); ``None`` means every block; negative indices count from the end.
    after_block: ``False`` puts the block inside each residual block (timm's ``se`` slot, before the
        residual add); ``True`` after the whole residual block.
    kwargs: settings passed to the block, overriding the registry name's defaults.
    """
    attn: str
    stages: Mapping[int, Optional[Tuple[int, ...]]]
    after_block: bool = False
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dict(attn=self.attn, stages={str(k): v for k, v in self.stages.items()},
                    after_block=self.after_block, kwargs=dict(self.kwargs))


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One zoo model: its backbone depth (a ``gczoo.models.depths.DEPTHS`` row), its attention
    placements, and the paper whose configuration it reproduces (a ``gczoo.papers.PAPERS`` key: title,
    arXiv id, BibTeX and the figures the paper reports all live there)."""
    depth: int
    placements: Tuple[Placement, ...]
    summary: str
    paper: str

    def __post_init__(self) -> None:
        get_paper(self.paper)  # an unknown key fails where the row is written


def _every(*stages: int) -> Dict[int, None]:
    return {s: ALL_BLOCKS for s in stages}


_GC_STAGES = _every(2, 3, 4)  # c3-c5: every bottleneck of layer2-layer4

# The source of truth for the zoo: hubconf, model cards, the README table and `gczoo list` derive from it.
ZOO_MODELS: Dict[str, ZooModel] = {
    'resnet50_gc': ZooModel(
        50, (Placement('gc', _GC_STAGES),),
        'GC block (ratio 1/16, att pooling, channel_add) in every bottleneck of c3-c5',
        'gcnet'),
    'resnet50_gc_r4': ZooModel(
        50, (Placement('gc_r4', _GC_STAGES),),
        'GC block (ratio 1/4, att pooling, channel_add) in every bottleneck of c3-c5',
        'gcnet'),
    'resnet50_nl': ZooModel(
        50, (Placement('nl_sub', {2: (1, 3), 3: (1, 3, 5)}, after_block=True),),
        '5 Non-local blocks (embedded Gaussian, inner C/2, 2x2 sub-sampling) after every 2nd block of res3, res4',
        'nonlocal'),
    'resnet50_snl': ZooModel(
        50, (Placement('snl', {3: (-2,)}, after_block=True),),
        'One Simplified Non-local block before the last residual block of res4',
        'gcnet'),
    'resnet50_se': ZooModel(
        50, (Placement('se', _every(1, 2, 3, 4)),),
        'SE (reduction 16) in every bottleneck',
        'senet'),
    'resnet50_cbam': ZooModel(
        50, (Placement('cbam', _every(1, 2, 3, 4)),),
        'CBAM (official semantics) in every bottleneck after bn3',
        'cbam'),
    'resnet50_bam': ZooModel(
        50, (Placement('bam', {1: (-1,), 2: (-1,), 3: (-1,)}, after_block=True),),
        'BAM after layer1, layer2 and layer3',
        'bam'),
    'resnet50_cc': ZooModel(
        50, (Placement('cc', {3: (-1,)}, after_block=True),),
        'Criss-cross attention (recurrence 2, shared weights) after layer3',
        'ccnet'),
    'resnet50_sa': ZooModel(
        50, (Placement('sa', {3: (-1,)}, after_block=True),),
        'SAGAN self-attention after layer3',
        'sagan'),
    'resnet18_gc': ZooModel(
        18, (Placement('gc', _GC_STAGES),),
        'ResNet-18 with a GC block (ratio 1/16) in every basic block of c3-c5',
        'gcnet'),
    'resnet26_gc': ZooModel(
        26, (Placement('gc', _GC_STAGES),),
        'ResNet-26 with a GC block (ratio 1/16) in every bottleneck of c3-c5',
        'gcnet'),
    'resnet101_gc': ZooModel(
        101, (Placement('gc', _GC_STAGES),),
        'ResNet-101 with a GC block (ratio 1/16) in every bottleneck of c3-c5',
        'gcnet'),
}


class ZooResNet(ResNet):
    """timm's ``ResNet`` with attention blocks placed per ``placements`` (see ``Placement``).

    The blocks are added after ``ResNet.__init__`` and its ``init_weights`` (which kaiming-inits every
    conv and would wipe the blocks' zero-init), then ``reset_attn_parameters`` puts each block in its
    identity-at-init state. ``init_weights`` does the same when called again.
    """

    def __init__(self, placements: Tuple[Placement, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        dd = dict(device=kwargs.get('device'), dtype=kwargs.get('dtype'))
        for placement in placements:
            self._place(placement, dd)
        self.reset_attn_parameters()

    def _place(self, placement: Placement, dd: Dict[str, Any]) -> None:
        factory = get_attn(placement.attn)
        for stage_idx, block_ids in placement.stages.items():
            if stage_idx not in (1, 2, 3, 4):
                raise ValueError(f'Placement stages must be numbered 1-4, got {stage_idx}')
            stage: nn.Sequential = getattr(self, f'layer{stage_idx}')
            blocks = list(stage.children())
            ids = range(len(blocks)) if block_ids is None else block_ids
            try:
                chosen = sorted({range(len(blocks))[i] for i in ids})
            except IndexError:
                raise ValueError(
                    f'Placement of {placement.attn!r}: layer{stage_idx} has {len(blocks)} blocks, '
                    f'got block indices {tuple(ids)}') from None
            if not placement.after_block:
                for i in chosen:
                    blocks[i].se = factory(self._block_out_channels(blocks[i]), **placement.kwargs, **dd)
                continue
            modules = OrderedDict()
            for name, block in stage.named_children():
                modules[name] = block
                if name.isdigit() and int(name) in chosen:
                    modules[f'attn{name}'] = factory(self._block_out_channels(block), **placement.kwargs, **dd)
            setattr(self, f'layer{stage_idx}', nn.Sequential(modules))

    @staticmethod
    def _block_out_channels(block: nn.Module) -> int:
        return block.bn3.num_features if hasattr(block, 'bn3') else block.bn2.num_features

    def reset_attn_parameters(self) -> None:
        """Put every attention block back in its init state (identity where its paper zero-inits)."""
        for _, module in attention_modules(self):
            module.reset_parameters()

    def init_weights(self, zero_init_last: bool = True) -> None:
        super().init_weights(zero_init_last=zero_init_last)
        self.reset_attn_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Norm weights of the attention blocks (GC's LayerNorm weight is (P, 1, 1), so timm's
        ``ndim <= 1`` rule would otherwise decay it, unlike every other norm weight)."""
        return {f'{name}.{pname}' for name, module in self.named_modules()
                if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) for pname, _ in module.named_parameters()}


default_cfgs = generate_default_cfgs(pretrained_cfgs(ZOO_MODELS))


def create_zoo_model(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a zoo model through timm's ``build_model_with_cfg`` (all of timm's options work).

    Extra keyword: ``pretrained_backbone`` (a timm model name with tag, or a path to a ResNet
    checkpoint in timm's/torchvision's layout): transplants that ResNet into the backbone and keeps
    the attention blocks at identity init (see ``gczoo.models.init_from_resnet``).
    """
    resolve_model_name(variant, what='variant', zoo=ZOO_MODELS, folders=False)
    pretrained_backbone = kwargs.pop('pretrained_backbone', None)
    if pretrained and pretrained_backbone is not None:
        raise ValueError('pass either pretrained=True or pretrained_backbone=..., not both')
    zoo = ZOO_MODELS[variant]
    depth = get_depth(zoo.depth)
    if pretrained:
        check_weights_available(variant, zoo, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'),
                                cache_dir=kwargs.get('cache_dir'))
    with explain_download_errors(variant, enabled=pretrained):
        model = build_model_with_cfg(
            ZooResNet, variant, pretrained,
            pretrained_filter_fn=filter_pretrained,
            block=depth.block, layers=depth.layers, placements=zoo.placements,
            **kwargs,
        )
    if pretrained_backbone is not None:
        init_from_resnet(model, pretrained_backbone)
    return model


@register_model
def resnet50_gc(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + GC block (r16) in c3-c5 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet50_gc', pretrained, **kwargs)


@register_model
def resnet50_gc_r4(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + GC block (r4) in c3-c5 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet50_gc_r4', pretrained, **kwargs)


@register_model
def resnet50_nl(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + 5 Non-local blocks in res3/res4 (arXiv:1711.07971)."""
    return create_zoo_model('resnet50_nl', pretrained, **kwargs)


@register_model
def resnet50_snl(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + 1 Simplified Non-local block in res4 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet50_snl', pretrained, **kwargs)


@register_model
def resnet50_se(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + SE (r16) in every bottleneck (arXiv:1709.01507)."""
    return create_zoo_model('resnet50_se', pretrained, **kwargs)


@register_model
def resnet50_cbam(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + CBAM in every bottleneck (arXiv:1807.06521)."""
    return create_zoo_model('resnet50_cbam', pretrained, **kwargs)


@register_model
def resnet50_bam(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + BAM after layer1-3 (arXiv:1807.06514)."""
    return create_zoo_model('resnet50_bam', pretrained, **kwargs)


@register_model
def resnet50_cc(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + criss-cross attention (R=2) after layer3 (CCNet, arXiv:1811.11721)."""
    return create_zoo_model('resnet50_cc', pretrained, **kwargs)


@register_model
def resnet50_sa(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-50 + SAGAN self-attention after layer3 (arXiv:1805.08318)."""
    return create_zoo_model('resnet50_sa', pretrained, **kwargs)


@register_model
def resnet18_gc(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-18 + GC block (r16) in c3-c5 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet18_gc', pretrained, **kwargs)


@register_model
def resnet26_gc(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-26 + GC block (r16) in c3-c5 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet26_gc', pretrained, **kwargs)


@register_model
def resnet101_gc(pretrained: bool = False, **kwargs: Any) -> ZooResNet:
    """ResNet-101 + GC block (r16) in c3-c5 (GCNet, arXiv:1904.11492)."""
    return create_zoo_model('resnet101_gc', pretrained, **kwargs)
