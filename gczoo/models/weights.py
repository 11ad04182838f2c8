"""The one weight-loading path: read a checkpoint without running code, check it, load it.

Every job that loads weights calls this module: training (``--resume``, ``--initial-checkpoint``),
evaluation, visualisation and analysis, the Hub folders, the converters, ``init_from_resnet`` and
``pretrained_backbone=``, and timm's own ``pretrained=True`` through the zoo's ``filter_fn``.

* Reading (:func:`read_checkpoint`, :func:`read_state_dict`): safetensors, or
  ``torch.load(weights_only=True)`` through ``timm.models.load_state_dict`` (EMA weights first,
  ``module.``/``_orig_mod.`` prefixes stripped). A pickle that holds Python objects is refused; one
  whose objects can run code (``os.system``, ``subprocess``, ``builtins.eval`` ...) is called what it
  is, and no command to unpickle it is suggested.
* Checking (:func:`check_state_dict`): keys and shapes against the model (missing, unexpected,
  mis-shaped, by name), integer tensors where the model has floating ones (they would be cast to
  float silently, e.g. every weight truncated to 0), and non-finite values (refused unless
  ``allow_non_finite=True``).
* Loading (:func:`load_weights`): reads and checks everything first; nothing is loaded unless it all fits.
"""
import contextlib
import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from gczoo.errors import CheckpointError

__all__ = [
    'StateDict', 'StateDictMismatch', 'PICKLE_SUFFIXES', 'WEIGHTS_NAME', 'check_state_dict', 'classifier_names',
    'first_conv_names',
    'compare_state_dicts', 'format_keys', 'pickle_refusal', 'unpickling_refused', 'load_weights', 'read_checkpoint', 'read_safetensors_shapes',
    'read_state_dict', 'unwrap_state_dict',
]

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]
WEIGHTS_NAME = 'model.safetensors'
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.pkl', '.pickle', '.tar')
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')
_PREFIXES = ('module.', '_orig_mod.')
# Globals in a pickle that can run code or reach the system: a file naming one is treated as hostile.
_CODE_RUNNING = re.compile(
    r'^(os|posix|nt|subprocess|sys|shutil|socket|pty|importlib|runpy|webbrowser|code|codecs|ctypes|marshal|'
    r'pickle|_pickle|types|operator|functools|multiprocessing|platform|signal|asyncio|builtins\.(eval|exec|'
    r'compile|getattr|setattr|open|__import__|globals|locals|vars|input|breakpoint|memoryview))(\.|$)')


def format_keys(keys: Sequence[str], limit: int = 12) -> str:
    """``a, b, c ... (+N more)`` for an error message; ``none`` when empty."""
    if not keys:
        return 'none'
    keys = list(keys)
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


def _cfg_module_names(model: nn.Module, key: str, default: str) -> Tuple[str, ...]:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    name = cfg.get(key) if isinstance(cfg, Mapping) else None
    if not name:
        return (default,)
    return (name,) if isinstance(name, str) else tuple(name)


def classifier_names(model: nn.Module) -> Tuple[str, ...]:
    """The classifier module name(s) of a timm model, from its pretrained cfg (``('fc',)`` by default)."""
    return _cfg_module_names(model, 'classifier', 'fc')


def first_conv_names(model: nn.Module) -> Tuple[str, ...]:
    """The input conv module name(s) of a timm model, from its pretrained cfg (``('conv1',)`` by default)."""
    return _cfg_module_names(model, 'first_conv', 'conv1')


# ----------------------------------------------------------------------------------------------
# reading


def _sniff_pickle(path: Path) -> Optional[str]:
    """What a non-safetensors file looks like, from its first bytes (None if not a pickle)."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK\x03\x04'):
        return 'a torch.save zip archive (pickled Python objects)'
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'a pickle'
    return None


def _pickle_globals(path: Optional[Path], error: Exception) -> List[str]:
    """The globals ``weights_only`` refused in ``path``: read from the pickle opcodes (nothing is run), or,
    for old non-zip files that reader does not handle (or no known path), from the refusal message."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) if path else []
    except Exception:  # a non-zip or damaged file
        found = []
    return found or sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(error))))


def _opcode_globals(path: Path) -> List[str]:
    """The globals a bare (non-zip) pickle names in its GLOBAL/STACK_GLOBAL opcodes, read with pickletools
    (nothing is run): torch's weights_only reader stops at protocol 4's FRAME opcode before naming them."""
    import pickletools
    found: List[str] = []
    strings: List[str] = []
    try:
        with open(path, 'rb') as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == 'GLOBAL':
                    found.append(str(arg).replace(' ', '.'))
                elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    found.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle, or damaged after the part read
        pass
    return found


