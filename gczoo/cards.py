"""Model cards and the README's model table, generated from the zoo registry and measured numbers.

Everything a card states comes from a source that can be checked:

* architecture and where the blocks sit: ``ZOO_MODELS`` (its ``Placement`` rows), the depth's row
  (``gczoo.models.depths``: blocks per stage, the ImageNet ResNet the backbone starts from) and the
  model itself, built on the ``meta`` device (no weights are allocated; its ``feature_info`` gives the
  strides);
* the paper: ``gczoo.papers`` (title, arXiv id, BibTeX, the parameters its table reports);
* parameters and GMACs at 224: ``gczoo.complexity.count_complexity``, measured when ``gczoo cards``
  runs and written to ``model_cards/complexity.json`` (cards rendered later read that file; a model
  missing from it is measured on the spot);
* accuracy: only numbers measured with ``gczoo eval`` (or passed by the publishing helper), with
  their dataset and command; a model without them says that no weights are published yet, and a
  non-finite number is refused;
* the Hub front matter: ``huggingface_hub.ModelCardData`` (``base_model`` and ``datasets`` from where
  the weights come from, ``model-index`` only for measured metrics), written by ``ModelCard``.

``gczoo cards`` writes ``model_cards/<model>.md`` for every model in ``ZOO_MODELS`` and, with
``--readme README.md``, replaces the README's table between ``<!-- models-table:start -->`` and
``<!-- models-table:end -->``.
"""
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from gczoo.args import ArgumentParser
from gczoo.complexity import BASELINE_MODEL, complexity_table, count_complexity, write_json
from gczoo.files import atomic_write_text
from gczoo.layers import ATTN_SPECS
from gczoo.models import ZOO_MODELS, attention_modules
from gczoo.models.depths import get_depth
from gczoo.papers import get_paper, reported_figures

__all__ = [
    'TABLE_START', 'TABLE_END', 'BLOCKS_TABLE_START', 'BLOCKS_TABLE_END', 'DEFAULT_CARDS_DIR', 'block_tags',
    'block_positions', 'card_data', 'source_metadata', 'check_metrics', 'load_complexity', 'load_results',
    'render_model_card', 'models_table_markdown', 'blocks_table_markdown', 'update_readme', 'write_model_cards',
    'main',
]

TABLE_START = '<!-- models-table:start -->'
TABLE_END = '<!-- models-table:end -->'
BLOCKS_TABLE_START = '<!-- blocks-table:start -->'
BLOCKS_TABLE_END = '<!-- blocks-table:end -->'
DEFAULT_CARDS_DIR = Path(__file__).resolve().parent.parent / 'model_cards'
COMPLEXITY_FILE = 'complexity.json'
RESULTS_FILE = 'results.json'
GITHUB_REPO = 'gczoo/gczoo'  # torch.hub.load(GITHUB_REPO, name); the pretrained cfgs' origin_url
IMG_SIZE = 224
METRICS = ('top1', 'top5')  # the measured numbers a card may state

# Hub tag per block class (the zoo's block names are short registry names: gc, nl_sub, ...)
_CLASS_TAGS = {
    'ContextBlock': 'global-context', 'SimplifiedNonLocal': 'simplified-non-local', 'NonLocal2d': 'non-local',
    'SqueezeExcite': 'squeeze-excitation', 'CBAM': 'cbam', 'BAM': 'bam',
    'CrissCrossAttention': 'criss-cross-attention', 'SelfAttention2d': 'self-attention',
}
# Hub dataset ids of the datasets timm's pretrained tags name (``resnet50.a1_in1k``: ImageNet-1k)
_TAG_DATASETS = {'in1k': 'imagenet-1k', 'in12k': 'imagenet-12k', 'in21k': 'imagenet-21k', 'in22k': 'imagenet-22k'}


def _zoo(model_name: str) -> Any:
    if model_name not in ZOO_MODELS:
        raise ValueError(f'unknown gczoo model {model_name!r}; valid names: {", ".join(ZOO_MODELS)}')
    return ZOO_MODELS[model_name]


def _meta_model(model_name: str) -> torch.nn.Module:
    with torch.device('meta'):
        return timm.create_model(model_name, pretrained=False)


