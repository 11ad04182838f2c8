"""``create_segmentor``: timm's ``create_model`` for the segmentors, with mmseg's weights on ``pretrained=True``.

``create_segmentor('ccnet_r50_d8', pretrained=True)`` loads the model's default tag (the first row of
``gczoo.seg.tags``); ``'ccnet_r50_d8.ade20k_512x512_160k'`` picks one. The checkpoint comes through the
zoo's one path: the URL's file in torch's hub cache (``gczoo.models.sources.fetch_url``), read with
``torch.load(weights_only=True)`` (``gczoo.models.weights.read_checkpoint``), mmseg's keys converted
(``gczoo.seg.convert``), then keys, shapes, dtypes and finiteness checked before anything is loaded
(``load_weights``). ``num_classes`` other than the tag's leaves both ``conv_seg`` classifiers at init,
as timm does for a new head. ``checkpoint_path=`` loads a local file (mmseg's layout or gczoo's).
"""
import os
from typing import Any, List, Optional, Union

from gczoo.models.sources import fetch_url
from gczoo.errors import CheckpointError
from gczoo.models.weights import load_weights, read_checkpoint

from .convert import convert_mmseg_state_dict, is_mmseg_layout, mmseg_decode_head
from .segmentor import Segmentor, get_segmentor_spec, split_name
from .tags import default_seg_tag, get_seg_tag, tag_data_config

__all__ = ['create_segmentor', 'load_segmentor_checkpoint']


def load_segmentor_checkpoint(model: Segmentor, path: Union[str, os.PathLike], *, what: str = 'checkpoint',
                              skip_mismatched_classifier: bool = False) -> List[str]:
    """Load an mmseg-layout or gczoo-layout checkpoint file into ``model`` through the one weight-loading
    path (every key and shape checked first; nothing loaded unless all fit). ``skip_mismatched_classifier``:
    ``conv_seg`` weights of another class count are left at init (their keys are returned), as timm does."""
    checkpoint = read_checkpoint(path)
    source = f'{what} {str(path)!r}'
    state = checkpoint.get('state_dict', checkpoint)
    if isinstance(state, dict) and is_mmseg_layout(state):
        state = convert_mmseg_state_dict(checkpoint, source=source)
    head = mmseg_decode_head(state) if isinstance(state, dict) else None
    system = get_segmentor_spec(model.name).system
    if head is not None and head[0] != system:  # say which model it is, not only its 20 keys that do not fit
        raise CheckpointError(f'{source} holds the decode head of {head[0]} ({head[1]}.*), not of {model.name} '
                              f'({system}); pass a {system} checkpoint, or create the segmentor it was trained as '
                              f'(gczoo.seg.list_segmentors())')
    spec = get_segmentor_spec(model.name)
    blocks = {k.split('.')[2] for k in state if k.startswith('backbone.layer3.')} if isinstance(state, dict) else ()
    depth = {6: 50, 23: 101}.get(len(blocks))
    if depth is not None and depth != spec.depth:  # 100 unexpected keys say less than this
        raise CheckpointError(f'{source} holds a ResNet-{depth} backbone ({len(blocks)} blocks in layer3), not the '
                              f'ResNet-{spec.depth} of {model.name}; create {spec.system}_r{depth}_d8 for it')
    return load_weights(model, state, what=source, skip_mismatched_classifier=skip_mismatched_classifier,
                        hint='Is it a checkpoint of this segmentor (system and depth), with this num_classes?')


def create_segmentor(
        name: str,
        pretrained: bool = False,
        *,
        num_classes: Optional[int] = None,
        checkpoint_path: Optional[Union[str, os.PathLike]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        **kwargs: Any,
) -> Segmentor:
    """Build a segmentor by name (``'ccnet_r50_d8'`` or ``'ccnet_r50_d8.<tag>'``), optionally with weights.

    Args:
        name: a :func:`list_segmentors` name, optionally ``.tag`` (:func:`list_segmentors(pretrained=True)`).
        pretrained: load the tag's mmseg checkpoint (the default tag when the name has none).
        num_classes: classes of the heads (default: the tag's, else 19, Cityscapes').
        checkpoint_path: a local checkpoint of this model to load instead (mmseg's or gczoo's layout, the same
            num_classes; to start a new head from one, ``load_segmentor_checkpoint(...,
            skip_mismatched_classifier=True)``).
        cache_dir: where URL weights are cached (default ``torch.hub.get_dir()/checkpoints``).
        kwargs: ``align_corners`` (default: the tag's), ``dropout``, head options.
    """
    model_name, tag_name = split_name(name)
    spec = get_segmentor_spec(model_name)
    tag = None
    if tag_name is not None:
        tag = get_seg_tag(spec.name, tag_name)
    elif pretrained:
        tag = default_seg_tag(spec.name)
    data = tag_data_config(tag) if tag is not None else {}
    source_classes = data.get('num_classes', 19)
    classes = source_classes if num_classes is None else num_classes
    kwargs.setdefault('align_corners', data.get('align_corners', False))
    model = Segmentor(spec.name, classes, **kwargs)
    if tag is not None:
        model.pretrained_cfg.update(tag=tag.tag, url=tag.source, **data)
        model.pretrained_cfg['align_corners'] = model.align_corners  # an explicit align_corners= is the model's
    if checkpoint_path is not None:  # this model's own weights: every key must fit, the classifiers too
        load_segmentor_checkpoint(model, checkpoint_path)
    elif pretrained:
        path = fetch_url(tag.source, what=f'pretrained weights for {tag.name!r}', cache_dir=cache_dir,
                         hint='or pass checkpoint_path= to a local copy')
        load_segmentor_checkpoint(model, path, what=f'pretrained weights for {tag.name!r}',
                                  skip_mismatched_classifier=classes != source_classes)
    return model
