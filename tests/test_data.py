"""gczoo.data: the embedded digits tree, dataset-folder checks, per-sample seeded augmentation, resumable sampler."""
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gczoo.data import (
    DATA_HOME_ENV, DIGITS_CLASSES, ResumableDistributedSampler, SeededTransformDataset, check_image_folder,
    data_home, find_split, prepare_digits,
)


@pytest.fixture(scope='module')
def digits_root(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp('home') / 'digits-32px')


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*.png'))}


def test_digits_tree_is_a_stratified_80_20_imagefolder_of_rgb_pngs(digits_root):
    manifest = json.loads((digits_root / 'manifest.json').read_text())
    assert manifest['counts'] == {'train': 1437, 'val': 360}
    for split, total in manifest['counts'].items():
        folder, classes = check_image_folder(digits_root, split)
        assert classes == list(DIGITS_CLASSES)
        per_class = Counter(p.parent.name for p in folder.rglob('*.png'))
        assert sum(per_class.values()) == total
        # stratified: every class holds its share of the split (load_digits has 174-183 per class)
        share = total / 1797
        assert all(abs(n - share * 180) <= 0.03 * 180 + 2 for n in per_class.values()), per_class
    train_ids = {p.stem for p in (digits_root / 'train').rglob('*.png')}
    val_ids = {p.stem for p in (digits_root / 'val').rglob('*.png')}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 1797
    img = Image.open(next((digits_root / 'val' / '3').glob('*.png')))
    assert img.mode == 'RGB' and img.size == (32, 32)
    pixels = np.asarray(img)
    assert pixels.max() > 200 and pixels.min() < 30  # the 0-16 ink levels were scaled to 0-255


def test_digits_are_written_once_and_deterministically(digits_root, tmp_path, monkeypatch):
    stamp = (digits_root / 'manifest.json').stat().st_mtime_ns
    assert prepare_digits(digits_root) == digits_root
    assert (digits_root / 'manifest.json').stat().st_mtime_ns == stamp  # reused, not rewritten
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path))
    assert data_home() == tmp_path
    again = prepare_digits()
    assert again == tmp_path / 'digits-32px'
    assert _tree(again) == _tree(digits_root)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary folder left


def test_digits_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='img_size must be an int >= 8'):
        prepare_digits(tmp_path / 'x', img_size=4)
    with pytest.raises(ValueError, match=r'val_fraction must be in \(0, 1\)'):
        prepare_digits(tmp_path / 'x', val_fraction=1.0)


def test_check_image_folder_explains_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        check_image_folder(tmp_path / 'missing', 'train')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is not a directory'):
        check_image_folder(tmp_path / 'file', 'train')
    (tmp_path / 'ds' / 'training' / 'cat').mkdir(parents=True)
    (tmp_path / 'ds' / 'eval').mkdir()
    with pytest.raises(ValueError, match="no folder for split 'test'.*found: eval, training"):
        check_image_folder(tmp_path / 'ds', 'test')
    with pytest.raises(ValueError, match='holds no images'):
        check_image_folder(tmp_path / 'ds', 'train')  # found 'training', but it is empty
    Image.new('RGB', (4, 4)).save(tmp_path / 'ds' / 'training' / 'cat' / 'a.jpg')
    folder, classes = check_image_folder(tmp_path / 'ds', 'train')
    assert folder == tmp_path / 'ds' / 'training' and classes == ['cat']
    assert find_split(tmp_path / 'ds', 'validation') == tmp_path / 'ds' / 'eval'


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.full((3, 8, 8), float(i)), i % 3


def _random_transform(x):
    # draws from all three global RNGs, as timm/torchvision transforms do
    return x + torch.rand(1) + random.random() + float(np.random.rand())


def _epoch(ds, order):
    return {i: ds[i][0] for i in order}


def test_seeded_transform_depends_on_seed_epoch_index_only():
    ds = SeededTransformDataset(_Images(), _random_transform, seed=7)
    torch.manual_seed(0)
    forward = _epoch(ds, range(12))
    torch.manual_seed(1)
    random.seed(5)
    backward = _epoch(ds, reversed(range(12)))
    for i in range(12):
        assert torch.equal(forward[i], backward[i])  # order and outer RNG state do not matter
    assert not torch.equal(forward[0], forward[3] - 3)  # but each sample gets its own draw
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], forward[0])  # and each epoch a new one
    other = SeededTransformDataset(_Images(), _random_transform, seed=8)
    assert not torch.equal(other[0][0], forward[0])


def test_seeded_transform_leaves_the_training_rng_alone():
    ds = SeededTransformDataset(_Images(), _random_transform, seed=7)
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = torch.rand(2), random.random(), np.random.rand()
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    ds[5]
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


def test_seeded_transform_same_in_loader_workers():
    ds = SeededTransformDataset(_Images(), _random_transform, seed=7)
    ds.set_epoch(2)
    main_process = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=0)])
    workers = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(main_process, workers)


def test_resumable_sampler_skips_exactly_what_was_consumed():
    data = list(range(10))
    ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    full = [list(s) for s in ranks]
    assert sorted(full[0] + full[1]) == data  # 10 samples, 2 ranks: each once
    single = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=1)
    single.set_epoch(3)
    order = list(single)
    assert order[0::2] == full[0] and order[1::2] == full[1]  # same permutation as one process
    ranks[1].set_start(2)
    assert list(ranks[1]) == full[1][2:] and len(ranks[1]) == 3
    single.set_epoch(4)
    assert list(single) != order  # a new order every epoch
    with pytest.raises(ValueError, match=r'start must be in \[0, 5\]'):
        ranks[0].set_start(6)


def test_resumable_sampler_epoch_samples_takes_a_new_subset_each_epoch():
    """--train-num-samples: an epoch is the first N of its shuffled order; N = len gives torch's order exactly."""
    data = list(range(10))
    full = ResumableDistributedSampler(data, num_replicas=2, rank=1, seed=4, epoch_samples=10)
    torch_order = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=1, seed=4)
    for epoch in (0, 1):
        full.set_epoch(epoch)
        torch_order.set_epoch(epoch)
        assert list(full) == list(torch_order)
    subsets = []
    for epoch in (0, 1):
        ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=4, epoch_samples=5) for r in range(2)]
        for s in ranks:
            s.set_epoch(epoch)
        seen = list(ranks[0]) + list(ranks[1])
        assert len(ranks[0]) == len(ranks[1]) == 3 and len(seen) == 6  # 5 samples, padded to 2 x 3
        assert len(set(seen)) == 5
        subsets.append(set(seen))
    assert subsets[0] != subsets[1]
    with pytest.raises(ValueError, match=r'epoch_samples must be in \[1, 10\]'):
        ResumableDistributedSampler(data, epoch_samples=11)
