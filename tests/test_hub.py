"""gczoo.hub: publish a training output as a Hub folder, load it back from every place weights are
kept (local-dir:, the Hub cache offline, pretrained_cfg_overlay file, zoo names), and fail clearly.

No network: the Hub cache is filled by huggingface_hub itself (``hf_hub_download`` from a loopback-only
server, tests/hub_cache.py) and read with HF_HUB_OFFLINE.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from hub_cache import fill_hub_cache

import gczoo  # noqa: F401  (registers the zoo with timm)
from gczoo import hub
from gczoo.cli import main as cli_main
from gczoo.models import CheckpointError, PretrainedWeightsError
from gczoo.models.tags import default_tag

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = 'resnet18_gc'
TAG = 'unit'
REPO_ID = f'gczoo/{MODEL}.{TAG}'
LABELS = ['zero', 'one', 'two']
DATA_CONFIG = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation='bilinear', mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25))
TRAIN_ARGS = {'model': MODEL, 'num_classes': 3, 'img_size': 32, 'crop_pct': 1.0, 'mean': [0.5, 0.5, 0.5],
              'std': [0.25, 0.25, 0.25], 'interpolation': '', 'epochs': 5}
# what gczoo.train writes to OUT/results.json (the keys publish reads)
RESULTS = {
    'model': MODEL, 'num_classes': 3, 'class_names': LABELS, 'epochs': 5, 'val_images': 360,
    'data': 'embedded handwritten digits (/home/someone/.cache/gczoo/digits)',
    'best': {'epoch': 3, 'metric': 91.25, 'eval_metric': 'top1', 'top1': 91.25, 'top5': 100.0, 'val_loss': 0.3,
             'ema': False},
    'final': {'epoch': 4, 'train_loss': 0.4, 'val_loss': 0.31, 'top1': 90.5, 'top5': 100.0, 'lr': 1e-4},
    'args': TRAIN_ARGS,
}


def _trained_model() -> torch.nn.Module:
    """resnet18_gc with every tensor moved off its init, so a block left unloaded changes the logits."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
                if name.endswith('running_var'):
                    tensor.abs_().add_(0.5)
    return model.eval()


@pytest.fixture(scope='module')
def trained():
    return _trained_model()


@pytest.fixture(scope='module')
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def reference_logits(trained, images):
    with torch.no_grad():
        return trained(images)


@pytest.fixture(scope='module')
def train_out(tmp_path_factory, trained):
    """What `gczoo train` leaves in OUT: export/ (the best model), results.json, summary.csv, checkpoints."""
    out = tmp_path_factory.mktemp('train_out')
    hub.save_pretrained(trained, out / 'export', data_config=DATA_CONFIG, label_names=LABELS)
    (out / 'results.json').write_text(json.dumps(RESULTS))
    (out / 'summary.csv').write_text('epoch,train_loss,val_loss,top1,top5\n3,0.3,0.3,91.25,100.0\n')
    torch.save({'format': 'gczoo.train/1', 'epoch': 4, 'state_dict': trained.state_dict(), 'state_dict_ema': None,
                'args': TRAIN_ARGS}, out / 'best.pth.tar')
    return out