def unpickling_refused(error: Exception, path: Optional[Path] = None, source: Optional[str] = None) -> CheckpointError:
    """The error for a checkpoint ``torch.load(weights_only=True)`` refused (``error``): a damaged file, a
    pickle whose objects could run code (no command to unpickle it is offered), or benign extra objects
    (with a recipe to keep the weights alone). ``source`` names it when the path is not known."""
    found = _pickle_globals(path, error)
    if not found and path is not None and path.is_file():  # a bare pickle: name only the code-running globals
        found = [g for g in _opcode_globals(path) if _CODE_RUNNING.match(g)]
    path = path if path is not None else Path(source or 'the checkpoint')
    if not found:  # not an allow-list refusal: the bytes themselves are bad
        detail = re.search(r'WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)', str(error), re.S)
        return CheckpointError(
            f'{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): invalid pickle data '
            f'({detail.group(1) if detail else str(error).splitlines()[0]})')
    hostile = [g for g in found if _CODE_RUNNING.match(g)]
    if hostile:
        return CheckpointError(
            f'{str(path)!r} is not a checkpoint but a pickle that would call {", ".join(hostile)} when loaded: it can '
            f'run code on this machine. It was not loaded. Do not unpickle it; get the weights from a source you '
            f'trust, as safetensors if you can.')
    return CheckpointError(
        f'{str(path)!r} pickles Python objects besides tensors ({", ".join(found)}), typically the '
        f"'meta'/'message_hub' entries mmcv/mmengine save next to 'state_dict'. gczoo reads checkpoints with "
        f'torch.load(weights_only=True) only and will not unpickle them. Re-save the weights alone, where you '
        f'trust the file (unpickling can run code): python -c "import torch; '
        f"ck = torch.load('{path}', map_location='cpu', weights_only=False); "
        f"torch.save(ck['state_dict'], 'state_dict.pth')\" and load state_dict.pth.")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn every way a file can fail to read into one ``CheckpointError`` naming it."""
    from safetensors import SafetensorError
    try:
        yield
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise unpickling_refused(e, path) from e
    except RuntimeError as e:
        if isinstance(e.__cause__, pickle.UnpicklingError):  # timm's load_state_dict wraps the refusal
            raise unpickling_refused(e.__cause__, path) from e
        raise CheckpointError(
            f'{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}'
        ) from e
    except SafetensorError as e:
        kind = _sniff_pickle(path)
        if kind is not None:
            raise CheckpointError(
                f'{str(path)!r} should be a safetensors file but is {kind}; gczoo never unpickles weights files '
                f'named .safetensors. Re-export it with gczoo.models.save_pretrained or `gczoo publish --dry-run`.'
            ) from e
        raise CheckpointError(
            f'{str(path)!r} is not a readable safetensors file ({e}); it is probably truncated or corrupt '
            f'(an interrupted download or copy). Delete it and copy or download it again.') from e
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors... for damaged files
        raise CheckpointError(
            f'{str(path)!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}'
        ) from e


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f'checkpoint {str(path)!r} is a folder, not a file (for a Hub-layout folder use '
                              f'"local-dir:{path}")')
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {str(path)!r} does not exist')
    return path


def pickle_refusal(path: Path) -> CheckpointError:
    """The error for a pickled weights file where only safetensors is accepted by default."""
    what = _sniff_pickle(path) or f'not a safetensors file (suffix {path.suffix!r})'
    return CheckpointError(
        f'{str(path)!r} is {what}, and gczoo does not load pickled weights by default (a pickle can run code). '
        f'Convert it once with `gczoo publish {path} --model NAME --dry-run --local-dir DIR` (reads it with '
        f'torch.load(weights_only=True) and writes model.safetensors), or pass allow_pickle=True to read it '
        f'with torch.load(weights_only=True).')


def read_checkpoint(path: PathLike, *, allow_pickle: bool = True) -> Dict[str, Any]:
    """The whole object in a checkpoint file (a training checkpoint's optimizer state included), read with
    safetensors or ``torch.load(weights_only=True)``; ``CheckpointError`` for anything else."""
    path = _existing_file(path)
    with _reading(path):
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            return load_file(str(path))
        if not allow_pickle:
            raise pickle_refusal(path)
        obj = torch.load(str(path), map_location='cpu', weights_only=True)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{str(path)!r} holds a {type(obj).__name__}, not a checkpoint (a mapping)')
    return dict(obj)


def read_state_dict(path: PathLike, *, use_ema: bool = True, allow_pickle: bool = True) -> StateDict:
    """The state dict inside a checkpoint file, read without unpickling code (see the module docstring)."""
    path = _existing_file(path)
    if path.suffix != '.safetensors' and not allow_pickle:
        raise pickle_refusal(path)
    from timm.models import load_state_dict as timm_load_state_dict
    with _reading(path):
        state = timm_load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    return unwrap_state_dict(state, source=repr(str(path)))


def read_safetensors_shapes(path: PathLike) -> Dict[str, Tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` file, read from its header only (no tensor data)."""
    from safetensors import safe_open
    path = _existing_file(path)
    with _reading(path):
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


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


# ----------------------------------------------------------------------------------------------
# checking and loading


def check_state_dict(
        model: nn.Module,
        state: Mapping[str, Any],
        source: str,
        *,
        strict: bool = True,
        tolerate_prefixes: Sequence[str] = (),
        allow_non_finite: bool = False,
        hint: str = 'Were the weights saved from another model or with another num_classes?',
) -> None:
    """Raise ``CheckpointError`` unless ``state`` (name -> tensor, or -> shape for a header-only check)
    fits ``model``: keys and shapes, floating dtypes where the model's are floating, finite values.

    ``strict=False`` allows missing and unexpected keys, never a shape or dtype mismatch. Keys under
    ``tolerate_prefixes`` (the classifier when ``num_classes`` changes) may be missing or differ in shape.
    """
    tolerated = tuple(tolerate_prefixes)
    target = model.state_dict()
    mismatch = compare_state_dicts(
        target, state,
        may_be_missing=lambda k: k.endswith('num_batches_tracked') or (bool(tolerated) and k.startswith(tolerated)),
        may_differ=lambda k: bool(tolerated) and k.startswith(tolerated))
    if not strict:
        mismatch.missing, mismatch.unexpected = [], []
    if mismatch:
        raise CheckpointError(f'{source} does not fit {type(model).__name__}: {mismatch}. {hint}')
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k in target}
    wrong_dtype = [f'{k} ({v.dtype})' for k, v in tensors.items()
                   if target[k].is_floating_point() and not v.is_floating_point()]
    if wrong_dtype:
        raise CheckpointError(
            f'{source} holds non-floating tensors where {type(model).__name__} has floating parameters: '
            f'{format_keys(wrong_dtype)}; loading would cast them (e.g. every weight truncated to an integer). '
            f'Re-export the weights in float32 (or the dtype they were trained in).')
    if not allow_non_finite:
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(
                f'{source} holds NaN or infinite values in {format_keys(bad)}: the run that wrote it diverged or '
                f'the file is damaged. Use an earlier checkpoint (or pass allow_non_finite=True to inspect it).')


