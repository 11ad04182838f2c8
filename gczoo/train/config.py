"""From a command line (and a ``-c`` YAML file) to the run's settings, and back to ``args.yaml``.

As timm's train.py ``_parse_args``: the values in ``-c FILE`` become the parser's defaults and the
command line wins; ``args.yaml`` (written to every run) holds every setting, so ``-c OUT/args.yaml``
reproduces a run. Unlike timm, a file's values are checked like the flags' (``lr: .nan`` is refused,
not trained with), and a key gczoo does not know is an error, except timm train.py settings gczoo
lacks that are at timm's default (a timm ``args.yaml`` then works): those are ignored and listed.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Set, Tuple

from timm.utils import ParseKwargs

from gczoo.errors import UsageError

from .args import AMP_DTYPES, DIGITS_DEFAULTS, TIMM_DEFAULTS, build_parser, mixup_active, uses_embedded_digits
from .checkpoint import plain
from .timm_flags import MISSING_TIMM_FLAGS, is_timm_default

__all__ = ['parse_args', 'read_config', 'args_yaml', 'NOT_IN_ARGS_YAML']

# parser entries that are not settings of the run: where they came from, or testing hooks
NOT_IN_ARGS_YAML = ('config', 'fail_at_step', 'fail_rank')


def _config_path(argv: Sequence[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    known, _ = pre.parse_known_args(argv)
    return known.config


def _check_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """A value from the file, checked and converted as the flag's own would be."""
    bad = f'{where}: {key}: '
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f'{bad}expected true or false, got {value!r}')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise UsageError(f'{bad}expected a mapping of keyword arguments, got {value!r}')
        return value
    if value is None:
        if action.default is not None:
            raise UsageError(f'{bad}expected a value (null means "not set", which this flag cannot be)')
        return None
    if key == 'amp' and isinstance(value, bool):  # timm's --amp is a plain switch
        return value
    if action.nargs in ('+', '*') or isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)):
            value = [value] if action.nargs in ('+', '*') else value
        if not isinstance(value, (list, tuple)) or (isinstance(action.nargs, int) and len(value) != action.nargs):
            raise UsageError(f'{bad}expected a list of {action.nargs} values, got {value!r}')
        return [_one(action, key, v, bad) for v in value]
    return _one(action, key, value, bad)


def _one(action: argparse.Action, key: str, value: Any, bad: str) -> Any:
    if isinstance(value, (dict, list, tuple, bool)) and action.type is not None:
        raise UsageError(f'{bad}expected one value, got {value!r}')
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise UsageError(f'{bad}{e}') from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f'{bad}expected one of {", ".join(repr(c) for c in action.choices)}, got {value!r}')
    return value


def _given_on_command_line(argv: Sequence[str]) -> Set[str]:
    """The settings the command line sets itself (their file values are neither used nor checked)."""
    parser = build_parser()
    unset = object()
    parser.set_defaults(**{a.dest: unset for a in parser._actions if a.dest != 'help'})
    given, _ = parser.parse_known_args(argv)
    return {dest for dest, value in vars(given).items() if value is not unset}


def read_config(path: str, parser: argparse.ArgumentParser,
                skip: Collection[str] = ()) -> Tuple[Dict[str, Any], List[str]]:
    """The settings in a YAML file as parser defaults, checked; and the timm-only keys ignored (at their default).
    Settings in ``skip`` (given on the command line, which wins) are left out."""
    import yaml  # the train extra, imported where used: gczoo.cli names a missing extra
    where = f'--config {path!r}'
    if not Path(path).is_file():
        raise UsageError(f'{where} does not exist (a YAML file of settings, e.g. a run\'s OUT/args.yaml)')
    try:
        with open(path, encoding='utf-8') as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UsageError(f'{where} is not valid YAML: {" ".join(str(e).split())}') from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise UsageError(f'{where} must hold a mapping of setting: value, got a {type(content).__name__}')
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    defaults: Dict[str, Any] = {}
    ignored: List[str] = []
    for key, value in content.items():
        key = str(key).replace('-', '_')
        if key in NOT_IN_ARGS_YAML or key in skip:
            continue
        if key in actions:
            defaults[key] = _check_value(actions[key], key, value, where)
        elif key in MISSING_TIMM_FLAGS:
            if not is_timm_default(key, value):
                flag, reason = MISSING_TIMM_FLAGS[key][0], MISSING_TIMM_FLAGS[key][2]
                raise UsageError(f'{where}: {key}: {value!r} asks for timm train.py\'s {flag}, which gczoo train does '
                                 f'not implement ({reason}); remove it or set it to timm\'s default')
            ignored.append(key)
        elif key in ('data', 'prefetcher', 'distributed', 'world_size', 'rank', 'local_rank', 'device_id'):
            ignored.append(key)  # what timm's train.py adds to its args.yaml at run time
        else:
            raise UsageError(f'{where}: unknown setting {key!r} (not a gczoo train or timm train.py flag)')
    if content.get('data') and not defaults.get('data_dir') and 'data_dir' not in skip:  # timm's positional DIR
        defaults['data_dir'] = str(content['data'])
    return defaults, ignored


