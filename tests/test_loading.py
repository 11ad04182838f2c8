"""The one weight-loading path (``gczoo.models.weights``), tried through every entry point that loads
weights: each refuses a pickle that would run code (naming it, never offering a command to unpickle
it), integer tensors where the model is floating, and NaN/inf weights; and a good file still loads."""
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.cli import main as cli_main
from gczoo.errors import CheckpointError
from gczoo.models import init_from_resnet
from gczoo.models.hub_folder import load_pretrained_weights
from gczoo.models.weights import check_state_dict, load_weights, read_checkpoint, read_state_dict

MODEL = 'resnet18_gc'


class _RunsCode:
    """What a hostile checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('weights')
    model = timm.create_model(MODEL, num_classes=10)
    state = model.state_dict()
    paths = {'good': root / 'good.safetensors', 'good_pth': root / 'good.pth', 'marker': root / 'PWNED'}
    save_file(state, str(paths['good']))
    torch.save({'state_dict': state}, paths['good_pth'])
    paths['payload'] = root / 'payload.pth'
    torch.save({'state_dict': state, 'extra': _RunsCode(paths['marker'])}, paths['payload'])
    paths['integer'] = root / 'integer.safetensors'
    save_file({k: v.to(torch.int64) if v.is_floating_point() else v for k, v in state.items()}, str(paths['integer']))
    paths['nan'] = root / 'nan.safetensors'
    bad = dict(state)
    bad['fc.weight'] = torch.full_like(state['fc.weight'], float('inf'))
    save_file(bad, str(paths['nan']))
    # a ResNet-18 (timm's keys) for the transplant entry points
    resnet = timm.create_model('resnet18', num_classes=10).state_dict()
    paths['resnet_payload'] = root / 'resnet_payload.pth'
    torch.save({'state_dict': resnet, 'extra': _RunsCode(paths['marker'])}, paths['resnet_payload'])
    paths['resnet_nan'] = root / 'resnet_nan.safetensors'
    save_file(dict(resnet, **{'conv1.weight': torch.full_like(resnet['conv1.weight'], float('nan'))}),
              str(paths['resnet_nan']))
    paths['resnet_int'] = root / 'resnet_int.safetensors'
    save_file({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in resnet.items()},
              str(paths['resnet_int']))
    return paths


def _assert_refused_payload(message: str, files) -> None:
    assert 'posix.system' in message or 'os.system' in message, message
    assert 'can run code' in message and 'weights_only=False' not in message, message
    assert not files['marker'].exists(), 'the payload ran'


# ---------------------------------------------------------------------------------------------------
# the module itself


def test_reading_refuses_a_payload_without_offering_to_unpickle_it(files):
    for read in (read_state_dict, read_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(files['payload'])
        _assert_refused_payload(str(info.value), files)


def test_benign_pickled_objects_still_get_the_resave_recipe(tmp_path):
    import numpy as np
    path = tmp_path / 'mm.pth'
    torch.save({'meta': {'score': np.float64(0.3)}, 'state_dict': {'w': torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match='weights_only=False'):
        read_state_dict(path)


def test_check_state_dict_dtype_and_finiteness(files):
    model = timm.create_model(MODEL, num_classes=10)
    with pytest.raises(CheckpointError, match='non-floating tensors'):
        check_state_dict(model, read_state_dict(files['integer']), 'x')
    with pytest.raises(CheckpointError, match='NaN or infinite values in fc.weight'):
        check_state_dict(model, read_state_dict(files['nan']), 'x')
    check_state_dict(model, read_state_dict(files['nan']), 'x', allow_non_finite=True)  # when asked


def test_nothing_is_loaded_unless_everything_fits(files):
    model = timm.create_model(MODEL, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_weights(model, files['nan'])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    load_weights(model, files['good_pth'])


# ---------------------------------------------------------------------------------------------------
# every entry point


@pytest.mark.parametrize('kind', ['payload', 'integer', 'nan'])
def test_init_from_resnet_and_pretrained_backbone(kind, files):
    source = files[{'payload': 'resnet_payload', 'integer': 'resnet_int', 'nan': 'resnet_nan'}[kind]]
    expected = {'payload': 'can run code', 'integer': 'non-floating', 'nan': 'NaN or infinite'}[kind]
    with pytest.raises(CheckpointError, match=expected):
        init_from_resnet(timm.create_model(MODEL, num_classes=10), source)
    with pytest.raises(CheckpointError, match=expected):
        timm.create_model(MODEL, num_classes=10, pretrained_backbone=str(source))
    assert not files['marker'].exists()


@pytest.mark.parametrize('kind', ['payload', 'integer', 'nan'])
def test_hub_folder_loading(kind, files):
    model = timm.create_model(MODEL, num_classes=10)
    with pytest.raises(CheckpointError):
        load_pretrained_weights(model, files[kind], allow_pickle=True)
    assert not files['marker'].exists()


@pytest.mark.parametrize('kind', ['payload', 'integer', 'nan'])
def test_timm_pretrained_cfg_overlay_file(kind, files):
    from gczoo.models.factory import create_model
    with pytest.raises(CheckpointError):  # a pickle is refused before timm opens it; the rest by the checks
        create_model(MODEL, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(files[kind])))
    with pytest.raises(CheckpointError):  # timm's own call goes through the zoo's filter_fn
        timm.create_model(MODEL, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(files[kind])))
    assert not files['marker'].exists()


@pytest.mark.parametrize('kind', ['payload', 'integer', 'nan'])
def test_cli_commands_refuse_in_one_line(kind, files, tmp_path, capsys):
    data = tmp_path / 'data' / 'val'
    for cls in ('a', 'b'):
        (data / cls).mkdir(parents=True)
    commands = {
        'eval': ['eval', '--model', MODEL, '--checkpoint', str(files[kind]), '--data-dir', str(data.parent)],
        'convert': ['convert', str(files[kind]), str(tmp_path / 'out.safetensors')],
        'publish': ['publish', str(files[kind]), '--model', MODEL, '--tag', 't', '--dry-run',
                    '--local-dir', str(tmp_path / 'hub')],
        'visualize': ['visualize', MODEL, '--checkpoint', str(files[kind]), '--out', str(tmp_path / 'vis'),
                      '--img-size', '32', '--no-progress'],
        'analyze-attention': ['analyze-attention', MODEL, '--checkpoint', str(files[kind]), '--out',
                              str(tmp_path / 'an'), '--img-size', '32', '--max-images', '2', '--no-progress'],
    }
    for name, argv in commands.items():
        rc = cli_main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.count('\n') == 1 and err.startswith(f'gczoo {name}: error:'), (name, err)
        if kind == 'payload':
            _assert_refused_payload(err, files)
    assert not (tmp_path / 'out.safetensors').exists() and not (tmp_path / 'hub' / 'model.safetensors').exists()
    assert not list((tmp_path / 'vis').glob('*.png')) if (tmp_path / 'vis').exists() else True