def load_weights(
        model: nn.Module,
        source: Union[PathLike, Mapping[str, torch.Tensor]],
        *,
        what: str = 'checkpoint',
        strict: bool = True,
        skip_mismatched_classifier: bool = False,
        allow_pickle: bool = True,
        allow_non_finite: bool = False,
        use_ema: bool = True,
        hint: Optional[str] = None,
) -> List[str]:
    """Read ``source`` (a file or a state dict), check it against ``model`` and load it; returns the
    classifier keys left at init (``skip_mismatched_classifier``: another ``num_classes``, as timm does).

    ``what`` names the source in messages (e.g. ``'--initial-checkpoint'``). Nothing is loaded unless
    every check passes (see :func:`check_state_dict`).
    """
    if isinstance(source, Mapping):
        state, where = unwrap_state_dict(source, source=what), what
    else:
        state, where = read_state_dict(source, use_ema=use_ema, allow_pickle=allow_pickle), f'{what} {str(source)!r}'
    skipped: List[str] = []
    if skip_mismatched_classifier:
        heads = tuple(f'{name}.' for name in classifier_names(model))
        target = model.state_dict()
        skipped = [k for k, v in state.items()
                   if k.startswith(heads) and k in target and tuple(v.shape) != tuple(target[k].shape)]
        state = {k: v for k, v in state.items() if k not in skipped}
    check_state_dict(model, state, where, strict=strict, tolerate_prefixes=tuple(skipped),
                     allow_non_finite=allow_non_finite, **({'hint': hint} if hint else {}))
    model.load_state_dict(state, strict=False)
    return skipped
