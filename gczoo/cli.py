"""The ``gczoo`` command: every subcommand goes through the one runner, ``gczoo.runner.run``.

Each subcommand is a call into one job's ``main(argv)``, which owns its flags (``gczoo train --help``
is ``python -m gczoo.train --help``). ``run`` (``gczoo.runner``, re-exported here) is the only place
that turns a failure into what a person sees: a ``GczooError``, ``ValueError`` or ``OSError`` (a bad
flag, file, image or checkpoint, a full disk, a read-only folder) becomes one line on stderr naming
what failed and what to do, and exit status 2. ``GCZOO_DEBUG=1`` re-raises it with its traceback.
"""
import importlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from gczoo.runner import DEBUG_ENV, EXIT_USER_ERROR, one_line, run  # the runner is a foundation (re-exported)

__all__ = ['COMMANDS', 'DEBUG_ENV', 'EXIT_USER_ERROR', 'main', 'one_line', 'run', 'run_command']

# subcommand -> ('module:function' taking argv and returning an exit code, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    'list': ('gczoo.cli:list_main', 'list the attention blocks and models'),
    'train': ('gczoo.train:main', 'train or fine-tune a model (torchrun for DDP; see scripts/train.sh)'),
    'eval': ('gczoo.evaluate:main', 'top-1/top-5 of a model on an ImageNet-layout or ImageFolder dataset'),
    'eval-video': ('gczoo.video.evaluate:main', 'top-1/top-5 of a video model (I3D, NL I3D) on a folder of clips, '
                                                'mmaction2 test-time sampling (clips x crops)'),
    'eval-seg': ('gczoo.seg.evaluate:main', 'mIoU, per-class IoU, pixel accuracy of a segmentor (Cityscapes/ADE20K)'),
    'segment': ('gczoo.seg.segment:main', 'colour-coded PNG predictions of a segmentor for images'),
    'train-seg': ('gczoo.seg.train:main', "fine-tune a segmentor on a Cityscapes/ADE20K folder (mmseg's recipe)"),
    'complexity': ('gczoo.complexity:main', 'parameters, GMACs and GFLOPs of models at any input size'),
    'bench': ('gczoo.bench:main', 'throughput/memory benchmarks: `bench layers` or `bench models`'),
    'convert': ('gczoo.models.convert:main', 'convert official CBAM/BAM/GCNet checkpoints to gczoo safetensors'),
    'publish': ('gczoo.hub:main', 'write a Hub repository folder from a training output and upload it'),
    'export': ('gczoo.export:main', 'ONNX or torch.export .pt2 of a model with dynamic axes, checked in ONNX Runtime, '
                                    'preprocessing as metadata'),
    'cards': ('gczoo.cards:main', 'generate model_cards/ and the README model table from the registry'),
    'visualize': ('gczoo.visualize:main', 'PNG grids of what each attention block of a model attends to'),
    'analyze-attention': ('gczoo.visualize:analyze_main', "GCNet's query-independence analysis (CSV + PNG)"),
    'timm': ('gczoo.timm_scripts:main', "run timm's own train.py/validate.py/benchmark.py/inference.py with the zoo "
                                        'registered: gczoo timm SCRIPT.py ARGS'),
}


def list_main(argv: Optional[List[str]] = None) -> int:
    """Print every block and model, one line each."""
    from gczoo.layers import ATTN_SPECS
    from gczoo.models import ZOO_MODELS
    from gczoo.seg import SEGMENTORS  # outside timm's registry
    from gczoo.video import VIDEO_MODELS  # outside timm's registry
    print('Attention blocks  (gczoo.layers.create_attn(name, channels)):')
    for name, spec in ATTN_SPECS.items():
        print(f'  {name:<12} {spec.cls.__name__:<20} {spec.summary}')
    for title, table in (('Models  (import gczoo; timm.create_model(name))', ZOO_MODELS),
                         ('Video models  (gczoo.video.create_video_model(name); clips (B, 3, T, H, W))', VIDEO_MODELS),
                         ('Segmentation models  (gczoo.seg.create_segmentor(name); logits (B, K, H, W))', SEGMENTORS)):
        print(f'\n{title}:')
        for name, row in table.items():
            print(f'  {name:<15} {row.summary}')
    return 0


def _usage() -> str:
    lines = ['usage: gczoo COMMAND [ARGS ...]   (gczoo COMMAND --help for its flags)', '', 'commands:']
    lines += [f'  {name:<20} {help_text}' for name, (_, help_text) in COMMANDS.items()]
    return '\n'.join(lines)


def run_command(command: str, argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand through ``run`` (``python -m gczoo.train`` is ``run_command('train')``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module_name, func_name = COMMANDS[command][0].split(':')
    # imported here, not at the top: `gczoo --help` should not pay for torch's and every job's imports
    main_fn = getattr(importlib.import_module(module_name), func_name)
    return run(main_fn, argv, f'gczoo {command}')


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else EXIT_USER_ERROR
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'gczoo: error: unknown command {command!r}; run gczoo --help for the list', file=sys.stderr)
        return EXIT_USER_ERROR
    return run_command(command, rest)


if __name__ == '__main__':
    sys.exit(main())
