"""The segmentors' pretrained tags: mmsegmentation's published Cityscapes and ADE20K checkpoints.

Rows of ``gczoo.models.tags.Tag`` (the zoo's one Tag mechanism) in their own table, never in timm's
pretrained cfgs: ``create_segmentor('ccnet_r50_d8.cityscapes_512x1024_80k', pretrained=True)``. Each
weights URL is fetched into torch's hub cache (``gczoo.models.sources.fetch_url``), read with
``torch.load(weights_only=True)`` and checked by ``gczoo.models.weights``, converted from mmseg's key
layout by ``gczoo.seg.convert``. Every mIoU is mmseg's own (single scale, val split), read from the
metafiles of mmsegmentation v1.2.2 (``configs/<system>/metafile.yaml``); it is the segmentor's because
gczoo's logits equal mmseg's for the same weights (tested against a re-implementation of mmseg's module
structure), given mmseg's test pipeline (``SEG_DATA``: resize, mean/std, whole or slide mode).

Tag names: ``<dataset>_<training crop>_<iterations>`` as mmseg's config names say them. The first
row of a model is its default.
"""
from typing import Any, Dict, List, Mapping, Tuple

from gczoo.models.tags import Metric, Tag

__all__ = ['MMSEG', 'MMSEG_DOWNLOAD', 'SEG_DATA', 'SEG_TAGS', 'seg_tags_for', 'get_seg_tag', 'default_seg_tag',
           'tag_data_config']

MMSEG = 'mmseg'  # the tags' kind: an mmseg checkpoint, converted on load, everything trained
MMSEG_DOWNLOAD = 'https://download.openmmlab.com/mmsegmentation/v0.5'
_METAFILE = 'https://github.com/open-mmlab/mmsegmentation/blob/v1.2.2/configs/{dir}/metafile.yaml'
_DIRS = {'ccnet': ('ccnet', 'ccnet'), 'nlnet': ('nonlocal_net', 'nonlocal'), 'gcnet': ('gcnet', 'gcnet')}
_PAPER_NAMES = {'ccnet': 'CCNet', 'nlnet': 'NonLocalNet', 'gcnet': 'GCNet'}

# mmseg's test pipeline per training setting: mmseg/.mim/configs/_base_/datasets/*.py and the model configs
SEG_DATA: Dict[Tuple[str, str], Dict[str, Any]] = {
    ('cityscapes', '512x1024'): dict(dataset='cityscapes', num_classes=19, scale=(2048, 1024), mode='whole',
                                     crop_size=None, stride=None, align_corners=False, reduce_zero_label=False),
    ('cityscapes', '769x769'): dict(dataset='cityscapes', num_classes=19, scale=(2049, 1025), mode='slide',
                                    crop_size=(769, 769), stride=(513, 513), align_corners=True,
                                    reduce_zero_label=False),
    ('ade20k', '512x512'): dict(dataset='ade20k', num_classes=150, scale=(2048, 512), mode='whole', crop_size=None,
                                stride=None, align_corners=False, reduce_zero_label=True),
}
# mmseg's SegDataPreProcessor: RGB order, 0..255 pixel values
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)

