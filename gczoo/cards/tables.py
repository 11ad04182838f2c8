"""The README's generated tables (models, blocks) and their replacement between markers."""
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from gczoo.files import atomic_write_text
from gczoo.layers import ATTN_SPECS
from gczoo.models import ZOO_MODELS
from gczoo.models.tags import tags_for
from gczoo.papers import get_paper

from .measured import IMG_SIZE, complexity_of, has_accuracy, load_complexity
from .metadata import published_metrics

__all__ = [
    'TABLE_START', 'TABLE_END', 'BLOCKS_TABLE_START', 'BLOCKS_TABLE_END', 'models_table_markdown',
    'blocks_table_markdown', 'update_readme',
]

TABLE_START = '<!-- models-table:start -->'
TABLE_END = '<!-- models-table:end -->'
BLOCKS_TABLE_START = '<!-- blocks-table:start -->'
BLOCKS_TABLE_END = '<!-- blocks-table:end -->'


def _top1_cell(name: str, result: Optional[Mapping[str, Any]]) -> str:
    """Measured top-1 if given; else the default tag's published top-1 where it is this model's, or why not."""
    if has_accuracy(name, result):
        return f"{result['top1']:.2f}"
    rows = tags_for(name)
    if not rows:
        return 'no weights yet'
    tag, metrics = rows[0], published_metrics(rows[0])
    top1 = next((m for m in metrics if m.name == 'top1'), None)
    if top1 is not None:
        return f'{top1.value:.2f} (`{tag.tag}`)'
    what = 'backbone only' if tag.kind == 'detection_backbone' else 'not measured'
    return f'{what} (`{tag.tag}`)'


def models_table_markdown(
        complexity: Optional[Mapping[str, Mapping[str, Any]]] = None,
        results: Optional[Mapping[str, Mapping[str, Any]]] = None,
        cards_dir: str = 'model_cards',
) -> str:
    """The README's model table: one row per zoo model with its blocks, measured cost, and its ImageNet
    top-1: measured (``results``), or its default pretrained tag's where that is the model's own."""
    table = dict(complexity) if complexity is not None else load_complexity()
    lines = [
        f'| model | attention blocks | params (M) | GMACs @{IMG_SIZE} | vs resnet50 | paper | '
        f'ImageNet top-1 (default tag) | card |',
        '|---|---|---:|---:|---:|---|---:|---|',
    ]
    for name, zoo in ZOO_MODELS.items():
        cost = complexity_of(name, table)
        paper = get_paper(zoo.paper)
        lines.append(
            f'| `{name}` | {zoo.summary} | {cost["params_m"]:.2f} | {cost["gmacs"]:.3f} | '
            f'{cost["gmacs_vs_resnet50"]:.3f}x | [arXiv:{paper.arxiv}]({paper.url}) | '
            f'{_top1_cell(name, (results or {}).get(name))} | [card]({cards_dir}/{name}.md) |')
    return '\n'.join(lines)


def blocks_table_markdown() -> str:
    """The README's block table rows (its header stays in the README): one row per registry name."""
    return '\n'.join(f'| `{name}` | `{spec.cls.__name__}` | {spec.summary} | {spec.citation} |'
                     for name, spec in ATTN_SPECS.items())


def update_readme(
        readme: Union[str, Path], table: str, start_marker: str = TABLE_START, end_marker: str = TABLE_END) -> bool:
    """Replace the text between ``start_marker`` and ``end_marker`` in ``readme``; True if it changed."""
    path = Path(readme)
    if not path.is_file():
        raise ValueError(f'--readme {str(path)!r} does not exist')
    text = path.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f'--readme {str(path)!r} needs the markers {start_marker} and {end_marker} (in that order) '
                         f'around the generated table')
    new = text[:start + len(start_marker)] + '\n' + table.strip() + '\n' + text[end:]
    if new != text:
        atomic_write_text(path, new)
    return new != text
