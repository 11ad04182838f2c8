"""``gczoo.models.create_model``: ``timm.create_model`` with gczoo's checks, and ``checkpoint_path=`` as timm's
(through gczoo's one loading path: num_classes from the checkpoint, EMA first, one short mismatch line)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.errors import CheckpointError, UsageError
from gczoo.models import create_model

MODEL = 'resnet18_gc'


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_checkpoint_path_loads_exactly_with_its_num_classes(tmp_path):
    source = timm.create_model(MODEL, num_classes=5)
    for p in source.parameters():  # GC blocks off their zero init, so a wrong load would show
        torch.nn.init.normal_(p, std=0.02)
    save_file(source.state_dict(), str(tmp_path / 'w.safetensors'))
    torch.save({'state_dict': source.state_dict(), 'epoch': 3}, tmp_path / 'last.pth.tar')
    x = torch.randn(1, 3, 40, 56, dtype=torch.float64)  # batch 1, non-square, float64
    expected = _logits(source.double(), x)
    for path in (tmp_path / 'w.safetensors', tmp_path / 'last.pth.tar'):
        model = create_model(MODEL, checkpoint_path=path)
        assert model.num_classes == 5  # taken from the checkpoint's classifier
        torch.testing.assert_close(_logits(model.double(), x), expected, rtol=0, atol=0)


def test_checkpoint_path_prefers_ema_weights_as_timm(tmp_path):
    plain, ema = timm.create_model(MODEL, num_classes=2), timm.create_model(MODEL, num_classes=2)
    torch.save({'state_dict': plain.state_dict(), 'state_dict_ema': ema.state_dict()}, tmp_path / 'c.pth.tar')
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(create_model(MODEL, checkpoint_path=tmp_path / 'c.pth.tar'), x), _logits(ema, x))
    torch.testing.assert_close(_logits(create_model(MODEL, checkpoint_path=tmp_path / 'c.pth.tar', use_ema=False), x),
                               _logits(plain, x))


def test_a_checkpoint_of_another_model_is_one_short_line(tmp_path):
    save_file(timm.create_model('resnet26_gc').state_dict(), str(tmp_path / 'r26.safetensors'))
    with pytest.raises(CheckpointError) as info:
        create_model(MODEL, checkpoint_path=tmp_path / 'r26.safetensors', checkpoint_what='--checkpoint')
    message = str(info.value)
    assert message.startswith(f"--checkpoint {str(tmp_path / 'r26.safetensors')!r} does not fit 'resnet18_gc': ")
    assert 'unexpected keys' in message and '(+' in message and '\n' not in message and len(message) < 600


def test_bad_names_and_files(tmp_path):
    with pytest.raises(UsageError, match="model_name: unknown model 'resnet18_gcx'"):
        create_model('resnet18_gcx')
    with pytest.raises(CheckpointError, match='does not exist|No such file'):
        create_model(MODEL, checkpoint_path=tmp_path / 'missing.safetensors')
    with pytest.raises(TypeError, match='model_name must be a str'):
        create_model(None)


def test_torchscript_of_a_checkpoint_model(tmp_path):
    source = timm.create_model(MODEL, num_classes=3)
    save_file(source.state_dict(), str(tmp_path / 'w.safetensors'))
    model = create_model(MODEL, checkpoint_path=tmp_path / 'w.safetensors').eval()
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(torch.jit.script(model)(x), _logits(source, x))


# ---- hostile-user pass (issue 20 part B) ------------------------------------------------------

def test_an_empty_checkpoint_path_is_no_checkpoint_as_in_timm(tmp_path):
    # timm's train.py passes --initial-checkpoint '' (its default) straight on; this used to be "'.' is a folder"
    assert create_model(MODEL, num_classes=2, checkpoint_path='').num_classes == 2
    assert timm.create_model(MODEL, num_classes=2, checkpoint_path='').num_classes == 2


def test_a_headless_checkpoint_says_num_classes_0_and_loads_with_it(tmp_path):
    source = timm.create_model(MODEL, num_classes=0)
    torch.save(source.state_dict(), tmp_path / 'headless.pth')
    with pytest.raises(CheckpointError, match=r'2 missing keys \(fc\.weight, fc\.bias\); the checkpoint has no '
                                              r'classifier: it was saved with num_classes=0, pass that'):
        create_model(MODEL, checkpoint_path=tmp_path / 'headless.pth')
    x = torch.randn(1, 3, 32, 40, dtype=torch.float64)
    model = create_model(MODEL, num_classes=0, checkpoint_path=tmp_path / 'headless.pth')
    torch.testing.assert_close(_logits(model.double(), x), _logits(source.double(), x), rtol=0, atol=0)


def test_hostile_checkpoints_are_refused_in_one_line_through_the_runner(tmp_path, capsys):
    import os
    import pickle

    from gczoo.runner import run
    state = timm.create_model(MODEL, num_classes=2).state_dict()
    nan = dict(state, **{'conv1.weight': torch.full_like(state['conv1.weight'], float('nan'))})
    torch.save({'state_dict': nan}, tmp_path / 'nan.pth.tar')
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)
    torch.save({'state_dict': state, 'extra': Payload()}, tmp_path / 'code.pth')
    with open(tmp_path / 'code.pkl', 'wb') as f:
        pickle.dump(Payload(), f)
    torch.save(state, tmp_path / 'pickle.safetensors')  # a pickle under a safetensors name
    cases = {'nan.pth.tar': 'NaN or infinite values in conv1.weight', 'code.pth': 'can run code',
             'code.pkl': 'can run code', 'pickle.safetensors': 'never unpickles', '.': 'is a folder',
             'missing.pth': 'does not exist'}
    for name, why in cases.items():
        path = tmp_path / name if name != '.' else tmp_path
        assert run(lambda argv: create_model(MODEL, checkpoint_path=path, checkpoint_what='--checkpoint'), [],
                   prog='gczoo eval') == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and str(path) in err, (name, err)
    assert not marker.exists()  # the pickles' code never ran


def test_a_timm_model_that_is_not_a_zoo_one_loads_its_checkpoint(tmp_path):
    source = timm.create_model('resnet10t', num_classes=3)
    save_file(source.state_dict(), str(tmp_path / 'w.safetensors'))
    x = torch.randn(1, 3, 32, 48)
    model = create_model('resnet10t', checkpoint_path=tmp_path / 'w.safetensors')
    torch.testing.assert_close(_logits(model, x), _logits(source, x))


def test_a_timm_model_with_url_and_hub_id_is_explained_and_loads_from_the_hub_cache(tmp_path, monkeypatch):
    # hostile-user pass: timm reads resnet10t.c3_in1k (url and hf_hub_id) from the Hub; offline, its miss
    # was huggingface_hub's bare LocalEntryNotFoundError, naming neither the model nor the repo
    from huggingface_hub import constants as hf_constants

    from gczoo.errors import PretrainedWeightsError
    from hub_cache import fill_hub_cache
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    with pytest.raises(PretrainedWeightsError, match=r"Could not load 'resnet10t': looked for model\.safetensors of "
                                                     r"the Hub repo 'timm/resnet10t\.c3_in1k'"):
        create_model('resnet10t', pretrained=True, cache_dir=str(tmp_path / 'hf'))
    source = timm.create_model('resnet10t')
    save_file(source.state_dict(), str(tmp_path / 'model.safetensors'))
    fill_hub_cache(tmp_path / 'hf', 'timm/resnet10t.c3_in1k', {'model.safetensors': tmp_path / 'model.safetensors'})
    model = create_model('resnet10t', pretrained=True, cache_dir=str(tmp_path / 'hf'))
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(_logits(model, x), _logits(source, x))
