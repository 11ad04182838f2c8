"""gczoo in the ecosystem around timm (issue 20, part A): timm's own scripts, transformers, honest export
metadata, BatchNorm freezing for detection fine-tuning, timm's retry logic, timm's summary.csv epochs.

timm's ``validate.py`` and ``train.py`` are in ``tests/timm_scripts/`` (copied unchanged from timm's repository, Apache-2.0;
see the README there): the timm wheel does not ship its scripts, and CI has no GitHub access.
"""
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.cli import main as gczoo_main
from gczoo.errors import GczooError, PretrainedWeightsError
from gczoo.layers import NonLocal2d
from gczoo.models.hub_folder import save_pretrained

from _train_utils import make_image_folder, run_train, subprocess_env, summary_rows, tiny_args

VALIDATE_PY = Path(__file__).resolve().parent / 'timm_scripts' / 'validate.py'
TRAIN_PY = VALIDATE_PY.with_name('train.py')


@pytest.fixture(autouse=True)
def _restore_logging():
    """timm's scripts add root-logger handlers on the stream of the moment (pytest's capture, closed later)."""
    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    for handler in logging.root.handlers[:]:
        if handler not in handlers:
            logging.root.removeHandler(handler)
    logging.root.setLevel(level)


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory):
    """A 3-class ImageFolder (val split only is used) and a checkpoint of resnet18_gc for it."""
    root = make_image_folder(tmp_path_factory.mktemp('eco'), train_per_class=1, val_per_class=2, size=24)
    model = timm.create_model('resnet18_gc', num_classes=3)
    torch.save(model.state_dict(), root / 'weights.pth')
    return root


def _random_weights(model: nn.Module) -> nn.Module:
    """Weights that are nobody's tag (every block far from the identity), so the logits test something."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# 1. timm's scripts with the zoo registered: gczoo timm SCRIPT.py ARGS


@pytest.mark.slow
def test_gczoo_timm_runs_timms_validate_py(tiny_folder, tmp_path, capsys):
    results = tmp_path / 'results.csv'
    code = gczoo_main(['timm', str(VALIDATE_PY), str(tiny_folder / 'val'), '--model', 'resnet18_gc',
                       '--num-classes', '3', '--img-size', '32', '-b', '4', '--workers', '0', '--device', 'cpu',
                       '--checkpoint', str(tiny_folder / 'weights.pth'), '--results-file', str(results)])
    assert code == 0, capsys.readouterr().err
    header, row = results.read_text().splitlines()[:2]
    assert header.startswith('model,top1') and row.startswith('resnet18_gc,')
    assert sys.argv[0] != str(VALIDATE_PY)  # argv put back


@pytest.mark.slow
def test_gczoo_timm_runs_timms_train_py(tmp_path, capsys):
    """One epoch of timm's own train.py on a zoo model; its summary.csv is the one gczoo train's matches."""
    from gczoo.train import SUMMARY_COLUMNS
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1, size=16)
    code = gczoo_main(['timm', str(TRAIN_PY), str(data), '--model', 'resnet18_gc', '--num-classes', '3', '--epochs', '1',
                       '-b', '2', '--img-size', '32', '--device', 'cpu', '--workers', '0', '--no-prefetcher',
                       '--warmup-epochs', '0', '--output', str(tmp_path / 'out'), '--experiment', 'timm'])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / 'out' / 'timm'
    header, *rows = (run / 'summary.csv').read_text().splitlines()
    assert tuple(header.split(',')) == SUMMARY_COLUMNS[:6] and [r.split(',')[0] for r in rows] == ['0']
    assert (run / 'checkpoint-0.pth.tar').is_file()


@pytest.mark.slow
@pytest.mark.ddp
def test_gczoo_timm_under_torchrun_as_documented(tiny_folder, tmp_path):
    """The README's form: ``torchrun --nproc-per-node N --no-python gczoo timm SCRIPT.py ARGS``."""
    gczoo_exe = shutil.which('gczoo', path=str(Path(sys.executable).parent))
    assert gczoo_exe, 'the gczoo console script is not installed next to this python'
    results = tmp_path / 'r.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '1', '--no-python', gczoo_exe,
           'timm', str(VALIDATE_PY), str(tiny_folder / 'val'), '--model', 'resnet18_gc', '--num-classes', '3',
           '--img-size', '32', '-b', '4', '--workers', '0', '--device', 'cpu', '--checkpoint',
           str(tiny_folder / 'weights.pth'), '--results-file', str(results), '--results-format', 'json']
    out = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(results.read_text())['model'] == 'resnet18_gc'


