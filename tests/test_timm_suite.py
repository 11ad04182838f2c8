"""timm's own ``tests/test_models.py`` (from the installed timm's sdist) passes on every zoo model and
pretrained tag, offline: ``.ci/timm_suite.py`` does the work (it needs PyPI to download the sdist)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.timm_suite, pytest.mark.slow]  # minutes: every zoo model through timm's own tests


@pytest.mark.timeout(1800)
def test_timm_test_models_py_passes_on_every_zoo_model():
    proc = subprocess.run([sys.executable, str(REPO / '.ci' / 'timm_suite.py')], capture_output=True, text=True,
                          timeout=1750)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert 'passed' in proc.stdout, tail
