"""torch.hub entrypoints: ``torch.hub.load('<org>/gczoo', 'resnet50_gc', pretrained=False, num_classes=10)``.

One entrypoint per zoo model, generated from ``gczoo.models.ZOO_MODELS`` (the zoo's single source
of truth; the docstring's citation from ``gczoo.papers``); each calls ``timm.create_model`` so every timm keyword works (``num_classes``,
``features_only``, ``pretrained_backbone=...``, ...).
"""
dependencies = ['torch', 'timm']

import os as _os
import sys as _sys

# torch.hub imports this file from the repository folder; make the package next to it importable.
_sys.path.insert(0, _os.path.dirname(_os.path.abspath(__file__)))

import timm as _timm  # noqa: E402

from gczoo.models import ZOO_MODELS as _ZOO_MODELS  # noqa: E402  (importing gczoo registers the models)
from gczoo.models.depths import get_depth as _get_depth  # noqa: E402
from gczoo.models.tags import default_tag as _default_tag  # noqa: E402
from gczoo.papers import get_paper as _get_paper  # noqa: E402


def _entrypoint(name: str):
    zoo = _ZOO_MODELS[name]
    paper = _get_paper(zoo.paper)
    tag = _default_tag(name)
    weights = (f'the default tag {tag.name} (from {tag.source_name})' if tag is not None
               else 'published weights (none yet: pretrained=True fails and says what to use instead)')

    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__doc__ = (
        f'{zoo.summary}.\n\n'
        f'Paper: {paper.title} (arXiv:{paper.arxiv}).\n\n'
        f'Args:\n'
        f'    pretrained: load {weights} through timm (its caches; HF_HUB_OFFLINE=1 works).\n'
        f'    **kwargs: any timm.create_model keyword, e.g. num_classes=10, features_only=True,\n'
        f'        pretrained_backbone="{_get_depth(zoo.depth).imagenet_resnet}" (ImageNet ResNet, attention at init).\n'
    )
    return entrypoint


for _name in _ZOO_MODELS:
    globals()[_name] = _entrypoint(_name)


# --- video models (issue 19): gczoo.video's table, outside timm's image registry -------------------------
from gczoo.video import VIDEO_MODELS as _VIDEO_MODELS  # noqa: E402
from gczoo.video import create_video_model as _create_video_model  # noqa: E402
from gczoo.video import video_tags_for as _video_tags_for  # noqa: E402


def _video_entrypoint(name: str):
    tags, paper = _video_tags_for(name), _get_paper(_VIDEO_MODELS[name].paper)

    def entrypoint(pretrained: bool = False, **kwargs):
        return _create_video_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__doc__ = (
        f'{_VIDEO_MODELS[name].summary}.\n\n'
        f'Paper: {paper.title} (arXiv:{paper.arxiv}).\n\n'
        f'Args:\n'
        f'    pretrained: load {tags[0].name if tags else "(no weights)"} (mmaction2\'s Kinetics-400\n'
        f'        checkpoint, by URL into torch\'s checkpoint cache, converted on load).\n'
        f'    **kwargs: gczoo.video.create_video_model keywords, e.g. num_classes=10.\n'
        f'Input: clips (B, 3, T, H, W), e.g. 32 frames of 224x224.\n'
    )
    return entrypoint


for _name in _VIDEO_MODELS:
    globals()[_name] = _video_entrypoint(_name)


# --- segmentation models (issue 18): gczoo.seg's table, outside timm's image registry -------------------
from gczoo.seg import SEGMENTORS as _SEGMENTORS  # noqa: E402
from gczoo.seg import create_segmentor as _create_segmentor  # noqa: E402
from gczoo.seg import seg_tags_for as _seg_tags_for  # noqa: E402


def _seg_entrypoint(name: str):
    tag, paper = _seg_tags_for(name)[0], _get_paper(_SEGMENTORS[name].paper)

    def entrypoint(pretrained: bool = False, **kwargs):
        return _create_segmentor(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__doc__ = (
        f'{name}: mmseg\'s ResNetV1c-{_SEGMENTORS[name].depth}-D8 (timm resnet{_SEGMENTORS[name].depth}c, output '
        f'stride 8) with the {_SEGMENTORS[name].system} head, as mmsegmentation builds it.\n\n'
        f'Paper: {paper.title} (arXiv:{paper.arxiv}).\n\n'
        f'Args:\n'
        f'    pretrained: load {tag.name} (mmseg\'s checkpoint by URL into torch\'s checkpoint cache, converted\n'
        f'        on load; mmseg\'s published mIoU {tag.metrics[0].value}); other tags: gczoo.seg.create_segmentor.\n'
        f'    **kwargs: gczoo.seg.create_segmentor keywords, e.g. num_classes=5, checkpoint_path=...\n'
        f'Input: (B, 3, H, W) normalised with mmseg\'s mean/std; output: logits (B, K, H, W).\n'
    )
    return entrypoint


for _name in _SEGMENTORS:
    globals()[_name] = _seg_entrypoint(_name)
