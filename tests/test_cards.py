"""Model cards: one per zoo model, Hub front matter that parses, numbers measured not copied, and
the README table between its markers. Reads the committed model_cards/complexity.json, so nothing
here counts all twelve models again."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from gczoo.cli import main as cli_main
from gczoo.cards import (
    BLOCKS_TABLE_END, BLOCKS_TABLE_START, DEFAULT_CARDS_DIR, TABLE_END, TABLE_START, block_positions, block_tags, load_complexity, load_results, main,
    models_table_markdown, published_metrics, render_model_card, update_readme,
)
from gczoo.complexity import count_complexity
from gczoo.models import ZOO_MODELS
from gczoo.models.tags import default_tag
from gczoo.papers import get_paper

CARDS = DEFAULT_CARDS_DIR


def _front_matter(text: str) -> dict:
    match = re.match(r'^---\n(.*?)\n---\n', text, flags=re.S)
    assert match, 'card does not start with YAML front matter'
    return yaml.safe_load(match.group(1))


@pytest.mark.parametrize('model_name', list(ZOO_MODELS))
def test_every_model_has_a_card_whose_yaml_parses(model_name):
    path = CARDS / f'{model_name}.md'
    assert path.is_file(), f'no card for {model_name}: run `gczoo cards`'
    text = path.read_text()
    meta = _front_matter(text)
    assert meta['library_name'] == 'timm'
    assert meta['license'] == 'apache-2.0'
    assert meta['datasets'] == ['imagenet-1k']
    assert {'image-classification', 'timm', 'gczoo'} <= set(meta['tags'])
    assert set(block_tags(model_name)) <= set(meta['tags'])
    zoo = ZOO_MODELS[model_name]
    assert f'arXiv:{get_paper(zoo.paper).arxiv}' in text and '```bibtex' in text
    assert get_paper(zoo.paper).bibtex in text and get_paper('resnet').bibtex in text
    # accuracy is claimed only where it was measured: the default tag's published result, if it is this model's
    tag = default_tag(model_name)
    assert f'`{tag.name}` (default)' in text and 'No published weights yet' not in text
    metrics = published_metrics(tag)
    assert ('model-index' in meta) == bool(metrics)
    if metrics:
        assert [m['value'] for m in meta['model-index'][0]['results'][0]['metrics']] == [m.value for m in metrics]
        assert f'top1 {metrics[0].value:.2f}' in text.split('## Accuracy')[1].split('##')[0]
    else:
        assert tag.evidence in text.split('## Accuracy')[1].split('##')[0]
    assert f"timm.create_model('{model_name}'" in text and f"torch.hub.load('gczoo/gczoo', '{model_name}')" in text
    assert f'scripts/train.sh --model {model_name} --pretrained-backbone' in text
    # the card is what the generator writes today (regenerate with `gczoo cards` after changing the zoo)
    assert text == render_model_card(model_name)


def test_no_stray_cards():
    assert sorted(p.stem for p in CARDS.glob('*.md')) == sorted(ZOO_MODELS)


def test_committed_complexity_is_current():
    table = load_complexity(CARDS / 'complexity.json')
    assert set(table) == set(ZOO_MODELS) | {'resnet50'}
    fresh = count_complexity('resnet18_gc', 224)
    assert table['resnet18_gc']['gmacs'] == pytest.approx(fresh['gmacs'], abs=1e-6)
    assert table['resnet18_gc']['params_m'] == pytest.approx(fresh['params_m'], abs=1e-6)
    assert round(table['resnet50']['gmacs'], 2) == 4.11


def test_card_states_measured_numbers_and_placements():
    table = load_complexity(CARDS / 'complexity.json')
    text = render_model_card('resnet50_gc', complexity=table)
    assert f"**Parameters (M):** {table['resnet50_gc']['params_m']:.2f}" in text
    assert f"{table['resnet50_gc']['gmacs']:.3f}" in text
    assert "(the paper's table: 28.08 M)" in text
    assert '`layer2.0.se`' in text and '`layer4.2.se`' in text and 'layer1' not in text.split('## Accuracy')[0].split('### Where')[1]
    stages = [stage for stage, _, _, _ in block_positions('resnet50_nl')]
    assert stages == ['layer2', 'layer3']
    assert '`layer3.attn5`' in render_model_card('resnet50_nl', complexity=table)


def test_card_with_results():
    results = {'top1': 77.701, 'top5': 93.66, 'dataset': 'ImageNet-1k val (50,000 images)',
               'command': 'NPROC=8 scripts/eval.sh --model local-dir:out/export --data-dir /data/imagenet',
               'img_size': 224, 'crop_pct': 0.875, 'count': 50000}
    text = render_model_card('resnet50_gc', results)
    assert '| ImageNet-1k val (50,000 images) | 77.70 | 93.66 | 224 | 0.875 | 50000 |' in text
    assert results['command'] in text
    assert 'No published weights yet' not in text
    _front_matter(text)
    with pytest.raises(ValueError, match="unknown gczoo model 'resnet50_gx'"):
        render_model_card('resnet50_gx')


def test_load_results_formats(tmp_path):
    eval_json = tmp_path / 'eval.json'
    eval_json.write_text(json.dumps({'model': 'local-dir:/x/export', 'architecture': 'resnet18_gc', 'top1': 70.0}))
    mapping = tmp_path / 'results.json'
    mapping.write_text(json.dumps({'resnet50_se': {'top1': 77.0, 'top5': 93.5}}))
    results = load_results([eval_json, mapping])
    assert results['resnet18_gc']['top1'] == 70.0 and results['resnet50_se']['top5'] == 93.5
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'model': 'vit_base', 'top1': 1.0}))
    with pytest.raises(ValueError, match='cannot tell which gczoo model'):
        load_results([bad])


def test_readme_table_between_markers(tmp_path):
    table = models_table_markdown(load_complexity(CARDS / 'complexity.json'), {'resnet50_gc': {'top1': 77.7}})
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == len(ZOO_MODELS)
    # measured (results) wins; otherwise the default tag's published top-1 where it is the model's own
    r4 = default_tag('resnet50_gc_r4')
    assert '| 77.70 |' in rows[0] and f'| {published_metrics(r4)[0].value:.2f} (`{r4.tag}`) |' in rows[1]
    assert '| not measured (`a1_in1k_untrained_attn`) |' in table  # CBAM/BAM gates at init: no claim
    readme = tmp_path / 'README.md'
    readme.write_text(f'# gczoo\n\nintro\n\n{TABLE_START}\nold table\n{TABLE_END}\n\nafter\n')
    assert update_readme(readme, table) is True
    text = readme.read_text()
    assert 'old table' not in text and table in text and text.endswith('after\n') and text.startswith('# gczoo')
    assert update_readme(readme, table) is False  # idempotent
    readme.write_text('# no markers\n')
    with pytest.raises(ValueError, match='needs the markers'):
        update_readme(readme, table)


def test_cards_command(tmp_path, capsys):
    out = tmp_path / 'cards'
    out.mkdir()
    shutil.copy(CARDS / 'complexity.json', out / 'complexity.json')
    readme = tmp_path / 'README.md'
    readme.write_text(f'{TABLE_START}\n{TABLE_END}\n{BLOCKS_TABLE_START}\n{BLOCKS_TABLE_END}\n')
    assert main(['--out-dir', str(out), '--no-measure', '--readme', str(readme)]) == 0
    assert sorted(p.stem for p in out.glob('*.md')) == sorted(ZOO_MODELS)
    assert '`resnet101_gc`' in readme.read_text()
    assert '| `cc` | `CrissCrossAttention` |' in readme.read_text()
    assert cli_main(['cards', '--out-dir', str(tmp_path / 'empty'), '--no-measure']) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_readme_tables_are_current():
    """README.md's generated tables equal what the registry gives now (run `gczoo cards --readme README.md`)."""
    from gczoo.cards import blocks_table_markdown
    text = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    assert blocks_table_markdown() in text
    assert models_table_markdown() in text


