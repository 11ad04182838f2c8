"""Fixtures of the training tests in this folder: a tiny ImageFolder and one finished reference run."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_train_utils.py

from _train_utils import make_image_folder, run_train, tiny_args  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='session')
def finished_run(data_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch run (its folder): what the resume, output and config tests start from."""
    out = tmp_path_factory.mktemp('finished')
    assert run_train(tiny_args(data_dir, out, 'run')) == 0
    return out / 'run'