def _explain_unknown(parser: argparse.ArgumentParser, unknown: List[str]) -> None:
    for token in unknown:
        dest = token.split('=', 1)[0].lstrip('-').replace('-', '_')
        if token.startswith('-') and dest in MISSING_TIMM_FLAGS:
            flag, _, reason = MISSING_TIMM_FLAGS[dest]
            parser.error(f'{flag} is a timm train.py flag gczoo train does not implement: {reason}')
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')


def _resolve_amp(args: argparse.Namespace) -> None:
    """timm's pair: ``amp`` (bool) and ``amp_dtype``; ``--amp bf16`` (gczoo's short form) sets both."""
    shorthand = AMP_DTYPES.get(args.amp) if isinstance(args.amp, str) else None
    explicit = AMP_DTYPES[args.amp_dtype] if args.amp_dtype else None
    if shorthand and explicit and shorthand != explicit:
        raise UsageError(f'--amp {args.amp} and --amp-dtype {args.amp_dtype} disagree; pass one of them')
    args.amp = bool(args.amp)
    args.amp_dtype = shorthand or explicit or 'float16'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (with ``-c FILE`` values as defaults), fill the data-dependent defaults (timm's, or
    the digits recipe) and check what single flags cannot. ``args.args_yaml`` is the run's args.yaml."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config = _config_path(argv)
    ignored: List[str] = []
    if config:
        defaults, ignored = read_config(config, parser, skip=_given_on_command_line(argv))
        parser.set_defaults(**defaults)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _explain_unknown(parser, unknown)
    recipe = DIGITS_DEFAULTS if uses_embedded_digits(args) else TIMM_DEFAULTS
    for key, value in recipe.items():
        if key == 'threads' and os.environ.get('OMP_NUM_THREADS'):
            continue  # an explicit OMP_NUM_THREADS wins over the recipe
        if getattr(args, key) is None:
            setattr(args, key, value)
    _resolve_amp(args)
    if args.pretrained_path:
        args.pretrained = True
    _check_combinations(args)
    args.config_ignored = ignored
    return args


def _check_combinations(args: argparse.Namespace) -> None:
    """What the types cannot see: flags that exclude or need each other."""
    if args.pretrained_backbone and (args.pretrained or args.pretrained_path):
        raise UsageError('pass either --pretrained/--pretrained-path or --pretrained-backbone, not both')
    if mixup_active(args) and args.batch_size % 2:
        raise UsageError(f'--mixup/--cutmix pair samples within a batch: --batch-size must be even, '
                         f'got {args.batch_size}')
    for flag in ('scale', 'ratio', 'cutmix_minmax'):
        pair = getattr(args, flag)
        if pair is not None and pair[0] > pair[1]:
            raise UsageError(f'--{flag.replace("_", "-")} MIN MAX: MIN must not exceed MAX, '
                             f'got {pair[0]:g} {pair[1]:g}')
    in_chans = args.input_size[0] if args.input_size else (args.in_chans or 3)
    if in_chans not in (1, 3, 4):
        raise UsageError(f'--in-chans/--input-size: images are read with 1 (grey), 3 (RGB) or 4 (RGBA) channels, '
                         f'got {in_chans}')
    for flag in ('mean', 'std'):
        values = getattr(args, flag)
        if values is not None and len(values) not in (1, in_chans):
            raise UsageError(f'--{flag}: give one value per input channel ({in_chans}) or one for all, '
                             f'got {len(values)}')


def args_yaml(args: argparse.Namespace) -> str:
    """The run's settings as YAML (timm's args.yaml: ``yaml.safe_dump`` of the args, sorted keys)."""
    import yaml  # the train extra (see read_config)
    settings = {k: v for k, v in vars(args).items() if k not in NOT_IN_ARGS_YAML and k != 'config_ignored'}
    return yaml.safe_dump(plain(settings), default_flow_style=False)
