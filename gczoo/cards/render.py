"""A zoo model's Markdown model card: architecture and placements read off the model, cost measured,
the paper from ``gczoo.papers``, its pretrained tags from ``gczoo.models.tags``, accuracy only as
measured or published for the very weights, and Hub front matter written by ``huggingface_hub``."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from huggingface_hub import ModelCard

from gczoo.layers import ATTN_SPECS
from gczoo.models import attention_modules
from gczoo.models.depths import get_depth
from gczoo.models.tags import Tag, tags_for
from gczoo.papers import get_paper, reported_figures

from .measured import IMG_SIZE, complexity_of, has_accuracy, zoo_row
from .metadata import card_data, meta_model, published_metrics

__all__ = ['GITHUB_REPO', 'KIND_NAMES', 'block_positions', 'source_link', 'render_model_card']

GITHUB_REPO = 'gczoo/gczoo'  # torch.hub.load(GITHUB_REPO, name); the pretrained cfgs' origin_url
# what each kind of pretrained tag is, in a phrase (gczoo.models.tags.KINDS)
KIND_NAMES = {
    'identity': 'ImageNet ResNet, attention blocks at identity init',
    'transplant': 'ImageNet ResNet backbone, attention blocks at their (non-identity) init',
    'same_architecture': 'the same architecture, trained as a whole',
    'detection_backbone': 'detector backbone, attention blocks trained',
    'gczoo': 'trained with gczoo',
}


def block_positions(model_name: str) -> List[Tuple[str, str, int, List[str]]]:
    """``(stage, how, channels, module names)`` per stage holding blocks, read off the built model."""
    return _block_positions(meta_model(model_name))


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


def source_link(tag: Tag) -> str:
    """Markdown link to a tag's source: its Hub repo, or its URL."""
    if tag.is_url:
        return f'[{tag.source_name}]({tag.source})'
    return f'[{tag.source}](https://huggingface.co/{tag.source})'


def _metrics_text(tag: Tag) -> str:
    shown = published_metrics(tag) or [m for m in tag.metrics if m.img_size in (None, 224)] or list(tag.metrics)
    parts = [f'{m.dataset} {m.name} {m.value:.2f}' + (f' at {m.img_size}' if m.img_size else '') for m in shown]
    evidence = sorted({m.evidence for m in shown})
    return '; '.join(parts) + ''.join(f' ([published]({url}))' for url in evidence) if parts else 'none published'


def _weights_section(model_name: str) -> str:
    rows = tags_for(model_name)
    if not rows:
        return ''
    lines = [f"`timm.create_model('{model_name}', pretrained=True)` loads the first (default) tag; "
             f"`timm.create_model('{model_name}.TAG', pretrained=True)` any of them. Each tag's pretrained cfg "
             f'carries its source\'s preprocessing (`timm.data.resolve_model_data_config`).']
    for i, tag in enumerate(rows):
        lines += [
            '', f'### `{tag.name}`' + (' (default)' if i == 0 else ''), '',
            f'- **Weights:** {KIND_NAMES.get(tag.kind, tag.kind)}, from {source_link(tag)} '
            f'(licence {tag.license}; trained on {", ".join(tag.datasets)})',
            f'- **Trained:** {tag.trained}',
            f'- **At init:** {tag.untrained}',
            f'- **Published results of the source:** {_metrics_text(tag)}',
            f'- **This model\'s?** {"yes" if tag.metrics_apply else "no"}: {tag.evidence}',
        ]
        lines += [f'- {note}' for note in tag.notes]
    return '\n'.join(lines)


