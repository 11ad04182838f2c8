"""Tests of gczoo.visualize: the captured attention maps are the ones the blocks use, the hooks change
nothing, the PNGs/CSV/JSON are written with the right sizes and values, and the query-independence
measure gives 0 for query-independent attention and > 0 otherwise.

Per-block contracts of ``attention_maps`` are tested in tests/layers; here the maps are checked end to
end, inside zoo models, against what each block's forward computed.
"""
import copy
import csv
import functools
import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from scipy.spatial import distance as scipy_distance

import gczoo  # noqa: F401  (registers the zoo with timm)
from gczoo.cli import main as cli_main
from gczoo.layers import CrissCrossAttention, NonLocal2d, SelfAttention2d
from gczoo.models import CheckpointError, attention_modules
from gczoo.visualize import (
    SAMPLE_IMAGES, LoadedModel, analyze_attention, analyze_main, capture_attention, capture_block_inputs,
    criss_cross_effective_maps, grid_pixel_size, grid_query_points, load_model, main, mean_pairwise_distances,
    pairwise_cosine_distance, pairwise_js_divergence, points_to_cells, sample_images, select_blocks,
    uniform_cross_effective_maps,
)

SIZE = 64
LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """These tests run many tiny forwards; on a busy 2-core machine two intra-op threads make each
    ResNet-50 forward at 64 px ~30x slower (measured 2.5 s vs 0.07 s of CPU), so use one here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _pristine(name: str, zero_init_last: bool) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, zero_init_last=zero_init_last).eval()


def _model(name: str, zero_init_last: bool = True) -> nn.Module:
    """A fresh copy of a seeded, randomly initialised zoo model (each built once per session: init is slow)."""
    return copy.deepcopy(_pristine(name, zero_init_last))


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE)


def _keep_output(store: dict, key: str):
    """A forward hook that stores a copy of the output and returns None (a returned value would replace
    the output, and the network's in-place ops would then write into the stored copy)."""
    def hook(module, args, output):
        store.setdefault(key, output.detach().clone())
    return hook


def _perturb_residual_branches(model: nn.Module) -> None:
    """Make the zero-initialised output branches non-zero, so each block's output depends on its attention."""
    with torch.no_grad():
        for _, block in attention_modules(model):
            if isinstance(block, NonLocal2d):
                block.norm.weight.normal_(0, 1.0)
                block.norm.bias.normal_(0, 0.1)
            elif isinstance(block, (SelfAttention2d, CrissCrossAttention)):
                block.gamma.fill_(0.7)


# ------------------------------------------------------------------------------------------- capture

def _manual_after_block_inputs(model: nn.Module, x: torch.Tensor):
    """Input of every attention module that sits between residual blocks, by running the stages by hand
    (no hooks): stem, then each stage's children one by one."""
    inputs = {}
    h = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    for stage_name in ('layer1', 'layer2', 'layer3', 'layer4'):
        for child_name, child in getattr(model, stage_name).named_children():
            if child_name.startswith('attn'):
                inputs[f'{stage_name}.{child_name}'] = h
            h = child(h)
    return inputs


def test_captured_maps_equal_attention_maps_of_the_independently_computed_input():
    model = _model('resnet50_nl')
    _perturb_residual_branches(model)
    x = _images()
    with torch.no_grad():
        _, block_maps = capture_attention(model, x, num_queries=4)
        manual = _manual_after_block_inputs(model, x)
        assert [bm.name for bm in block_maps] == list(manual) == [n for n, _ in attention_modules(model)]
        for bm in block_maps:
            block = model.get_submodule(bm.name)
            idx = torch.tensor([r * bm.feature_size[1] + c for r, c in bm.query_cells])
            expected = block.attention_maps(manual[bm.name], idx)
            assert bm.feature_size == tuple(manual[bm.name].shape[-2:])
            assert set(bm.maps) == set(expected) == {'query'}
            torch.testing.assert_close(bm.maps['query'], expected['query'], rtol=0, atol=0)


def test_captured_se_slot_input_is_the_output_of_bn3():
    """Blocks inside a residual block (timm's se slot) see bn3's output; checked with a hook on bn3."""
    model = _model('resnet50_gc', zero_init_last=False)
    block_name = 'layer3.1.se'
    seen = {}
    bn3 = model.get_submodule('layer3.1.bn3')
    handle = bn3.register_forward_hook(_keep_output(seen, 'x'))
    try:
        blocks = select_blocks(model, [block_name])
        with capture_block_inputs(blocks) as inputs, torch.no_grad():
            model(_images())
    finally:
        handle.remove()
    assert torch.equal(inputs[block_name], seen['x'])


@pytest.mark.parametrize('name', ['resnet50_nl', 'resnet50_cbam', 'resnet50_cc'])
def test_capture_changes_no_output_bitwise_and_leaves_no_hooks(name):
    model = _model(name)
    _perturb_residual_branches(model)
    x = _images()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
        hooked, block_maps = capture_attention(model, x, num_queries=4)
        after = model(x)
    assert block_maps
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_non_local_query_maps_are_the_softmax_rows_its_forward_applied():
    model = _model('resnet50_nl')
    _perturb_residual_branches(model)
    x = _images()
    outputs = {}
    handles = [block.register_forward_hook(_keep_output(outputs, n)) for n, block in attention_modules(model)]
    blocks = attention_modules(model)
    try:
        with capture_block_inputs(blocks) as inputs:
            _, block_maps = capture_attention(model, x, num_queries=4)
    finally:
        for h in handles:
            h.remove()
    for bm in block_maps:
        block: NonLocal2d = model.get_submodule(bm.name)
        rows = bm.maps['query'].flatten(2).double()  # (B, K, M)
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2], dtype=torch.float64))
        inp = inputs[bm.name]
        idx = torch.tensor([r * bm.feature_size[1] + c for r, c in bm.query_cells])
        with torch.no_grad():
            g = block.pool(block.g(inp)).flatten(2)  # (B, inner, M)
            y = torch.einsum('bkm,bcm->bck', rows.float(), g)  # y_q = sum_j row_qj g_j
            z = inp.flatten(2)[:, :, idx] + block.norm(block.conv_out(y.unsqueeze(-1))).squeeze(-1)
        torch.testing.assert_close(z, outputs[bm.name].flatten(2)[:, :, idx], rtol=1e-4, atol=1e-5)
        # and the block really does something at those positions
        assert not torch.allclose(outputs[bm.name].flatten(2)[:, :, idx], inp.flatten(2)[:, :, idx], atol=1e-3)


