"""``create_model``: a model from its name and weights, the one way every gczoo job builds one.

It is ``timm.create_model`` (same arguments, same model; ``checkpoint_path=`` as timm's) with gczoo's
checks around it:

* the name is resolved once (``gczoo.models.registry``): an unknown name is one ``UsageError``;
* ``local-dir:DIR`` with ``pretrained=True``: the folder is checked first
  (``gczoo.models.hub_folder.check_hub_folder``: files, architecture, keys and shapes, no pickles);
* ``pretrained_cfg_overlay=dict(file=...)``: the file must exist, be safetensors (a ``.pth`` only with
  ``allow_pickle=True``, read with ``weights_only=True``) and fit the model;
* ``hf-hub:ORG/REPO`` (and zoo names whose tag is published): only ``model.safetensors`` is downloaded
  (never a pickled ``pytorch_model.bin``) unless ``allow_pickle=True``; a failed download of
  ``config.json`` or the weights becomes one ``PretrainedWeightsError`` naming the repo, the files,
  the cache folder and what to do (``gczoo.models.sources``). ``timm.create_model('hf-hub:...')``
  downloads ``config.json`` before any gczoo code runs, so only this wrapper can explain that step;
* ``checkpoint_path``: a training checkpoint or weights file, read by ``gczoo.models.weights``
  (safetensors or ``torch.load(weights_only=True)``; EMA weights first with ``use_ema``, as timm's
  ``load_checkpoint``), ``num_classes`` taken from its classifier unless given, every key, shape,
  dtype and value checked before anything is loaded;
* a config naming an unregistered architecture, or corrupt weights: ``CheckpointError``.

Evaluation, visualisation, training, publishing and export all call it.
"""
import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import timm
import torch.nn as nn
from timm.models import parse_model_name, split_model_name_tag
from timm.models._builder import resolve_pretrained_cfg

from gczoo.errors import CheckpointError, PretrainedWeightsError

from .hub_folder import CONFIG_NAME, LOAD_ONLY_KWARGS, check_hub_folder, read_config, read_weights_shapes
from .registry import check_architecture, resolve_model_name
from .sources import hub_cached_file, hub_download_error, is_download_error, url_cached_path
from .weights import (
    WEIGHTS_NAME, StateDict, check_state_dict, classifier_names, compare_state_dicts, first_conv_names, format_keys,
    load_weights, pickle_refusal, read_state_dict,
)

__all__ = ['create_model']

PathLike = Union[str, os.PathLike]


def _check_source(model_name: str, source: Optional[str], model_id: str, pretrained: bool, allow_pickle: bool) -> None:
    if source == 'local-dir':
        folder = Path(model_id)
        if pretrained:
            check_hub_folder(folder, allow_pickle=allow_pickle)
        else:
            check_architecture(read_config(folder)['architecture'], repr(str(folder / CONFIG_NAME)))
    else:
        resolve_model_name(model_name, what='model_name')


def _check_overlay_file(model_name: str, file: Path, kwargs: Dict[str, Any], allow_pickle: bool) -> None:
    """``pretrained_cfg_overlay=dict(file=...)``: exists, safetensors (or allowed pickle), fits the model."""
    if file.is_dir():
        raise CheckpointError(f'pretrained_cfg_overlay file {str(file)!r} is a folder; use "local-dir:{file}"')
    if file.suffix == '.safetensors':
        shapes = read_weights_shapes(file)
        build_kwargs = {k: v for k, v in kwargs.items() if k not in LOAD_ONLY_KWARGS}
        meta_model = timm.create_model(model_name, pretrained=False, device='meta', **build_kwargs)
        # timm drops the classifier itself when num_classes differs from the file's cfg
        tolerated = tuple(f'{c}.' for c in classifier_names(meta_model))
        if build_kwargs.get('in_chans', 3) != 3:  # timm adapts the first conv to in_chans itself
            tolerated += tuple(f'{c}.' for c in first_conv_names(meta_model))
        check_state_dict(meta_model, shapes, repr(str(file)), tolerate_prefixes=tolerated)
    elif not file.is_file():
        raise CheckpointError(f'pretrained_cfg_overlay file {str(file)!r} does not exist')
    elif not allow_pickle:
        raise pickle_refusal(file)


