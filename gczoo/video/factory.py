"""``create_video_model`` / ``list_video_models``: timm's ``create_model`` / ``list_models`` for the video
models, kept out of timm's image registry (a (B, 3, T, H, W) model in ``timm.list_models()`` would
break every image tool that iterates it).

    model = create_video_model('i3d_r50_nl', pretrained=True)           # mmaction2's Kinetics-400 weights
    model = create_video_model('i3d_r50_nl.mmaction2_k400', pretrained=True, num_classes=10)  # new fc
    list_video_models(pretrained=True)  # ['i3d_r50.mmaction2_k400', 'i3d_r50_nl.mmaction2_k400']

Papers: Carreira & Zisserman, CVPR 2017 (arXiv:1705.07750) for I3D; Wang et al., CVPR 2018
(arXiv:1711.07971) for the Non-local blocks.
"""
import dataclasses
import fnmatch
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from gczoo.models.sources import fetch_url
from gczoo.models.weights import StateDict, load_weights, read_checkpoint, unwrap_state_dict

from .convert import convert_mmaction2, is_mmaction2_layout
from .resnet3d import I3D_INFLATE, I3D_NON_LOCAL, ResNet3d
from .tags import VIDEO_TAGS, get_video_tag, video_data_config, video_tags_for

__all__ = ['VideoModel', 'VIDEO_MODELS', 'create_video_model', 'list_video_models', 'is_video_model']


@dataclasses.dataclass(frozen=True)
class VideoModel:
    """One video model: its ResNet3d settings, a one-line summary and its paper (``gczoo.papers`` key)."""
    kwargs: Mapping[str, Any]
    summary: str
    paper: str


_I3D = dict(layers=(3, 4, 6, 3), inflate=I3D_INFLATE, conv1_kernel=(5, 7, 7), conv1_stride_t=2, pool1_stride_t=2,
            with_pool2=True, drop_rate=0.5)
VIDEO_MODELS: Dict[str, VideoModel] = {
    'i3d_r50': VideoModel(
        dict(_I3D), 'I3D ResNet-50 (mmaction2 ResNet3d: 5x7x7 stem, 3x1x1 inflation as its I3D config)', 'nonlocal'),
    'i3d_r50_nl': VideoModel(
        dict(_I3D, non_local=I3D_NON_LOCAL,
             non_local_kwargs=dict(mode='embedded_gaussian', sub_sample=True, use_scale=False)),
        'I3D ResNet-50 + 5 Non-local blocks (embedded Gaussian, 1x2x2 sub-sampling) in res3 (2) and res4 (3)',
        'nonlocal'),
}


def is_video_model(name: str) -> bool:
    """Whether ``name`` (optionally ``name.tag``) is a video model."""
    return name.split('.', 1)[0] in VIDEO_MODELS


def list_video_models(filter: str = '', pretrained: bool = False) -> List[str]:
    """Model names (or, with ``pretrained=True``, ``model.tag`` names with weights) matching ``filter``."""
    names = [t.name for t in VIDEO_TAGS] if pretrained else list(VIDEO_MODELS)
    return sorted(n for n in names if not filter or fnmatch.fnmatch(n, filter))


def _split(model_name: str) -> Tuple[str, Optional[str]]:
    if not isinstance(model_name, str):
        raise TypeError(f'model_name must be a str, got {type(model_name).__name__}')
    name, _, tag = model_name.partition('.')
    if name not in VIDEO_MODELS:
        raise ValueError(f'unknown video model {name!r}; the video models are: {", ".join(VIDEO_MODELS)}')
    return name, tag or None


def _adapt_first_conv(state: StateDict, in_chans: int) -> StateDict:
    """RGB weights of ``conv1`` for ``in_chans`` channels: timm's ``adapt_input_conv`` rule (summed for 1,
    repeated and rescaled for more), applied to the 5D kernel seen as 4D."""
    from timm.models import adapt_input_conv
    w = state.get('conv1.weight')
    if w is None or w.dim() != 5 or w.shape[1] != 3 or in_chans == 3:
        return state
    o, _, t, h, k = w.shape
    adapted = adapt_input_conv(in_chans, w.reshape(o, 3, t * h, k)).reshape(o, in_chans, t, h, k)
    return {**state, 'conv1.weight': adapted}


