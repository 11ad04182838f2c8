"""One table per fact: a model at a new depth is one row in the depth table and one in the zoo table.

``resnet34_gc`` does not exist; the fixture adds ``DEPTHS[34]`` (BasicBlock x (3, 4, 6, 3), started
from timm's ``resnet34.a1_in1k``) and a ``ZOO_MODELS`` row citing the GCNet paper by its key, plus the
three-line entrypoint every zoo model has, registered with timm for this test only (timm's registry
and the zoo's cfgs are patched copies, so nothing stays registered). Everything else -- the build,
the model card, the complexity row, the README table row, the torch.hub entry, the checkpoint
converter's depth inference -- must follow from those rows alone.
"""
import importlib.util
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import timm
import timm.models._registry as timm_registry
import torch
import yaml
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock

import gczoo  # noqa: F401  (registers the zoo with timm)
from gczoo.cards import load_complexity, models_table_markdown, render_model_card
from gczoo.complexity import complexity_table
from gczoo.layers import ContextBlock
from gczoo.models import ZOO_MODELS, Placement, ZooModel, ZooResNet, create_zoo_model
from gczoo.models.convert import convert_state_dict
from gczoo.models.depths import DEPTHS, Depth
from gczoo.models.tags import pretrained_cfgs
from gczoo.papers import get_paper

REPO = Path(__file__).resolve().parents[1]
NAME = 'resnet34_gc'
ZOO_MODULE = sys.modules['gczoo.models.gczoo']  # the module timm lists the zoo under (module='gczoo')


def _copy_registry(monkeypatch) -> None:
    """Swap timm's registry for copies for this test: a registration made now vanishes with it."""
    for attr, value in vars(timm_registry).items():
        if not attr.startswith('_') or attr.startswith('__') or callable(value):
            continue
        if isinstance(value, defaultdict):
            copied = defaultdict(value.default_factory, {k: type(v)(v) for k, v in value.items()})
        elif isinstance(value, (dict, set)):
            copied = type(value)(value)
        else:
            continue
        monkeypatch.setattr(timm_registry, attr, copied)


@pytest.fixture
def resnet34_gc(monkeypatch):
    assert NAME not in ZOO_MODELS and 34 not in DEPTHS and not timm.is_model(NAME)
    # the two rows
    monkeypatch.setitem(DEPTHS, 34, Depth(BasicBlock, (3, 4, 6, 3), 'resnet34.a1_in1k'))
    monkeypatch.setitem(ZOO_MODELS, NAME, ZooModel(
        34, (Placement('gc', {2: None, 3: None, 4: None}),),
        'ResNet-34 with a GC block (ratio 1/16) in every basic block of c3-c5', 'gcnet'))
    # the entrypoint, as in gczoo/models/gczoo.py, with the cfgs the zoo table gives it
    _copy_registry(monkeypatch)
    monkeypatch.setattr(ZOO_MODULE, '__all__', list(ZOO_MODULE.__all__))
    cfgs = {k: v for k, v in pretrained_cfgs(ZOO_MODELS).items() if k.split('.')[0] == NAME}
    monkeypatch.setitem(ZOO_MODULE.default_cfgs, NAME, generate_default_cfgs(cfgs)[NAME])

    def resnet34_gc(pretrained: bool = False, **kwargs):
        """ResNet-34 + GC block (r16) in c3-c5 (GCNet, arXiv:1904.11492)."""
        return create_zoo_model(NAME, pretrained, **kwargs)

    resnet34_gc.__module__ = ZOO_MODULE.__name__
    register_model(resnet34_gc)
    return NAME


def test_builds_from_its_two_rows(resnet34_gc):
    assert NAME in timm.list_models(module='gczoo')
    model = timm.create_model(NAME, num_classes=5)
    assert isinstance(model, ZooResNet)
    assert [len(getattr(model, f'layer{i}')) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert all(isinstance(block, timm.models.resnet.BasicBlock) for block in model.layer1)
    gc = [n for n, m in model.named_modules() if isinstance(m, ContextBlock)]
    assert len(gc) == 4 + 6 + 3 and all(n.endswith('.se') for n in gc) and not any(n.startswith('layer1') for n in gc)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    # every backbone key is timm's resnet34's: the transplant source the depth row names fits
    backbone = set(timm.create_model('resnet34', num_classes=5).state_dict())
    assert backbone <= set(model.state_dict())
    assert {k for k in model.state_dict() if k not in backbone} == {k for k in model.state_dict() if '.se.' in k}


def test_gets_a_model_card(resnet34_gc):
    card = render_model_card(NAME, complexity=load_complexity())  # not in complexity.json: measured now
    meta = yaml.safe_load(re.match(r'^---\n(.*?)\n---\n', card, flags=re.S).group(1))
    assert meta['base_model'] == 'timm/resnet34.a1_in1k' and meta['datasets'] == ['imagenet-1k']
    assert 'global-context' in meta['tags']
    assert f'# Model card for {NAME}' in card
    assert '**Backbone:** ResNet-34, BasicBlock blocks [3, 4, 6, 3]' in card
    assert '`layer3` (res4 / c4: 6 residual blocks, 14x14 at 224)' in card
    assert f"timm.create_model('{NAME}', pretrained_backbone='resnet34.a1_in1k')" in card
    assert get_paper('gcnet').bibtex in card and get_paper('resnet').bibtex in card
    assert "the paper's table" not in card  # GCNet reports no ResNet-34 figures
    assert f'| `{NAME}` | ResNet-34 with a GC block' in models_table_markdown(load_complexity())


def test_gets_a_complexity_row(resnet34_gc):
    base, plain, ours = complexity_table(['resnet34', NAME], 224)
    assert [r['model'] for r in (base, plain, ours)] == ['resnet50', 'resnet34', NAME]
    assert round(plain['gmacs'], 2) == 3.67  # timm's resnet34 (results tables: 3.67 GMACs at 224)
    assert 0 < ours['gmacs'] - plain['gmacs'] < 0.01 and 0 < ours['params_m'] - plain['params_m'] < 1
    assert ours['gmacs_vs_resnet50'] == pytest.approx(ours['gmacs'] / base['gmacs'])


def test_gets_a_hubconf_entry(resnet34_gc):
    spec = importlib.util.spec_from_file_location('hubconf_resnet34', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry = getattr(hubconf, NAME)
    assert 'arXiv:1904.11492' in entry.__doc__ and 'ResNet-34 with a GC block' in entry.__doc__
    assert isinstance(entry(num_classes=3), ZooResNet)


def test_converter_infers_the_new_depth(resnet34_gc):
    """An mmdetection GC checkpoint of a ResNet-34 now converts into resnet34_gc (the depth table again)."""
    state = timm.create_model(NAME, num_classes=0).state_dict()
    mmdet = {f'backbone.{k.replace(".se.", ".context_block.")}': v for k, v in state.items()}
    model_name, converted = convert_state_dict(mmdet)
    assert model_name == NAME and set(converted) == set(state)


def test_nothing_stays_registered():
    """Runs after the tests above: the rows and the registration went with their fixture."""
    assert NAME not in ZOO_MODELS and 34 not in DEPTHS
    assert not timm.is_model(NAME) and NAME not in timm.list_models(module='gczoo')
    assert NAME not in ZOO_MODULE.__all__ and NAME not in ZOO_MODULE.default_cfgs
