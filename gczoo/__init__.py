"""gczoo: timm-compatible attention blocks and the ResNets built from them."""
__version__ = '0.1.0'