def _hub_source(source: Optional[str], model_id: str, pretrained: bool, overlay: Dict[str, Any],
                kwargs: Dict[str, Any]) -> Tuple[Optional[str], List[str]]:
    """The Hub repo and files timm will download (None: not from the Hub)."""
    if source == 'hf-hub':
        return model_id, [CONFIG_NAME] + ([WEIGHTS_NAME] if pretrained else [])
    if pretrained and source is None and not overlay.get('file'):
        # the registry's cfg (or the one passed) says where timm will download from
        architecture, tag = split_model_name_tag(model_id)
        cfg = resolve_pretrained_cfg(architecture, pretrained_cfg=kwargs.get('pretrained_cfg') or tag or None,
                                     pretrained_cfg_overlay=overlay)
        if cfg.hf_hub_id and not cfg.file and not cfg.state_dict and _timm_reads_hub(cfg.url):
            return cfg.hf_hub_id, [overlay.get('hf_hub_filename') or cfg.hf_hub_filename or WEIGHTS_NAME]
    return None, []


def _timm_reads_hub(url: Optional[str]) -> bool:
    """Whether timm loads a cfg with both ``url`` and ``hf_hub_id`` (most of timm's own) from the Hub: it
    does unless ``TIMM_USE_OLD_CACHE=1`` and the URL's file is in torch's checkpoint cache (timm's
    ``_resolve_pretrained_source``)."""
    if not url or int(os.environ.get('TIMM_USE_OLD_CACHE', 0) or 0) <= 0:
        return True
    return not url_cached_path(url).is_file()


def _pin_safetensors(overlay: Dict[str, Any]) -> None:
    filename = overlay.setdefault('hf_hub_filename', WEIGHTS_NAME)
    if not filename.endswith('.safetensors'):
        raise CheckpointError(
            f'hf_hub_filename {filename!r} is not a safetensors file; gczoo does not load pickled weights '
            f'by default (pass allow_pickle=True to read it with torch.load(weights_only=True))')


def _unreadable_cached(hub_repo: Optional[str], hub_files: List[str], cache_dir: Optional[PathLike]) -> str:
    cached = hub_cached_file(hub_repo, hub_files[-1], cache_dir) if hub_repo is not None else None
    return (f' (the cached file {cached!r}; delete it, or run `hf cache delete`, and download again)'
            if cached is not None else '')


@contextlib.contextmanager
def _explained(model_name: str, source: Optional[str], hub_repo: Optional[str], hub_files: List[str],
               cache_dir: Optional[PathLike]) -> Iterator[None]:
    """timm's loading errors as gczoo's: what failed, where, and what to do."""
    from safetensors import SafetensorError
    try:
        yield
    except PretrainedWeightsError as e:
        # the zoo's entrypoint explains download errors in general terms; name the repo and cache here
        if hub_repo is not None and e.__cause__ is not None and is_download_error(e.__cause__):
            raise hub_download_error(hub_repo, hub_files, cache_dir, e.__cause__, repr(model_name)) from e.__cause__
        raise
    except SafetensorError as e:
        raise CheckpointError(f'the weights of {model_name!r} are not a readable safetensors file'
                              f'{_unreadable_cached(hub_repo, hub_files, cache_dir)}: {e}') from e
    except RuntimeError as e:
        message = str(e)
        if message.startswith('Unknown model'):
            architecture = message[len('Unknown model'):].strip(' ()')
            try:
                check_architecture(architecture, f'the {CONFIG_NAME} of {model_name!r}' if source else repr(model_name))
            except CheckpointError as unknown:
                raise unknown from e
        if 'Error(s) in loading state_dict' in message:
            raise CheckpointError(f'the weights of {model_name!r} do not fit the model: {message}') from e
        raise
    except Exception as e:
        if hub_repo is not None and is_download_error(e):
            raise hub_download_error(hub_repo, hub_files, cache_dir, e, repr(model_name)) from e
        raise


