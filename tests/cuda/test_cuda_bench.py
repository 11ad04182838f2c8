"""``gczoo bench models`` on CUDA reports each model's training peak memory beside its img/s (issue 21)."""
import pytest

from gczoo.bench.models import bench_models, format_model_table

from _cuda_utils import DEVICE

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE.type != 'cuda', reason='peak memory is measured on CUDA only')]


def test_bench_models_on_cuda_reports_training_peak_memory():
    rows, raw = bench_models(['resnet18_gc'], batch=4, img_size=64, steps=1, warmup=1, modes=('train',),
                             device='cuda', progress=False)
    row = rows[0]
    assert row['train_peak_mib'] > 0 and row['base_train_peak_mib'] > 0
    # the GC blocks add little activation memory to resnet18 (their GMAC ratio is 1.000)
    assert 0.9 < row['train_peak_mib'] / row['base_train_peak_mib'] < 1.5
    assert 'train peak MiB' in format_model_table(rows)