# (dataset, training crop, iterations, mmseg's published mIoU, the checkpoint's time stamp and hash)
_RELEASES: Mapping[Tuple[str, int], Tuple[Tuple[str, str, str, float, str], ...]] = {
    ('ccnet', 50): (
        ('cityscapes', '512x1024', '80k', 79.03, '20200617_010421-869a3423'),
        ('cityscapes', '512x1024', '40k', 77.76, '20200616_142517-4123f401'),
        ('cityscapes', '769x769', '40k', 78.46, '20200616_145125-76d11884'),
        ('cityscapes', '769x769', '80k', 79.29, '20200617_010421-73eed8ca'),
        ('ade20k', '512x512', '80k', 41.78, '20200615_014848-aa37f61e'),
        ('ade20k', '512x512', '160k', 42.08, '20200616_084435-7c97193b'),
    ),
    ('ccnet', 101): (
        ('cityscapes', '512x1024', '80k', 78.87, '20200617_203935-ffae8917'),
        ('cityscapes', '512x1024', '40k', 76.35, '20200616_142540-a3b84ba6'),
        ('cityscapes', '769x769', '40k', 76.94, '20200617_101428-4f57c8d0'),
        ('cityscapes', '769x769', '80k', 79.45, '20200618_011502-ad3cd481'),
        ('ade20k', '512x512', '80k', 43.97, '20200615_014848-1f4929a3'),
        ('ade20k', '512x512', '160k', 43.71, '20200616_000644-e849e007'),
    ),
    ('nlnet', 50): (
        ('cityscapes', '512x1024', '80k', 78.01, '20200607_193518-d6839fae'),
        ('cityscapes', '512x1024', '40k', 78.24, '20200605_210748-c75e81e3'),
        ('cityscapes', '769x769', '40k', 78.33, '20200530_045243-82ef6749'),
        ('cityscapes', '769x769', '80k', 79.05, '20200607_193506-1f9792f6'),
        ('ade20k', '512x512', '80k', 40.75, '20200615_015801-5ae0aa33'),
        ('ade20k', '512x512', '160k', 42.03, '20200616_005410-baef45e3'),
    ),
    ('nlnet', 101): (
        ('cityscapes', '512x1024', '80k', 78.93, '20200607_183411-32700183'),
        ('cityscapes', '512x1024', '40k', 78.66, '20200605_210748-d63729fa'),
        ('cityscapes', '769x769', '40k', 78.57, '20200530_045348-8fe9a9dc'),
        ('cityscapes', '769x769', '80k', 79.4, '20200607_183428-0e1fa4f9'),
        ('ade20k', '512x512', '80k', 42.9, '20200615_015758-24105919'),
        ('ade20k', '512x512', '160k', 44.63, '20210827_221502-7881aa1a'),
    ),
    ('gcnet', 50): (
        ('cityscapes', '512x1024', '80k', 78.48, '20200618_074450-ef8f069b'),
        ('cityscapes', '512x1024', '40k', 77.69, '20200618_074436-4b0fd17b'),
        ('cityscapes', '769x769', '40k', 78.12, '20200618_182814-a26f4471'),
        ('cityscapes', '769x769', '80k', 78.68, '20200619_092516-4839565b'),
        ('ade20k', '512x512', '80k', 41.47, '20200614_185146-91a6da41'),
        ('ade20k', '512x512', '160k', 42.37, '20200615_224122-d95f3e1f'),
    ),
    ('gcnet', 101): (
        ('cityscapes', '512x1024', '80k', 79.03, '20200618_074450-778ebf69'),
        ('cityscapes', '512x1024', '40k', 78.28, '20200618_074436-5e62567f'),
        ('cityscapes', '769x769', '40k', 78.95, '20200619_092550-ca4f0a84'),
        ('cityscapes', '769x769', '80k', 79.18, '20200619_092628-8e043423'),
        ('ade20k', '512x512', '80k', 42.82, '20200615_020811-c3fcb6dd'),
        ('ade20k', '512x512', '160k', 43.69, '20200615_225406-615528d7'),
    ),
}


def _tag(system: str, depth: int, dataset: str, crop: str, iters: str, miou: float, stamp: str) -> Tag:
    folder, prefix = _DIRS[system]
    config = f'{prefix}_r{depth}-d8_{crop}_{iters}_{dataset}'
    url = f'{MMSEG_DOWNLOAD}/{folder}/{config}/{config}_{stamp}.pth'
    data = SEG_DATA[(dataset, crop)]
    metafile = _METAFILE.format(dir=folder)
    evaluation = 'Cityscapes val (500 images)' if dataset == 'cityscapes' else 'ADE20K val (2000 images)'
    return Tag(
        model=f'{system}_r{depth}_d8', tag=f'{dataset}_{crop}_{iters}', kind=MMSEG, source=url, source_name=config,
        license='apache-2.0', datasets=('imagenet-1k', dataset),
        trained=f'everything: mmseg\'s ResNetV1c-{depth} (ImageNet) fine-tuned with the {_PAPER_NAMES[system]} '
                f'head on {dataset} train, {crop} crops, {iters} iterations (mmseg config {config})',
        untrained='nothing',
        metrics=(Metric('semantic-segmentation', dataset, 'mIoU', miou, None, None, None, metafile),),
        metrics_apply=True,
        evidence=f'mmseg\'s published single-scale mIoU on {evaluation}; gczoo\'s logits equal mmseg\'s for '
                 f'these weights (tests/seg), with mmseg\'s test pipeline (mode={data["mode"]}, '
                 f'align_corners={data["align_corners"]})',
        origin_url=metafile,
        notes=(f'the weights were trained on {dataset}, whose own terms of use apply',),
        preprocessing=dict(data, mean=MMSEG_MEAN, std=MMSEG_STD, input_range='0-255 RGB'),
    )


SEG_TAGS: Tuple[Tag, ...] = tuple(
    _tag(system, depth, *row) for (system, depth), rows in _RELEASES.items() for row in rows)


def seg_tags_for(model: str) -> List[Tag]:
    """The tags of a segmentor, its default first."""
    return [t for t in SEG_TAGS if t.model == model]


def default_seg_tag(model: str) -> Tag:
    tags = seg_tags_for(model)
    if not tags:
        raise ValueError(f'segmentor {model!r} has no pretrained tags')
    return tags[0]


def get_seg_tag(model: str, tag: str) -> Tag:
    """The tag ``model.tag``; a ValueError naming the model's tags when there is none."""
    for t in seg_tags_for(model):
        if t.tag == tag:
            return t
    names = ', '.join(t.tag for t in seg_tags_for(model)) or 'none'
    raise ValueError(f'segmentor {model!r} has no pretrained tag {tag!r}; its tags: {names}')


def tag_data_config(tag: Tag) -> Dict[str, Any]:
    """The tag's test pipeline (mmseg's): dataset, num_classes, scale, mode, crop_size, stride, align_corners,
    reduce_zero_label, mean, std (0..255 RGB)."""
    return dict(tag.preprocessing or {})
