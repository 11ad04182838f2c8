"""The ``gczoo`` command. Each subcommand is a thin call into one module's ``main(argv)``, which owns
its flags (``gczoo train --help`` is ``python -m gczoo.train --help``)."""
import importlib
import sys
from typing import List, Optional

__all__ = ['COMMANDS', 'main']

# subcommand -> ('module' or 'module:function' taking argv and returning an exit code, one-line help)
COMMANDS = {
    'list': ('gczoo.cli:list_main', 'list the attention blocks and models'),
    'train': ('gczoo.train:main', 'train or fine-tune a model (torchrun for DDP; see scripts/train.sh)'),
    'eval': ('gczoo.evaluate:main', 'top-1/top-5 of a model on an ImageNet-layout or ImageFolder dataset'),
    'complexity': ('gczoo.complexity:main', 'parameters, GMACs and GFLOPs of models at any input size'),
    'bench': ('gczoo.benchmark:main', 'throughput/memory benchmarks: `bench layers` or `bench models`'),
    'convert': ('gczoo.models.convert:main', 'convert official CBAM/BAM/GCNet checkpoints to gczoo safetensors'),
    'publish': ('gczoo.hub:main', 'write a Hub repository folder from a training output and upload it'),
    'cards': ('gczoo.cards:main', 'generate model_cards/ and the README model table from the registry'),
    'visualize': ('gczoo.visualize:main', 'PNG grids of what each attention block of a model attends to'),
    'analyze-attention': ('gczoo.visualize:analyze_main', "GCNet's query-independence analysis (CSV + PNG)"),
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
    module_name, func_name = COMMANDS[command][0].split(':')
    result = getattr(importlib.import_module(module_name), func_name)(rest)
    return int(result or 0)


if __name__ == '__main__':
    sys.exit(main())