def _checkpoint_classes(model_name: str, state: StateDict, kwargs: Dict[str, Any]) -> Optional[int]:
    """The checkpoint classifier's size (None: it has none, the model's default stands)."""
    build_kwargs = {k: v for k, v in kwargs.items() if k not in LOAD_ONLY_KWARGS}
    meta = timm.create_model(model_name, pretrained=False, device='meta', **build_kwargs)
    weight = state.get(f'{classifier_names(meta)[0]}.weight') if classifier_names(meta) else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def create_model(
        model_name: str,
        pretrained: bool = False,
        *,
        checkpoint_path: Optional[PathLike] = None,
        use_ema: bool = True,
        checkpoint_what: str = 'checkpoint_path',
        allow_pickle: bool = False,
        allow_non_finite: bool = False,
        **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with gczoo's checks around it; see the module docstring.

    ``checkpoint_path`` (as timm's): weights loaded after the model is built, through gczoo's one
    loading path; ``use_ema`` prefers their EMA copy (timm's ``load_checkpoint`` default);
    ``checkpoint_what`` names them in messages (a job's flag, e.g. ``'--checkpoint'``). An empty
    ``checkpoint_path`` (``''``, timm's ``--initial-checkpoint`` default) is no checkpoint, as in timm.
    """
    if checkpoint_path == '':  # timm: `if checkpoint_path:`
        checkpoint_path = None
    if not isinstance(model_name, str):
        raise TypeError(f'model_name must be a str, got {type(model_name).__name__}')
    source, model_id = parse_model_name(model_name)
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    cache_dir = kwargs.get('cache_dir')
    _check_source(model_name, source, model_id, pretrained, allow_pickle)
    if pretrained and overlay.get('file'):
        _check_overlay_file(model_name, Path(overlay['file']), kwargs, allow_pickle)
    hub_repo, hub_files = _hub_source(source, model_id, pretrained, overlay, kwargs)
    if pretrained and hub_repo is not None and not allow_pickle:
        _pin_safetensors(overlay)
    state = None
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path, use_ema=use_ema)
        if kwargs.get('num_classes') is None:
            kwargs['num_classes'] = _checkpoint_classes(model_name, state, kwargs)
            if kwargs['num_classes'] is None:
                del kwargs['num_classes']
    with _explained(model_name, source, hub_repo, hub_files, cache_dir):
        model = timm.create_model(model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay or None, **kwargs)
        if pretrained and not allow_non_finite:  # whatever timm loaded, from wherever: finite or refused
            check_state_dict(model, model.state_dict(), f'the weights of {model_name!r}', strict=False)
    if state is not None:
        what = f'{checkpoint_what} {str(checkpoint_path)!r}'
        _check_fits(model, state, what, model_name)
        load_weights(model, state, what=what, allow_non_finite=allow_non_finite)
    return model


def _check_fits(model: nn.Module, state: StateDict, what: str, model_name: str) -> None:
    """One short ``CheckpointError`` (counts and a few keys per kind) if a checkpoint is of another model:
    the full list is dozens of keys, and the command line shows one line."""
    mismatch = compare_state_dicts(model.state_dict(), state)
    if not mismatch:
        return
    parts = [f'{len(keys)} {kind} ({format_keys(keys, 2)})' for kind, keys in (
        ('missing keys', mismatch.missing), ('unexpected keys', mismatch.unexpected),
        ('tensors of another shape', mismatch.mis_shaped)) if keys]
    heads = tuple(f'{c}.' for c in classifier_names(model))
    if mismatch.missing and not mismatch.unexpected and not mismatch.mis_shaped and heads and all(
            key.startswith(heads) for key in mismatch.missing):  # saved without its classifier
        parts.append('the checkpoint has no classifier: it was saved with num_classes=0, pass that')
    raise CheckpointError(f'{what} does not fit {model_name!r}: {"; ".join(parts)}. Give the model (and '
                          f'num_classes) it was saved from')
