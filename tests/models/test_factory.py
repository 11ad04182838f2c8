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
