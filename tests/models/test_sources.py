"""Where weights come from (``gczoo.models.sources``): a URL's file in torch's checkpoint cache, a Hub
repo's file in huggingface_hub's cache, and one error naming what, where and what to do otherwise.
No network: files are pre-placed in a temporary torch hub folder, served from 127.0.0.1, or put
into a Hub cache by huggingface_hub itself (``hub_cache.fill_hub_cache``)."""
import functools
import http.server

import pytest
import torch
from huggingface_hub import constants as hf_constants

from gczoo.cli import run
from gczoo.models import PretrainedWeightsError, fetch_from_hub, fetch_url
from gczoo.models.sources import hub_cache_dir, url_cache_dir, url_cached_path
from hub_cache import fill_hub_cache, loopback_server

NAME = 'mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco_20200515_211915-187da160.pth'
URL = f'https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco/{NAME}'
DEAD_URL = f'http://127.0.0.1:9/gcnet/{NAME}'  # port 9 (discard): nothing listens


@pytest.fixture
def torch_hub(tmp_path):
    """torch's hub folder on an empty temporary one; downloads refused (a download would be a bug)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'torch_hub'))
    yield tmp_path / 'torch_hub'
    torch.hub.set_dir(previous)


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('fetch_url downloaded a file that is in the cache')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


def _serve(folder):
    """An HTTP server on 127.0.0.1 serving ``folder``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    return loopback_server(handler)


def test_cached_file_is_found_in_torch_hub_checkpoints_without_network(torch_hub, no_download):
    cached = torch_hub / 'checkpoints' / NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'weights')
    assert url_cache_dir() == torch_hub / 'checkpoints'
    assert fetch_url(URL, what='the test weights') == cached
    # a query string or fragment is not part of the file name (torch and timm name it by the path)
    assert fetch_url(URL + '?download=1', what='the test weights') == cached


def test_cache_dir_is_the_folder_itself_as_timm_reads_it(tmp_path, torch_hub, no_download):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / NAME).write_bytes(b'weights')
    assert fetch_url(URL, what='the test weights', cache_dir=tmp_path / 'mine') == tmp_path / 'mine' / NAME
    from timm.models._hub import download_cached_file  # the same file timm would read, no download
    assert download_cached_file(URL, check_hash=False, cache_dir=str(tmp_path / 'mine')) == str(tmp_path / 'mine' / NAME)


def test_absent_file_is_downloaded_into_the_cache(tmp_path, torch_hub):
    served = tmp_path / 'served'
    served.mkdir()
    (served / NAME).write_bytes(b'\x00weights\x01' * 100)
    with _serve(served) as base:
        path = fetch_url(f'{base}/{NAME}', what='the test weights')
    assert path == url_cached_path(URL) == torch_hub / 'checkpoints' / NAME
    assert path.read_bytes() == (served / NAME).read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no temporary file left


def test_unreachable_url_is_one_line_naming_what_url_and_where(tmp_path, torch_hub):
    with pytest.raises(PretrainedWeightsError) as info:
        fetch_url(DEAD_URL, what="pretrained weights for 'resnet50_gc.mmdet_coco'", cache_dir=tmp_path / 'ckpt',
                  hint='pass pretrained_cfg_overlay=dict(file=...)')
    message = str(info.value)
    assert '\n' not in message
    for part in ("'resnet50_gc.mmdet_coco'", DEAD_URL, str(tmp_path / 'ckpt'), str(tmp_path / 'ckpt' / NAME),
                 'TORCH_HOME', 'pretrained_cfg_overlay', 'URLError'):
        assert part in message, part
    assert list((tmp_path / 'ckpt').iterdir()) == []  # nothing half-written


def test_unreachable_url_through_the_cli_runner_is_one_line_exit_2(tmp_path, torch_hub, capsys):
    def main(argv):
        fetch_url(DEAD_URL, what='the backbone weights', cache_dir=tmp_path)
    assert run(main, [], prog='gczoo fetch') == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and DEAD_URL in err and 'the backbone weights' in err


