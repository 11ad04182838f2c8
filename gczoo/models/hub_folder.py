"""Weights in the Hugging Face Hub's layout: write, check and load a folder, with gczoo's checks.

A Hub repository of gczoo weights holds exactly three files:

* ``model.safetensors`` -- the state dict (never a pickle: no ``.bin``/``.pth``);
* ``config.json`` -- timm's format (``architecture``, ``num_classes``, ``num_features``,
  ``global_pool``, ``label_names``, ``model_args``, ``pretrained_cfg`` with the data config the
  weights were trained and evaluated with, and ``hf_hub_filename: model.safetensors`` so timm's
  Hub loader never falls back to a pickled ``pytorch_model.bin``);
* ``README.md`` -- the model card (written by ``gczoo.hub``'s publish flow).

Every place a user keeps weights loads through timm itself:
``timm.create_model('hf-hub:ORG/REPO', pretrained=True)`` (the Hub or, with ``HF_HUB_OFFLINE=1``,
the Hub cache under ``HF_HOME``), ``'local-dir:DIR'``, ``pretrained_cfg_overlay=dict(file=...)``,
a zoo name with ``pretrained=True``, and ``torch.hub.load``. ``gczoo.models.create_model``
(``gczoo.models.factory``) is the same call with gczoo's checks around it, using
:func:`check_hub_folder` here. Reading and checking the tensors is ``gczoo.models.weights``'s job.

It sits in ``models/`` (not beside the publish flow in ``gczoo.hub``) because training, evaluation
and visualisation load and save such folders, and jobs only import downwards.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from gczoo.errors import CheckpointError
from gczoo.files import staged_folder, umask_mode

from .gczoo import ZOO_MODELS
from .registry import check_architecture
from .weights import PICKLE_SUFFIXES, WEIGHTS_NAME, check_state_dict, load_weights, read_safetensors_shapes

__all__ = [
    'WEIGHTS_NAME', 'CONFIG_NAME', 'save_pretrained', 'export_metadata', 'file_name', 'read_weights_shapes',
    'verify_weights', 'load_pretrained_weights', 'read_config', 'check_hub_folder', 'LOAD_ONLY_KWARGS',
]

PathLike = Union[str, os.PathLike]
CONFIG_NAME = 'config.json'

# factory kwargs that say how weights were obtained, not what the architecture is: a config that
# kept them would make `local-dir:`/`hf-hub:` loading pass them again (pretrained_backbone together
# with pretrained=True is refused by the zoo's entrypoints)
_NON_ARCH_ARGS = ('pretrained_backbone', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'features_only',
                  'out_indices', 'feature_cls', 'checkpoint_path', 'pretrained_model_args')
# kwargs of timm.create_model that are about loading or wrapping, not about building the weights' model
LOAD_ONLY_KWARGS = ('pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir', 'features_only', 'out_indices',
                     'feature_cls', 'scriptable', 'exportable', 'no_jit', 'device', 'dtype')


# ----------------------------------------------------------------------------------------------
# writing


def save_pretrained(
        model: nn.Module,
        out_dir: PathLike,
        *,
        data_config: Optional[Dict[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
        tag: Optional[str] = None,
        origin: Optional[str] = None,
        license: Optional[str] = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` in timm's Hub layout (``local-dir:`` loads it).

    Uses timm's own ``save_for_hf`` (safetensors only, no pickle), then fixes up the config:

    * ``model_args`` keeps only architecture arguments and never ``num_classes`` (it is the config's
      top-level ``num_classes``; transformers' ``TimmWrapper`` passes ``num_classes=num_labels``
      together with ``**model_args``, so a copy there fails with "multiple values");
    * ``pretrained_cfg`` describes the weights in this folder, not the tag the model was built from:
      the source's ``tag``, ``description``, ``notes``, ``license`` and ``origin_url`` are dropped;
      ``tag`` (the recipe), ``origin`` (one line on where these weights come from, e.g. "trained
      from scratch by gczoo train" or "fine-tuned from resnet50_gc.a1_in1k_identity") and
      ``license`` set them when given;
    * ``pretrained_cfg.hf_hub_filename`` pins the safetensors file for Hub loading.

    The files are written aside and moved in when complete (``gczoo.files.staged_folder``, merged into an
    existing folder): a failure or crash leaves ``out_dir`` as it was, never half-written.

    A DDP-wrapped, ``torch.compile``'d or EMA-wrapped model is unwrapped first (``timm.utils.unwrap_model``).
    """
    from timm.models import save_for_hf
    from timm.utils import unwrap_model
    model = unwrap_model(model)  # DDP's .module, torch.compile's _orig_mod, timm's ModelEma: the model itself
    if not hasattr(model, 'pretrained_cfg'):
        raise TypeError(f'model must be a timm model (with a pretrained_cfg), got {type(model).__name__}')
    if not hasattr(model, 'num_classes'):  # timm's features_only wrappers (FeatureListNet, FeatureHooks, ...)
        raise ValueError(f'cannot save a {type(model).__name__} (a features_only model) in timm\'s Hub layout: save '
                         f'the classification model (num_classes=0 for no head) and build the features_only model '
                         f'from the folder: timm.create_model("local-dir:DIR", pretrained=True, features_only=True)')
    out = Path(out_dir)
    model_config: Dict[str, Any] = {'num_classes': model.num_classes}
    if label_names is not None:
        label_names = list(label_names)
        if len(label_names) != model.num_classes:
            raise ValueError(f'label_names has {len(label_names)} names but the model has {model.num_classes} classes')
        model_config['label_names'] = label_names
    model_args = {k: v for k, v in getattr(model, '_model_args', {}).items() if k not in _NON_ARCH_ARGS}
    with staged_folder(out, merge=True) as staging:  # an interrupted save leaves the folder as it was
        save_for_hf(model, str(staging), model_config=model_config, model_args=model_args,
                    safe_serialization=True, data_config=data_config)
        _fix_config(staging / CONFIG_NAME, tag=tag, origin=origin, license=license)
        for name in (WEIGHTS_NAME, CONFIG_NAME):  # safetensors writes 0600 whatever the umask
            os.chmod(staging / name, umask_mode())
    return out