def test_sagan_query_maps_are_the_softmax_rows_its_forward_applied():
    model = _model('resnet50_sa')
    _perturb_residual_branches(model)
    (name, block), = attention_modules(model)
    outputs = {}
    handle = block.register_forward_hook(_keep_output(outputs, 'out'))
    try:
        with capture_block_inputs([(name, block)]) as inputs:
            _, (bm,) = capture_attention(model, _images(), num_queries=4)
    finally:
        handle.remove()
    beta = bm.maps['query'].flatten(2)
    torch.testing.assert_close(beta.sum(-1), torch.ones(beta.shape[:2]))
    inp = inputs[name]
    idx = torch.tensor([r * bm.feature_size[1] + c for r, c in bm.query_cells])
    with torch.no_grad():
        o = torch.einsum('bkn,bcn->bck', beta, block.h(inp).flatten(2))
        y = block.gamma * block.v(o.unsqueeze(-1)).squeeze(-1) + inp.flatten(2)[:, :, idx]
    torch.testing.assert_close(y, outputs['out'].flatten(2)[:, :, idx], rtol=1e-4, atol=1e-5)


def test_gc_context_mask_sums_to_one_and_is_the_pooling_its_forward_used():
    # zero_init_last=False: with timm's default the se slot's input (bn3 output) is all zeros at init.
    model = _model('resnet50_gc', zero_init_last=False)
    blocks = select_blocks(model, ['layer2.*', 'layer4.2.se'])
    with torch.no_grad():
        nn.init.normal_(blocks[0][1].channel_add_conv[-1].weight, std=0.1)
    outputs = {}
    handles = [b.register_forward_hook(_keep_output(outputs, n)) for n, b in blocks]
    try:
        with capture_block_inputs(blocks) as inputs:
            _, block_maps = capture_attention(model, _images(), blocks=blocks)
    finally:
        for h in handles:
            h.remove()
    assert [bm.name for bm in block_maps] == [n for n, _ in blocks]
    for bm in block_maps:
        mask = bm.maps['context']
        assert mask.shape[1] == 1
        torch.testing.assert_close(mask.flatten(1).sum(-1), torch.ones(mask.shape[0]))
        assert float(mask.std()) > 0  # not the trivial uniform mask
    name, block = blocks[0]
    inp = inputs[name]
    with torch.no_grad():
        context = torch.einsum('bn,bcn->bc', block_maps[0].maps['context'].flatten(1), inp.flatten(2))
        expected = inp + block.channel_add_conv(context[:, :, None, None])
    torch.testing.assert_close(outputs[name], expected, rtol=1e-4, atol=1e-5)


