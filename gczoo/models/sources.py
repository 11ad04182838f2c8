"""Where pretrained weights come from, once: torch's checkpoint cache for a URL, the Hugging Face Hub
cache for a Hub repo, and the one explanation of each when the weights cannot be had.

* A URL's weights live where timm and torch read them: ``torch.hub.get_dir()/checkpoints/<basename of
  the URL path>`` (``TORCH_HOME`` moves it), or ``cache_dir/<basename>`` when a folder is given (timm's
  ``download_cached_file(url, cache_dir=...)`` convention). :func:`fetch_url` returns that file,
  downloading it there first if it is absent (``torch.hub.download_url_to_file``: a temporary file
  moved into place, so nothing is half-written).
* A Hub repo's weights live in huggingface_hub's own cache (``HF_HUB_CACHE``/``HF_HOME``);
  :func:`fetch_from_hub` fetches one file into it with ``hf_hub_download`` (offline with
  ``HF_HUB_OFFLINE=1``: the cache only).

Either failure is one :class:`~gczoo.errors.PretrainedWeightsError` that names what was wanted, the
URL or repo, the cache folder looked in and what to do (:func:`url_download_error`,
:func:`hub_download_error`; :func:`explain_download_errors` for what timm fetches itself).
Segmentation and video backbones, the pretrained tags (``gczoo.models.tags``) and
``gczoo.models.create_model`` all fetch through here.
"""
import contextlib
import errno
import os
import pickle
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union
from urllib.parse import urlparse

import torch

from gczoo.errors import PretrainedWeightsError, UsageError
from gczoo.files import check_output_dir

from .weights import WEIGHTS_NAME, unpickling_refused

__all__ = [
    'WEIGHTS_NAME', 'download_error_types', 'is_download_error', 'url_cache_dir', 'url_file_name', 'url_cached_path',
    'url_download_error', 'fetch_url', 'hub_cache_dir', 'hub_cached_file', 'hub_not_cached', 'hub_download_error',
    'fetch_from_hub', 'explain_download_errors',
]

PathLike = Union[str, os.PathLike]