def test_gczoo_timm_refuses_what_is_not_a_timm_script(tmp_path, capsys):
    plain = tmp_path / 'plain.py'
    plain.write_text('print("hello")\n')
    cases = [(tmp_path / 'train.py', 'does not exist'), (tmp_path / 'notes.txt', 'not a Python script'),
             (plain, 'does not import timm')]
    for path, message in cases:
        assert gczoo_main(['timm', str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith('gczoo timm: error: ') and message in err and err.count('\n') == 1, err
    assert gczoo_main(['timm', '--help']) == 0 and 'gczoo timm SCRIPT.py' in capsys.readouterr().out


def test_gczoo_timm_returns_the_scripts_exit_status(tmp_path):
    script = tmp_path / 'exit3.py'
    script.write_text('import sys, timm\nassert timm.is_model("resnet50_gc"), "zoo not registered"\n'
                      'assert sys.argv[1:] == ["--flag", "x"], sys.argv\nsys.exit(3)\n')
    assert gczoo_main(['timm', str(script), '--flag', 'x']) == 3


@pytest.mark.slow
def test_python_m_gczoo_timm_scripts_runs_the_script(tmp_path):
    script = tmp_path / 'exit3.py'
    script.write_text('import sys, timm\nassert timm.is_model("resnet18_gc")\nsys.exit(3)\n')
    out = subprocess.run([sys.executable, '-m', 'gczoo.timm_scripts', str(script)], capture_output=True, text=True,
                         timeout=300, env=subprocess_env())
    assert out.returncode == 3, out.stderr[-2000:]
    out = subprocess.run([sys.executable, '-m', 'gczoo.timm_scripts', str(tmp_path / 'none.py')], capture_output=True,
                         text=True, timeout=300, env=subprocess_env())
    assert out.returncode == 2 and out.stderr.startswith('gczoo timm: error: script ') and out.stderr.count('\n') == 1


def test_gczoo_timm_sets_argv_file_and_path_as_python_does(tmp_path, monkeypatch, capsys):
    """``python ./d s/s p.py -- x``: argv[0] as written, __file__ absolute, sys.path[0] the script's folder,
    classes defined in the script picklable (``__main__`` is the script); ``gczoo timm -- SCRIPT`` too."""
    folder = tmp_path / 'd s'
    folder.mkdir()
    (folder / 's p.py').write_text(
        'import os, pickle, sys, timm\nclass Thing: pass\npickle.loads(pickle.dumps(Thing()))\n'
        'print(repr([sys.argv, __file__, sys.path[0], __name__, timm.is_model("resnet18_gc")]))\n')
    monkeypatch.chdir(tmp_path)
    expected = [['./d s/s p.py', '--', 'x'], str(folder / 's p.py'), str(folder), '__main__', True]
    for argv in (['timm', './d s/s p.py', '--', 'x'], ['timm', '--', './d s/s p.py', '--', 'x']):
        assert gczoo_main(argv) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip() == repr(expected)
    assert sys.argv[0] != './d s/s p.py' and sys.modules['__main__'].__name__ == '__main__'


def test_gczoo_timm_one_line_for_a_mistyped_model(tmp_path, capsys):
    """timm's validate.py with --model resnet18_gcc: timm's 'Unknown model' traceback becomes one line with the
    closest names (a RuntimeError of anything else stays the script's traceback)."""
    assert gczoo_main(['timm', str(VALIDATE_PY), str(tmp_path), '--model', 'resnet18_gcc', '--device', 'cpu']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the script's own log lines
    assert err.startswith("gczoo timm: error: the script asked timm for the model 'resnet18_gcc', which neither "
                          "timm"), err
    assert 'closest: resnet18_gc' in err
    other = tmp_path / 'other.py'
    other.write_text('import timm\nraise RuntimeError("the script\'s own")\n')
    with pytest.raises(RuntimeError, match="the script's own"):
        gczoo_main(['timm', str(other)])


def test_gczoo_timm_error_without_a_message_says_where(tmp_path, capsys):
    """timm's load_checkpoint raises a bare FileNotFoundError() for a missing --checkpoint: the one line was
    'gczoo timm: error: FileNotFoundError'."""
    argv = ['timm', str(VALIDATE_PY), str(tmp_path), '--model', 'resnet18_gc', '--num-classes', '3', '--device', 'cpu',
            '--checkpoint', str(tmp_path / 'missing.pth')]
    assert gczoo_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('gczoo timm: error: FileNotFoundError without a message, raised in '), err  # timm's function
    assert 'GCZOO_DEBUG=1' in err


def test_gczoo_timm_one_line_for_a_folder_or_a_script_of_another_timm(tmp_path, capsys):
    (tmp_path / 'scripts.py').mkdir()
    newer = tmp_path / 'newer.py'
    newer.write_text('import timm\nfrom timm.layers import a_layer_of_a_later_timm\n')
    cases = [(tmp_path / 'scripts.py', 'is a folder, not a script'),
             (newer, f'newer.py needs what this timm {timm.__version__} does not have (cannot import name '
                     f"'a_layer_of_a_later_timm' from 'timm.layers'")]
    for path, message in cases:
        assert gczoo_main(['timm', str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith('gczoo timm: error: ') and message in err and err.count('\n') == 1, err
    assert f'v{timm.__version__} tag' in err
    other = tmp_path / 'other.py'  # an ImportError of another package stays the script's own (a traceback)
    other.write_text('import timm\nimport a_package_nobody_has\n')
    with pytest.raises(ModuleNotFoundError):
        gczoo_main(['timm', str(other)])


# ---------------------------------------------------------------------------------------------
# 2. transformers loads an export, with timm's logits


@pytest.mark.slow
def test_transformers_loads_an_export_with_timms_logits(tmp_path):
    import transformers
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    model = _random_weights(timm.create_model('resnet18_gc', num_classes=3))
    folder = save_pretrained(model, tmp_path / 'export', label_names=['cat', 'dog', 'fish'])
    ref = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(1, 3, 40, 56)  # batch 1, non-square
    with torch.no_grad():
        auto = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
        torch.testing.assert_close(auto(x).logits, ref(x))
        assert auto.config.id2label == {0: 'cat', 1: 'dog', 2: 'fish'}
        wrapper = transformers.TimmWrapperModel.from_pretrained(str(folder)).eval()
        torch.testing.assert_close(wrapper(x).pooler_output, ref.forward_head(ref.forward_features(x), pre_logits=True))
    image = Image.fromarray(torch.randint(0, 256, (50, 70, 3), dtype=torch.uint8).numpy())
    classify = transformers.pipeline('image-classification', model=str(folder))
    got = {r['label']: r['score'] for r in classify(image)}
    transform = create_transform(**resolve_data_config(model=ref), is_training=False)
    with torch.no_grad():
        probs = ref(transform(image).unsqueeze(0)).softmax(-1)[0]
    assert got == pytest.approx(dict(zip(['cat', 'dog', 'fish'], probs.tolist())), abs=1e-5)
    assert 'num_classes' not in json.loads((folder / 'config.json').read_text())['model_args']  # the cause


def test_export_of_one_channel_headless_and_features_only_models(tmp_path):
    """in_chans=1 and num_classes=0 round-trip through ``local-dir:``; a features_only model is refused in one
    line that says how to get it (and that way works)."""
    model = _random_weights(timm.create_model('resnet18_gc', in_chans=1, num_classes=0))
    folder = save_pretrained(model, tmp_path / 'gray')
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == 0 and config['model_args']['in_chans'] == 1
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # one value per channel, as timm resolves it
    assert config['pretrained_cfg']['input_size'][0] == 1
    assert config['pretrained_cfg']['mean'] == pytest.approx([sum(IMAGENET_DEFAULT_MEAN) / 3])
    assert config['pretrained_cfg']['std'] == pytest.approx([sum(IMAGENET_DEFAULT_STD) / 3])
    x = torch.randn(1, 1, 40, 56, dtype=torch.float64)
    back = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(back.double()(x), model.double()(x))
        features = timm.create_model(f'local-dir:{folder}', pretrained=True, features_only=True).eval().double()
        torch.testing.assert_close(features(x)[-1], model.forward_features(x))
    with pytest.raises(ValueError, match=r'cannot save a FeatureListNet \(a features_only model\).*features_only=True'):
        save_pretrained(features, tmp_path / 'features')
    assert not (tmp_path / 'features').exists()


@pytest.mark.slow
def test_transformers_without_import_gczoo_says_upgrade_timm_as_the_readme_warns(tmp_path):
    """What a user sees when gczoo was not imported: transformers' own "upgrade timm" (README's warning), and
    the same folder loading in the same process once ``import gczoo`` ran."""
    folder = save_pretrained(timm.create_model('resnet18_gc', num_classes=3), tmp_path / 'export')
    code = ('import sys, transformers\n'
            'try:\n    transformers.AutoModelForImageClassification.from_pretrained(sys.argv[1])\n'
            'except ImportError as e:\n    print("REFUSED", e)\n'
            'import gczoo\nm = transformers.AutoModelForImageClassification.from_pretrained(sys.argv[1])\n'
            'print("LOADED", m.config.architecture, m.num_labels)\n')
    out = subprocess.run([sys.executable, '-c', code, str(folder)], capture_output=True, text=True, timeout=300,
                         env=subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    refused, loaded = [line for line in out.stdout.splitlines() if line.startswith(('REFUSED', 'LOADED'))]
    assert "'resnet18_gc' is not supported in your version of timm" in refused and 'upgrade timm' in refused
    assert loaded == 'LOADED resnet18_gc 3'
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    assert 'Without `import gczoo`, transformers says' in readme and 'upgrading timm does not help' in readme


def test_export_of_a_compiled_or_ddp_wrapped_model_is_the_models(tmp_path):
    """A compiled model failed with 'ZooResNet does not support len()', a DDP one was refused as not timm's."""
    import torch.distributed as dist
    from safetensors.torch import load_file
    model = _random_weights(timm.create_model('resnet18_gc', num_classes=3))
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        wrapped = {'compiled': torch.compile(model, backend='eager'), 'ddp': nn.parallel.DistributedDataParallel(model)}
        for name, module in wrapped.items():
            weights = load_file(str(save_pretrained(module, tmp_path / name) / 'model.safetensors'))
            assert weights.keys() == model.state_dict().keys(), name
            assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    finally:
        dist.destroy_process_group()


def test_an_interrupted_save_pretrained_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    import timm.models
    model = timm.create_model('resnet18_gc', num_classes=3)
    folder = save_pretrained(model, tmp_path / 'export')
    (folder / 'README.md').write_text('a card')  # a Hub clone's other files stay
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(module, out, **kwargs):
        (Path(out) / 'model.safetensors').write_bytes(b'half')
        raise OSError(28, 'No space left on device', str(Path(out) / 'model.safetensors'))

    monkeypatch.setattr(timm.models, 'save_for_hf', crash)
    with pytest.raises(OSError) as info:
        save_pretrained(model, folder)
    assert str(folder / 'model.safetensors') in str(info.value)  # named as the user knows it, not the staging copy
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    save_pretrained(_random_weights(model), folder, label_names=['a', 'b', 'c'])
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert json.loads((folder / 'config.json').read_text())['label_names'] == ['a', 'b', 'c']


# ---------------------------------------------------------------------------------------------
# 3. an export's metadata describes the weights in it


def _described(folder: Path) -> dict:
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    return {k: cfg.get(k) for k in ('tag', 'description', 'notes', 'license', 'origin_url')}


def test_export_keeps_nothing_of_the_default_tag(tmp_path):
    model = timm.create_model('resnet18_gc', num_classes=3)  # its default tag: identity from resnet18.a1_in1k
    got = _described(save_pretrained(model, tmp_path / 'plain'))
    assert got['tag'] is None and got['notes'] is None and got['license'] is None and got['origin_url'] is None, got
    assert 'identity weights' not in got['description'] and 'a1_in1k' not in got['description'], got


def test_export_metadata_describes_the_exported_weights(tmp_path):
    from gczoo.models.hub_folder import export_metadata
    model = timm.create_model('resnet18_gc', num_classes=3)  # its default tag: identity from resnet18.a1_in1k
    cases = {
        'scratch': ({'model': 'resnet18_gc'}, 'trained from scratch by gczoo train', None),
        'ckpt': ({'model': 'resnet18_gc', 'initial_checkpoint': '/home/me/runs/mine.pth.tar'},
                 'fine-tuned from the checkpoint mine.pth.tar by gczoo train', None),
        'tag': ({'model': 'resnet18_gc', 'pretrained': True},
                'fine-tuned from resnet18_gc.a1_in1k_identity by gczoo train', 'apache-2.0'),
    }
    for name, (args, origin, license) in cases.items():
        got = _described(save_pretrained(model, tmp_path / name, **export_metadata(args, model.pretrained_cfg)))
        assert got['tag'] is None and got['origin_url'] is None, (name, got)
        assert got['notes'] == [origin] and got['description'].endswith(origin) and got['license'] == license
        assert 'identity weights' not in got['description'] and '/home/me' not in json.dumps(got)
    published = _described(save_pretrained(model, tmp_path / 'pub', tag='digits', **export_metadata(cases['ckpt'][0])))
    assert published['tag'] == 'digits'


def test_export_from_a_transplanted_timm_backbone_keeps_its_licence(tmp_path):
    """A backbone under a non-commercial licence made the export say no licence at all."""
    from gczoo.models.hub_folder import export_metadata
    model = timm.create_model('resnet18_gc', num_classes=3)
    cases = {'resnet50.fb_swsl_ig1b_ft_in1k': ('resnet50.fb_swsl_ig1b_ft_in1k', 'cc-by-nc-4.0'),
             'resnet50': ('resnet50.a1_in1k', 'apache-2.0'),  # the default tag, named
             '/runs/me/backbone.safetensors': ('backbone.safetensors', None)}
    for backbone, (named, license) in cases.items():
        meta = export_metadata({'model': 'resnet50_gc', 'pretrained_backbone': backbone})
        assert meta == {'origin': f'trained from a backbone transplanted from {named} by gczoo train',
                        'license': license}
    got = _described(save_pretrained(model, tmp_path / 'nc', **export_metadata(
        {'model': 'resnet18_gc', 'pretrained_backbone': 'resnet50.fb_swsl_ig1b_ft_in1k'})))
    assert got['license'] == 'cc-by-nc-4.0'


def test_train_export_says_trained_from_scratch(tmp_path):
    from gczoo.models.hub_folder import export_metadata
    from gczoo.train.outputs import export_best
    model = timm.create_model('resnet18_gc', num_classes=3)
    folder = export_best(model, model.state_dict(), 'best', tmp_path / 'export', {'input_size': (3, 32, 32)},
                         None, export_metadata({'model': 'resnet18_gc'}, model.pretrained_cfg))
    got = _described(folder)
    assert got['tag'] is None and got['notes'] == ['trained from scratch by gczoo train']


def test_publish_of_an_export_keeps_its_description(tmp_path):
    from gczoo.hub import load_training_output, write_hub_folder
    from gczoo.models.hub_folder import export_metadata
    model = timm.create_model('resnet18_gc', num_classes=3)
    out = tmp_path / 'OUT'
    save_pretrained(model, out / 'export', **export_metadata({'model': 'resnet18_gc'}))
    weights = load_training_output(out)
    files = write_hub_folder(weights, tmp_path / 'hub', repo_id='me/resnet18_gc.digits', tag='digits')
    got = _described(files[1].parent)
    assert got['tag'] == 'digits' and got['notes'] == ['trained from scratch by gczoo train']
    assert '**Recipe tag:** `digits` (trained from scratch by gczoo train)' in (tmp_path / 'hub' / 'README.md').read_text()
    card = (tmp_path / 'hub' / 'README.md').read_text()  # what a transformers user of the repo must do
    assert "transformers: `import gczoo` first, then `AutoModelForImageClassification.from_pretrained(" in card
    lone = tmp_path / 'lone.pth'
    torch.save(model.state_dict(), lone)
    got = _described(write_hub_folder(load_training_output(lone, model_name='resnet18_gc'), tmp_path / 'hub2',
                                      repo_id='me/resnet18_gc.mine', tag='mine')[1].parent)
    assert got['notes'] == ['weights from the checkpoint lone.pth'] and 'a1_in1k' not in got['description']


# ---------------------------------------------------------------------------------------------
# 4. freezing a backbone's BN keeps the attention blocks trainable


def _backbone_with_non_local() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Sequential(NonLocal2d(8)), nn.Conv2d(8, 2, 1))


def test_timms_freeze_freezes_non_local_at_identity_and_is_detected():
    from timm.layers import freeze_batch_norm_2d
    from torchvision.ops.misc import FrozenBatchNorm2d  # what timm's freeze_batch_norm_2d makes

    from gczoo.layers import frozen_zero_init
    from gczoo.train.guards import warn_frozen_attention
    model = freeze_batch_norm_2d(_backbone_with_non_local())
    assert isinstance(model[3][0].norm, FrozenBatchNorm2d)  # the trap: the block's zero BN can never move
    assert frozen_zero_init(model) == ['3.0.norm.weight (FrozenBatchNorm2d)']
    lines = []
    assert warn_frozen_attention(model, lines.append) == ['3.0.norm.weight (FrozenBatchNorm2d)']
    assert len(lines) == 1 and '3.0.norm.weight' in lines[0] and 'freeze_backbone_bn' in lines[0]
    sagan = timm.create_model('resnet50_sa', num_classes=2)
    sagan.requires_grad_(False)
    assert any('gamma (requires_grad=False)' in name for name in frozen_zero_init(sagan))


def test_freeze_backbone_bn_keeps_the_attention_norms_trainable():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from gczoo.layers import freeze_backbone_bn, frozen_zero_init
    from gczoo.train.guards import warn_frozen_attention
    model = freeze_backbone_bn(_backbone_with_non_local())
    assert isinstance(model[1], FrozenBatchNorm2d)
    assert type(model[3][0].norm) is nn.BatchNorm2d and model[3][0].norm.weight.requires_grad
    assert frozen_zero_init(model) == []
    lines = []
    assert warn_frozen_attention(model, lines.append) == [] and lines == []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(2, 3, 6, 10)).square().mean().backward()
    opt.step()
    assert model[3][0].norm.weight.abs().sum() > 0  # the block can leave the identity
    zoo = freeze_backbone_bn(timm.create_model('resnet50_nl', num_classes=2))
    assert not any(isinstance(m.norm, FrozenBatchNorm2d) for m in zoo.modules() if isinstance(m, NonLocal2d))
    assert isinstance(zoo.bn1, FrozenBatchNorm2d) and frozen_zero_init(zoo) == []


class _BufferFrozenBN(nn.Module):
    """detectron2's FrozenBatchNorm2d in short: weight, bias and statistics as buffers (not torchvision's class)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            self.register_buffer(name, getattr(bn, name).detach().clone())

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale[:, None, None] + (self.bias - self.running_mean * scale)[:, None, None]


def test_frozen_zero_init_finds_any_frozen_norm_class():
    model = _backbone_with_non_local()
    block = model[3][0]
    block.norm = _BufferFrozenBN(block.norm)  # as detectron2's convert_frozen_batchnorm leaves it
    from gczoo.layers import frozen_zero_init
    assert frozen_zero_init(model) == ['3.0.norm.weight (_BufferFrozenBN)']
    with torch.no_grad():
        block.norm.weight.fill_(0.5)
    assert frozen_zero_init(model) == []


def test_timms_own_non_local_is_kept_trainable_and_detected():
    """timm.create_model('resnet18', block_args=dict(attn_layer='nl')): timm's NonLocalAttn starts at the
    identity (its output BN weight is zero) as gczoo's does; neither function knew it."""
    from timm.layers import NonLocalAttn, freeze_batch_norm_2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    from gczoo.layers import freeze_backbone_bn, frozen_zero_init
    model = freeze_backbone_bn(timm.create_model('resnet18', block_args=dict(attn_layer='nl'), num_classes=2))
    blocks = [m for m in model.modules() if isinstance(m, NonLocalAttn)]
    assert blocks and all(type(b.norm) is nn.BatchNorm2d for b in blocks) and isinstance(model.bn1, FrozenBatchNorm2d)
    assert frozen_zero_init(model) == []
    frozen = frozen_zero_init(freeze_batch_norm_2d(timm.create_model('resnet18', block_args=dict(attn_layer='nl'))))
    assert len(frozen) == len(blocks) and frozen[0] == 'layer1.0.se.norm.weight (FrozenBatchNorm2d)', frozen


def test_freeze_backbone_bn_twice_compiled_plain_timm_and_ddp(tmp_path):
    import torch.distributed as dist
    from timm.layers import freeze_batch_norm_2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    from gczoo.layers import freeze_backbone_bn, frozen_zero_init
    twice = freeze_backbone_bn(freeze_backbone_bn(_backbone_with_non_local()))
    assert isinstance(twice[1], FrozenBatchNorm2d) and type(twice[3][0].norm) is nn.BatchNorm2d
    assert isinstance(freeze_backbone_bn(timm.create_model('resnet18', num_classes=2)).bn1, FrozenBatchNorm2d)
    compiled = torch.compile(_backbone_with_non_local(), backend='eager')
    x = torch.randn(2, 3, 6, 10)
    compiled(x)  # compiled and run once, then frozen: the next call runs the frozen model
    assert freeze_backbone_bn(compiled) is compiled and isinstance(compiled._orig_mod[1], FrozenBatchNorm2d)
    assert type(compiled._orig_mod[3][0].norm) is nn.BatchNorm2d
    torch.testing.assert_close(compiled(x), compiled._orig_mod(x))
    trained = _backbone_with_non_local()
    with torch.no_grad():
        trained[3][0].norm.weight.fill_(0.3)  # a trained (non-zero) weight frozen is not the identity
    assert frozen_zero_init(freeze_batch_norm_2d(trained)) == []
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(_backbone_with_non_local())
        with pytest.raises(ValueError, match='already wrapped in DistributedDataParallel.*freeze first, then wrap'):
            freeze_backbone_bn(ddp)  # it used to work, then the second step failed on the frozen parameters
        assert type(ddp.module[1]) is nn.BatchNorm2d
        assert frozen_zero_init(freeze_batch_norm_2d(ddp)) == ['module.3.0.norm.weight (FrozenBatchNorm2d)']
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# 5. missing weights are not an out-of-memory for timm's validate.py


def _timm_validate_module():
    spec = importlib.util.spec_from_file_location('timm_validate_script', VALIDATE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrained_weights_error_is_not_a_runtime_error():
    assert not isinstance(PretrainedWeightsError('x'), RuntimeError)  # what timm's validate.py retries
    assert isinstance(PretrainedWeightsError('x'), (GczooError, LookupError))


@pytest.mark.parametrize('error, retried', [(PretrainedWeightsError('no weights for x'), False),
                                            (RuntimeError('CUDA out of memory'), True)])  # the control: OOM is
def test_timms_validate_does_not_retry_missing_weights(monkeypatch, error, retried):
    validate_py = _timm_validate_module()
    seen = []

    def validate(args):
        seen.append(args.batch_size)
        raise error

    monkeypatch.setattr(validate_py, 'validate', validate)
    args = validate_py.parser.parse_args(['data', '--model', 'resnet18_gc', '-b', '16'])
    try:
        validate_py._try_run(args, 16)  # timm's own bulk/--retry loop
    except PretrainedWeightsError:
        pass
    assert (len(seen) > 1) == retried, seen


# ---------------------------------------------------------------------------------------------
# 6. summary.csv counts epochs from 0, as timm's


@pytest.mark.slow
def test_summary_epochs_count_from_zero_like_timm(tmp_path):
    from timm.utils import update_summary
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1, size=16)
    assert run_train(tiny_args(data, tmp_path, 'run', epochs=2, img_size=16, checkpoint_hist=2)) == 0
    run = tmp_path / 'run'
    rows = summary_rows(run)
    for epoch in range(2):  # what timm's train.py writes for the same two epochs
        update_summary(epoch, {'loss': 1.0}, {'loss': 1.0, 'top1': 1.0, 'top5': 1.0}, str(tmp_path / 'timm.csv'),
                       lr=0.1, write_header=epoch == 0)
    timm_epochs = [line.split(',')[0] for line in (tmp_path / 'timm.csv').read_text().splitlines()[1:]]
    assert [r['epoch'] for r in rows] == timm_epochs == ['0', '1']
    best = json.loads((run / 'results.json').read_text())['best']['epoch']
    assert best in (0, 1) and (run / f'checkpoint-{best}.pth.tar').is_file()
    assert sorted(p.name for p in run.glob('checkpoint-*')) == ['checkpoint-0.pth.tar', 'checkpoint-1.pth.tar']


@pytest.mark.slow
def test_summary_of_a_resumed_run_is_contiguous_from_zero(tmp_path):
    """Resumed from an earlier epoch's checkpoint with more epochs: epochs 0..N-1 once each, the rows before
    the resume point those of the first run (timm's update_summary would append after the old rows)."""
    data = make_image_folder(tmp_path / 'data', train_per_class=2, val_per_class=1, size=16)
    assert run_train(tiny_args(data, tmp_path, 'run', epochs=2, img_size=16, checkpoint_hist=2)) == 0
    run = tmp_path / 'run'
    first = summary_rows(run)
    assert [r['epoch'] for r in first] == ['0', '1']
    assert run_train(tiny_args(data, tmp_path, 'run', epochs=3, img_size=16, checkpoint_hist=3,
                               resume=run / 'checkpoint-0.pth.tar')) == 0
    rows = summary_rows(run)
    assert [r['epoch'] for r in rows] == ['0', '1', '2']
    assert rows[0] == first[0]
    assert json.loads((run / 'results.json').read_text())['best']['epoch'] in (0, 1, 2)
