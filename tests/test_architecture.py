"""The package's shape: dependencies run one way, with no cycle and no reach into another module's
private names, and ``import gczoo`` needs no job's extras.

Layers, lowest first: foundations (errors, the one-line error runner, argument types, atomic files, the
papers table) ->
blocks (``gczoo.layers``) -> models (``gczoo.models``) -> jobs (data, distributed, train, evaluate,
complexity, visualize, bench, export) -> cards -> hub (publishing) -> cli. A module may import its
own layer or lower ones. Every ``import`` statement counts, inside functions, ``__main__.py`` files and
``if __name__ == '__main__':`` blocks too: entry points run through ``gczoo.runner`` (a foundation),
never through the CLI.
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'gczoo'

LAYERS: List[Tuple[str, ...]] = [
    ('gczoo.errors', 'gczoo.runner', 'gczoo.args', 'gczoo.files', 'gczoo.papers'),
    ('gczoo.layers',),
    ('gczoo.models', 'gczoo.video', 'gczoo.seg', 'gczoo'),  # the package root imports layers, models, video and seg
    ('gczoo.data', 'gczoo.distributed', 'gczoo.train', 'gczoo.evaluate', 'gczoo.complexity', 'gczoo.visualize',
     'gczoo.bench', 'gczoo.export', 'gczoo.timm_scripts',
     'gczoo.video.clips', 'gczoo.video.evaluate', 'gczoo.video.finetune',  # video jobs (issue 19)
     'gczoo.seg.data', 'gczoo.seg.evaluate', 'gczoo.seg.segment', 'gczoo.seg.train'),  # segmentation jobs (issue 18)
    ('gczoo.cards',),
    ('gczoo.hub',),
    ('gczoo.cli',),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def _layer(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # the package root ('gczoo') is its __init__ alone: as a prefix it would place every module
            if (module == prefix or prefix != 'gczoo' and module.startswith(prefix + '.')) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f'{module} is in no layer of tests/test_architecture.py: add it where it belongs')
    return best


def _imports(path: Path) -> Iterator[Tuple[int, str, List[str]]]:
    """``(line, imported module, imported names)`` for every import, ``__main__`` blocks included."""
    module = _module_name(path)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            names = [a.name for a in node.names]
            if node.level and not node.module:  # `from . import x`: x are submodules
                for name in names:
                    yield node.lineno, f'{target}.{name}', []
            else:
                yield node.lineno, target, names


def _sources() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _resolve(target: str, modules: Dict[str, Path]) -> str:
    """The gczoo module an import names (``gczoo.models.weights``, or the package ``gczoo.models``)."""
    while target and target not in modules:
        target = target.rpartition('.')[0]
    return target


def _graph() -> Dict[str, Dict[str, List[str]]]:
    modules = _sources()
    graph: Dict[str, Dict[str, List[str]]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for line, target, names in _imports(path):
            if target != 'gczoo' and not target.startswith('gczoo.'):
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != name:
                edges.setdefault(resolved, []).append(f'{path.relative_to(PACKAGE.parent)}:{line}')
    return graph


def test_every_module_is_in_a_layer():
    for module in _sources():
        _layer(module)


def test_no_upward_imports():
    upward = []
    for module, edges in _graph().items():
        for target, where in edges.items():
            if _layer(target) > _layer(module):
                upward.append(f'{module} -> {target} ({", ".join(where)})')
    assert not upward, 'imports that run upward:\n' + '\n'.join(upward)


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 'open'
        for target in graph.get(node, {}):
            if state.get(target) == 'open':
                cycles.append(' -> '.join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 'done'

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, 'import cycles:\n' + '\n'.join(cycles)


def test_no_private_names_across_modules():
    modules = _sources()
    found = []
    for module, path in modules.items():
        for line, target, names in _imports(path):
            if not target.startswith('gczoo'):
                continue
            resolved = _resolve(target, modules)
            same_package = resolved.rpartition('.')[0] == module.rpartition('.')[0] and resolved != 'gczoo'
            private = [n for n in names if n.startswith('_') and not n.startswith('__')]
            if private and not same_package:
                found.append(f'{path.relative_to(PACKAGE.parent)}:{line} imports {", ".join(private)} from {target}')
    assert not found, 'private names imported from another module:\n' + '\n'.join(found)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob('*.py')
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f'modules over ~500 lines (split by concern): {long}'


def test_import_gczoo_needs_no_job_extras():
    """`pip install gczoo` (no extras) is enough for `import gczoo; timm.create_model(...)`."""
    code = ('import sys, gczoo, timm; timm.create_model("resnet50_gc"); '
            'extras = ("torchmetrics", "matplotlib", "sklearn", "skimage", "onnx", "onnxruntime", "yaml_include"); '
            'print(sorted(m for m in extras if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '[]', f'import gczoo pulled in optional packages: {out.stdout}'


def test_main_blocks_and_main_files_are_walked(tmp_path, monkeypatch):
    """An upward import in an ``if __name__ == '__main__':`` block or a ``__main__.py`` counts."""
    package = tmp_path / 'gczoo'
    (package / 'models').mkdir(parents=True)
    (package / 'models' / 'tool.py').write_text(
        "import sys\n\nif __name__ == '__main__':\n    from gczoo.cli import run_command\n"
        "    sys.exit(run_command('tool'))\n")
    (package / 'models' / '__main__.py').write_text("from gczoo.hub import main\n")
    for name in ('cli.py', 'hub.py', '__init__.py', 'models/__init__.py'):
        (package / name).write_text('')
    monkeypatch.setattr(sys.modules[__name__], 'PACKAGE', package)
    assert [t for _, t, _ in _imports(package / 'models' / 'tool.py')] == ['sys', 'gczoo.cli']
    assert 'gczoo.models.__main__' in _sources()
    with pytest.raises(AssertionError, match=r'gczoo\.models\.__main__ -> gczoo\.hub(.|\n)*'
                                             r'gczoo\.models\.tool -> gczoo\.cli \(gczoo/models/tool\.py:4\)'):
        test_no_upward_imports()


def test_no_function_over_80_lines():
    """timm's style: a function does one thing; a longer one is split into named steps."""
    long = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f'{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)')
    assert not long, 'functions over 80 lines (split them):\n' + '\n'.join(long)


def test_a_top_level_module_must_be_given_a_layer():
    """The package root is a layer entry for gczoo/__init__.py alone, not a prefix that places every module."""
    with pytest.raises(AssertionError, match='is in no layer'):
        _layer('gczoo.some_new_module')
    assert _layer('gczoo') == _layer('gczoo.models')
