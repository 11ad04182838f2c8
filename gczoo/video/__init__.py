"""Video models: I3D ResNet-50 and Non-local I3D (Wang et al., CVPR 2018, arXiv:1711.07971) on
mmaction2's Kinetics-400 weights, and the inflation of any 2D ImageNet ResNet of the zoo into them.

Outside timm's image registry: ``gczoo.video.create_video_model`` / ``list_video_models``.
"""
from .convert import convert_mmaction2, is_mmaction2_layout
from .factory import VIDEO_MODELS, VideoModel, create_video_model, is_video_model, list_video_models
from .inflate import InflationReport, inflate_state_dict, inflate_from_2d
from .resnet3d import I3D_INFLATE, I3D_NON_LOCAL, Bottleneck3d, ResNet3d
from .tags import VIDEO_TAGS, get_video_tag, video_data_config, video_tags_for
from gczoo.models.registry import register_other_models

register_other_models(VIDEO_MODELS, 'a video model: gczoo eval-video, gczoo train --model NAME on a clip folder, '
                                    'gczoo.video.create_video_model')

__all__ = [
    'Bottleneck3d', 'ResNet3d', 'I3D_INFLATE', 'I3D_NON_LOCAL', 'VideoModel', 'VIDEO_MODELS', 'VIDEO_TAGS',
    'create_video_model', 'list_video_models', 'is_video_model', 'get_video_tag', 'video_tags_for',
    'video_data_config', 'convert_mmaction2', 'is_mmaction2_layout', 'InflationReport', 'inflate_state_dict',
    'inflate_from_2d',
]