@pytest.fixture(scope='module')
def published(tmp_path_factory, train_out):
    """`scripts/publish.sh OUT --tag unit --dry-run --local-dir DIR` (the real script, in a subprocess)."""
    folder = tmp_path_factory.mktemp('published') / 'repo'
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    proc = subprocess.run(
        ['bash', str(REPO_ROOT / 'scripts' / 'publish.sh'), str(train_out), '--tag', TAG, '--dry-run',
         '--local-dir', str(folder)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'dry run' in proc.stdout
    return folder


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache, used as huggingface_hub's default, with HF_HUB_OFFLINE on (read at call time)."""
    cache = tmp_path / 'hf_home' / 'hub'
    cache.mkdir(parents=True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(cache))
    return cache


def _logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _cache(folder: Path, repo_id: str, cache_dir: Path) -> Path:
    """Put a Hub folder's files into the Hub cache the way a download does (huggingface_hub writes it)."""
    return fill_hub_cache(cache_dir, repo_id, {p.name: p for p in folder.iterdir() if p.is_file()})


# ------------------------------------------------------------------------------------------------
# publish: the folder


def test_publish_dry_run_writes_exactly_the_hub_files(published):
    assert sorted(p.name for p in published.iterdir()) == sorted(hub.HUB_FILES)
    config = json.loads((published / 'config.json').read_text())
    assert config['architecture'] == MODEL
    assert config['num_classes'] == 3 and config['num_features'] == 512 and config['global_pool'] == 'avg'
    assert config['label_names'] == LABELS
    cfg = config['pretrained_cfg']
    # the data config actually used in training, not the registry's ImageNet defaults
    assert cfg['input_size'] == [3, 32, 32] and cfg['crop_pct'] == 1.0 and cfg['interpolation'] == 'bilinear'
    assert cfg['mean'] == [0.5, 0.5, 0.5] and cfg['std'] == [0.25, 0.25, 0.25]
    assert cfg['hf_hub_filename'] == 'model.safetensors' and cfg['tag'] == TAG
    assert 'pretrained_backbone' not in config.get('model_args', {})
    card = (published / 'README.md').read_text()
    assert card.startswith('---\n') and f'# Model card for {MODEL}' in card
    # the measured numbers of the exported (best) epoch, with their dataset but not its local path
    assert '| embedded handwritten digits | 91.25 | 100.00 | 32 | 1.0 | 360 |' in card
    assert '/home/someone' not in card
    assert f"timm.create_model('hf-hub:{REPO_ID}', pretrained=True)" in card


def test_save_pretrained_drops_non_architecture_args(tmp_path):
    # pretrained_backbone in a config would be passed again with pretrained=True on load, which the zoo refuses
    source = tmp_path / 'backbone.pth'
    torch.save(timm.create_model('resnet18', num_classes=3).state_dict(), source)
    model = timm.create_model(MODEL, num_classes=3, pretrained_backbone=str(source))
    hub.save_pretrained(model, tmp_path / 'out')
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert 'pretrained_backbone' not in config['model_args']
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_logits(loaded, x), _logits(model, x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# loading back: every place weights are kept


def test_round_trip_local_dir(published, images, reference_logits):
    model = timm.create_model(f'local-dir:{published}', pretrained=True)
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)
    assert model.pretrained_cfg['label_names'] == LABELS
    checked = hub.create_model(f'local-dir:{published}', pretrained=True)
    torch.testing.assert_close(_logits(checked, images), reference_logits, rtol=0, atol=0)


def test_round_trip_pretrained_cfg_overlay_file(published, images, reference_logits):
    overlay = dict(file=str(published / 'model.safetensors'), num_classes=3)
    for create in (timm.create_model, hub.create_model):
        model = create(MODEL, pretrained=True, num_classes=3, pretrained_cfg_overlay=overlay)
        torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)


def test_load_pretrained_weights_verifies_then_loads(published, images, reference_logits):
    model = hub.load_pretrained_weights(timm.create_model(MODEL, num_classes=3), published)
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r'fc\.weight: checkpoint \(3, 512\) vs model \(5, 512\)'):
        hub.load_pretrained_weights(timm.create_model(MODEL, num_classes=5), published)
    with pytest.raises(CheckpointError, match=r'unexpected keys layer2\.0\.se\.'):
        hub.load_pretrained_weights(timm.create_model('resnet18', num_classes=3), published / 'model.safetensors')


def test_the_hub_cache_is_huggingface_hubs_own(published, tmp_path):
    """gczoo writes no Hub cache itself (it would have to re-create huggingface_hub's private layout):
    a download fills it, and its readers and timm find the published files there."""
    assert not hasattr(hub, 'write_to_hub_cache')
    cache = tmp_path / 'hub'
    snapshot = _cache(published, REPO_ID, cache)
    info = scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and set(repo.refs) == {'main'}
    assert {f.file_name for f in repo.refs['main'].files} == set(hub.HUB_FILES)
    assert try_to_load_from_cache(REPO_ID, 'model.safetensors', cache_dir=cache) == str(snapshot / 'model.safetensors')
    assert (snapshot / 'model.safetensors').read_bytes() == (published / 'model.safetensors').read_bytes()