def test_query_points_map_to_each_blocks_grid():
    assert grid_query_points(4, 64, 64) == [(16.0, 16.0), (16.0, 48.0), (48.0, 16.0), (48.0, 48.0)]
    assert len(grid_query_points(32, 14, 14)) == 30  # 5 x 6, the largest aspect-true grid with <= 32 points
    assert len(grid_query_points(32, 4, 4)) == 16  # never more than the grid's cells
    assert points_to_cells([(16.0, 48.0), (63.9, 0.0)], (64, 64), (8, 8)) == [(2, 6), (7, 0)]
    model = _model('resnet50_nl')
    _, block_maps = capture_attention(model, _images(1), query_points=[(10.0, 50.0)])
    for bm in block_maps:
        scale = SIZE // bm.feature_size[0]
        assert bm.query_cells == [(10 // scale, 50 // scale)]
    with pytest.raises(ValueError, match='--query-points'):
        capture_attention(model, _images(1), query_points=[(64.0, 3.0)])
    with pytest.raises(ValueError, match='--blocks'):
        select_blocks(model, ['layer9.*'])
    with pytest.raises(ValueError, match='--queries'):
        grid_query_points(0, 8, 8)


# ------------------------------------------------------------------------------------------- metrics

def test_distances_match_scipy_and_their_ranges():
    torch.manual_seed(1)
    maps = torch.softmax(torch.randn(2, 5, 3, 4) * 2, dim=-1).reshape(2, 5, 12)
    maps = maps / maps.sum(-1, keepdim=True)
    cos = pairwise_cosine_distance(maps)
    js = pairwise_js_divergence(maps)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                p, q = maps[b, i].double().numpy(), maps[b, j].double().numpy()
                assert cos[b, i, j].item() == pytest.approx(scipy_distance.cosine(p, q), abs=1e-12)
                assert js[b, i, j].item() == pytest.approx(scipy_distance.jensenshannon(p, q) ** 2, abs=1e-12)
    disjoint = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]])
    assert pairwise_js_divergence(disjoint)[0, 0, 1].item() == pytest.approx(LN2)
    assert pairwise_cosine_distance(disjoint)[0, 0, 1].item() == pytest.approx(1.0)
    opposite = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])
    assert pairwise_cosine_distance(opposite)[0, 0, 1].item() == pytest.approx(2.0)
    cos_mean, js_mean = mean_pairwise_distances(opposite)
    assert math.isnan(js_mean.item()) and cos_mean.item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match='K >= 2'):
        mean_pairwise_distances(torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match='non-negative'):
        pairwise_js_divergence(opposite)