# ------------------------------------------------------------------------------------------------
# Hub metadata (huggingface_hub.ModelCardData) and measured metrics only


def test_front_matter_names_the_weights_origin_not_a_hard_coded_dataset():
    for name in ('resnet18_gc', 'resnet50_se', 'resnet101_gc'):
        meta = _front_matter(render_model_card(name))
        tag = default_tag(name)  # what timm.create_model(name, pretrained=True) loads
        assert meta['base_model'] == tag.source and meta['datasets'] == list(tag.datasets)
        (result,) = meta['model-index'][0]['results']
        assert result['source']['url'] == published_metrics(tag)[0].evidence
    assert _front_matter(render_model_card('resnet50_se'))['base_model'] == 'timm/seresnet50.a1_in1k'
    # weights trained elsewhere: the card says where they come from, and claims nothing unmeasured
    meta = _front_matter(render_model_card('resnet18_gc', base_model='me/resnet18_gc.cifar', datasets=['cifar10']))
    assert meta['base_model'] == 'me/resnet18_gc.cifar' and meta['datasets'] == ['cifar10']
    assert 'model-index' not in meta
    meta = _front_matter(render_model_card('resnet18_gc', base_model=None, datasets=[]))
    assert 'base_model' not in meta and 'datasets' not in meta


def test_model_index_only_with_measured_metrics():
    results = {'top1': 77.701, 'top5': 93.66, 'dataset': 'ImageNet-1k val', 'dataset_id': 'imagenet-1k'}
    meta = _front_matter(render_model_card('resnet50_gc', results))
    (entry,) = meta['model-index']
    assert entry['name'] == 'resnet50_gc'
    (result,) = entry['results']
    assert result['dataset'] == {'name': 'ImageNet-1k val', 'type': 'imagenet-1k'}
    assert [(m['name'], m['value']) for m in result['metrics']] == [('top-1 accuracy', 77.701),
                                                                   ('top-5 accuracy', 93.66)]


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), '77.7', True])
def test_non_finite_or_non_numeric_metrics_are_refused(bad):
    with pytest.raises(ValueError, match=r'top1 is .*not a finite number'):
        render_model_card('resnet50_gc', {'top1': bad})
    with pytest.raises(ValueError, match='resnet50_gc: top1'):
        models_table_markdown(load_complexity(CARDS / 'complexity.json'), {'resnet50_gc': {'top1': bad}})


def test_cards_command_refuses_a_nan_result_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / 'cards'
    out.mkdir()
    shutil.copy(CARDS / 'complexity.json', out / 'complexity.json')
    results = tmp_path / 'eval.json'
    results.write_text('{"architecture": "resnet18_gc", "top1": NaN, "top5": 99.0}')  # what json.dumps(nan) writes
    assert cli_main(['cards', '--out-dir', str(out), '--no-measure', '--results', str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('gczoo cards: error: ') and 'top1 is nan' in err
    assert sorted(p.name for p in out.iterdir()) == ['complexity.json']


def test_cards_flags_are_checked(capsys):
    assert cli_main(['cards', '--no-such-flag']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'unrecognized arguments: --no-such-flag' in err
