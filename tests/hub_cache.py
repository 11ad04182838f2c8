"""Fill a Hugging Face Hub cache the way huggingface_hub itself fills it, without the network.

Tests that load weights offline (``HF_HUB_OFFLINE``) need a cache in huggingface_hub's own layout
(``models--ORG--NAME/{blobs,snapshots,refs}``). Rather than re-creating that private layout by hand,
``fill_hub_cache`` serves the files from a loopback-only HTTP server (127.0.0.1, a free port, one
thread, stopped before it returns) that answers the two requests ``hf_hub_download`` makes per file
-- ``HEAD`` then ``GET`` on ``/{repo_id}/resolve/{revision}/{filename}`` -- with the headers the Hub
sends (huggingface_hub's ``get_hf_file_metadata`` reads them):

* ``X-Repo-Commit``: the commit the files belong to (required, else ``FileMetadataError``);
* ``ETag``: the git blob sha1 of a regular file, or for an LFS file (``*.safetensors``, pickles, any
  file over 10 MB, as the Hub's default ``.gitattributes``) ``X-Linked-Etag`` = the content's sha256
  and ``X-Linked-Size``: the blob's name in the cache;
* ``Content-Length``: the size, checked against the bytes received.

``huggingface_hub.hf_hub_download(..., endpoint='http://127.0.0.1:PORT', token=False)`` then writes
the cache itself, so the layout is exactly the one its readers (``try_to_load_from_cache``,
``scan_cache_dir``, timm's ``hf-hub:`` loader with ``HF_HUB_OFFLINE=1``) expect.
"""
import hashlib
import http.server
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Tuple, Union
from urllib.parse import urlsplit

__all__ = ['fill_hub_cache', 'loopback_server']

FileSource = Union[bytes, str, os.PathLike]

_LFS_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.ckpt', '.pkl', '.tar')
_LFS_MIN_SIZE = 10 * 1024 * 1024
_COMMIT_HASH = re.compile(r'^[0-9a-f]{40}$')


def _etag_headers(name: str, data: bytes) -> Dict[str, str]:
    """What the Hub answers about one file's identity (the cache names the blob after the etag)."""
    from huggingface_hub.utils.sha import git_hash
    if name.endswith(_LFS_SUFFIXES) or len(data) > _LFS_MIN_SIZE:
        sha256 = hashlib.sha256(data).hexdigest()
        return {'ETag': f'"{sha256}"', 'X-Linked-Etag': f'"{sha256}"', 'X-Linked-Size': str(len(data))}
    return {'ETag': f'"{git_hash(data)}"'}


def _read(source: FileSource) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    return Path(source).read_bytes()


@contextmanager
def _loopback_hub(routes: Mapping[str, Tuple[Dict[str, str], bytes]]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering HEAD/GET for ``routes`` (URL path -> (headers, body))."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                self.send_response(404)
                self.send_header('X-Error-Code', 'EntryNotFound')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            headers, body = route
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
            self._answer(with_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(with_body=True)

        def log_message(self, format: str, *args) -> None:  # keep pytest's output clean
            pass

    with loopback_server(Handler) as base:
        yield base


@contextmanager
def loopback_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 at a free port by a thread, stopped on exit; yields the base URL."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, name='loopback-server', daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fill_hub_cache(
        cache_dir: Union[str, os.PathLike],
        repo_id: str,
        files: Mapping[str, FileSource],
        revision: str = 'main',
) -> Path:
    """Download ``files`` (repo file name -> bytes or a local path) of the model repo ``repo_id`` at
    ``revision`` into the Hub cache ``cache_dir`` with ``huggingface_hub.hf_hub_download``, served from a
    loopback server; returns the snapshot folder (``.../snapshots/<commit>``).

    The commit is ``revision`` if that is a 40-character commit hash, else derived from the files (the
    same files give the same commit). Works while ``HF_HUB_OFFLINE`` is on: it is lifted for the
    download only and restored after.
    """
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name

    if not files:
        raise ValueError('files must name at least one file')
    contents = {name: _read(source) for name, source in files.items()}
    etags = {name: _etag_headers(name, data) for name, data in contents.items()}
    commit = revision if _COMMIT_HASH.match(revision) else hashlib.sha1(''.join(
        f'{name}\0{etags[name]["ETag"]}\n' for name in sorted(contents)).encode()).hexdigest()

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False  # read at request time by huggingface_hub's HTTP client
    try:
        # the route paths do not depend on the port: build them against a placeholder endpoint first
        placeholder = 'http://127.0.0.1'
        routes = {
            urlsplit(hf_hub_url(repo_id, name, revision=revision, endpoint=placeholder)).path:
                ({'X-Repo-Commit': commit, **etags[name]}, data)
            for name, data in contents.items()
        }
        with _loopback_hub(routes) as endpoint:
            for name in contents:
                hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache_dir), endpoint=endpoint,
                                token=False)
    finally:
        constants.HF_HUB_OFFLINE = offline
    return Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type='model') / 'snapshots' / commit