def test_a_url_without_a_file_name_is_refused(torch_hub):
    with pytest.raises(ValueError, match='names no file'):
        fetch_url('https://example.org/weights/', what='x')


@pytest.mark.parametrize('tail', ['..', '.', '%s/..' % NAME])
def test_a_url_ending_in_dot_dot_never_names_the_cache_or_its_parent(tmp_path, torch_hub, no_download, tail):
    # hostile-user pass: 'https://host/a/..' used to map to '<cache>/..', the cache's parent folder
    with pytest.raises(ValueError, match='names no file'):
        fetch_url(f'https://example.org/weights/{tail}', what='x', cache_dir=tmp_path / 'ckpt')
    assert not (tmp_path / 'ckpt').exists()


def test_a_cache_folder_that_is_a_file_or_read_only_is_named_not_blamed_on_the_download(
        tmp_path, torch_hub, no_download, monkeypatch):
    # hostile-user pass: these were 'could not be downloaded ... put it there', which cannot be done
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(NotADirectoryError, match='weights cache folder') as info:
        fetch_url(URL, what='x', cache_dir=tmp_path / 'afile')
    assert str(tmp_path / 'afile') in str(info.value)
    (tmp_path / 'ckpt' / NAME).mkdir(parents=True)  # a folder where the weights file belongs
    with pytest.raises(IsADirectoryError, match='remove it'):
        fetch_url(URL, what='x', cache_dir=tmp_path / 'ckpt')
    (tmp_path / 'ro').mkdir()
    monkeypatch.setattr('os.access', lambda *args, **kwargs: False)  # as a read-only folder (tests run as root)
    with pytest.raises(PermissionError, match='not writable') as info:
        fetch_url(URL, what='x', cache_dir=tmp_path / 'ro')
    assert str(tmp_path / 'ro') in str(info.value)


def test_a_read_only_cache_still_serves_a_cached_file(tmp_path, torch_hub, no_download, monkeypatch):
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro' / NAME).write_bytes(b'weights')
    monkeypatch.setattr('os.access', lambda *args, **kwargs: False)
    assert fetch_url(URL, what='x', cache_dir=tmp_path / 'ro') == tmp_path / 'ro' / NAME


def test_hub_file_from_the_cache_offline_and_the_one_error_when_absent(tmp_path, monkeypatch):
    cache = tmp_path / 'hf'
    fill_hub_cache(cache, 'gczoo/tiny', {'model.safetensors': b'not really weights'})
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(cache))
    assert hub_cache_dir() == str(cache)
    assert fetch_from_hub('gczoo/tiny', what="'tiny'").read_bytes() == b'not really weights'
    with pytest.raises(PretrainedWeightsError) as info:
        fetch_from_hub('gczoo/other', what="pretrained weights for 'tiny'")
    message = str(info.value)
    assert '\n' not in message
    for part in ("pretrained weights for 'tiny'", "'gczoo/other'", str(cache), 'HF_HUB_OFFLINE=1',
                 'not in the cache: model.safetensors', 'hf download gczoo/other'):
        assert part in message, part


@pytest.mark.parametrize('repo, filename, why', [
    ('bad repo', 'model.safetensors', 'HFValidationError'),
    ('', 'model.safetensors', 'HFValidationError'),
    ('gczoo/tiny', '../model.safetensors', "'..'"),
    ('gczoo/tiny', '', 'no file of the Hub repo'),
])
def test_a_bad_hub_repo_id_or_file_name_names_what_was_wanted(tmp_path, monkeypatch, repo, filename, why):
    # hostile-user pass: these were huggingface_hub's bare messages (no `what`), or 'looked for  of'
    from gczoo.errors import UsageError
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(UsageError) as info:
        fetch_from_hub(repo, filename, what="pretrained weights for 'tiny'", cache_dir=tmp_path / 'hf')
    message = str(info.value)
    assert message.startswith("Could not load pretrained weights for 'tiny': ") and why in message
    assert '\n' not in message