def block_tags(model_name: str) -> List[str]:
    """The Hub tags naming the model's attention blocks (e.g. ``['global-context']``)."""
    tags: List[str] = []
    for placement in _zoo(model_name).placements:
        cls_name = ATTN_SPECS[placement.attn].cls.__name__
        tag = _CLASS_TAGS.get(cls_name, cls_name.lower())
        if tag not in tags:
            tags.append(tag)
    return tags


def block_positions(model_name: str) -> List[Tuple[str, str, int, List[str]]]:
    """``(stage, how, channels, module names)`` per stage holding blocks, read off the built model."""
    return _block_positions(_meta_model(model_name))


def _block_positions(model: torch.nn.Module) -> List[Tuple[str, str, int, List[str]]]:
    by_stage: Dict[str, List[Tuple[str, torch.nn.Module]]] = {}
    for name, module in attention_modules(model):
        by_stage.setdefault(name.split('.')[0], []).append((name, module))
    out = []
    for stage, entries in by_stage.items():
        inside = all(name.endswith('.se') for name, _ in entries)
        how = ('inside the residual block (timm\'s `se` slot: after the last conv + BN, before the residual add)'
               if inside else 'after the residual block (inserted into the stage\'s `nn.Sequential`)')
        channels = int(getattr(entries[0][1], 'channels', 0) or 0)
        out.append((stage, how, channels, [name for name, _ in entries]))
    return out


def _stage_label(stage: str, depth: int, reductions: Mapping[str, int]) -> str:
    idx = int(stage[len('layer'):])
    blocks = get_depth(depth).layers[idx - 1]
    size = IMG_SIZE // reductions[stage]  # the stage's stride, as timm's feature_info reports it
    return f'`{stage}` (res{idx + 1} / c{idx + 1}: {blocks} residual blocks, {size}x{size} at {IMG_SIZE})'


# ---------------------------------------------------------------------------------------------------
# measured numbers


def load_complexity(path: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, Any]]:
    """``{model: count_complexity row}`` from ``model_cards/complexity.json`` (``{}`` if there is none)."""
    path = Path(path) if path is not None else DEFAULT_CARDS_DIR / COMPLEXITY_FILE
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'complexity file {str(path)!r} is not valid JSON: {e}') from e
    models = payload.get('models') if isinstance(payload, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f'complexity file {str(path)!r} has no "models" object (write it with `gczoo cards`)')
    return models


def _complexity_of(model_name: str, complexity: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Any]:
    table = dict(complexity) if complexity is not None else load_complexity()
    row = dict(table[model_name]) if model_name in table else count_complexity(model_name, IMG_SIZE)
    if 'gmacs_vs_resnet50' not in row:
        base = table.get(BASELINE_MODEL) or count_complexity(BASELINE_MODEL, IMG_SIZE)
        row['gmacs_vs_resnet50'] = row['gmacs'] / base['gmacs']
    return row


def _result_model(entry: Mapping[str, Any]) -> Optional[str]:
    """Which zoo model an eval result is for: its ``architecture``, else its ``model`` name."""
    for key in ('architecture', 'model'):
        name = entry.get(key)
        if isinstance(name, str):
            name = name.split(':')[-1].split('/')[-1].split('.')[0]
            if name in ZOO_MODELS:
                return name
    return None


def check_metrics(results: Optional[Mapping[str, Any]], where: str) -> None:
    """Refuse measured metrics that are not finite numbers (a card never states NaN accuracy)."""
    for key in METRICS:
        value = (results or {}).get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f'{where}: {key} is {value!r}, not a finite number; a card states only measured '
                             f'accuracy: re-run `gczoo eval` and pass its JSON')


def load_results(paths: Iterable[Union[str, Path]]) -> Dict[str, Dict[str, Any]]:
    """Measured results by zoo model, from JSON files: ``gczoo eval`` outputs (one result each, or a
    list of them) or an object ``{model: {top1, top5, dataset, command, ...}}``. Later files win."""
    out: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f'results file {str(path)!r} does not exist')
        try:
            payload = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f'results file {str(path)!r} is not valid JSON: {e}') from e
        entries: List[Mapping[str, Any]]
        if isinstance(payload, list):
            entries = payload
        elif isinstance(payload, dict) and 'top1' in payload:
            entries = [payload]
        elif isinstance(payload, dict):
            entries = [dict(v, model=k) for k, v in payload.items() if isinstance(v, dict)]
        else:
            raise ValueError(f'results file {str(path)!r} must hold a result object, a list of them, or {{model: result}}')
        for entry in entries:
            name = _result_model(entry)
            if name is None:
                raise ValueError(f'results file {str(path)!r}: cannot tell which gczoo model {entry.get("model")!r} is')
            check_metrics(entry, f'results file {str(path)!r}, {name}')
            out[name] = dict(entry)
    return out