def _fix_config(config_path: Path, *, tag: Optional[str], origin: Optional[str], license: Optional[str]) -> None:
    """save_for_hf's config.json made what ``save_pretrained`` promises (see its docstring)."""
    config = json.loads(config_path.read_text())
    # save_for_hf starts from the model's recorded factory kwargs, so drop the non-architecture ones here
    config['model_args'] = {k: v for k, v in config.get('model_args', {}).items() if k not in _NON_ARCH_ARGS}
    config['model_args'].pop('num_classes', None)
    config['pretrained_cfg'] = _describe_weights(config['pretrained_cfg'], config['architecture'], tag=tag,
                                                 origin=origin, license=license)
    config['pretrained_cfg']['hf_hub_filename'] = WEIGHTS_NAME
    _match_channels(config['pretrained_cfg'])
    config_path.write_text(json.dumps(config, indent=2))


# the pretrained_cfg fields that describe a tag's source weights (timm's filter_pretrained_cfg already drops
# the source's url/file/hf_hub_id): an export of other weights must not carry them
_SOURCE_DESCRIPTION_KEYS = ('tag', 'description', 'notes', 'license', 'origin_url')


def _describe_weights(cfg: Dict[str, Any], architecture: str, *, tag: Optional[str], origin: Optional[str],
                      license: Optional[str]) -> Dict[str, Any]:
    """``cfg`` without the source tag's description, with the exported weights' own (see ``save_pretrained``)."""
    cfg = {k: v for k, v in cfg.items() if k not in _SOURCE_DESCRIPTION_KEYS}
    if tag is not None:
        cfg['tag'] = tag
    zoo = ZOO_MODELS.get(architecture)
    parts = [zoo.summary] if zoo is not None else []
    parts += [origin] if origin else []
    if parts:
        cfg['description'] = '; '.join(parts)
    if origin:
        cfg['notes'] = [origin]
    if license is not None:
        cfg['license'] = license
    return cfg