_OFFLINE_SCRIPT = r'''
import json, sys, torch, timm, gczoo
from gczoo import hub
torch.set_num_threads(int(sys.argv[4]))  # the parent's count: the same kernels, bit-identical logits
images = torch.load(sys.argv[1])
model = timm.create_model(sys.argv[2], pretrained=True).eval()
with torch.no_grad():
    torch.save(model(images), sys.argv[3])
errors = {}
for name in ('hf-hub:gczoo/absent.unit',):
    try:
        hub.create_model(name, pretrained=True)
    except Exception as e:
        errors[name] = [type(e).__name__, str(e)]
print(json.dumps(errors))
'''


@pytest.mark.slow  # ~8 s
def test_round_trip_hub_cache_offline_with_hf_home(published, tmp_path, images, reference_logits):
    """HF_HOME + HF_HUB_OFFLINE=1 in a fresh process, as a user sets them: timm's hf-hub: loads from the cache."""
    hf_home = tmp_path / 'hf_home'
    _cache(published, REPO_ID, hf_home / 'hub')
    torch.save(images, tmp_path / 'images.pt')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-c', _OFFLINE_SCRIPT, str(tmp_path / 'images.pt'), f'hf-hub:{REPO_ID}',
         str(tmp_path / 'logits.pt'), str(torch.get_num_threads())],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(tmp_path / 'logits.pt'), reference_logits, rtol=0, atol=0)
    # the same offline process, a repo that is not in the cache: one error saying what, where and what to do
    kind, message = json.loads(proc.stdout.strip().splitlines()[-1])['hf-hub:gczoo/absent.unit']
    assert kind == 'PretrainedWeightsError'
    for part in ('gczoo/absent.unit', 'config.json', str(hf_home / 'hub'), 'HF_HUB_OFFLINE=1', 'local-dir:',
                 'scripts/train.sh'):
        assert part in message


def test_zoo_name_pretrained_resolves_through_hub_cache(published, offline_cache, images, reference_logits):
    """A zoo name with pretrained=True reads timm's Hub cache: here a published gczoo repo named by the
    cfg's hf_hub_id (how a newly published tag is added), through timm and through gczoo's checks."""
    _cache(published, REPO_ID, offline_cache)
    overlay = dict(hf_hub_id=REPO_ID, num_classes=3)  # the registry cfg says 1000 classes; this repo has 3
    for create in (timm.create_model, hub.create_model):
        model = create(MODEL, pretrained=True, num_classes=3, pretrained_cfg_overlay=overlay)
        torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)


def test_torch_hub_load_pretrained(published, offline_cache, images, reference_logits):
    _cache(published, REPO_ID, offline_cache)
    model = torch.hub.load(str(REPO_ROOT), MODEL, source='local', pretrained=True, num_classes=3,
                           pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, num_classes=3))
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)