def _has_accuracy(model_name: str, results: Optional[Mapping[str, Any]]) -> bool:
    check_metrics(results, f'results for {model_name}')
    return bool(results) and results.get('top1') is not None


# ---------------------------------------------------------------------------------------------------
# Hub metadata


def source_metadata(timm_name: str) -> Tuple[Optional[str], List[str]]:
    """``(Hub repo id, training datasets)`` of timm pretrained weights named with their tag, e.g.
    ``'resnet50.a1_in1k'`` -> ``('timm/resnet50.a1_in1k', ['imagenet-1k'])``: the repo from timm's own
    pretrained cfg, the datasets from the tag's ``in1k``/``in12k``/``in21k``/``in22k`` parts (timm's
    naming convention; a tag without them gives no dataset)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag
    cfg = get_pretrained_cfg(timm_name, allow_unregistered=False) if timm.is_model(timm_name) else None
    _, tag = split_model_name_tag(timm_name)
    datasets = [_TAG_DATASETS[part] for part in tag.split('_') if part in _TAG_DATASETS]
    return (cfg.hf_hub_id if cfg is not None else None), list(dict.fromkeys(datasets))


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'unknown'


def card_data(
        model_name: str,
        results: Optional[Mapping[str, Any]] = None,
        *,
        base_model: Optional[str] = None,
        datasets: Optional[Sequence[str]] = None,
        license: Optional[str] = None,
) -> ModelCardData:
    """The card's Hub metadata (``huggingface_hub.ModelCardData``).

    ``base_model`` / ``datasets``: the weights' origin and the Hub ids of the data they were trained on.
    By default (a card for the architecture, no weights of its own) the ImageNet ResNet of the
    model's depth that its backbone starts from (``gczoo.models.depths``) and that ResNet's training
    data. ``model-index`` is written only for measured ``results`` (their ``dataset``; ``dataset_id``
    if given, else a slug of it).
    """
    zoo = _zoo(model_name)
    if base_model is None and datasets is None:
        base_model, datasets = source_metadata(get_depth(zoo.depth).imagenet_resnet)
    eval_results = None
    if _has_accuracy(model_name, results):
        dataset = str(results.get('dataset') or 'not stated')
        dataset_id = str(results.get('dataset_id') or _slug(dataset))
        eval_results = [
            EvalResult(task_type='image-classification', dataset_type=dataset_id, dataset_name=dataset,
                       metric_type='accuracy', metric_name=f'{key[:3]}-{key[3:]} accuracy',
                       metric_value=round(float(results[key]), 4))
            for key in METRICS if results.get(key) is not None]
    if license is None:
        license = _meta_model(model_name).pretrained_cfg.get('license') or 'apache-2.0'
    return ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'gczoo'] + block_tags(model_name),
        base_model=base_model, datasets=list(datasets) if datasets else None,
        model_name=model_name if eval_results else None, eval_results=eval_results)


# ---------------------------------------------------------------------------------------------------
# rendering


def _accuracy_section(model_name: str, results: Optional[Mapping[str, Any]]) -> str:
    zoo = _zoo(model_name)
    if not _has_accuracy(model_name, results):
        published = ', '.join(f'`hf-hub:gczoo/{model_name}.{t}`' for t in zoo.published_tags)
        if published:
            return (f'Weights: {published}. No accuracy has been measured for this card yet; measure it with '
                    f'`gczoo eval` (see Usage).')
        return ('**No published weights yet**, so this card reports no accuracy. The numbers will appear here '
                'once weights are trained and evaluated with `gczoo eval` (dataset and command included).')
    top5 = results.get('top5')
    rows = [
        '| dataset | top-1 (%) | top-5 (%) | image size | crop_pct | images |',
        '|---|---:|---:|---:|---:|---:|',
        f"| {results.get('dataset', 'not stated')} | {results['top1']:.2f} | "
        f"{'%.2f' % top5 if top5 is not None else '-'} | {results.get('img_size', '-')} | "
        f"{results.get('crop_pct', '-')} | {results.get('count', '-')} |",
    ]
    command = results.get('command')
    text = '\n'.join(rows)
    if command:
        text += f'\n\nMeasured with:\n\n```bash\n{command}\n```'
    return text


def render_model_card(
        model_name: str,
        results: Optional[Mapping[str, Any]] = None,
        *,
        complexity: Optional[Mapping[str, Mapping[str, Any]]] = None,
        base_model: Optional[str] = None,
        datasets: Optional[Sequence[str]] = None,
) -> str:
    """The Markdown model card (with Hub YAML front matter) of a zoo model.

    ``results``: measured accuracy, e.g. ``{'top1': ..., 'top5': ..., 'dataset': ..., 'command': ...}``
    (a ``gczoo eval`` JSON works as is); without ``top1`` the card says that no accuracy was measured,
    and a non-finite metric is a ``ValueError``. ``complexity``: ``{model: count_complexity row}``;
    default ``model_cards/complexity.json``, with models missing from it measured now.
    ``base_model`` / ``datasets``: where the weights come from (see :func:`card_data`).
    """
    zoo = _zoo(model_name)
    depth = get_depth(zoo.depth)
    paper, resnet_paper = get_paper(zoo.paper), get_paper('resnet')
    cost = _complexity_of(model_name, complexity)
    meta_model = _meta_model(model_name)
    reductions = {info['module']: info['reduction'] for info in meta_model.feature_info}
    metadata = card_data(model_name, results, base_model=base_model, datasets=datasets,
                         license=meta_model.pretrained_cfg.get('license') or 'apache-2.0')
    backbone = depth.imagenet_resnet

    placement_lines = []
    for stage, how, channels, names in _block_positions(meta_model):
        shown = ', '.join(f'`{n}`' for n in names[:6]) + (f' ... ({len(names)} in all)' if len(names) > 6 else '')
        placement_lines.append(
            f'| {_stage_label(stage, zoo.depth, reductions)} | {len(names)} | {channels} | {how} | {shown} |')
    block_lines = [f'- `{p.attn}`: {ATTN_SPECS[p.attn].cls.__name__} - {ATTN_SPECS[p.attn].summary}'
                   + (f' (settings: {dict(p.kwargs)})' if p.kwargs else '') for p in zoo.placements]
    reported = reported_figures(model_name, zoo.paper)
    paper_params = (f' (the paper\'s table: {reported.params_m:.2f} M)'
                    if reported is not None and reported.params_m else '')

    sections = [
        f'# Model card for {model_name}',
        f'{zoo.summary}: a ResNet-{zoo.depth} (timm\'s `resnet{zoo.depth}` layout) with the attention blocks of '
        f'*{paper.title}* ([arXiv:{paper.arxiv}]({paper.url})) where the paper puts them. '
        f'Part of [gczoo](https://github.com/{GITHUB_REPO}), a timm-compatible zoo of classic attention blocks.',
        '## Model details',
        '\n'.join([
            '- **Model type:** image classification / feature backbone',
            f'- **Backbone:** ResNet-{zoo.depth}, {depth.block.__name__} blocks {list(depth.layers)}, stride in the '
            f'3x3 conv (ResNet v1.5, as timm and torchvision); every backbone tensor keeps timm\'s '
            f'`resnet{zoo.depth}` key',
            f'- **Parameters (M):** {cost["params_m"]:.2f}{paper_params}',
            f'- **GMACs at {IMG_SIZE}x{IMG_SIZE}:** {cost["gmacs"]:.3f} ({cost["gmacs_vs_resnet50"]:.3f}x timm\'s '
            f'`resnet50`; GFLOPs = 2 x GMACs = {cost["gflops"]:.3f}), counted by `gczoo complexity` in timm\'s '
            f'convention (attention matmuls included)',
            f'- **Paper:** {paper.title}, [arXiv:{paper.arxiv}]({paper.url})',
        ]),
        '### Attention blocks\n\n' + '\n'.join(block_lines),
        '### Where the blocks sit\n\n'
        '| stage | attention blocks | channels | position | modules |\n|---|---:|---:|---|---|\n' + '\n'.join(placement_lines),
        '## Accuracy\n\n' + _accuracy_section(model_name, results),
        '## Usage',
        '### Create the model\n\n```python\nimport timm\nimport gczoo  # registers the gczoo models with timm\n\n'
        f'# ImageNet backbone ({backbone}), attention blocks at their identity init:\n'
        f"model = timm.create_model('{model_name}', pretrained_backbone='{backbone}')\n"
        f"model = model.eval()\n"
        f"data_config = timm.data.resolve_model_data_config(model)\n"
        f"transform = timm.data.create_transform(**data_config, is_training=False)\n```",
        '### torch.hub\n\n```python\nimport torch\n\n'
        f"model = torch.hub.load('{GITHUB_REPO}', '{model_name}')\n```",
        '### Fine-tune\n\nStart from the ImageNet ResNet and train (torchrun, one process per GPU; `NPROC` sets how many):\n\n'
        f'```bash\nscripts/train.sh --model {model_name} --pretrained-backbone {backbone} --data-dir /path/to/imagenet\n```',
        '### Evaluate\n\n'
        f'```bash\ngczoo eval --model {model_name} --checkpoint model.safetensors --data-dir /path/to/imagenet\n'
        f'NPROC=8 scripts/eval.sh --model local-dir:path/to/weights --data-dir /path/to/imagenet\n```',
        '## Citation\n\n```bibtex\n' + paper.bibtex + '\n\n' + resnet_paper.bibtex + '\n```',
    ]
    # huggingface_hub writes (and re-parses) the YAML front matter
    return str(ModelCard(f'---\n{metadata.to_yaml()}\n---\n\n' + '\n\n'.join(sections) + '\n'))


def models_table_markdown(
        complexity: Optional[Mapping[str, Mapping[str, Any]]] = None,
        results: Optional[Mapping[str, Mapping[str, Any]]] = None,
        cards_dir: str = 'model_cards',
) -> str:
    """The README's model table: one row per zoo model with its blocks, measured cost and accuracy."""
    table = dict(complexity) if complexity is not None else load_complexity()
    lines = [
        f'| model | attention blocks | params (M) | GMACs @{IMG_SIZE} | vs resnet50 | paper | ImageNet top-1 | card |',
        '|---|---|---:|---:|---:|---|---:|---|',
    ]
    for name, zoo in ZOO_MODELS.items():
        cost = _complexity_of(name, table)
        result = (results or {}).get(name)
        top1 = f"{result['top1']:.2f}" if _has_accuracy(name, result) else 'no weights yet'
        paper = get_paper(zoo.paper)
        lines.append(
            f'| `{name}` | {zoo.summary} | {cost["params_m"]:.2f} | {cost["gmacs"]:.3f} | '
            f'{cost["gmacs_vs_resnet50"]:.3f}x | [arXiv:{paper.arxiv}]({paper.url}) | {top1} | '
            f'[card]({cards_dir}/{name}.md) |')
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


