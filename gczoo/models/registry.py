"""Model-name validity, once: is a name a model timm can build, and if not, one message saying so.

The zoo registers its models with timm (``gczoo.models.gczoo``), so a name is valid exactly when timm's
registry knows it -- ``timm.is_model`` on the architecture, ``get_pretrained_cfg`` for a tag, as timm's
``_registry`` (``split_model_name_tag``, ``is_model``, ``list_pretrained``) does -- or when it names a
weights folder (``local-dir:DIR``) or Hub repo (``hf-hub:ORG/REPO``), whose ``config.json`` names the
architecture. Every job that takes a model name (train, eval, visualize, complexity, publish, cards,
convert, ``init_from_resnet``) resolves it here, so a mistyped ``--model`` gets the same one-line
:class:`~gczoo.errors.UsageError` everywhere: the name, the closest registered names (``difflib``), and
``gczoo list`` for the zoo's models.
"""
import dataclasses
import difflib
from typing import Collection, Dict, Iterable, List, Optional

import timm
from timm.models import get_pretrained_cfg, parse_model_name, split_model_name_tag

from gczoo.errors import CheckpointError, UsageError

__all__ = ['ModelName', 'FOLDER_PREFIXES', 'zoo_model_names', 'close_model_names', 'resolve_model_name',
           'check_architecture', 'register_other_models']

FOLDER_PREFIXES = ('local-dir:', 'hf-hub:')  # names whose weights folder's config.json names the architecture
_ZOO_MODULE = 'gczoo'  # timm files the zoo's entrypoints under their module's last name (gczoo/models/gczoo.py)
# gczoo's models outside timm's image registry (gczoo.video's, gczoo.seg's; each registers its table on
# import, and ``import gczoo`` imports both): name -> what to use for it instead
_OTHER_MODELS: Dict[str, str] = {}


def register_other_models(names: Iterable[str], use: str) -> None:
    """Name models that timm cannot build (video, segmentation), so that a job given one says what to use."""
    for name in names:
        _OTHER_MODELS[name] = use


@dataclasses.dataclass(frozen=True)
class ModelName:
    """A resolved model name: ``source`` is ``'local-dir'``/``'hf-hub'`` (then ``location`` is the folder
    or repo and ``architecture`` is None) or None (a registered ``architecture`` with an optional ``tag``)."""
    name: str
    source: Optional[str]
    location: str
    architecture: Optional[str]
    tag: Optional[str]

    @property
    def is_folder(self) -> bool:
        return self.source is not None


def zoo_model_names() -> List[str]:
    """The zoo's registered models (``timm.list_models(module='gczoo')``; ``gczoo list`` prints them)."""
    return timm.list_models(module=_ZOO_MODULE)


def close_model_names(name: str, candidates: Optional[Collection[str]] = None, n: int = 5) -> List[str]:
    """The registered names closest to ``name`` (the zoo's first), for a message; case, spaces around it
    and an ``ORG/`` before it (``timm/resnet50_gc``, ``ResNet50_GC ``) do not count against a match."""
    architecture = split_model_name_tag(name.strip())[0].rsplit('/', 1)[-1].lower()
    zoo = zoo_model_names()
    pool = list(candidates) if candidates is not None else zoo + [m for m in timm.list_models() if m not in zoo]
    lowered: dict = {}
    for candidate in pool:
        lowered.setdefault(candidate.lower(), candidate)
    return [lowered[m] for m in difflib.get_close_matches(architecture, list(lowered), n=n, cutoff=0.6)]


def _why(name: str, folders: bool) -> str:
    """What about ``name`` makes it no model name, when it is more than a typo."""
    if name != name.strip():
        return ' (it has spaces around it)'
    if '/' in name and folders:
        return f' (a Hub repo is written "hf-hub:{name}", a folder "local-dir:{name}")'
    if any(c in name for c in '*?['):
        return f' (a pattern names no one model; timm.list_models({name!r}) lists the names it matches)'
    return ''


