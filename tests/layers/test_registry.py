from functools import partial

import pytest
import timm.layers
import torch.nn as nn

from gczoo.layers import ATTN_SPECS, ContextBlock, create_attn, get_attn, list_attn
from gczoo.layers.registry import timm_attn_names

TIMM_ATTN_NAMES = timm_attn_names()  # read from the installed timm, not copied


def test_every_gczoo_name_builds_its_class_with_its_defaults():
    for name, spec in ATTN_SPECS.items():
        block = create_attn(name, 64)
        assert isinstance(block, spec.cls), name


def test_kwargs_override_defaults():
    block = create_attn('gc_r4', 64, rd_ratio=1 / 8)
    assert isinstance(block, ContextBlock)
    assert block.channel_add_conv[0].out_channels == 8


def same_factory(a, b) -> bool:
    """timm returns a new functools.partial on every call for some names: compare what they build."""
    if isinstance(a, partial) and isinstance(b, partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    return a is b


@pytest.mark.parametrize('name', [n for n in TIMM_ATTN_NAMES if n not in ATTN_SPECS])
def test_falls_back_to_timm_names(name):
    assert same_factory(get_attn(name), timm.layers.get_attn(name))


@pytest.mark.parametrize('name', TIMM_ATTN_NAMES)
def test_timm_prefix_reaches_timm_even_where_gczoo_has_the_name(name):
    assert same_factory(get_attn(f'timm:{name}'), timm.layers.get_attn(name))


def test_timm_names_come_from_timm_itself():
    # a sample of timm 1.0's names: the list is derived from timm.layers.get_attn, each name accepted by it
    assert {'se', 'ese', 'eca', 'gc', 'cbam', 'nl', 'bat', 'halo', 'lambda'} <= set(TIMM_ATTN_NAMES)
    for name in TIMM_ATTN_NAMES:
        assert timm.layers.get_attn(name) is not None
    with pytest.raises(AssertionError):
        timm.layers.get_attn('nope')  # what gczoo's get_attn turns into a ValueError listing the names


def test_names_are_case_insensitive_and_classes_pass_through():
    assert get_attn('GC') is ContextBlock
    assert get_attn(ContextBlock) is ContextBlock
    assert get_attn(None) is None and create_attn(None, 8) is None


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown attention block 'nope'.*gc_r4.*eca"):
        get_attn('nope')


def test_non_string_name_is_a_type_error():
    with pytest.raises(TypeError, match='attn'):
        get_attn(3)


def test_list_attn():
    assert list_attn()[:2] == ['nl', 'nl_sub']
    assert 'timm:gc' in list_attn(include_timm=True) and 'eca' in list_attn(include_timm=True)
    assert all(isinstance(create_attn(n, 32), nn.Module) for n in list_attn())
