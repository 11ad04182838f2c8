"""gczoo: timm-compatible attention blocks and the ResNets built from them.

``import gczoo`` registers the zoo's models with timm, so ``timm.create_model('resnet50_gc')`` works.
"""
from . import layers, models  # noqa: F401  (importing models registers them with timm)

__version__ = '0.1.0'
