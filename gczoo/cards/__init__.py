"""Model cards and the README's tables, generated from the zoo's tables and measured numbers.

Everything a card states comes from a source that can be checked:

* architecture and where the blocks sit: ``ZOO_MODELS`` (its ``Placement`` rows), the depth's row
  (``gczoo.models.depths``: blocks per stage, the ImageNet ResNet the backbone starts from) and the
  model itself, built on the ``meta`` device (no weights are allocated; its ``feature_info`` gives the
  strides);
* the paper: ``gczoo.papers`` (title, arXiv id, BibTeX, the parameters its table reports);
* parameters and GMACs at 224: ``gczoo.complexity.count_complexity``, measured when ``gczoo cards``
  runs and written to ``model_cards/complexity.json`` (cards rendered later read that file; a model
  missing from it is measured on the spot);
* the pretrained weights: ``gczoo.models.tags`` (each tag's source, licence, datasets, what is trained
  and what is at init, the source's published results and whether they are the model's own);
* accuracy: only numbers measured with ``gczoo eval`` (or passed by the publishing flow), with their
  dataset and command, or the published results of the very weights a tag loads; a non-finite number
  is refused;
* the Hub front matter: ``huggingface_hub.ModelCardData`` (``base_model`` and ``datasets`` from where
  the weights come from, ``model-index`` only for measured metrics), written by ``ModelCard``.

``gczoo cards`` writes ``model_cards/<model>.md`` for every model in ``ZOO_MODELS`` and, with
``--readme README.md``, replaces the README's tables between their markers
(``<!-- models-table:start -->`` ... ``<!-- models-table:end -->``, and the blocks table's).

Modules: ``measured`` (complexity and results, checked), ``metadata`` (Hub metadata), ``render`` (the
card), ``tables`` (README tables), ``command`` (``gczoo cards``).
"""
from .command import main, write_model_cards
from .measured import (
    COMPLEXITY_FILE, DEFAULT_CARDS_DIR, IMG_SIZE, RESULTS_FILE, check_metrics, load_complexity, load_results,
)
from .metadata import block_tags, card_data, published_metrics, source_metadata
from .render import GITHUB_REPO, block_positions, render_model_card
from .tables import (
    BLOCKS_TABLE_END, BLOCKS_TABLE_START, TABLE_END, TABLE_START, blocks_table_markdown, models_table_markdown,
    update_readme,
)

__all__ = [
    'TABLE_START', 'TABLE_END', 'BLOCKS_TABLE_START', 'BLOCKS_TABLE_END', 'DEFAULT_CARDS_DIR', 'COMPLEXITY_FILE',
    'RESULTS_FILE', 'IMG_SIZE', 'GITHUB_REPO', 'block_tags', 'block_positions', 'card_data', 'source_metadata',
    'published_metrics', 'check_metrics', 'load_complexity', 'load_results', 'render_model_card',
    'models_table_markdown', 'blocks_table_markdown', 'update_readme', 'write_model_cards', 'main',
]