def _accuracy_section(model_name: str, results: Optional[Mapping[str, Any]], registry: bool) -> str:
    if has_accuracy(model_name, results):
        top5 = results.get('top5')
        text = '\n'.join([
            '| dataset | top-1 (%) | top-5 (%) | image size | crop_pct | images |',
            '|---|---:|---:|---:|---:|---:|',
            f"| {results.get('dataset', 'not stated')} | {results['top1']:.2f} | "
            f"{'%.2f' % top5 if top5 is not None else '-'} | {results.get('img_size', '-')} | "
            f"{results.get('crop_pct', '-')} | {results.get('count', '-')} |",
        ])
        if results.get('command'):
            text += f"\n\nMeasured with:\n\n```bash\n{results['command']}\n```"
        return text
    rows = tags_for(model_name) if registry else ()
    if not rows:
        return ('**No published weights yet**, so this card reports no accuracy. The numbers will appear here '
                'once weights are trained and evaluated with `gczoo eval` (dataset and command included).')
    tag, metrics = rows[0], published_metrics(rows[0])
    if metrics:
        values = ', '.join(f'{m.name} {m.value:.2f}' for m in metrics)
        top1 = metrics[0]
        return (f'With the default tag `{tag.name}`: ImageNet-1k val {values} at {top1.img_size}x{top1.img_size} '
                f'(crop_pct {top1.crop_pct}, {top1.interpolation}), the [published result]({top1.evidence}) of '
                f'`{tag.source_name}`, which is this model\'s too: {tag.evidence.rstrip(".")}.')
    return f'No ImageNet accuracy is known for the default tag `{tag.name}`: {tag.evidence.rstrip(".")}.'


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
    (a ``gczoo eval`` JSON works as is); a non-finite metric is a ``ValueError``. ``complexity``:
    ``{model: count_complexity row}``; default ``model_cards/complexity.json``, with models missing
    from it measured now. ``base_model`` / ``datasets``: where the card's weights come from (a
    published training run, see :func:`~gczoo.cards.card_data`); without them the card describes the
    registry's pretrained tags.
    """
    zoo = zoo_row(model_name)
    registry = base_model is None and datasets is None
    depth = get_depth(zoo.depth)
    paper, resnet_paper = get_paper(zoo.paper), get_paper('resnet')
    cost = complexity_of(model_name, complexity)
    metadata = card_data(model_name, results, base_model=base_model, datasets=datasets)
    backbone = depth.imagenet_resnet
    block_lines = [f'- `{p.attn}`: {ATTN_SPECS[p.attn].cls.__name__} - {ATTN_SPECS[p.attn].summary}'
                   + (f' (settings: {dict(p.kwargs)})' if p.kwargs else '') for p in zoo.placements]
    reported = reported_figures(model_name, zoo.paper)
    paper_params = (f' (the paper\'s table: {reported.params_m:.2f} M)'
                    if reported is not None and reported.params_m else '')
    weights = _weights_section(model_name) if registry else ''
    pretrained = (f"# its default pretrained tag ({tags_for(model_name)[0].name}, see Pretrained weights):\n"
                  f"model = timm.create_model('{model_name}', pretrained=True)\n" if weights else '')

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
        _placement_section(model_name, zoo.depth),
        '## Accuracy\n\n' + _accuracy_section(model_name, results, registry),
    ]
    if weights:
        sections.append('## Pretrained weights\n\n' + weights)
    sections += _usage_sections(model_name, backbone, pretrained)
    sections.append('## Citation\n\n```bibtex\n' + paper.bibtex + '\n\n' + resnet_paper.bibtex + '\n```')
    # huggingface_hub writes (and re-parses) the YAML front matter
    return str(ModelCard(f'---\n{metadata.to_yaml()}\n---\n\n' + '\n\n'.join(sections) + '\n'))


def _placement_section(model_name: str, depth: int) -> str:
    """The table of where the attention blocks sit (stage, count, channels, position, module names)."""
    model = meta_model(model_name)
    reductions = {info['module']: info['reduction'] for info in model.feature_info}
    lines = []
    for stage, how, channels, names in _block_positions(model):
        shown = ', '.join(f'`{n}`' for n in names[:6]) + (f' ... ({len(names)} in all)' if len(names) > 6 else '')
        lines.append(f'| {_stage_label(stage, depth, reductions)} | {len(names)} | {channels} | {how} | {shown} |')
    return ('### Where the blocks sit\n\n'
            '| stage | attention blocks | channels | position | modules |\n|---|---:|---:|---|---|\n' + '\n'.join(lines))


def _usage_sections(model_name: str, backbone: str, pretrained: str) -> List[str]:
    """Create, torch.hub, fine-tune and evaluate: the commands a card shows."""
    return [
        '## Usage',
        '### Create the model\n\n```python\nimport timm\nimport gczoo  # registers the gczoo models with timm\n\n'
        + pretrained +
        f'# ImageNet backbone ({backbone}), attention blocks at their init:\n'
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
    ]