def test_publish_from_training_checkpoint(train_out, tmp_path, images, reference_logits):
    """OUT without export/ (gczoo train --no-export): OUT/best.pth.tar is found and read with
    weights_only=True; model, data config and labels come from results.json's args and class_names."""
    out = tmp_path / 'out'
    shutil.copytree(train_out, out, ignore=shutil.ignore_patterns('export'))
    folder = tmp_path / 'repo'
    assert hub.main([str(out), '--tag', TAG, '--dry-run', '--local-dir', str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.HUB_FILES)
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['std'] == [0.25, 0.25, 0.25] and cfg['label_names'] == LABELS


def test_publish_from_lone_checkpoint_file(tmp_path, trained, images, reference_logits):
    """A bare state dict (DataParallel prefixes) with no args: --model says what it is."""
    ckpt = tmp_path / 'weights.pth'
    torch.save({f'module.{k}': v for k, v in trained.state_dict().items()}, ckpt)
    with pytest.raises(ValueError, match='--model'):
        hub.publish(ckpt, tag=TAG, dry_run=True, local_dir=tmp_path / 'other')
    folder = tmp_path / 'repo'
    assert hub.main([str(ckpt), '--model', MODEL, '--tag', TAG, '--dry-run', '--local-dir', str(folder)]) == 0
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# upload


class FakeHfApi:
    """Records what gczoo asks of huggingface_hub; no network."""
    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.calls.append(('init', dict(token=token)))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', dict(repo_id=repo_id, **kwargs)))
        return type('RepoUrl', (), {'repo_id': repo_id})()

    def upload_folder(self, *, repo_id, folder_path, commit_message, allow_patterns=None, **kwargs):
        import fnmatch
        names = sorted(p.name for p in Path(folder_path).iterdir())
        uploaded = [n for n in names if allow_patterns is None or any(fnmatch.fnmatch(n, p) for p in allow_patterns)]
        self.calls.append(('upload_folder', dict(repo_id=repo_id, files=uploaded, commit_message=commit_message,
                                                 **kwargs)))
        return type('CommitInfo', (), {'commit_url': f'https://huggingface.co/{repo_id}/commit/0'})()


@pytest.fixture
def fake_api(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, 'HfApi', FakeHfApi)
    return FakeHfApi


def test_upload_calls_hub_with_repo_files_and_message(train_out, fake_api, capsys):
    assert hub.main([str(train_out), '--tag', TAG, '--private']) == 0
    calls = dict((name, kw) for name, kw in fake_api.calls)
    assert calls['create_repo'] == dict(repo_id=REPO_ID, private=True, exist_ok=True, repo_type='model')
    upload = calls['upload_folder']
    assert upload['repo_id'] == REPO_ID
    assert upload['files'] == sorted(hub.HUB_FILES)
    assert not any(f.endswith(('.bin', '.pth', '.pt')) for f in upload['files'])
    assert upload['commit_message'] == f'Publish {MODEL}.{TAG} weights (top-1 91.25%) with gczoo'
    assert f'hf-hub:{REPO_ID}' in capsys.readouterr().out


def test_upload_folder_custom_repo_branch_and_message(published, fake_api):
    hub.upload_hub_folder(published, 'me/my-gc', commit_message='v2 weights', revision='v2', create_pr=True)
    calls = dict(fake_api.calls)
    assert calls['create_repo'] == dict(repo_id='me/my-gc', private=False, exist_ok=True, repo_type='model')
    upload = calls['upload_folder']
    assert upload['repo_id'] == 'me/my-gc' and upload['commit_message'] == 'v2 weights'
    assert upload['revision'] == 'v2' and upload['create_pr'] is True and upload['files'] == sorted(hub.HUB_FILES)


def test_upload_refuses_folder_with_pickle(published, tmp_path, fake_api):
    folder = _copy(published, tmp_path / 'repo')
    torch.save({'x': torch.zeros(1)}, folder / 'pytorch_model.bin')
    with pytest.raises(CheckpointError, match='pytorch_model.bin'):
        hub.upload_hub_folder(folder, REPO_ID, commit_message='x')
    assert fake_api.calls == []


def test_publish_needs_tag_or_repo_id(train_out, capsys):
    with pytest.raises(ValueError, match='tag'):
        hub.publish(train_out, dry_run=True)
    assert cli_main(['publish', str(train_out), '--dry-run']) == 2  # the command: one line, no traceback
    assert capsys.readouterr().err.startswith('gczoo publish: error: pass tag')


def test_upload_failure_is_one_clear_line(train_out, monkeypatch, capsys):
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    class RefusingHfApi(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            request = httpx2.Request('POST', 'https://huggingface.co/api/repos/create')
            raise HfHubHTTPError('401 Client Error: Unauthorized', response=httpx2.Response(401, request=request))

    monkeypatch.setattr(hub, 'HfApi', RefusingHfApi)
    assert cli_main(['publish', str(train_out), '--tag', TAG]) == 2
    err = capsys.readouterr().err
    assert err.startswith('gczoo publish: error: upload failed: HfHubHTTPError') and 'HF_TOKEN' in err
    assert err.count('\n') == 1


# ------------------------------------------------------------------------------------------------
# failures: each one clear error


def test_missing_files(published, tmp_path):
    no_config = _copy(published, tmp_path / 'no_config')
    (no_config / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=r'no config\.json in .*\(it holds: README\.md, model\.safetensors\)'):
        hub.create_model(f'local-dir:{no_config}', pretrained=True)
    no_weights = _copy(published, tmp_path / 'no_weights')
    (no_weights / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match=r'no model\.safetensors in'):
        hub.create_model(f'local-dir:{no_weights}', pretrained=True)
    with pytest.raises(CheckpointError, match='does not exist'):
        hub.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'nope.safetensors')))
    empty_out = tmp_path / 'empty_out'
    empty_out.mkdir()
    with pytest.raises(CheckpointError, match=r'no export/model\.safetensors and no checkpoint \(looked for'):
        hub.publish(empty_out, tag=TAG, dry_run=True)


