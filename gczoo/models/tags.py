"""The zoo's pretrained tags: which weights each model name with ``pretrained=True`` loads, from where,
and with which preprocessing (timm's ``pretrained_cfg``s, fed to ``generate_default_cfgs``)."""
from typing import Any, Dict, Mapping, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._builder import resolve_pretrained_cfg

from .errors import PretrainedWeightsError

__all__ = ['HUB_ORG', 'check_weights_available', 'pretrained_cfgs']

HUB_ORG = 'gczoo'


def _cfg(model_name: str, zoo: Any, tag: str) -> Dict[str, Any]:
    return {
        'hf_hub_id': f'{HUB_ORG}/{model_name}.{tag}',
        'hf_hub_filename': 'model.safetensors',  # never fall back to a pickled pytorch_model.bin
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0',
        'paper_ids': f'arXiv:{zoo.arxiv}', 'paper_name': zoo.paper,
        'origin_url': 'https://github.com/gczoo/gczoo',
        'notes': (zoo.summary,),
    }


def pretrained_cfgs(zoo_models: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{'model.tag': cfg}`` for timm's ``generate_default_cfgs``, from the zoo table."""
    return {f'{name}.{zoo.default_tag}': _cfg(name, zoo, zoo.default_tag) for name, zoo in zoo_models.items()}


def _unpublished_message(variant: str, hf_hub_id: str) -> str:
    return (
        f'No pretrained weights for {variant!r} are published yet (looked for the Hub repo {hf_hub_id!r}). '
        f'Either start from an ImageNet ResNet with the attention blocks at identity init: '
        f'timm.create_model({variant!r}, pretrained_backbone="resnet50.a1_in1k" or a local .safetensors/.pth path) '
        f'(or gczoo.models.init_from_resnet(model, source)); or load your own weights with '
        f'pretrained_cfg_overlay=dict(file="path/to/model.safetensors"), "local-dir:DIR" or "hf-hub:ORG/REPO".'
    )


def check_weights_available(variant: str, zoo: Any, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> None:
    """Raise ``PretrainedWeightsError`` when ``pretrained=True`` names a tag whose weights are not published."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    if cfg.file or cfg.url or getattr(cfg, 'state_dict', None) is not None or cfg.source == 'hf-hub':
        return  # the user named a source (a file, URL, or an explicit hf-hub: repo)
    published = {f'{HUB_ORG}/{variant}.{tag}' for tag in zoo.published_tags}
    default_ids = {f'{HUB_ORG}/{variant}.{zoo.default_tag}'}
    if cfg.hf_hub_id in default_ids and cfg.hf_hub_id not in published:
        raise PretrainedWeightsError(_unpublished_message(variant, cfg.hf_hub_id))
