"""The zoo: timm ResNets with attention blocks where their papers put them, registered with timm
on import (``timm.create_model('resnet50_gc')``), the one weight-loading path every job uses
(``weights``), and the tools to start them from ImageNet weights or official checkpoints."""
from gczoo.layers import attention_modules

from .errors import CheckpointError, PretrainedWeightsError
from .weights import (
    StateDictMismatch, check_state_dict, classifier_names, compare_state_dicts, load_weights, read_checkpoint,
    read_state_dict, unwrap_state_dict,
)
from .pretrained import LoadReport, init_from_resnet
from .gczoo import HUB_ORG, ZOO_MODELS, Placement, ZooModel, ZooResNet, create_zoo_model
from .hub_folder import check_hub_folder, load_pretrained_weights, save_pretrained
from .factory import create_model
from .sources import fetch_from_hub, fetch_url
from .registry import ModelName, resolve_model_name
from .convert import LAYOUTS, ConversionReport, convert_checkpoint, convert_state_dict, detect_layout

__all__ = [
    'CheckpointError', 'PretrainedWeightsError', 'StateDictMismatch', 'check_state_dict', 'classifier_names',
    'compare_state_dicts', 'load_weights', 'read_checkpoint', 'read_state_dict', 'unwrap_state_dict', 'LoadReport',
    'init_from_resnet', 'HUB_ORG', 'ZOO_MODELS', 'Placement', 'ZooModel', 'ZooResNet', 'attention_modules',
    'create_zoo_model', 'LAYOUTS', 'ConversionReport', 'convert_checkpoint', 'convert_state_dict',
    'detect_layout', 'check_hub_folder', 'create_model', 'load_pretrained_weights', 'save_pretrained', 'fetch_url',
    'fetch_from_hub', 'ModelName', 'resolve_model_name',
]