def test_truncated_safetensors(published, tmp_path, offline_cache):
    folder = _copy(published, tmp_path / 'truncated')
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        hub.create_model(f'local-dir:{folder}', pretrained=True)
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        hub.load_pretrained_weights(timm.create_model(MODEL, num_classes=3), weights)
    # the same file arriving through the Hub cache: the error names the cached file to delete
    _cache(folder, REPO_ID, offline_cache)
    with pytest.raises(CheckpointError, match=r'the cached file .*model\.safetensors'):
        hub.create_model(f'hf-hub:{REPO_ID}', pretrained=True)


def test_config_with_unregistered_architecture(published, tmp_path, offline_cache):
    folder = _copy(published, tmp_path / 'alien')
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'resnet18_alien'
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'resnet18_alien', which is not a registered timm model"):
        hub.create_model(f'local-dir:{folder}', pretrained=True)
    _cache(folder, 'gczoo/alien', offline_cache)
    with pytest.raises(CheckpointError, match='resnet18_alien.*not a registered timm model'):
        hub.create_model('hf-hub:gczoo/alien', pretrained=True)


def test_pickle_where_safetensors_expected(published, tmp_path, trained, images, reference_logits):
    disguised = _copy(published, tmp_path / 'disguised')
    torch.save(trained.state_dict(), disguised / 'model.safetensors')
    with pytest.raises(CheckpointError, match='should be a safetensors file but is a torch.save zip archive'):
        hub.create_model(f'local-dir:{disguised}', pretrained=True)
    # a folder with only a pickled pytorch_model.bin: refused by default, read with weights_only=True on request
    pickled = _copy(published, tmp_path / 'pickled')
    (pickled / 'model.safetensors').unlink()
    torch.save(trained.state_dict(), pickled / 'pytorch_model.bin')
    with pytest.raises(CheckpointError, match='pytorch_model.bin.*allow_pickle'):
        hub.create_model(f'local-dir:{pickled}', pretrained=True)
    with pytest.raises(CheckpointError, match='allow_pickle'):
        hub.load_pretrained_weights(timm.create_model(MODEL, num_classes=3), pickled)
    with pytest.raises(CheckpointError, match='does not load pickled weights'):
        hub.create_model(MODEL, pretrained=True, num_classes=3,
                         pretrained_cfg_overlay=dict(file=str(pickled / 'pytorch_model.bin')))
    model = hub.load_pretrained_weights(timm.create_model(MODEL, num_classes=3), pickled, allow_pickle=True)
    torch.testing.assert_close(_logits(model, images), reference_logits, rtol=0, atol=0)


def test_offline_with_empty_cache(offline_cache):
    with pytest.raises(PretrainedWeightsError) as info:
        hub.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    message = str(info.value)
    for part in (REPO_ID, 'config.json, model.safetensors', str(offline_cache), 'HF_HUB_OFFLINE=1',
                 f'hf download {REPO_ID}', 'local-dir:', 'scripts/train.sh'):
        assert part in message
    # a zoo name whose default tag's source is not cached: timm.create_model itself raises one
    # PretrainedWeightsError, and gczoo's create_model names the repo, the file and the cache
    source = default_tag(MODEL).source  # e.g. timm/resnet18.a1_in1k
    with pytest.raises(PretrainedWeightsError, match='HF_HUB_OFFLINE'):
        timm.create_model(MODEL, pretrained=True)
    expected = rf'{re.escape(source)}.*{re.escape(str(offline_cache))}.*model\.safetensors'
    with pytest.raises(PretrainedWeightsError, match=expected):
        hub.create_model(MODEL, pretrained=True)


