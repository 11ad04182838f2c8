"""``gczoo cards``: write every card (and the README's tables) from the registry and measured numbers."""
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from gczoo.args import ArgumentParser
from gczoo.complexity import BASELINE_MODEL, complexity_table, write_json
from gczoo.files import atomic_write_text
from gczoo.models import ZOO_MODELS

from .measured import COMPLEXITY_FILE, DEFAULT_CARDS_DIR, IMG_SIZE, RESULTS_FILE, load_complexity, load_results
from .render import render_model_card
from .tables import (
    BLOCKS_TABLE_END, BLOCKS_TABLE_START, TABLE_END, TABLE_START, blocks_table_markdown, models_table_markdown,
    update_readme,
)

__all__ = ['write_model_cards', 'main']


def write_model_cards(
        out_dir: Union[str, Path] = DEFAULT_CARDS_DIR,
        *,
        complexity: Optional[Mapping[str, Mapping[str, Any]]] = None,
        results: Optional[Mapping[str, Mapping[str, Any]]] = None,
        models: Optional[Sequence[str]] = None,
) -> List[Path]:
    """Write ``out_dir/<model>.md`` for every zoo model (or ``models``); returns the paths.

    Every card is rendered before any is written, so a bad result or model leaves the folder as it was;
    each file is written whole or not at all (``gczoo.files``).
    """
    out = Path(out_dir)
    cards = {name: render_model_card(name, (results or {}).get(name), complexity=complexity)
             for name in (models or list(ZOO_MODELS))}
    return [atomic_write_text(out / f'{name}.md', text) for name, text in cards.items()]


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog='gczoo cards',
        description='Write model_cards/<model>.md for every gczoo model (complexity measured now and saved to '
                    'model_cards/complexity.json; accuracy only from measured results or the published results '
                    "of a pretrained tag's own weights) and optionally the README's model and block tables.")
    p.add_argument('--out-dir', default=str(DEFAULT_CARDS_DIR), help='where the cards go (default: model_cards/)')
    p.add_argument('--readme', metavar='FILE', help=f'also regenerate the table between {TABLE_START} and {TABLE_END}')
    p.add_argument('--results', nargs='*', metavar='JSON', default=None,
                   help='measured results: gczoo eval JSON outputs or {model: {top1, top5, dataset, command}} '
                        f'(default: OUT_DIR/{RESULTS_FILE} if it exists)')
    p.add_argument('--no-measure', action='store_true',
                   help=f'read OUT_DIR/{COMPLEXITY_FILE} instead of measuring parameters and GMACs again')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo cards`` (errors are printed by ``gczoo.runner.run``)."""
    args = _parser().parse_args(argv)
    out = Path(args.out_dir)
    complexity_path = out / COMPLEXITY_FILE
    result_files = args.results if args.results is not None else (
        [out / RESULTS_FILE] if (out / RESULTS_FILE).is_file() else [])
    results = load_results(result_files)  # read and checked before anything is written
    if args.no_measure:
        complexity = load_complexity(complexity_path)
        if not complexity:
            raise ValueError(f'--no-measure: {str(complexity_path)!r} does not exist; run without --no-measure')
    else:
        rows = complexity_table(list(ZOO_MODELS), IMG_SIZE, baseline=BASELINE_MODEL, progress=True)
        write_json(rows, complexity_path)
        complexity = load_complexity(complexity_path)
    paths = write_model_cards(out, complexity=complexity, results=results)
    print(f'gczoo cards: wrote {len(paths)} cards to {out} (complexity: {complexity_path}; '
          f'measured accuracy for {len(results)} model(s))')
    if args.readme:
        changed = update_readme(args.readme, models_table_markdown(complexity, results))
        changed |= update_readme(args.readme, blocks_table_markdown(), BLOCKS_TABLE_START, BLOCKS_TABLE_END)
        print(f'gczoo cards: {"updated" if changed else "unchanged"} the model table in {args.readme}')
    return 0