def _query_maps(block: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return block.attention_maps(x, torch.arange(x.shape[-2] * x.shape[-1]))['query']


def test_query_independent_non_local_gives_distance_zero_and_dependent_one_positive():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 5)
    block = NonLocal2d(16).eval()
    with torch.no_grad():
        block.theta.weight.zero_()  # theta_i = bias for every i: every query sees the same logits b.phi_j
        block.theta.bias.normal_(0, 3.0)
        block.phi.weight.normal_(0, 1.0)
    maps = _query_maps(block, x)
    assert float(maps.flatten(2).std(-1).min()) > 1e-3  # identical rows, but far from uniform
    cos, js = mean_pairwise_distances(maps)
    assert float(cos.max()) < 1e-12 and float(js.max()) < 1e-12
    with torch.no_grad():
        block.theta.weight.normal_(0, 1.0)
    cos, js = mean_pairwise_distances(_query_maps(block, x))
    assert float(cos.min()) > 1e-2 and float(js.min()) > 1e-3
    assert float(cos.max()) <= 1.0 and float(js.max()) <= LN2


def test_criss_cross_effective_maps_equal_the_product_of_the_full_step_matrices():
    torch.manual_seed(0)
    block = CrissCrossAttention(16, recurrence=2).eval()
    with torch.no_grad():
        block.gamma.fill_(0.5)
        block.query_conv.weight.mul_(5)
    x = torch.randn(2, 16, 5, 6)
    n = 30
    full = block.attention_maps(x, torch.arange(n))
    a1, a2 = full['query'].flatten(2).double(), full['query_r2'].flatten(2).double()  # (B, N, N)
    queries = torch.tensor([0, 7, 29, 14])
    eff = criss_cross_effective_maps(block, x, queries, chunk_size=4)
    torch.testing.assert_close(eff.flatten(2).double(), (a2 @ a1)[:, queries], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eff.flatten(2).sum(-1), torch.ones(2, 4), rtol=1e-5, atol=1e-5)
    # uniform weights on every cross: the geometry alone is query-dependent
    on_cross = torch.zeros(n, n, dtype=torch.float64)
    for u in range(n):
        for v in range(n):
            on_cross[u, v] = float(u // 6 == v // 6 or u % 6 == v % 6)
    uniform = on_cross / on_cross.sum(-1, keepdim=True)
    base = uniform_cross_effective_maps(queries, 5, 6, steps=2)
    torch.testing.assert_close(base.flatten(2)[0], (uniform @ uniform)[queries])
    assert float(mean_pairwise_distances(base)[0]) > 0.1


# ------------------------------------------------------------------------------------------- models

def test_load_model_checkpoint_and_local_dir(tmp_path):
    from safetensors.torch import save_file
    from gczoo.hub import save_pretrained
    torch.manual_seed(0)
    trained = timm.create_model('resnet18_gc', num_classes=7, zero_init_last=False).eval()
    with torch.no_grad():
        for _, block in attention_modules(trained):
            block.channel_add_conv[-1].weight.normal_(0, 0.1)
    path = tmp_path / 'model.safetensors'
    save_file(trained.state_dict(), str(path))
    x = _images(1)
    with torch.no_grad():
        expected = trained(x)
    for loaded in (load_model('resnet18_gc', checkpoint=path), load_model(f'resnet18_gc={path}')):
        assert loaded.model.num_classes == 7 and loaded.label == 'resnet18_gc (model.safetensors)'
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), expected)
    save_pretrained(trained, tmp_path / 'export')
    loaded = load_model(f'local-dir:{tmp_path / "export"}')
    assert loaded.arch == 'resnet18_gc' and not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), expected)
    # random init is reproducible and leaves the caller's RNG alone
    torch.manual_seed(123)
    before = torch.rand(1)
    a = load_model('resnet18_gc', seed=3).model
    b = load_model('resnet18_gc', seed=3).model
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(CheckpointError, match='does not fit'):
        load_model('resnet26_gc', checkpoint=path)
    with pytest.raises(ValueError, match='local-dir'):
        load_model(f'local-dir:{tmp_path / "export"}', checkpoint=path)
    with pytest.raises(ValueError, match='MODEL'):
        load_model('no_such_model')
    with pytest.raises(ValueError, match='no gczoo attention block'):
        load_model('resnet18')


