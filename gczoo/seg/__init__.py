"""Semantic segmentation with the seed papers' systems (CCNet, NLNet, GCNet) on mmsegmentation's weights.

A dilated timm ResNet (``resnet50c``/``resnet101c``, output stride 8 = mmseg's ResNetV1c-D8) with the
papers' heads built on gczoo's blocks; mmseg's Cityscapes/ADE20K checkpoints load on ``pretrained=True``
(converted from mmseg's key layout, no mmcv). Not part of timm's classification registry.
"""
from .heads import CCHead, FCNHead, GCHead, NLHead
from .segmentor import SEGMENTORS, Segmentor, SegmentorSpec, list_segmentors
from .tags import SEG_TAGS, get_seg_tag, seg_tags_for
from .convert import convert_mmseg_state_dict
from .create import create_segmentor, load_segmentor_checkpoint
from gczoo.models.registry import register_other_models

register_other_models(SEGMENTORS, 'a segmentation model: gczoo eval-seg / segment / train-seg, '
                                  'gczoo.seg.create_segmentor, gczoo.seg.export')

__all__ = [
    'CCHead', 'FCNHead', 'GCHead', 'NLHead', 'SEGMENTORS', 'Segmentor', 'SegmentorSpec', 'list_segmentors',
    'SEG_TAGS', 'get_seg_tag', 'seg_tags_for', 'convert_mmseg_state_dict', 'create_segmentor',
    'load_segmentor_checkpoint',
]
