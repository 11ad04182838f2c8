"""Start a zoo model from an ImageNet ResNet: load its weights into the backbone, keep the attention
blocks at identity init.

Because every block starts as the identity (the GC/NL/SNL/CC/SA zero-inits), the new model's
logits equal the source ResNet's at init; fine-tuning then only has to learn what attention adds.
(Blocks that cannot be an identity -- SE, CBAM and BAM gates -- start at their papers' init and
change the logits; the report says which keys were left at init.)
"""
import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .errors import CheckpointError, explain_download_errors

__all__ = [
    'LoadReport', 'StateDictMismatch', 'classifier_names', 'compare_state_dicts', 'format_keys', 'init_from_resnet', 'load_state_dict_file',
    'unwrap_state_dict',
]

StateDict = Dict[str, torch.Tensor]
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')
_PREFIXES = ('module.', '_orig_mod.')


def format_keys(keys: Sequence[str], limit: int = 12) -> str:
    """``a, b, c ... (+N more)`` for an error message; ``none`` when empty."""
    if not keys:
        return 'none'
    return ', '.join(keys[:limit]) + (f' ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, 'shape') else tuple(value)


@dataclasses.dataclass
class StateDictMismatch:
    """How a source state dict fails to fit a target: each list holds printable key descriptions."""
    missing: List[str]
    unexpected: List[str]
    mis_shaped: List[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mis_shaped)

    def __str__(self) -> str:
        return (f'missing keys {format_keys(self.missing)}; unexpected keys {format_keys(self.unexpected)}; '
                f'shape mismatch {format_keys(self.mis_shaped)}')


def compare_state_dicts(
        target: Mapping[str, Any],
        source: Mapping[str, Any],
        *,
        may_be_missing: Callable[[str], bool] = lambda key: key.endswith('num_batches_tracked'),
        may_differ: Callable[[str], bool] = lambda key: False,
        describe: Callable[[str], str] = lambda key: key,
) -> StateDictMismatch:
    """Compare name -> tensor-or-shape mappings before loading ``source`` into ``target``.

    ``may_be_missing``/``may_differ`` excuse target keys (e.g. a classifier of another size);
    ``describe`` names a source key in messages (e.g. with its name in the original checkpoint).
    """
    missing = [k for k in target if k not in source and not may_be_missing(k)]
    unexpected = [describe(k) for k in source if k not in target]
    mis_shaped = [f'{describe(k)}: checkpoint {_shape(source[k])} vs model {_shape(target[k])}'
                  for k in source if k in target and _shape(source[k]) != _shape(target[k]) and not may_differ(k)]
    return StateDictMismatch(missing, unexpected, mis_shaped)


@dataclasses.dataclass
class LoadReport:
    """What ``init_from_resnet`` did with each key."""
    loaded: List[str]
    kept_at_init: List[str]  # attention keys the source does not have
    skipped_classifier: List[str]  # classifier keys whose shape differs (another num_classes), or no head
    ignored: List[str]  # source keys with no place in this model that are safe to drop (e.g. the head)

    def __str__(self) -> str:
        return (f'loaded {len(self.loaded)} tensors; attention tensors kept at init: {len(self.kept_at_init)}; '
                f'classifier tensors skipped: {self.skipped_classifier or "none"}; '
                f'source tensors ignored: {self.ignored or "none"}')


def load_state_dict_file(path: Union[str, os.PathLike]) -> StateDict:
    """The state dict inside a checkpoint file, read without unpickling code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (old non-zip PyTorch files included), then unwrapped
    (``state_dict``/``model``/EMA containers, ``module.``/``_orig_mod.`` prefixes). A missing,
    truncated or corrupt file, or one that pickles Python objects besides tensors, raises
    ``CheckpointError`` naming the file and, for the latter, the objects found and how to keep
    only the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {str(path)!r} does not exist')
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return unwrap_state_dict(load_file(str(path)), source=str(path))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f'{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {e}') from e
    try:
        obj = torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        found = _unsafe_globals(path, e)
        if not found:  # not an allow-list refusal: the bytes themselves are bad
            detail = re.search(r'WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)', str(e), re.S)
            raise CheckpointError(
                f'{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): invalid pickle data '
                f'({detail.group(1) if detail else str(e).splitlines()[0]})') from e
        raise CheckpointError(
            f'{str(path)!r} pickles Python objects besides tensors ({", ".join(found)}), typically the '
            f"'meta'/'message_hub' entries mmcv/mmengine save next to 'state_dict'. gczoo reads checkpoints with "
            f'torch.load(weights_only=True) only and will not unpickle them. Re-save the weights alone, where you '
            f'trust the file (unpickling can run code): python -c "import torch; '
            f"ck = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save(ck['state_dict'], 'state_dict.pth')\" and load state_dict.pth.") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors... for damaged files
        raise CheckpointError(
            f'{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}') from e
    return unwrap_state_dict(obj, source=str(path))


def _unsafe_globals(path: Path, error: Exception) -> List[str]:
    """The globals ``weights_only`` refused in ``path``: read from the pickle opcodes (nothing is run), or,
    for old non-zip files that reader does not handle, from the refusal message."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a non-zip or damaged file
        found = []
    return found or sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(error))))


