"""``gczoo timm SCRIPT.py [ARGS]``: run one of timm's own scripts with the zoo registered.

timm's ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` (from timm's repository,
https://github.com/huggingface/pytorch-image-models; they are not in the ``timm`` wheel) build their
model with ``timm.create_model(args.model)``, which knows ``resnet50_gc`` only once ``gczoo`` has been
imported. This runs the script as ``python SCRIPT.py ARGS`` would -- as ``__main__``, with
``sys.argv`` and ``sys.path[0]`` set as Python sets them -- after ``import gczoo``::

    gczoo timm validate.py /data/imagenet --model resnet50_gc --pretrained
    torchrun --nproc-per-node 8 --no-python gczoo timm train.py /data/imagenet --model resnet50_gc ...

A script that is missing, a folder, not a ``.py`` file, or not one of timm's (it never imports timm), and
a script asking timm for a name this timm does not have (a script from a newer timm) or for a model
nobody registers (``--model resnet50_gcc``: the closest names) end in one line and exit status 2; the
script's own exit status is returned. ``sys.argv[0]`` is the path as given and ``__file__`` its absolute
form, as ``python SCRIPT.py`` sets them; a ``--`` before the script is skipped.
"""
import os
import re
import sys
import traceback
import types
from pathlib import Path
from typing import List, Optional

from gczoo.errors import GczooError, UsageError, one_line

__all__ = ['USAGE', 'check_script', 'run_script', 'main']

_IMPORTS_TIMM = re.compile(r'^\s*(?:import\s[^#\n]*\btimm\b|from\s+timm\b)', re.MULTILINE)

USAGE = ('usage: gczoo timm SCRIPT.py [ARGS ...]\n\n'
         "Runs one of timm's scripts (train.py, validate.py, benchmark.py, inference.py from timm's repository)\n"
         'with the gczoo models registered, as `python SCRIPT.py ARGS` would. Under torchrun:\n'
         '  torchrun --nproc-per-node N --no-python gczoo timm train.py ARGS')


def check_script(path: str) -> Path:
    """``path`` as a readable Python file that imports timm, or ``UsageError`` saying what is wrong."""
    script = Path(path)
    if script.is_dir():
        raise UsageError(f'{path!r} is a folder, not a script; give the path of one of timm\'s scripts in it, '
                         f'e.g. {os.path.join(path, "validate.py")}')
    if script.suffix != '.py':
        raise UsageError(f'{path!r} is not a Python script (.py); give one of timm\'s scripts, e.g. validate.py '
                         f'from https://github.com/huggingface/pytorch-image-models')
    if not script.is_file():
        raise UsageError(f'script {path!r} does not exist; timm\'s train.py, validate.py, benchmark.py and '
                         f'inference.py are in timm\'s repository (git clone '
                         f'https://github.com/huggingface/pytorch-image-models), not in the timm package')
    text = script.read_text(encoding='utf-8', errors='replace')
    if not _IMPORTS_TIMM.search(text):
        raise UsageError(f'{path!r} does not import timm, so it is not one of timm\'s scripts; run it with '
                         f'python directly (import gczoo in it to use the zoo)')
    return script


def _newer_timm(script: Path, error: ImportError) -> UsageError:
    import timm
    return UsageError(f'{script.name} needs what this timm {timm.__version__} does not have ({one_line(error)}): it '
                      f'is from another timm release; use the script from timm\'s v{timm.__version__} tag (git '
                      f'checkout v{timm.__version__} in its clone) or upgrade timm')


def _exec_as_main(path: str) -> None:
    """``path``'s code run as ``__main__`` (runpy.run_path would also rewrite ``sys.argv[0]`` to ``path``)."""
    with open(path, 'rb') as f:
        code = compile(f.read(), path, 'exec', dont_inherit=True)
    main_module = types.ModuleType('__main__')
    main_module.__dict__.update(__file__=path, __cached__=None, __loader__=None, __package__=None, __spec__=None)
    saved = sys.modules.get('__main__')
    sys.modules['__main__'] = main_module  # pickle and multiprocessing find the script's classes there
    try:
        exec(code, main_module.__dict__)
    finally:
        if saved is not None:
            sys.modules['__main__'] = saved


def _unknown_model(name: str) -> UsageError:
    import timm

    from gczoo.models.registry import close_model_names
    close = close_model_names(name)
    return UsageError(f'the script asked timm for the model {name!r}, which neither timm {timm.__version__} nor gczoo '
                      f'registers' + (f'; closest: {", ".join(close)}' if close else '')
                      + '; `gczoo list` shows the zoo\'s models')


def _raised_at(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f'raised in {frame.name} ({Path(frame.filename).name}:{frame.lineno})'


def run_script(script: Path, args: List[str], argv0: Optional[str] = None) -> int:
    """Run ``script`` as ``__main__`` with ``args`` after ``import gczoo``; its exit status. ``sys.argv[0]``
    is ``argv0`` (the path as the user wrote it; default ``str(script)``), ``__file__`` the absolute path."""
    import gczoo  # noqa: F401  (registers the zoo models with timm before the script asks for one)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script) if argv0 is None else argv0] + list(args)
    path = os.path.join(os.getcwd(), script)  # Python (3.9+) makes __main__.__file__ absolute, not normalised
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT.py` sets sys.path[0]
    try:
        _exec_as_main(path)
    except ImportError as e:
        if (e.name or '').split('.')[0] != 'timm':
            raise
        raise _newer_timm(script, e) from e
    except RuntimeError as e:  # timm.create_model's, for a --model that no package registered
        if not str(e).startswith('Unknown model ('):
            raise
        raise _unknown_model(str(e)[len('Unknown model ('):].rstrip(')')) from e
    except (ValueError, OSError) as e:  # one line through gczoo's runner; it needs something to say
        if str(e) or isinstance(e, GczooError):
            raise
        raise UsageError(f'{type(e).__name__} without a message, {_raised_at(e)} (the script\'s log above may '
                         f'say more; GCZOO_DEBUG=1 shows the traceback)') from e
    except SystemExit as e:  # the script's own sys.exit / argparse's exit
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo timm SCRIPT.py ARGS``: see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = argv[1:] if argv[:1] == ['--'] else argv  # `gczoo timm -- SCRIPT.py ARGS`
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0 if argv else 2
    return run_script(check_script(argv[0]), argv[1:], argv0=argv[0])


if __name__ == '__main__':  # python -m gczoo.timm_scripts SCRIPT.py ARGS (it did nothing, exit 0)
    from gczoo.runner import run_main
    run_main(main, 'gczoo timm')