def _match_channels(cfg: Dict[str, Any]) -> None:
    """mean/std with one value per input channel (an ``in_chans=1`` model built from an RGB tag keeps the
    tag's three): their average, the value timm's ``resolve_data_config`` would use after a warning."""
    channels = (cfg.get('input_size') or [None])[0]
    for key in ('mean', 'std'):
        value = cfg.get(key)
        if isinstance(channels, int) and isinstance(value, (list, tuple)) and len(value) not in (1, channels):
            cfg[key] = [sum(value) / len(value)] * channels


def file_name(value: Any) -> str:
    """A local file's name without its folder: a public config never shows where it sat on the training machine."""
    return Path(str(value)).name or str(value)


def _timm_tag(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(architecture.tag, licence)`` of a timm pretrained name (the default tag for a bare architecture)."""
    import timm
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except (RuntimeError, ValueError):
        cfg = None
    if cfg is None:
        return None
    return (f'{name.partition(".")[0]}.{cfg.tag}' if cfg.tag else name), cfg.license


def export_metadata(args: Mapping[str, Any], pretrained_cfg: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What an export of a run's weights says about them (``save_pretrained``'s ``origin`` and ``license``),
    from the run's args (``vars(args)``, or an ``args.yaml`` read back) and the model's ``pretrained_cfg``:
    trained from scratch (no source tag, no licence), fine-tuned from a checkpoint or weights file (named),
    or fine-tuned from a pretrained tag (named; its licence carries over)."""
    model = str(args.get('model') or '')
    arch, _, name_tag = model.partition('.')
    license = None
    if args.get('initial_checkpoint'):
        start = f'fine-tuned from the checkpoint {file_name(args["initial_checkpoint"])}'
    elif args.get('pretrained_path'):
        start = f'fine-tuned from the weights file {file_name(args["pretrained_path"])}'
    elif args.get('pretrained'):
        tag = name_tag or (pretrained_cfg or {}).get('tag')
        start = f'fine-tuned from {arch}.{tag}' if tag else f"fine-tuned from {arch}'s pretrained weights"
        license = (pretrained_cfg or {}).get('license')
    elif args.get('pretrained_backbone'):
        backbone = str(args['pretrained_backbone'])
        source = _timm_tag(backbone)
        if source is not None:  # a timm tag: named in full, and its licence carries over as a tag's does
            backbone, license = source
        backbone = file_name(backbone) if os.sep in backbone or backbone.endswith(('.safetensors', '.pth')) \
            else backbone
        start = f'trained from a backbone transplanted from {backbone}'
    else:
        start = 'trained from scratch'
    return {'origin': f'{start} by gczoo train', 'license': license}


# ----------------------------------------------------------------------------------------------
# checking and loading


def read_weights_shapes(path: PathLike) -> Dict[str, Tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` file, from its header (``CheckpointError`` if unreadable)."""
    return read_safetensors_shapes(path)


def verify_weights(
        model: nn.Module,
        shapes: Mapping[str, Union[Tuple[int, ...], torch.Tensor]],
        source: str,
        *,
        strict: bool = True,
        tolerate_prefixes: Sequence[str] = (),
) -> None:
    """Check that ``shapes`` (name -> shape or tensor) fit ``model`` before loading (``check_state_dict``)."""
    check_state_dict(model, shapes, source, strict=strict, tolerate_prefixes=tolerate_prefixes)


def _find_weights_file(folder: Path) -> Path:
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        return weights
    others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    pickles = [n for n in others if n.endswith(PICKLE_SUFFIXES)]
    hint = (f'; it holds pickled weights ({", ".join(pickles)}), which gczoo does not load by default '
            f'(pass allow_pickle=True, or convert with `gczoo publish FILE --model NAME --dry-run --local-dir DIR`)'
            if pickles else f'; it holds: {", ".join(others) or "nothing"}')
    raise CheckpointError(f'no {WEIGHTS_NAME} in {str(folder)!r}{hint}')


def load_pretrained_weights(
        model: nn.Module,
        path_or_dir: Union[PathLike, Mapping[str, torch.Tensor]],
        *,
        allow_pickle: bool = False,
        strict: bool = True,
        allow_non_finite: bool = False,
) -> nn.Module:
    """Load weights into ``model`` after checking every key, shape, dtype and value; returns ``model``.

    ``path_or_dir``: a Hub-layout folder (its ``model.safetensors``), a ``.safetensors`` file, a
    state dict, or -- only with ``allow_pickle=True`` -- a ``.pth``/``.bin`` file, or a folder holding
    only such a file, read with ``torch.load(weights_only=True)``. Nothing is loaded unless everything
    fits (``strict=False`` allows missing and unexpected keys, never a shape mismatch).
    """
    if not isinstance(path_or_dir, Mapping):
        path = Path(path_or_dir)
        if path.is_dir():
            try:
                path = _find_weights_file(path)
            except CheckpointError:
                pickles = sorted(p for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
                if not (allow_pickle and pickles):
                    raise
                path = pickles[0]
        path_or_dir = path
    load_weights(model, path_or_dir, what='weights', strict=strict, allow_pickle=allow_pickle,
                 allow_non_finite=allow_non_finite)
    return model


def _read_config(folder: Path) -> Dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f'weights folder {str(folder)!r} does not exist or is not a folder')
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        present = ', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'
        raise CheckpointError(
            f'no {CONFIG_NAME} in {str(folder)!r} (it holds: {present}); a Hub-layout folder needs '
            f'{WEIGHTS_NAME} and {CONFIG_NAME} as written by gczoo.models.save_pretrained or `gczoo publish`')
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{str(config_path)!r} is not valid JSON: {e}') from e
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise CheckpointError(f'{str(config_path)!r} has no "architecture" (a timm model name); is it a timm config?')
    return config


def read_config(folder: PathLike) -> Dict[str, Any]:
    """A Hub-layout folder's parsed ``config.json`` (``CheckpointError`` naming the fix if absent or invalid)."""
    return _read_config(Path(folder))


def check_hub_folder(folder: PathLike, *, allow_pickle: bool = False) -> Dict[str, Any]:
    """Check a Hub-layout folder before loading or uploading it; returns its parsed ``config.json``.

    Checks: ``config.json`` exists, parses and names a registered architecture; no pickled weights
    sit next to it (unless ``allow_pickle``); ``model.safetensors`` exists, is complete, and its keys
    and shapes are exactly those of the model the config describes (built on the meta device, so
    this costs no memory). Each failure is a ``CheckpointError`` naming the file and the fix.
    """
    import timm
    folder = Path(folder)
    config = _read_config(folder)
    check_architecture(config['architecture'], repr(str(folder / CONFIG_NAME)))
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise CheckpointError(
            f'{str(folder)!r} holds pickled weights ({", ".join(pickles)}); gczoo folders hold only {WEIGHTS_NAME}. '
            f'Delete them (the safetensors file has the same tensors) or pass allow_pickle=True.')
    weights = _find_weights_file(folder)
    shapes = read_weights_shapes(weights)
    # timm's own config parsing (model_args, num_classes) builds the model the folder describes
    model = timm.create_model(f'local-dir:{folder}', pretrained=False, device='meta')
    verify_weights(model, shapes, repr(str(weights)))
    return config
