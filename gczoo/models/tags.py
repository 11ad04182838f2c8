"""The zoo's pretrained tags: which published weights ``pretrained=True`` loads for each model, from
where, what in them was trained, and the source's preprocessing (timm ``pretrained_cfg``s).

Every tag names weights that exist at their source today; timm loads them through its own
mechanism (``hf_hub_id`` or ``url`` in the cfg, read by ``timm.models.load_pretrained`` with
``weights_only=True``) and :func:`filter_pretrained` maps them onto the zoo model's keys:

* ``identity`` -- an ImageNet ResNet of timm's (``timm/resnet50.a1_in1k``...) in the backbone, the
  GC/NL/SNL/CC/SA blocks at their zero-init, where they are the identity: the model computes the
  source's function, so the source's published accuracy is the model's (the tests check the logits).
  The attention blocks are untrained; fine-tune to get what they add.
* ``transplant`` -- the same for CBAM/BAM, whose sigmoid gates cannot start as the identity: the
  backbone is trained, the gates are at their papers' random init and change the logits. A starting
  point for fine-tuning, not a classifier: its ImageNet accuracy is unmeasured and not the source's.
* ``same_architecture`` -- weights of an architecture with exactly the zoo model's keys, shapes and
  function (timm's ``seresnet50`` = ``resnet50_se``): everything trained, the source's accuracy holds.
* ``detection_backbone`` -- the backbone of GCNet's official Mask R-CNN (mmdetection, COCO), GC
  blocks trained, converted by ``gczoo.models.convert`` on load. No classifier: the cfg has
  ``num_classes=0`` (as timm's backbone-only weights do); pass ``num_classes=K`` for a new head.
* ``gczoo`` -- gczoo's own trained weights on the Hub under ``HUB_ORG`` (none published yet).

The first row of a model in :data:`TAGS` is its default (``timm.create_model(name, pretrained=True)``).
Adding a tag is one row. For gczoo's own weights, after ``gczoo publish ... --tag ft_in1k`` has
uploaded ``gczoo/resnet50_gc.ft_in1k``, add (first, to make it the default)::

    Tag('resnet50_gc', 'ft_in1k', GCZOO, source='gczoo/resnet50_gc.ft_in1k', source_name='resnet50_gc.ft_in1k',
        license='apache-2.0', datasets=('imagenet-1k',), trained='everything: ...', untrained='nothing',
        metrics=(Metric('image-classification', 'imagenet-1k', 'top1', 79.1, 224, 0.95, 'bicubic', URL),),
        metrics_apply=True, evidence='measured by gczoo evaluate on ImageNet-1k val (URL)', origin_url=URL,
        preprocessing=dict(crop_pct=0.95, interpolation='bicubic'))  # what differs from the zoo's defaults

A tag appears in ``timm.list_pretrained()`` only through a row here, so no tag without weights can be
listed. Cards and the README table render from :data:`TAGS` (``Tag`` fields, ``tags_for``, ``get_tag``).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from timm.models._builder import resolve_pretrained_cfg

from gczoo.layers import attention_modules
from gczoo.papers import get_paper

from .depths import get_depth
from .errors import PretrainedWeightsError
from .pretrained import transplant_state_dict
from .sources import fetch_from_hub, fetch_url, url_file_name
from .weights import WEIGHTS_NAME, StateDict, check_state_dict, classifier_names, unwrap_state_dict

__all__ = [
    'HUB_ORG', 'IDENTITY', 'TRANSPLANT', 'SAME_ARCHITECTURE', 'DETECTION_BACKBONE', 'GCZOO', 'KINDS', 'Metric',
    'Tag', 'TAGS', 'tags_for', 'default_tag', 'get_tag', 'pretrained_cfgs', 'filter_pretrained',
    'check_weights_available', 'weights_location',
]

HUB_ORG = 'gczoo'

IDENTITY = 'identity'
TRANSPLANT = 'transplant'
SAME_ARCHITECTURE = 'same_architecture'
DETECTION_BACKBONE = 'detection_backbone'
GCZOO = 'gczoo'
KINDS = (IDENTITY, TRANSPLANT, SAME_ARCHITECTURE, DETECTION_BACKBONE, GCZOO)

# timm's evaluation of its ImageNet weights (ImageNet-1k val), pinned to the commit the numbers were read from
TIMM_RESULTS = ('https://github.com/huggingface/pytorch-image-models/blob/'
                '4e5207c7bb6592474ca56e28b2cf85be8f1a550f/results/results-imagenet.csv')
MMDET_GCNET = ('https://github.com/open-mmlab/mmdetection/blob/'
               '0ed37e3b9c3c57d0751472879b7cb2b734f3cf71/configs/gcnet/metafile.yml')
MMDET_V2_GCNET = 'https://download.openmmlab.com/mmdetection/v2.0/gcnet'


@dataclasses.dataclass(frozen=True)
class Metric:
    """One published result of a tag's source weights (not necessarily of the zoo model: see ``Tag``)."""
    task: str  # 'image-classification', 'object-detection', 'instance-segmentation'
    dataset: str  # 'imagenet-1k' (val), 'coco' (val2017)
    name: str  # 'top1', 'top5', 'box_ap', 'mask_ap'
    value: float
    img_size: Optional[int]  # the eval resolution (square), None where the source resizes otherwise
    crop_pct: Optional[float]
    interpolation: Optional[str]
    evidence: str  # where the number is published