def unwrap_state_dict(obj: Any, source: str = 'checkpoint') -> StateDict:
    """The tensor dict inside a checkpoint: unwraps ``state_dict``/``model``/EMA containers and strips
    DataParallel's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict (a mapping of names to tensors)')
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _resolve_source(source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module]) -> Tuple[StateDict, str]:
    if isinstance(source, nn.Module):
        return source.state_dict(), type(source).__name__
    if isinstance(source, Mapping):
        return unwrap_state_dict(source), 'state dict'
    if os.path.exists(str(source)):
        return load_state_dict_file(source), str(source)
    if isinstance(source, str):
        import timm
        if not (source.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(source.split('.')[0])):
            raise ValueError(
                f'source {source!r} is neither an existing file nor a timm model name (e.g. "resnet50.a1_in1k")')
        with explain_download_errors(source):
            return timm.create_model(source, pretrained=True).state_dict(), source
    raise TypeError(f'source must be a path, a timm model name, a state dict or a module, got {type(source).__name__}')


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The classifier module name(s) of a timm model, from its pretrained cfg (``('fc',)`` by default)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    name = cfg.get('classifier') if isinstance(cfg, Mapping) else None
    if not name:
        return ('fc',)
    return (name,) if isinstance(name, str) else tuple(name)


def init_from_resnet(
        model: nn.Module,
        source: Union[str, os.PathLike, Mapping[str, torch.Tensor], nn.Module],
        verbose: bool = False,
) -> LoadReport:
    """Load an ImageNet ResNet (timm's or torchvision's key layout: they are the same) into ``model``'s
    backbone; attention blocks keep their init.

    ``source``: a timm model name with tag (``"resnet50.a1_in1k"``; downloaded through timm's Hub
    cache), ``hf-hub:``/``local-dir:``, a ``.safetensors``/``.pth`` file (read with
    ``weights_only=True``), a state dict, or a module. Every backbone tensor must be found with the
    same shape; otherwise a ``CheckpointError`` lists the missing, unexpected and mis-shaped keys.
    A classifier of another size is skipped and reported (as timm does for ``num_classes``).
    """
    from .gczoo import attention_modules  # resnet.py imports this module's package siblings
    src, where = _resolve_source(source)
    target = model.state_dict()
    attn_prefixes = tuple(f'{name}.' for name, _ in attention_modules(model))
    head = tuple(f'{name}.' for name in classifier_names(model))

    loaded, kept, skipped, ignored = [], [], [], []
    missing, mis_shaped = [], []
    to_load: StateDict = {}
    for key, tensor in target.items():
        if key.startswith(attn_prefixes):
            if key in src and src[key].shape == tensor.shape:
                to_load[key] = src[key]
                loaded.append(key)
            else:
                kept.append(key)
            continue
        if key not in src:
            (skipped if key.startswith(head) else missing).append(key)
        elif src[key].shape != tensor.shape:
            if key.startswith(head):
                skipped.append(key)
            else:
                mis_shaped.append(f'{key}: source {tuple(src[key].shape)} vs model {tuple(tensor.shape)}')
        else:
            to_load[key] = src[key]
            loaded.append(key)
    unexpected = [k for k in src if k not in target]
    for key in list(unexpected):
        if key.startswith(head) or key.endswith('num_batches_tracked'):
            unexpected.remove(key)
            ignored.append(key)
    mismatch = StateDictMismatch(missing, unexpected, mis_shaped)
    if mismatch:
        raise CheckpointError(
            f'{where} does not fit {type(model).__name__}\'s backbone: {mismatch}. '
            f'Is the source a ResNet of the same depth (timm or torchvision layout)?')
    model.load_state_dict(to_load, strict=False)
    report = LoadReport(loaded=loaded, kept_at_init=kept, skipped_classifier=skipped, ignored=ignored)
    if verbose:
        print(f'init_from_resnet({where}): {report}')
    return report
