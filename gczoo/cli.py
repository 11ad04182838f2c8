"""The ``gczoo`` command. Each subcommand is a thin call into one module's ``main(argv)``, which owns
its flags (``gczoo train --help`` is ``python -m gczoo.train --help``)."""
import importlib
import sys
from typing import List, Optional

__all__ = ['COMMANDS', 'main']

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    'list': ('gczoo.cli', 'list the attention blocks and models'),
}


def list_main(argv: Optional[List[str]] = None) -> int:
    """Print every block and model, one line each."""
    from gczoo.layers import ATTN_SPECS
    from gczoo.models import ZOO_MODELS
    print('Attention blocks  (gczoo.layers.create_attn(name, channels)):')
    for name, spec in ATTN_SPECS.items():
        print(f'  {name:<12} {spec.cls.__name__:<20} {spec.summary}')
    print('\nModels  (import gczoo; timm.create_model(name)):')
    for name, zoo in ZOO_MODELS.items():
        print(f'  {name:<15} {zoo.summary}')
    return 0


def _usage() -> str:
    lines = ['usage: gczoo COMMAND [ARGS ...]   (gczoo COMMAND --help for its flags)', '', 'commands:']
    lines += [f'  {name:<20} {help_text}' for name, (_, help_text) in COMMANDS.items()]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'gczoo: unknown command {command!r}\n\n{_usage()}', file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    if module_name == 'gczoo.cli':
        return list_main(rest)
    result = importlib.import_module(module_name).main(rest)
    return int(result or 0)


if __name__ == '__main__':
    sys.exit(main())