def download_error_types() -> tuple:
    """The exception types a failed download raises (huggingface_hub's and the OS's)."""
    types: list = [OSError]  # offline cache misses, URLError/HTTPError and connection failures are OSErrors
    try:
        from huggingface_hub import errors as hf_errors
        types += [hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    return tuple(types)


def is_download_error(error: BaseException) -> bool:
    """Whether ``error`` is a failed download (see :func:`download_error_types`)."""
    return isinstance(error, download_error_types())


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'.rstrip(': ')


# ----------------------------------------------------------------------------------------------
# URLs: torch's checkpoint cache


def url_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The folder a URL's weights are cached in: ``cache_dir`` or ``torch.hub.get_dir()/checkpoints``."""
    return Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / 'checkpoints'


def url_file_name(url: str) -> str:
    """The cached file's name: the basename of the URL's path (as torch and timm name it)."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f'the weights URL {url!r} names no file (its path ends in "/")')
    if name in ('.', '..'):  # the cache folder itself or its parent: never a weights file
        raise ValueError(f'the weights URL {url!r} names no file (its path ends in {name!r}); give the URL of the '
                         f'weights file itself')
    return name


def url_cached_path(url: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the weights of ``url`` are (or would be) in the cache."""
    return url_cache_dir(cache_dir) / url_file_name(url)


def url_download_error(url: str, *, what: str, cache_dir: Optional[PathLike], cause: BaseException,
                       hint: str = '') -> PretrainedWeightsError:
    """The one explanation of weights at a URL that are neither cached nor downloadable."""
    path = url_cached_path(url, cache_dir)
    also = f'; or {hint}' if hint else ''
    return PretrainedWeightsError(
        f'Could not load {what}: the weights are the file {url}, which is not in torch\'s checkpoint cache '
        f'{str(path.parent)!r} and could not be downloaded ({_reason(cause)}). Download it where the URL is '
        f'reachable and put it there under the same name ({str(path)!r}; TORCH_HOME moves the cache){also}.')


def _check_cache_folder(path: Path) -> None:
    """Where ``path`` is to be downloaded must be a writable folder with no folder at ``path``: an
    ``OSError`` naming it and what to do (not a download error advising to put the file there)."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f'{os.strerror(errno.EISDIR)}: the weights cache holds a folder '
                                              f'{str(path)!r} where the weights file should be; remove it')
    check_output_dir(path.parent, flag='the weights cache folder (TORCH_HOME or cache_dir)')


def fetch_url(url: str, *, what: str, cache_dir: Optional[PathLike] = None, hint: str = '') -> Path:
    """The local file for a weights URL: its cached copy (:func:`url_cached_path`), downloaded there when
    absent; ``PretrainedWeightsError`` naming ``what`` (as the message shows it, e.g. ``"pretrained weights
    for 'resnet50_gc.mmdet_coco'"``),
    the URL and where to put the file by hand when it cannot be had. ``hint``: another way out, added
    to the message (e.g. ``'pass pretrained_cfg_overlay=dict(file=...)'``)."""
    path = url_cached_path(url, cache_dir)
    if path.is_file():
        return path
    _check_cache_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # torch writes a temporary file next to `path` and moves it into place when complete
        torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=False)
    except (OSError, ValueError) as e:  # URLError/HTTPError are OSErrors; a malformed URL is a ValueError
        raise url_download_error(url, what=what, cache_dir=cache_dir, cause=e, hint=hint) from e
    return path


# ----------------------------------------------------------------------------------------------
# Hub repos: huggingface_hub's cache


def hub_cache_dir(cache_dir: Optional[PathLike] = None) -> str:
    """The Hub cache folder huggingface_hub reads (``cache_dir``, else ``HF_HUB_CACHE``), absolute."""
    from huggingface_hub import constants
    return os.path.abspath(str(cache_dir or constants.HF_HUB_CACHE))


def hub_cached_file(repo_id: str, filename: str, cache_dir: Optional[PathLike] = None) -> Optional[str]:
    """The Hub cache's copy of ``filename`` of ``repo_id`` (``ORG/REPO[@revision]``), None if not cached."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import hf_split
    repo, revision = hf_split(repo_id)
    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(cache_dir), revision=revision)
    return found if isinstance(found, str) else None


def hub_not_cached(repo_id: str, files: Sequence[str], cache_dir: Optional[PathLike] = None) -> List[str]:
    """Which of a Hub repo's ``files`` are not in the Hub cache (``repo_id`` may end in ``@revision``)."""
    try:
        return [f for f in files if hub_cached_file(repo_id, f, cache_dir) is None]
    except ValueError:  # an invalid repo id: the download error says so
        return list(files)


def hub_download_error(repo_id: str, files: Sequence[str], cache_dir: Optional[PathLike], cause: BaseException,
                       what: str) -> PretrainedWeightsError:
    """The one explanation of a failed Hub download: what was looked for, where, and what to do (``what``:
    what could not be loaded, as the message shows it, e.g. ``"'hf-hub:ORG/REPO'"``)."""
    from huggingface_hub import constants
    from timm.models._hub import hf_split
    repo, revision = hf_split(repo_id)
    mode = 'HF_HUB_OFFLINE=1, so nothing was downloaded' if constants.HF_HUB_OFFLINE else 'online; the download failed'
    not_cached = hub_not_cached(repo_id, files, cache_dir)
    return PretrainedWeightsError(
        f'Could not load {what}: looked for {", ".join(files)} of the Hub repo {repo!r} '
        f'(revision {revision or "main"}) in the Hub cache {hub_cache_dir(cache_dir)!r} ({mode}); not in the cache: '
        f'{", ".join(not_cached) or "none"} ({_reason(cause)}). What to do: online, check the repo id and your access '
        f'(`hf auth login` or HF_TOKEN for private repos); offline, fill the cache on a connected machine '
        f'(`hf download {repo}` with the same HF_HOME, then copy HF_HOME); or load a copied folder '
        f'directly with timm.create_model("local-dir:DIR", pretrained=True) or '
        f'pretrained_cfg_overlay=dict(file="{WEIGHTS_NAME}"); '
        f'or train your own weights with scripts/train.sh.')


def fetch_from_hub(repo_id: str, filename: str = WEIGHTS_NAME, *, what: str,
                   cache_dir: Optional[PathLike] = None) -> Path:
    """The local file for ``filename`` of the Hub repo ``repo_id`` (``ORG/REPO[@revision]``), from the Hub
    cache or downloaded into it; :func:`hub_download_error` (naming ``what``) when it cannot be had."""
    from huggingface_hub import hf_hub_download
    from timm.models._hub import hf_split
    if not isinstance(filename, str) or not filename.strip():
        raise UsageError(f'Could not load {what}: no file of the Hub repo {repo_id!r} was named (got {filename!r})')
    repo, revision = hf_split(repo_id)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir))
    except download_error_types() as e:
        raise hub_download_error(repo_id, [filename], cache_dir, e, what) from e
    except ValueError as e:  # huggingface_hub's HFValidationError: an id or file name it cannot look up
        raise UsageError(f'Could not load {what}: {repo_id!r} / {filename!r} is no Hub repo id and file name '
                         f'(ORG/REPO[@revision] and a path in it): {_reason(e)}') from e


# ----------------------------------------------------------------------------------------------
# weights timm fetches itself


@contextlib.contextmanager
def explain_download_errors(variant: str, enabled: bool = True) -> Iterator[None]:
    """Turn a failed weight download into one ``PretrainedWeightsError`` saying where to get weights, and a
    pickle timm refused to read into gczoo's ``CheckpointError`` (which never offers to unpickle it)."""
    if not enabled:
        yield
        return
    try:
        yield
    except RuntimeError as e:  # timm read the file itself and weights_only refused it
        if not isinstance(e.__cause__, pickle.UnpicklingError):
            raise
        raise unpickling_refused(e.__cause__, source=f'the pretrained weights of {variant!r}') from e
    except download_error_types() as e:
        raise PretrainedWeightsError(
            f'Could not load pretrained weights for {variant!r} ({_reason(e)}). '
            f'If you are offline, set HF_HUB_OFFLINE=1 with the weights in your Hub cache (HF_HOME), '
            f'load a folder with timm.create_model("local-dir:DIR"), pass '
            f'pretrained_cfg_overlay=dict(file="model.safetensors"), or train weights with scripts/train.sh.'
        ) from e