def write_model_cards(
        out_dir: Union[str, Path] = DEFAULT_CARDS_DIR,
        *,
        complexity: Optional[Mapping[str, Mapping[str, Any]]] = None,
        results: Optional[Mapping[str, Mapping[str, Any]]] = None,
        models: Optional[Sequence[str]] = None,
) -> List[Path]:
    """Write ``out_dir/<model>.md`` for every zoo model (or ``models``); returns the paths.

    Every card is rendered before any is written, so a bad result or model leaves the folder as it was.
    """
    out = Path(out_dir)
    cards = {name: render_model_card(name, (results or {}).get(name), complexity=complexity)
             for name in (models or list(ZOO_MODELS))}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in cards.items():
        path = out / f'{name}.md'
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog='gczoo cards',
        description='Write model_cards/<model>.md for every gczoo model (complexity measured now and saved to '
                    'model_cards/complexity.json; accuracy only from measured results) and optionally the '
                    "README's model table.")
    p.add_argument('--out-dir', default=str(DEFAULT_CARDS_DIR), help='where the cards go (default: model_cards/)')
    p.add_argument('--readme', metavar='FILE', help=f'also regenerate the table between {TABLE_START} and {TABLE_END}')
    p.add_argument('--results', nargs='*', metavar='JSON', default=None,
                   help='measured results: gczoo eval JSON outputs or {model: {top1, top5, dataset, command}} '
                        f'(default: OUT_DIR/{RESULTS_FILE} if it exists)')
    p.add_argument('--no-measure', action='store_true',
                   help=f'read OUT_DIR/{COMPLEXITY_FILE} instead of measuring parameters and GMACs again')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo cards`` (errors are printed by ``gczoo.cli.run``)."""
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


if __name__ == '__main__':
    import sys

    from gczoo.cli import run_command
    sys.exit(run_command('cards'))
