"""The zoo: timm ResNets with attention blocks where their papers put them, registered with timm
on import (``timm.create_model('resnet50_gc')``), and the tools to start them from ImageNet weights."""
from .convert import LAYOUTS, ConversionReport, convert_checkpoint, convert_state_dict, detect_layout, read_checkpoint
from .errors import CheckpointError, PretrainedWeightsError
from .pretrained import LoadReport, init_from_resnet, load_state_dict_file, unwrap_state_dict
from .gczoo import (
    HUB_ORG, ZOO_MODELS, Placement, ZooModel, ZooResNet, attention_modules, create_zoo_model, list_zoo_models,
)

__all__ = [
    'CheckpointError', 'PretrainedWeightsError', 'LoadReport', 'init_from_resnet', 'load_state_dict_file',
    'unwrap_state_dict', 'HUB_ORG', 'ZOO_MODELS', 'Placement', 'ZooModel', 'ZooResNet', 'attention_modules',
    'create_zoo_model', 'list_zoo_models', 'LAYOUTS', 'ConversionReport', 'convert_checkpoint', 'convert_state_dict',
    'detect_layout', 'read_checkpoint',
]