@dataclasses.dataclass(frozen=True)
class Tag:
    """One pretrained tag: ``timm.create_model(f'{model}.{tag}', pretrained=True)``."""
    model: str
    tag: str
    kind: str  # one of KINDS
    source: str  # a Hub repo id ('timm/resnet50.a1_in1k') or a URL
    source_name: str  # what the weights were trained as ('resnet50.a1_in1k', mmdetection's config name)
    license: str
    datasets: Tuple[str, ...]  # every dataset the weights were trained on, in order
    trained: str  # what in the zoo model was trained, on what
    untrained: str  # what is at init
    metrics: Tuple[Metric, ...]  # the source's published results
    metrics_apply: bool  # whether those results are the zoo model's own
    evidence: str  # why they are (or are not)
    origin_url: str  # where the weights and their recipe are documented
    notes: Tuple[str, ...] = ()
    preprocessing: Optional[Mapping[str, Any]] = None  # None: the timm source's cfg (source_name)

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'

    @property
    def is_url(self) -> bool:
        return self.source.startswith(('https://', 'http://'))

    @property
    def base_model(self) -> Optional[str]:
        """The Hub repo the weights come from (a model card's ``base_model``), None for a URL."""
        return None if self.is_url else self.source

    @property
    def source_top1(self) -> Optional[Metric]:
        """The source's published ImageNet top-1 at the cfg's input size (None: no ImageNet result)."""
        size = self.data_config()['input_size'][-1]
        found = [m for m in self.metrics if m.name == 'top1' and m.dataset == 'imagenet-1k']
        return next((m for m in found if m.img_size == size), found[0] if found else None)

    @property
    def top1(self) -> Optional[Metric]:
        """The zoo model's ImageNet top-1 with these weights: the source's where it applies (identity,
        same architecture), else None (``kind`` says why: backbone only, or unmeasured)."""
        return self.source_top1 if self.metrics_apply else None

    def data_config(self) -> Dict[str, Any]:
        """The source's preprocessing, as the cfg carries it (what ``resolve_data_config`` starts from).
        A row's ``preprocessing`` states what differs from the zoo's defaults (``pool_size`` follows
        ``input_size``: the ResNets' output stride is 32)."""
        if self.preprocessing is not None:
            config = {**_DEFAULT_DATA, **self.preprocessing}
            if 'pool_size' not in self.preprocessing:
                config['pool_size'] = tuple(-(-size // 32) for size in config['input_size'][1:])
            return config
        cfg = get_pretrained_cfg(self.source_name)
        if cfg is None:
            raise ValueError(f'tag {self.name}: timm has no pretrained cfg {self.source_name!r} to take the '
                             f'preprocessing from; give preprocessing= in the row')
        return {k: v for k, v in cfg.to_dict().items() if k in _DATA_KEYS}


# the zoo's data defaults (timm's ResNet cfg) for rows that give their own preprocessing
_DEFAULT_DATA: Dict[str, Any] = dict(
    num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation='bilinear',
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv='conv1', classifier='fc')
# the cfg keys that describe the source's data, its head and its first conv (copied from the source)
_DATA_KEYS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation', 'crop_pct',
              'test_crop_pct', 'crop_mode', 'mean', 'std', 'num_classes', 'label_offset', 'pool_size',
              'test_pool_size', 'first_conv', 'classifier')


def _timm_top1(*rows: Tuple[int, float, float, float, str]) -> Tuple[Metric, ...]:
    """(img_size, top1, top5, crop_pct, interpolation) rows of timm's results-imagenet.csv."""
    out = []
    for size, top1, top5, crop, interp in rows:
        out += [Metric('image-classification', 'imagenet-1k', 'top1', top1, size, crop, interp, TIMM_RESULTS),
                Metric('image-classification', 'imagenet-1k', 'top5', top5, size, crop, interp, TIMM_RESULTS)]
    return tuple(out)


_SOURCE_RESULTS = {  # timm's results-imagenet.csv (ImageNet-1k val, 50,000 images)
    'resnet18.a1_in1k': _timm_top1((224, 71.504, 90.086, 0.95, 'bicubic'),
                                   (288, 73.164, 91.054, 1.0, 'bicubic')),
    'resnet26.bt_in1k': _timm_top1((224, 75.298, 92.578, 0.875, 'bicubic'),
                                   (288, 76.384, 93.178, 0.95, 'bicubic')),
    'resnet50.a1_in1k': _timm_top1((224, 80.382, 94.598, 0.95, 'bicubic'),
                                   (288, 81.240, 95.112, 1.0, 'bicubic')),
    'resnet101.a1h_in1k': _timm_top1((224, 81.950, 95.760, 0.95, 'bicubic'),
                                     (288, 82.796, 96.324, 1.0, 'bicubic')),
    'resnet101.a1_in1k': _timm_top1((224, 81.494, 95.164, 0.95, 'bicubic'),
                                    (288, 82.326, 95.630, 1.0, 'bicubic')),
    'seresnet50.a1_in1k': _timm_top1((224, 80.012, 94.704, 0.95, 'bicubic'),
                                     (288, 81.114, 95.122, 1.0, 'bicubic')),
    'seresnet50.ra2_in1k': _timm_top1((224, 80.260, 95.068, 0.875, 'bicubic'),
                                      (288, 81.288, 95.652, 0.95, 'bicubic')),
}
_TIMM_ORIGIN = 'https://github.com/huggingface/pytorch-image-models'
_TIMM_RECIPES = {  # as timm's model cards on the Hub describe them
    'a1_in1k': "timm's ResNet Strikes Back A1 recipe (arXiv:2110.00476; LAMB, BCE loss, cosine) on ImageNet-1k",
    'a1h_in1k': "timm's ResNet Strikes Back A1 recipe with stronger regularisation (arXiv:2110.00476) on ImageNet-1k",
    'bt_in1k': "timm's bag-of-tricks recipe (SGD with Nesterov, cosine schedule) on ImageNet-1k",
    'ra2_in1k': "timm's RandAugment RA2 recipe (RMSProp, EMA weights, step schedule) on ImageNet-1k",
}


def _from_timm_resnet(model: str, depth: int, kind: str, blocks: str) -> Tag:
    """A tag whose backbone is the ImageNet ResNet of timm's that ``gczoo.models.depths`` names for
    ``depth`` and whose attention blocks are at init."""
    source_name = get_depth(depth).imagenet_resnet
    recipe = _TIMM_RECIPES[source_name.split('.')[1]]
    identity = kind == IDENTITY
    return Tag(
        model=model, tag=f"{source_name.split('.')[1]}_{'identity' if identity else 'untrained_attn'}", kind=kind,
        source=f'timm/{source_name}', source_name=source_name, license='apache-2.0', datasets=('imagenet-1k',),
        trained=f'the ResNet backbone and classifier: timm/{source_name} ({recipe})',
        untrained=f'the {blocks} blocks: at their init'
                  + (', where they are the identity' if identity else ' (sigmoid gates: not the identity)'),
        metrics=_SOURCE_RESULTS[source_name], metrics_apply=identity,
        evidence=(f'the blocks are the identity at init, so the logits equal {source_name}\'s with the same weights '
                  f'(tested: tests/models/test_tags.py)') if identity else (
            f'not {source_name}\'s: the {blocks} gates at init rescale the features, so the logits differ from the '
            f'source\'s (tested); this tag\'s own ImageNet accuracy is unmeasured. Fine-tune before use.'),
        origin_url=_TIMM_ORIGIN,
        notes=((f'{blocks} blocks untrained (identity at init): the model is {source_name} until fine-tuned.',)
               if identity else
               (f'{blocks} blocks untrained and not the identity at init: a starting point for fine-tuning, '
                f'not a classifier; their random init depends on the torch seed.',)),
    )


def _same_architecture(model: str, source_name: str) -> Tag:
    recipe = _TIMM_RECIPES[source_name.split('.')[1]]
    return Tag(
        model=model, tag=source_name.split('.')[1], kind=SAME_ARCHITECTURE, source=f'timm/{source_name}',
        source_name=source_name, license='apache-2.0', datasets=('imagenet-1k',),
        trained=f'everything, SE blocks included: timm/{source_name} ({recipe})', untrained='nothing',
        metrics=_SOURCE_RESULTS[source_name], metrics_apply=True,
        evidence=(f"{source_name.split('.')[0]} has exactly this model's keys, shapes and function (SE with "
                  f"int(C/16) hidden channels, ReLU, sigmoid, in the se slot before the residual add): the "
                  f"logits equal the source's with the same weights (tested: tests/models/test_tags.py)"),
        origin_url=_TIMM_ORIGIN,
    )


_COCO = (('object-detection', 'box_ap'), ('instance-segmentation', 'mask_ap'))
# mmdetection's Mask R-CNN test pipeline: Resize (1333, 800) keeping the ratio, ImageNet mean/std, no crop
_MMDET_PREPROCESSING = dict(input_size=(3, 800, 1333), crop_pct=1.0, interpolation='bilinear', num_classes=0)


def _mmdet_gc(model: str, config: str, stamp: str, depth: int, ratio: int, box_ap: float, mask_ap: float) -> Tag:
    url = f'{MMDET_V2_GCNET}/{config}/{config}_{stamp}.pth'
    return Tag(
        model=model, tag='mmdet_coco', kind=DETECTION_BACKBONE, source=url, source_name=config,
        license='apache-2.0', datasets=('imagenet-1k', 'coco'),
        trained=(f"the backbone of GCNet's Mask R-CNN R-{depth}-FPN with GC blocks (ratio 1/{ratio}, c3-c5), trained "
                 f"on COCO train2017 (mmdetection 1x schedule, 12 epochs) from torchvision's ImageNet "
                 f"resnet{depth}: layer2-4 convs, BN affine parameters and the GC blocks"),
        untrained=("no classifier (num_classes=0; pass num_classes=K for a new head); the stem and layer1 and every "
                   "BN's running statistics stayed torchvision's ImageNet ones (frozen in the detector)"),
        metrics=tuple(Metric(task, 'coco', name, value, None, None, 'bilinear', MMDET_GCNET)
                      for (task, name), value in zip(_COCO, (box_ap, mask_ap))),
        metrics_apply=False,
        evidence=('box/mask AP of the whole Mask R-CNN (FPN and heads included) on COCO val2017, not of this '
                  'backbone alone; no ImageNet result (backbone only)'),
        origin_url='https://github.com/open-mmlab/mmdetection/tree/main/configs/gcnet',
        notes=("GCNet's official COCO weights, re-released with mmdetection v2 (the GCNet README's mmdetection v1 "
               "links point to the retired open-mmlab AWS bucket); converted from mmdetection's layout on load "
               "(gczoo.models.convert, layout 'gcnet_mmdet').",
               "Preprocessing is the detector's: resize to 800x1333 (mmdetection keeps the aspect ratio, shorter "
               "side 800), ImageNet mean/std; set img_size for classification fine-tuning."),
        preprocessing=_MMDET_PREPROCESSING,
    )


# The source of truth for the pretrained tags; the first row of a model is its default.
TAGS: Tuple[Tag, ...] = (
    _from_timm_resnet('resnet50_gc', 50, IDENTITY, 'GC'),
    _mmdet_gc('resnet50_gc', 'mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco', '20200515_211915-187da160', 50, 16,
              39.7, 35.9),
    _from_timm_resnet('resnet50_gc_r4', 50, IDENTITY, 'GC'),
    _mmdet_gc('resnet50_gc_r4', 'mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco', '20200204-17235656', 50, 4, 39.9, 36.0),
    _from_timm_resnet('resnet50_nl', 50, IDENTITY, 'Non-local'),
    _from_timm_resnet('resnet50_snl', 50, IDENTITY, 'Simplified Non-local'),
    _same_architecture('resnet50_se', 'seresnet50.a1_in1k'),
    _same_architecture('resnet50_se', 'seresnet50.ra2_in1k'),
    _from_timm_resnet('resnet50_cbam', 50, TRANSPLANT, 'CBAM'),
    _from_timm_resnet('resnet50_bam', 50, TRANSPLANT, 'BAM'),
    _from_timm_resnet('resnet50_cc', 50, IDENTITY, 'criss-cross attention'),
    _from_timm_resnet('resnet50_sa', 50, IDENTITY, 'SAGAN self-attention'),
    _from_timm_resnet('resnet18_gc', 18, IDENTITY, 'GC'),
    _from_timm_resnet('resnet26_gc', 26, IDENTITY, 'GC'),
    _from_timm_resnet('resnet101_gc', 101, IDENTITY, 'GC'),
    _mmdet_gc('resnet101_gc', 'mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco', '20200205-e58ae947', 101, 16, 41.3, 37.2),
)


def tags_for(model: str) -> Tuple[Tag, ...]:
    """A model's tags, its default first."""
    return tuple(t for t in TAGS if t.model == model)


def default_tag(model: str) -> Optional[Tag]:
    """The tag ``timm.create_model(model, pretrained=True)`` loads (None: the model has no weights)."""
    return next(iter(tags_for(model)), None)


def get_tag(name: str) -> Tag:
    """The tag for ``'model.tag'`` (or a bare model name: its default)."""
    model, _, tag = name.partition('.')
    for row in tags_for(model):
        if not tag or row.tag == tag:
            return row
    known = ', '.join(t.name for t in TAGS)
    raise KeyError(f'no pretrained tag {name!r}; the zoo has: {known}')


def _cfg(row: Tag, zoo: Any) -> Dict[str, Any]:
    # every Hub source has a model.safetensors: pinned, so timm never falls back to a pickled .bin
    source = dict(url=row.source) if row.is_url else dict(hf_hub_id=row.source, hf_hub_filename=WEIGHTS_NAME)
    return {
        **row.data_config(), **source,
        'license': row.license, 'origin_url': row.origin_url,
        'paper_ids': f'arXiv:{get_paper(zoo.paper).arxiv}',
        'description': f'{zoo.summary}; {row.kind} weights from {row.source_name}',
        'notes': (f'trained: {row.trained}', f'untrained: {row.untrained}', *row.notes),
    }


def _untrained_cfg(zoo: Any) -> Dict[str, Any]:
    """timm's convention for an architecture without weights: a cfg with no source (``.untrained``)."""
    return {**_DEFAULT_DATA, 'license': 'apache-2.0', 'paper_ids': f'arXiv:{get_paper(zoo.paper).arxiv}', 'notes': (zoo.summary,)}


def pretrained_cfgs(zoo_models: Mapping[str, Any], rows: Tuple[Tag, ...] = TAGS) -> Dict[str, Dict[str, Any]]:
    """``{'model.tag': cfg}`` for timm's ``generate_default_cfgs``: every row of ``rows`` (``TAGS``),
    each model's first row first (timm's default); a model without rows gets timm's ``.untrained`` cfg."""
    unknown = sorted({t.model for t in rows} - set(zoo_models))
    if unknown:
        raise ValueError(f'TAGS names models the zoo does not have: {", ".join(unknown)}')
    cfgs: Dict[str, Dict[str, Any]] = {}
    for name, zoo in zoo_models.items():
        own = [row for row in rows if row.model == name]
        for row in own:
            cfgs[row.name] = _cfg(row, zoo)
        if not own:
            cfgs[f'{name}.untrained'] = _untrained_cfg(zoo)
    return cfgs


# ----------------------------------------------------------------------------------------------
# loading: timm's filter_fn


def weights_location(cfg: Mapping[str, Any]) -> str:
    """Where a pretrained cfg's weights are read from, for messages (mirrors timm's source order)."""
    if cfg.get('source') == 'hf-hub':
        return f"the Hub repo {cfg.get('hf_hub_id')!r}"
    if cfg.get('source') == 'local-dir':
        return f"the folder {cfg.get('file')!r}"
    if cfg.get('state_dict') is not None:
        return 'the state dict in pretrained_cfg'
    if cfg.get('file'):
        return f"the file {cfg['file']!r}"
    if cfg.get('hf_hub_id'):
        return f"the Hub repo {cfg['hf_hub_id']!r}" + (
            f" ({cfg['hf_hub_filename']})" if cfg.get('hf_hub_filename') else '')
    if cfg.get('url'):
        return f"the URL {cfg['url']}"
    return 'no source'


def filter_pretrained(state_dict: Mapping[str, Any], model: nn.Module) -> StateDict:
    """timm's ``pretrained_filter_fn`` for the zoo: the loaded weights -> the zoo model's keys.

    What the weights are is read from their keys, so a tag, ``pretrained_cfg_overlay=dict(file=...)``,
    ``url=`` or ``hf_hub_id=`` all work the same way:

    * the zoo model's own keys (gczoo's published weights, timm's ``seresnet50`` for ``resnet50_se``):
      unchanged;
    * an official CBAM/BAM/GCNet-mmdetection checkpoint: converted (``gczoo.models.convert``);
    * a plain ResNet (no attention keys at all): transplanted, the attention tensors taken from the
      model as built (their init: the identity for GC/NL/SNL/CC/SA).

    The first conv and the classifier are left as the source has them: timm's ``load_pretrained``
    then adapts the first conv to ``in_chans`` and drops a classifier when ``num_classes`` differs,
    as for any timm model. Every tensor is checked for dtype and finite values
    (``gczoo.models.weights.check_state_dict``).
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    where = f"pretrained weights for {cfg.get('architecture', type(model).__name__)!r} from {weights_location(cfg)}"
    state = unwrap_state_dict(state_dict, source=where)
    attn_prefixes = tuple(f'{name}.' for name, _ in attention_modules(model))
    if attn_prefixes and not any(k.startswith(attn_prefixes) for k in state):
        # convert.py reads the zoo table (gczoo.py, which imports this module): imported when used
        from .convert import convert_state_dict, detect_layout
        try:
            layout: Optional[str] = detect_layout(state)
        except ValueError:
            layout = None  # no official attention layout: a plain ResNet (or an error named below)
        if layout is None:
            state, _ = transplant_state_dict(model, state, where, adapt_first_conv=False,
                                             skip_mismatched_classifier=False)
        else:
            _, state = convert_state_dict(state, layout=layout, model=cfg.get('architecture'))
    tolerated = tuple(f'{n}.' for n in classifier_names(model)) + tuple(
        f'{n}.weight' for n in _first_convs(cfg))
    check_state_dict(model, state, where, strict=False, tolerate_prefixes=tolerated)
    return dict(state)


def _first_convs(cfg: Mapping[str, Any]) -> Tuple[str, ...]:
    name = cfg.get('first_conv') or 'conv1'
    return (name,) if isinstance(name, str) else tuple(name)


# ----------------------------------------------------------------------------------------------
# fetching: one clear error when the source cannot be had


def check_weights_available(
        variant: str,
        zoo: Any,
        pretrained_cfg: Any,
        overlay: Optional[Dict[str, Any]],
        cache_dir: Optional[Any] = None,
) -> None:
    """Before timm loads ``pretrained=True`` weights, have them in the cache timm reads them from (Hub
    cache or torch's checkpoint folder), or raise one ``PretrainedWeightsError`` naming the repo or
    URL, the cache looked in and what to do. timm then loads from that cache, as it would anyway.

    Local sources (``file``, ``local-dir:``, a state dict) and ``hf-hub:`` names are timm's and
    ``gczoo.models.hub_folder``'s to check.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    if cfg.source in ('hf-hub', 'local-dir') or cfg.file or getattr(cfg, 'state_dict', None) is not None:
        return
    if cfg.hf_hub_id:
        if cfg.hf_hub_filename:  # without it timm tries model.safetensors, then pytorch_model.bin
            fetch_from_hub(cfg.hf_hub_id, cfg.hf_hub_filename, what=f'pretrained weights for {name!r}',
                           cache_dir=cache_dir)
        return
    if cfg.url:
        fetch_url(cfg.url, what=f'pretrained weights for {name!r}', cache_dir=cache_dir,
                  hint=f'pass pretrained_cfg_overlay=dict(file="path/to/{url_file_name(cfg.url)}")')
        return
    tags = ', '.join(t.name for t in tags_for(variant)) or 'none yet'
    raise PretrainedWeightsError(
        f'{name!r} has no pretrained weights (its tags with weights: {tags}). Pick one of those, start from an '
        f'ImageNet ResNet with pretrained_backbone="resnet50.a1_in1k" (or gczoo.models.init_from_resnet), or '
        f'load your own with pretrained_cfg_overlay=dict(file="model.safetensors"), "local-dir:DIR" or '
        f'"hf-hub:ORG/REPO".')
