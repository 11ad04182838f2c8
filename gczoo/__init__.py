"""gczoo: timm-compatible attention blocks and the ResNets built from them.

``import gczoo`` registers the zoo's models with timm, so ``timm.create_model('resnet50_gc')`` works; the
video (``gczoo.video``) and segmentation (``gczoo.seg``) models stay outside timm's registry.
"""
from . import layers, models  # noqa: F401  (importing models registers them with timm)
from . import seg, video  # noqa: F401  (outside timm's registry; they name their models to the resolver)

__version__ = '0.1.0'
