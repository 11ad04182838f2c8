"""torch.hub entrypoints: ``torch.hub.load('<org>/gczoo', 'resnet50_gc', pretrained=False, num_classes=10)``.

One entrypoint per model, generated from the tables that define them (the zoo's
``gczoo.models.ZOO_MODELS``, ``gczoo.video.VIDEO_MODELS``, ``gczoo.seg.SEGMENTORS``; the citation from
``gczoo.papers``). The zoo's call ``timm.create_model``, so every timm keyword works (``num_classes``,
``features_only``, ``pretrained_backbone=...``, ...); the video and segmentation models, which stay out
of timm's image registry, call ``gczoo.video.create_video_model`` / ``gczoo.seg.create_segmentor``.
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
from gczoo.seg import SEGMENTORS as _SEGMENTORS  # noqa: E402
from gczoo.seg import create_segmentor as _create_segmentor  # noqa: E402
from gczoo.seg import seg_tags_for as _seg_tags_for  # noqa: E402
from gczoo.video import VIDEO_MODELS as _VIDEO_MODELS  # noqa: E402
from gczoo.video import create_video_model as _create_video_model  # noqa: E402
from gczoo.video import video_tags_for as _video_tags_for  # noqa: E402


def _entrypoint(name: str, create, summary: str, paper_key: str, pretrained_doc: str, kwargs_doc: str,
                io_doc: str = ''):
    """``name(pretrained=False, **kwargs)`` calling ``create(name, pretrained=..., **kwargs)``, documented."""
    paper = _get_paper(paper_key)

    def entrypoint(pretrained: bool = False, **kwargs):
        return create(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__doc__ = (f'{summary}.\n\nPaper: {paper.title} (arXiv:{paper.arxiv}).\n\n'
                          f'Args:\n    pretrained: {pretrained_doc}\n    **kwargs: {kwargs_doc}\n{io_doc}')
    return entrypoint


def _zoo_entrypoint(name: str):
    zoo, tag = _ZOO_MODELS[name], _default_tag(name)
    weights = (f'the default tag {tag.name} (from {tag.source_name})' if tag is not None
               else 'published weights (none yet: pretrained=True fails and says what to use instead)')
    return _entrypoint(
        name, _timm.create_model, zoo.summary, zoo.paper,
        f'load {weights} through timm (its caches; HF_HUB_OFFLINE=1 works).',
        f'any timm.create_model keyword, e.g. num_classes=10, features_only=True,\n'
        f'        pretrained_backbone="{_get_depth(zoo.depth).imagenet_resnet}" (ImageNet ResNet, attention at init).')


def _video_entrypoint(name: str):
    model, tags = _VIDEO_MODELS[name], _video_tags_for(name)
    return _entrypoint(
        name, _create_video_model, model.summary, model.paper,
        f'load {tags[0].name if tags else "(no weights)"} (mmaction2\'s Kinetics-400\n'
        f'        checkpoint, by URL into torch\'s checkpoint cache, converted on load).',
        'gczoo.video.create_video_model keywords, e.g. num_classes=10.',
        'Input: clips (B, 3, T, H, W), e.g. 32 frames of 224x224.\n')


def _seg_entrypoint(name: str):
    spec, tag = _SEGMENTORS[name], _seg_tags_for(name)[0]
    return _entrypoint(
        name, _create_segmentor,
        f'{name}: mmseg\'s ResNetV1c-{spec.depth}-D8 (timm resnet{spec.depth}c, output stride 8) with the '
        f'{spec.system} head, as mmsegmentation builds it', spec.paper,
        f'load {tag.name} (mmseg\'s checkpoint by URL into torch\'s checkpoint cache, converted\n'
        f'        on load; mmseg\'s published mIoU {tag.metrics[0].value}); other tags: gczoo.seg.create_segmentor.',
        'gczoo.seg.create_segmentor keywords, e.g. num_classes=5, checkpoint_path=...',
        'Input: (B, 3, H, W) normalised with mmseg\'s mean/std; output: logits (B, K, H, W).\n')


for _table, _make in ((_ZOO_MODELS, _zoo_entrypoint), (_VIDEO_MODELS, _video_entrypoint), (_SEGMENTORS, _seg_entrypoint)):
    for _name in _table:
        globals()[_name] = _make(_name)