def _is_mmaction2(state: Mapping[str, Any]) -> bool:
    # an mmaction2 recognizer of any kind (TSN, SlowFast...): convert_mmaction2 names what does not fit
    return is_mmaction2_layout(state) or any(str(k).startswith(('backbone.', 'cls_head.')) for k in state)


def _read_pretrained(model: ResNet3d, name: str, tag: Any, overlay: Mapping[str, Any],
                     cache_dir: Optional[Any]) -> Optional[int]:
    """Load the weights; returns the checkpoint's number of classes (None without a classifier)."""
    what = f'pretrained weights for {tag.name!r}'
    path = overlay.get('file') or fetch_url(
        tag.source, what=what, cache_dir=cache_dir,
        hint='or pass pretrained_cfg_overlay=dict(file="path/to/checkpoint.pth")')
    checkpoint = read_checkpoint(path)
    source = f'{what} ({str(path)!r})'
    state = unwrap_state_dict(checkpoint, source=source)
    state = _adapt_first_conv(convert_mmaction2(state, source) if _is_mmaction2(state) else state, model.in_chans)
    fc = state.get('fc.weight')
    classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.dim() == 2 else None
    if model.num_classes == 0:  # features only: the checkpoint's classifier is dropped, as timm does
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
    load_weights(model, state, what=source, skip_mismatched_classifier=True,
                 hint=f'Is it a checkpoint of {name} (mmaction2 config {tag.source_name})? 2D ResNet weights load '
                      f'with gczoo.video.inflate_from_2d(model, file) instead.')
    return classes


def create_video_model(
        model_name: str,
        pretrained: bool = False,
        num_classes: Optional[int] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[Union[str, Any]] = None,
        **kwargs: Any,
) -> ResNet3d:
    """A video model by name, as ``timm.create_model``.

    Args:
        model_name: ``'i3d_r50'``, ``'i3d_r50_nl'``, or ``'name.tag'`` (``list_video_models(pretrained=True)``).
        pretrained: load the tag's weights (the model's default tag without one): mmaction2's checkpoint
            from torch's checkpoint cache (``torch.hub.get_dir()/checkpoints``, downloaded when absent),
            converted on load. ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local file instead.
        num_classes: classes of ``fc`` (default: the tag's 400 Kinetics classes); another number keeps
            the pretrained backbone and leaves ``fc`` at init, as timm does. 0: features only.
        cache_dir: the folder URL weights are cached in, instead of torch's.
        **kwargs: :class:`ResNet3d` arguments (``drop_rate=``, ``non_local_kwargs=``, ``in_chans=``: with
            pretrained weights conv1's RGB kernels are adapted by timm's rule, summed for 1 channel).
    """
    name, tag_name = _split(model_name)
    tags = video_tags_for(name)
    tag = get_video_tag(f'{name}.{tag_name}') if tag_name else (tags[0] if tags else None)
    if pretrained and tag is None:
        raise ValueError(f'{name!r} has no pretrained weights; the video tags are: '
                         f'{", ".join(list_video_models(pretrained=True))}')
    config = video_data_config(tag) if tag is not None else video_data_config(VIDEO_TAGS[0])
    classes = config['num_classes'] if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise ValueError(f'num_classes must be an int >= 0, got {num_classes!r}')
    model = ResNet3d(**{**VIDEO_MODELS[name].kwargs, **kwargs, 'num_classes': classes})
    loaded_classes = _read_pretrained(model, name, tag, dict(pretrained_cfg_overlay or {}), cache_dir) \
        if pretrained else None
    # as timm: the (named or default) tag's cfg whether or not its weights were loaded, with the overlay
    model.pretrained_cfg = {**config, 'architecture': name, 'tag': tag.tag if tag else None,
                            'url': tag.source if tag else None, **dict(pretrained_cfg_overlay or {}),
                            'min_input_size': model.min_input_size, 'num_classes': classes}
    if pretrained:  # another num_classes leaves fc at init (fine-tuning); eval-video refuses to score that head
        model.pretrained_cfg['checkpoint_num_classes'] = loaded_classes
    model.default_cfg = model.pretrained_cfg
    return model