def test_offline_cache_without_weights(published, tmp_path, offline_cache):
    """config.json cached but not the weights: the error comes from inside the zoo entrypoint, still one error."""
    partial = _copy(published, tmp_path / 'partial')
    (partial / 'model.safetensors').unlink()
    _cache(partial, REPO_ID, offline_cache)
    with pytest.raises(PretrainedWeightsError):
        timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    with pytest.raises(PretrainedWeightsError, match=r'not in the cache: model\.safetensors \('):
        hub.create_model(f'hf-hub:{REPO_ID}', pretrained=True)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet18_nope'"):
        hub.create_model('resnet18_nope')


def test_publish_dry_run_full_disk_is_one_line_and_writes_nothing(train_out, tmp_path, capsys, monkeypatch):
    import errno
    import pathlib

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, 'write_text', full_disk)
    parent = tmp_path / 'hub'
    parent.mkdir()
    assert cli_main(['publish', str(train_out), '--tag', TAG, '--dry-run', '--local-dir', str(parent / 'repo')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('gczoo publish: error: No space left on device')
    assert str(parent / 'repo') in err and 'free some disk space' in err  # the folder asked for, not a staging one
    assert list(parent.iterdir()) == []  # no half-written folder, no staging folder left


def test_publish_refuses_non_finite_results_in_one_line(train_out, tmp_path, capsys):
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(dict(RESULTS, best=dict(RESULTS['best'], top1=float('nan')))))
    folder = tmp_path / 'repo'
    assert cli_main(['publish', str(train_out), '--tag', TAG, '--dry-run', '--local-dir', str(folder),
                     '--results', str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'top1 is nan, not a finite number' in err
    assert not folder.exists()


def test_published_card_says_where_the_weights_come_from(trained, tmp_path):
    """Hub metadata from the run itself: digits from scratch name no Hub dataset and no base model; a
    run from an ImageNet backbone on a Hub dataset names both, and the measured metrics go to model-index."""
    import yaml

    def front_matter(args):
        weights = hub.TrainedWeights(trained, MODEL, DATA_CONFIG, LABELS, RESULTS, args, 'x')
        card = hub._render_card(weights, REPO_ID, TAG)
        return yaml.safe_load(card.split('---\n')[1])

    scratch = front_matter(TRAIN_ARGS)
    assert 'base_model' not in scratch and 'datasets' not in scratch
    assert scratch['model-index'][0]['results'][0]['metrics'][0]['value'] == 91.25
    transplanted = front_matter(dict(TRAIN_ARGS, pretrained_backbone='resnet18.a1_in1k', dataset='hfds/food101'))
    assert transplanted['base_model'] == 'timm/resnet18.a1_in1k'
    assert transplanted['datasets'] == ['imagenet-1k', 'food101']
    assert hub.card_origin(hub.TrainedWeights(trained, MODEL, {}, None, {}, {'dataset': 'torch/cifar10'}, 'x')) == (
        None, ['cifar10'])


def test_saved_hub_folder_follows_the_umask(tmp_path):
    from gczoo.models.hub_folder import save_pretrained as save
    old = os.umask(0o022)
    try:
        save(timm.create_model('resnet18_gc', num_classes=3), tmp_path / 'out')
    finally:
        os.umask(old)
    for name in ('model.safetensors', 'config.json'):
        assert (tmp_path / 'out' / name).stat().st_mode & 0o777 == 0o644, name  # not safetensors' 0600


def test_overlay_file_with_other_in_chans_is_adapted_as_timm_does(tmp_path):
    from safetensors.torch import save_file
    from gczoo.models.factory import create_model as checked_create_model
    source = timm.create_model('resnet18_gc', num_classes=3)
    save_file(source.state_dict(), str(tmp_path / 'w.safetensors'))
    model = checked_create_model('resnet18_gc', pretrained=True, num_classes=3, in_chans=1,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors')))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))


def test_publish_reads_the_runs_args_yaml(tmp_path):
    from gczoo.hub import load_training_output
    out = tmp_path / 'run'
    out.mkdir()
    torch.save({'state_dict': timm.create_model('resnet18_gc', num_classes=4).state_dict()}, out / 'model_best.pth.tar')
    (out / 'args.yaml').write_text('model: resnet18_gc\nimg_size: 32\n')
    weights = load_training_output(out)
    assert weights.model_name == 'resnet18_gc' and weights.data_config['input_size'][-1] == 32
