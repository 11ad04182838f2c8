"""torch.hub on this repository. torch 2.14's hub.list/help only reach GitHub (no source='local'),
so they are mirrored here the way torch computes them from hubconf; hub.load runs for real."""
import importlib.util
from pathlib import Path

import pytest
import torch

from gczoo.models import ZOO_MODELS, PretrainedWeightsError

REPO = str(Path(__file__).resolve().parents[1])


def _hubconf():
    spec = importlib.util.spec_from_file_location('hubconf', f'{REPO}/hubconf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_list_has_every_model_and_dependencies():
    module = _hubconf()
    entrypoints = [f for f in dir(module) if callable(getattr(module, f)) and not f.startswith('_')]
    from gczoo.video import VIDEO_MODELS  # the video models' entrypoints (issue 19)
    from gczoo.seg import SEGMENTORS  # the segmentors' entrypoints (issue 18)
    assert sorted(entrypoints) == sorted([*ZOO_MODELS, *VIDEO_MODELS, *SEGMENTORS])
    assert module.dependencies == ['torch', 'timm']


def test_hub_help_is_the_model_docstring():
    text = getattr(_hubconf(), 'resnet50_gc').__doc__
    assert 'GC block' in text and 'arXiv:1904.11492' in text and 'num_classes' in text


def test_hub_load_builds_with_timm_kwargs():
    model = torch.hub.load(REPO, 'resnet18_gc', source='local', num_classes=3)
    assert model.pretrained_cfg['architecture'] == 'resnet18_gc'
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_hub_load_pretrained_without_the_weights_says_what_to_do(tmp_path, monkeypatch):
    """Offline with an empty Hub cache: one error naming the source repo, the cache and what to do."""
    from huggingface_hub import constants
    from gczoo.models.tags import default_tag
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    source = default_tag('resnet50_nl').source  # timm's ImageNet ResNet-50 (attention blocks at identity)
    with pytest.raises(PretrainedWeightsError, match=rf'{source}.*{tmp_path}.*HF_HUB_OFFLINE.*pretrained_cfg_overlay'):
        torch.hub.load(REPO, 'resnet50_nl', source='local', pretrained=True)
