"""A card's Hub metadata (``huggingface_hub.ModelCardData``): where the weights come from
(``base_model``), what they were trained on (``datasets``), and ``model-index`` only for numbers that
were measured -- by ``gczoo eval``, or published for the very weights a pretrained tag loads."""
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from huggingface_hub import EvalResult, ModelCardData
from timm.models import get_pretrained_cfg, split_model_name_tag

from gczoo.layers import ATTN_SPECS
from gczoo.models.depths import get_depth
from gczoo.models.tags import Metric, Tag, default_tag

from .measured import METRICS, has_accuracy, zoo_row

__all__ = ['block_tags', 'meta_model', 'source_metadata', 'published_metrics', 'card_data']

# Hub tag per block class (the zoo's block names are short registry names: gc, nl_sub, ...)
_CLASS_TAGS = {
    'ContextBlock': 'global-context', 'SimplifiedNonLocal': 'simplified-non-local', 'NonLocal2d': 'non-local',
    'SqueezeExcite': 'squeeze-excitation', 'CBAM': 'cbam', 'BAM': 'bam',
    'CrissCrossAttention': 'criss-cross-attention', 'SelfAttention2d': 'self-attention',
}
# Hub dataset ids of the datasets timm's pretrained tags name (``resnet50.a1_in1k``: ImageNet-1k)
_TAG_DATASETS = {'in1k': 'imagenet-1k', 'in12k': 'imagenet-12k', 'in21k': 'imagenet-21k', 'in22k': 'imagenet-22k'}


def meta_model(model_name: str) -> torch.nn.Module:
    """The model built on the ``meta`` device: its structure and cfg, no weights allocated."""
    with torch.device('meta'):
        return timm.create_model(model_name, pretrained=False)


def block_tags(model_name: str) -> List[str]:
    """The Hub tags naming the model's attention blocks (e.g. ``['global-context']``)."""
    tags: List[str] = []
    for placement in zoo_row(model_name).placements:
        cls_name = ATTN_SPECS[placement.attn].cls.__name__
        tag = _CLASS_TAGS.get(cls_name, cls_name.lower())
        if tag not in tags:
            tags.append(tag)
    return tags


def source_metadata(timm_name: str) -> Tuple[Optional[str], List[str]]:
    """``(Hub repo id, training datasets)`` of timm pretrained weights named with their tag, e.g.
    ``'resnet50.a1_in1k'`` -> ``('timm/resnet50.a1_in1k', ['imagenet-1k'])``: the repo from timm's own
    pretrained cfg, the datasets from the tag's ``in1k``/``in12k``/``in21k``/``in22k`` parts (timm's
    naming convention; a tag without them gives no dataset)."""
    cfg = get_pretrained_cfg(timm_name) if timm.is_model(timm_name) else None
    tag = split_model_name_tag(timm_name)[1] or (cfg.tag if cfg is not None and cfg.tag else '')
    datasets = [_TAG_DATASETS[part] for part in tag.split('_') if part in _TAG_DATASETS]
    return (cfg.hf_hub_id if cfg is not None else None), list(dict.fromkeys(datasets))


def published_metrics(tag: Tag) -> List[Metric]:
    """The ImageNet top-1/top-5 published for a tag's source at its cfg's input size, if they are the
    zoo model's own (``tag.metrics_apply``: identity transplant, same architecture); else none."""
    top1 = tag.top1
    if top1 is None:
        return []
    return [m for m in tag.metrics if m.dataset == top1.dataset and m.img_size == top1.img_size
            and m.name in METRICS]


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'unknown'


def _metric_name(key: str) -> str:
    return f'{key[:3]}-{key[3:]} accuracy'  # 'top1' -> 'top-1 accuracy'


def _eval_results(results: Optional[Mapping[str, Any]], tag: Optional[Tag], model_name: str) -> List[EvalResult]:
    if has_accuracy(model_name, results):
        dataset = str(results.get('dataset') or 'not stated')
        dataset_id = str(results.get('dataset_id') or _slug(dataset))
        return [EvalResult(task_type='image-classification', dataset_type=dataset_id, dataset_name=dataset,
                           metric_type='accuracy', metric_name=_metric_name(key),
                           metric_value=round(float(results[key]), 4))
                for key in METRICS if results.get(key) is not None]
    if tag is None:
        return []
    return [EvalResult(task_type=m.task, dataset_type=m.dataset, dataset_name=f'{m.dataset} (val)',
                       dataset_split='validation', metric_type='accuracy', metric_name=_metric_name(m.name),
                       metric_value=m.value, metric_config=f'{m.img_size}px, crop_pct {m.crop_pct}, {m.interpolation}',
                       source_name=f'{tag.source_name} (published)', source_url=m.evidence)
            for m in published_metrics(tag)]


def card_data(
        model_name: str,
        results: Optional[Mapping[str, Any]] = None,
        *,
        base_model: Optional[str] = None,
        datasets: Optional[Sequence[str]] = None,
        license: Optional[str] = None,
) -> ModelCardData:
    """The card's Hub metadata.

    ``base_model`` / ``datasets``: the weights' origin and the Hub ids of the data they were trained on
    (e.g. a published training run). Without either, the card describes the registry's weights: those
    of the model's default pretrained tag (``gczoo.models.tags``: its source repo, datasets, licence
    and -- where they are this model's -- its published ImageNet metrics), or for a model without a
    tag, the ImageNet ResNet its backbone starts from (``gczoo.models.depths``). ``model-index`` holds
    measured ``results`` if given (their ``dataset``; ``dataset_id`` if given, else a slug of it).
    """
    zoo = zoo_row(model_name)
    tag = default_tag(model_name) if base_model is None and datasets is None else None
    if tag is not None:
        base_model, datasets, license = tag.base_model, list(tag.datasets), license or tag.license
    elif base_model is None and datasets is None:
        base_model, datasets = source_metadata(get_depth(zoo.depth).imagenet_resnet)
    if license is None:
        license = meta_model(model_name).pretrained_cfg.get('license') or 'apache-2.0'
    eval_results = _eval_results(results, tag, model_name)
    return ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'gczoo'] + block_tags(model_name),
        base_model=base_model, datasets=list(datasets) if datasets else None,
        model_name=model_name if eval_results else None, eval_results=eval_results or None)