def _unknown(name: str, what: str, zoo: Optional[Collection[str]], folders: bool) -> UsageError:
    other = _OTHER_MODELS.get(split_model_name_tag(name.strip())[0])
    if other is not None:
        return UsageError(f'{what}: {name!r} is not an image classification model of timm\'s: it is {other}')
    close = close_model_names(name, zoo)
    why = _why(name, folders and zoo is None)
    hint = f'{why}; closest: {", ".join(close)}' if close else why
    if zoo is not None:
        head = f'unknown gczoo model {name!r}'
    else:
        also = ', nor local-dir:DIR / hf-hub:ORG/REPO' if folders else ''
        head = f'unknown model {name!r}: not a registered timm or gczoo model name{also}'
    return UsageError(f'{what}: {head}{hint}. `gczoo list` lists the zoo\'s models '
                      f'({", ".join(zoo_model_names())}), timm.list_models() all of timm\'s.')


def resolve_model_name(
        name: str,
        *,
        what: str = '--model',
        zoo: Optional[Collection[str]] = None,
        folders: bool = True,
) -> ModelName:
    """Check a model name and split it (timm's ``parse_model_name`` + ``split_model_name_tag``).

    ``what``: how the caller's user gave the name (``'--model'``, ``'MODEL'``, ``'source'``), shown first in
    the message. ``zoo``: the only architectures accepted (e.g. ``ZOO_MODELS`` where only a gczoo model
    will do). ``folders``: whether ``local-dir:DIR`` and ``hf-hub:ORG/REPO`` are accepted. An unknown name,
    or a tag the architecture does not have, is one ``UsageError`` (a ``ValueError``).
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f'{what}: a model name is needed, got {name!r}')
    for prefix, kind in zip(FOLDER_PREFIXES, ('DIR', 'ORG/REPO')):
        if name.startswith(prefix) and not name[len(prefix):].strip():
            raise UsageError(f'{what}: {name!r} names nothing after {prefix!r}; write {prefix}{kind}')
    try:
        source, location = parse_model_name(name)
    except (AssertionError, ValueError):  # a scheme that is not one of timm's
        raise _unknown(name, what, zoo, folders) from None
    if source is not None:
        if not folders or zoo is not None:
            raise UsageError(f'{what}: {name!r} names a weights folder; a registered model name is needed here '
                             f'(`gczoo list`)')
        if source == 'hf-hub':
            _check_repo_id(name, location, what)
        return ModelName(name, source, location, None, None)
    architecture, tag = split_model_name_tag(location)
    if not timm.is_model(architecture) or (zoo is not None and architecture not in zoo):
        raise _unknown(name, what, zoo, folders)
    if tag and not _has_tag(architecture, tag):
        tags = ', '.join(timm.list_pretrained(f'{architecture}.*')) or 'none'
        raise UsageError(f'{what}: {architecture!r} has no pretrained tag {tag!r}; its tags: {tags}')
    return ModelName(name, None, location, architecture, tag or None)


def _check_repo_id(name: str, location: str, what: str) -> None:
    """``hf-hub:ORG/REPO[@revision]``: a repo id huggingface_hub can look up (``validate_repo_id``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from timm.models._hub import hf_split
    try:
        validate_repo_id(hf_split(location)[0])
    except HFValidationError as e:
        raise UsageError(f'{what}: {name!r} names no valid Hub repo (hf-hub:ORG/REPO[@revision]): '
                         f'{" ".join(str(e).split())}') from None


def _has_tag(architecture: str, tag: str) -> bool:
    try:
        return get_pretrained_cfg(f'{architecture}.{tag}') is not None
    except RuntimeError:  # timm 1.0: 'Invalid pretrained tag'
        return False


def check_architecture(architecture: str, where: str) -> None:
    """A weights folder's ``config.json`` (``where``) names a registered architecture, or ``CheckpointError``."""
    if isinstance(architecture, str) and timm.is_model(architecture):
        return
    close = close_model_names(architecture) if isinstance(architecture, str) else []
    hint = f'; closest: {", ".join(close)}' if close else ''
    raise CheckpointError(
        f'{where} names architecture {architecture!r}, which is not a registered timm model (timm '
        f'{timm.__version__}; gczoo registers: {", ".join(zoo_model_names())}){hint}. Install the package that '
        f'defines it, or fix "architecture" in the config.')