# ------------------------------------------------------------------------------------------- PNGs

def _write_images(folder, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f'img{i}.png'
        Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_sample_photos_load_offline():
    images = sample_images()
    assert [n for n, _ in images] == list(SAMPLE_IMAGES) and len(images) >= 4
    assert all(img.mode == 'RGB' and min(img.size) >= 256 for _, img in images)


def test_visualize_writes_one_png_per_image_with_the_grid_size(tmp_path):
    paths = _write_images(tmp_path / 'in', 2)
    out = tmp_path / 'out'
    rc = main(['resnet50_nl', *map(str, paths), '--img-size', str(SIZE), '--queries', '2', '--blocks', 'layer3.*',
               '--out', str(out), '--no-progress'])
    assert rc == 0
    pngs = sorted(out.glob('*.png'))
    assert [p.name for p in pngs] == ['img0.png', 'img1.png']
    # 3 Non-local blocks in layer3 -> 3 rows; the points panel + 2 queries -> 3 columns of 250 px; + 50 px title
    assert grid_pixel_size(3, 3) == (750, 800)
    for p in pngs:
        with Image.open(p) as img:
            assert img.size == (750, 800) and img.format == 'PNG'
            assert np.asarray(img.convert('L')).std() > 10  # not blank


def test_visualize_without_images_uses_the_sample_photos(tmp_path, monkeypatch):
    import gczoo.visualize.images as images
    monkeypatch.setattr(images, 'SAMPLE_IMAGES', {k: SAMPLE_IMAGES[k] for k in ('astronaut', 'coffee')})
    out = tmp_path / 'out'
    rc = main(['resnet50_cbam', '--blocks', 'layer4.*', '--img-size', str(SIZE), '--out', str(out), '--no-progress',
               '--query-points', '8,8', '40,20'])
    assert rc == 0
    pngs = sorted(out.glob('*.png'))
    assert [p.stem for p in pngs] == ['astronaut', 'coffee']
    # 3 CBAM spatial maps + the input image packed into one row of 4 panels
    for p in pngs:
        with Image.open(p) as img:
            assert img.size == grid_pixel_size(1, 4) == (1000, 300)


def test_visualize_errors(tmp_path, capsys):
    def visualize_cli(argv):
        return cli_main(['visualize', *argv])
    assert visualize_cli(['resnet50_se', '--img-size', str(SIZE), '--out', str(tmp_path)]) == 2
    assert 'spatial map' in capsys.readouterr().err
    assert visualize_cli(['resnet50_nl', str(tmp_path / 'missing.jpg'), '--out', str(tmp_path)]) == 2
    assert 'IMAGE' in capsys.readouterr().err
    assert visualize_cli(['resnet50_nl', '--blocks', 'nothing*', '--img-size', str(SIZE), '--out', str(tmp_path)]) == 2
    assert '--blocks' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- analysis

def test_analyze_attention_outputs(tmp_path):
    data = tmp_path / 'data'
    _write_images(data / 'class_a', 2)
    _write_images(data / 'class_b', 1)
    out = tmp_path / 'out'
    rc = analyze_main(['resnet50_nl', '--compare', 'resnet50_sa', 'resnet50_cc', 'resnet18_gc',
                       '--data-dir', str(data), '--img-size', str(SIZE), '--queries', '4', '--out', str(out),
                       '--no-progress'])
    assert rc == 0
    with open(out / 'attention_analysis.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['model', 'label', 'block', 'block_type', 'map', 'cosine_distance', 'cosine_distance_std',
                             'js_divergence', 'js_divergence_std', 'n_images', 'n_queries', 'feature_size',
                             'key_size', 'note']
    kinds = {(r['model'], r['map']) for r in rows}
    assert kinds == {('resnet50_nl', 'query'), ('resnet50_sa', 'query'), ('resnet50_cc', 'effective'),
                     ('resnet50_cc', 'effective_uniform'), ('resnet18_gc', 'context')}
    assert sum(r['model'] == 'resnet50_nl' for r in rows) == 5 and sum(r['map'] == 'context' for r in rows) == 6
    for r in rows:
        assert int(r['n_images']) == 3
        cos, js = float(r['cosine_distance']), float(r['js_divergence'])
        assert 0.0 <= cos <= 2.0 and 0.0 <= js <= LN2
        if r['map'] == 'context':
            assert cos == js == 0.0 and int(r['n_queries']) == 0
        else:
            assert int(r['n_queries']) == 4
    cc = {r['map']: r for r in rows if r['model'] == 'resnet50_cc'}
    assert float(cc['effective_uniform']['cosine_distance']) > 0.05
    report = json.loads((out / 'attention_analysis.json').read_text())
    assert len(report['rows']) == len(rows) and report['config']['queries'] == 4
    with Image.open(out / 'attention_analysis.png') as img:
        assert img.format == 'PNG' and img.size[0] == 1400


def test_analysis_separates_trained_like_from_random_attention():
    """A model whose Non-local attention is sharp (scaled-up theta/phi, as training makes it) is measured as
    more query-dependent than the random init, whose near-uniform maps are all alike."""
    random_init = _model('resnet50_nl')
    sharp = _model('resnet50_nl')
    with torch.no_grad():
        for _, block in attention_modules(sharp):
            block.theta.weight.mul_(100)
            block.phi.weight.mul_(100)
    kwargs = dict(img_size=SIZE, num_queries=4, max_images=2, progress=False)
    random_rows = analyze_attention(LoadedModel('random', 'resnet50_nl', random_init), **kwargs)
    sharp_rows = analyze_attention(LoadedModel('sharp', 'resnet50_nl', sharp), **kwargs)
    assert [r['n_images'] for r in random_rows] == [2] * 5
    for r, s in zip(random_rows, sharp_rows):
        assert r['block'] == s['block'] and (r['label'], s['label']) == ('random', 'sharp')
        assert s['cosine_distance'] > 10 * r['cosine_distance'] and s['js_divergence'] > 10 * r['js_divergence']
    # at 32 px layer3's 2x2 grid sub-samples to a single key: the rows say the 0 is trivial
    tiny = analyze_attention(LoadedModel('sharp', 'resnet50_nl', sharp), **{**kwargs, 'img_size': 32})
    trivial = [r for r in tiny if r['key_size'] == '1x1']
    assert len(trivial) == 3 and all('single key position' in r['note'] for r in trivial)


def test_analyze_errors(tmp_path, capsys):
    def analyze_cli(argv):
        return cli_main(['analyze-attention', *argv])
    assert analyze_cli(['resnet50_cbam', '--img-size', str(SIZE), '--out', str(tmp_path)]) == 2
    assert 'query-based or context' in capsys.readouterr().err
    assert analyze_cli(['resnet50_nl', '--data-dir', str(tmp_path / 'nope'), '--out', str(tmp_path)]) == 2
    assert '--data-dir' in capsys.readouterr().err
    assert analyze_cli(['resnet50_nl', 'resnet50_sa', '--checkpoint', 'x.safetensors', '--out', str(tmp_path)]) == 2
    assert '--checkpoint' in capsys.readouterr().err
