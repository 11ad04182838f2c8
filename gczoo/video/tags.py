"""The video models' pretrained tags: mmaction2's Kinetics-400 I3D and Non-local I3D checkpoints.

Kept apart from timm's image registry (``gczoo.models.tags.TAGS``): ``timm.list_pretrained()`` never
lists a video tag, and ``gczoo.video.create_video_model('i3d_r50_nl.mmaction2_k400', pretrained=True)``
is the one way to load them. The rows reuse :class:`gczoo.models.tags.Tag` and ``Metric``.

The weights are mmaction2's (Apache-2.0), trained from torchvision's ImageNet ResNet-50 inflated to 3D,
100 epochs on Kinetics-400 (8 GPUs x 8 clips of 32 frames, frame interval 2). They are fetched by URL
into torch's checkpoint cache and converted on load (``gczoo.video.convert``); gczoo's model computes
mmaction2's function with them (tested against an independent re-implementation of mmaction2's
modules, not against mmaction2 itself). The numbers are mmaction2's, from the metafile of mmaction2
1.2.0, measured with its test pipeline: 10 clips x 3 crops of 256x256 (short side resized to 256),
softmax scores averaged. Paper: Non-local Neural Networks (arXiv:1711.07971) reports 74.9 top-1 for
its own NL I3D R50 (Caffe2 weights, not these).
"""
from typing import Any, Dict, Tuple

from gczoo.models.tags import SAME_ARCHITECTURE, Metric, Tag

__all__ = ['MMACTION2_METAFILE', 'VIDEO_TAGS', 'PAPER_NL_I3D_R50_TOP1', 'video_tags_for', 'get_video_tag',
           'video_data_config']

MMACTION2_METAFILE = ('https://github.com/open-mmlab/mmaction2/blob/v1.2.0/configs/recognition/i3d/metafile.yml')
_MMACTION2_I3D = 'https://github.com/open-mmlab/mmaction2/tree/v1.2.0/configs/recognition/i3d'
_DOWNLOAD = 'https://download.openmmlab.com/mmaction/v1.0/recognition/i3d'
# arXiv:1711.07971 (its NL I3D ResNet-50 ablation, Kinetics val top-1): the paper's own model, not a tag's
PAPER_NL_I3D_R50_TOP1 = 74.9

# mmaction2's I3D configs: ActionDataPreprocessor mean/std (0-255 scale, here 0-1), SampleFrames, test crops
_DATA: Dict[str, Any] = dict(
    num_classes=400, input_size=(3, 32, 224, 224), test_input_size=(3, 32, 256, 256), clip_len=32,
    frame_interval=2, test_num_clips=10, test_num_crops=3, resize_short=256, interpolation='bilinear',
    mean=(123.675 / 255, 116.28 / 255, 103.53 / 255), std=(58.395 / 255, 57.12 / 255, 57.375 / 255),
    average_clips='prob', first_conv='conv1', classifier='fc')


def _row(model: str, config: str, stamp: str, top1: float, top5: float, what: str) -> Tag:
    metrics = tuple(Metric('video-classification', 'kinetics-400', name, value, 256, 1.0, 'bilinear',
                           f'{MMACTION2_METAFILE} ({config}, 10 clips x 3 crops)')
                    for name, value in (('top1', top1), ('top5', top5)))
    return Tag(
        model, 'mmaction2_k400', SAME_ARCHITECTURE, source=f'{_DOWNLOAD}/{config}/{config}_{stamp}.pth',
        source_name=config, license='apache-2.0', datasets=('imagenet-1k', 'kinetics-400'),
        trained=f'everything ({what}): mmaction2, from an inflated ImageNet ResNet-50, 100 epochs on Kinetics-400',
        untrained='nothing', metrics=metrics, metrics_apply=True,
        evidence=('mmaction2 checkpoint converted key by key to the same network; the logits match a '
                  're-implementation of mmaction2\'s ResNet3d/NonLocal3d/I3DHead (tests/video)'),
        origin_url=_MMACTION2_I3D, notes=('converted from mmaction2\'s layout on load (gczoo.video.convert)',),
        preprocessing=_DATA)


VIDEO_TAGS: Tuple[Tag, ...] = (
    _row('i3d_r50', 'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb', '20220812-e213c223',
         73.47, 91.27, 'I3D ResNet-50'),
    _row('i3d_r50_nl', 'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb',
         '20220812-afd8f562', 74.73, 91.80, 'I3D ResNet-50 and its 5 Non-local blocks'),
)


def video_tags_for(model: str) -> Tuple[Tag, ...]:
    """The tags of one video model, its default first."""
    return tuple(t for t in VIDEO_TAGS if t.model == model)


def get_video_tag(name: str) -> Tag:
    """The tag ``'model.tag'``; ``ValueError`` naming the known ones otherwise."""
    for t in VIDEO_TAGS:
        if t.name == name:
            return t
    raise ValueError(f'unknown video tag {name!r}; the video tags are: {", ".join(t.name for t in VIDEO_TAGS)}')


def video_data_config(tag: Tag) -> Dict[str, Any]:
    """A video tag's preprocessing and test-time sampling (a copy)."""
    return dict(tag.preprocessing or _DATA)
