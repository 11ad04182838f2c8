#!/usr/bin/env python3
"""Run timm's own ``tests/test_models.py`` on every model ``import gczoo`` registers, offline.

The installed timm's sdist (same version, from PyPI: wheels do not ship ``tests/``) gives
``tests/test_models.py``. Its tests are parametrised over ``timm.list_models(...)``; a pytest plugin
imports gczoo before they are collected and keeps only the items whose ``model_name`` is a gczoo
model or tag (every other timm model, and the tests without a model, are deselected). That includes
``test_model_load_pretrained`` (``pretrained=True`` with ``in_chans=1`` and ``num_classes=5``/``0``)
and ``test_model_features_pretrained`` on every pretrained tag, so each tag's source is written first
in its real format -- a Hub cache filled by huggingface_hub itself (timm's ``model.safetensors`` and
``config.json``), and torch's checkpoint folder holding GCNet's mmdetection checkpoints -- and the
tests run with ``HF_HUB_OFFLINE=1`` on them (``tests/tag_sources.py``). ``GITHUB_ACTIONS`` is unset
for the run: timm skips its pretrained tests on GitHub's runners.

    python .ci/timm_suite.py                      # downloads the sdist with pip, works in a temp folder
    python .ci/timm_suite.py --sdist timm-1.0.31.tar.gz --work-dir /tmp/timm_suite -- -x -k forward

Exit status: pytest's (0 only when every selected test passed and every zoo model was selected).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''"""pytest plugin: gczoo's models in timm's test_models.py (written by .ci/timm_suite.py)."""
import gczoo  # noqa: F401  (registers the zoo before test_models.py builds its parameter lists)
import timm

ZOO = set(timm.list_models(module='gczoo'))


def _model_name(item):
    callspec = getattr(item, 'callspec', None)
    name = callspec.params.get('model_name') if callspec is not None else None
    return name if isinstance(name, str) else None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = _model_name(item)
        (keep if name is not None and name.split('.')[0] in ZOO else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    covered = {_model_name(item).split('.')[0] for item in keep}
    missing = sorted(ZOO - covered)
    if missing:
        raise RuntimeError(f'timm test_models.py selected no test for {missing}')
    pretrained = {_model_name(item) for item in keep if item.originalname == 'test_model_load_pretrained'}
    expected = {m for m in timm.list_pretrained() if m.split('.')[0] in ZOO}
    if pretrained != expected:
        raise RuntimeError(f'test_model_load_pretrained runs on {sorted(pretrained)}, the zoo has {sorted(expected)}')
'''


def _sdist(args: argparse.Namespace, work: Path, version: str) -> Path:
    if args.sdist:
        return Path(args.sdist)
    dest = work / 'sdist'
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
                    f'timm=={version}', '-d', str(dest)], check=True)
    found = sorted(dest.glob(f'timm-{version}.tar.gz'))
    if not found:
        raise SystemExit(f'pip download gave no timm-{version}.tar.gz in {dest}')
    return found[0]


def _extract_tests(sdist: Path, work: Path, version: str) -> Path:
    """The sdist's tests/ and pyproject.toml only: never its timm/ package (the installed timm is tested)."""
    root = work / f'timm-{version}'
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith((f'timm-{version}/tests/', f'timm-{version}/pyproject.toml'))
                   and (m.isfile() or m.isdir())]
        if not any(m.name.endswith('tests/test_models.py') for m in members):
            raise SystemExit(f'{sdist} has no tests/test_models.py')
        tar.extractall(work, members=members, filter='data')
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sdist', help='timm sdist to take the tests from (default: pip download it)')
    parser.add_argument('--work-dir', help='folder for the sdist, the caches and the plugin (default: a temp folder, '
                                           'removed after)')
    parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
    args = parser.parse_args()

    import timm
    version = timm.__version__
    start = time.time()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix='gczoo_timm_suite_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tests_root = _extract_tests(_sdist(args, work, version), work, version)
        sys.path.insert(0, str(REPO / 'tests'))
        from tag_sources import write_sources
        hf_home, torch_home = work / 'hf_home', work / 'torch_home'
        write_sources(hf_home / 'hub', torch_home / 'hub' / 'checkpoints')
        (work / 'gczoo_timm_suite_plugin.py').write_text(PLUGIN)
        print(f'timm {version} tests in {tests_root}; tag sources written in {time.time() - start:.0f} s', flush=True)

        env = {k: v for k, v in os.environ.items()
               if k not in ('GITHUB_ACTIONS', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'TORCH_HUB')}
        env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', TORCH_HOME=str(torch_home),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(work), env.get('PYTHONPATH')])))
        cmd = [sys.executable, '-m', 'pytest', 'tests/test_models.py', '-p', 'gczoo_timm_suite_plugin',
               '-p', 'no:cacheprovider', '-q', '-rfE', '--rootdir', str(tests_root),
               '-c', str(tests_root / 'pyproject.toml'), *args.pytest_args]
        code = subprocess.run(cmd, cwd=tests_root, env=env).returncode
        print(f'timm {version} test_models.py on the gczoo models: exit {code} in {time.time() - start:.0f} s')
        return code
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
