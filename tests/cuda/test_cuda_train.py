"""Training on CUDA (issue 21): ``scripts/train.sh`` on one GPU with float16 AMP (loss scaling),
channels_last, SyncBN, pinned-memory loaders and an EMA, killed at update 3 and restarted by torchrun,
ends with the unbroken run's weights; an NCCL process group with DDP and SyncBatchNorm gives the plain
model's gradients. Marked ``cuda``: skipped with the reason without a GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gczoo.train import BEST_CHECKPOINT, FAULT_EXIT_CODE, LAST_CHECKPOINT, load_training_checkpoint

from _train_utils import REPO, make_image_folder, metrics_of, run, subprocess_env, summary_rows, tiny_args

pytestmark = [pytest.mark.cuda, pytest.mark.slow, pytest.mark.ddp]

DEVICE = 'cpu' if os.environ.get('GCZOO_CUDA_TESTS_ON') == 'cpu' else 'cuda'
CUDA_FLAGS = dict(device=DEVICE, amp='float16' if DEVICE == 'cuda' else 'bfloat16', channels_last=True, sync_bn=True, pin_mem=True if DEVICE == 'cuda' else None,
                  workers=2, model_ema=True, model_ema_decay=0.5, checkpoint_interval=1, deterministic=True)


def train_sh(argv, *extra):
    return subprocess.run(['bash', str(REPO / 'scripts' / 'train.sh'), '--nproc-per-node', '1', *extra, *argv],
                          capture_output=True, text=True, timeout=400, env=subprocess_env(PYTHON=sys.executable),
                          cwd=str(REPO))


def test_train_sh_on_one_gpu_restarts_and_resumes_to_the_unbroken_run(tmp_path):
    data = make_image_folder(tmp_path / 'data')
    unbroken = tiny_args(data, tmp_path, 'unbroken', **CUDA_FLAGS)
    proc = train_sh(unbroken)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restarted = [a if a != 'unbroken' else 'restarted' for a in unbroken] + ['--fail-at-step', '3']
    proc = train_sh(restarted, '--max-restarts', '1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'exits with status {FAULT_EXIT_CODE}' in proc.stderr and 'resumed from' in proc.stdout
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        a = load_training_checkpoint(tmp_path / 'restarted' / name)
        b = load_training_checkpoint(tmp_path / 'unbroken' / name)
        for key in ('state_dict', 'state_dict_ema'):
            assert a[key].keys() == b[key].keys()
            for k in a[key]:  # deterministic cuDNN: equal up to the atomics a few CUDA backward kernels keep
                torch.testing.assert_close(a[key][k], b[key][k], rtol=1e-4, atol=1e-5, msg=f'{name} {key} {k}')
        assert all(torch.isfinite(v).all() for v in a['state_dict'].values() if v.is_floating_point())
    rows_a, rows_b = metrics_of(summary_rows(tmp_path / 'restarted')), metrics_of(summary_rows(tmp_path / 'unbroken'))
    assert [r['epoch'] for r in rows_a] == [r['epoch'] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert float(ra['train_loss']) == pytest.approx(float(rb['train_loss']), rel=1e-3)


def test_nccl_ddp_with_sync_bn_gives_the_plain_models_gradients():
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '1', '--standalone',
           str(Path(__file__).with_name('_nccl_worker.py'))]
    proc = run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['backend'] == ('nccl' if DEVICE == 'cuda' else 'gloo')
    assert report['world_size'] == 1 and report['all_reduce'] == 1.0
    assert report['sync_bn'] > 0 or DEVICE == 'cpu'
    assert report['grad_rel_error'] <= 1e-5  # bf16 autocast on both sides: the same kernels
