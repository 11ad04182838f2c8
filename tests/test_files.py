"""``gczoo.files``: the one way gczoo writes a folder (``staged_folder``) and files that belong together
(``write_files``): complete or not at all, the error naming what was asked for."""
import errno
import os

import pytest

from gczoo.files import place_copy, staged_folder, write_files


def test_staged_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / 'export'
    target.mkdir()
    (target / 'old.txt').write_text('old')
    with staged_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith('.export.') and tmp.name.endswith('.tmp')
        assert list(tmp.iterdir()) == []
        (tmp / 'sub').mkdir()
        (tmp / 'sub' / 'new.txt').write_text('new')
        assert (target / 'old.txt').read_text() == 'old'  # untouched until the block completes
    assert sorted(str(p.relative_to(target)) for p in target.rglob('*')) == ['sub', 'sub/new.txt']
    assert [p.name for p in tmp_path.iterdir()] == ['export']  # no staging or old copy left


def test_staged_folder_failure_moves_nothing(tmp_path):
    target = tmp_path / 'data'
    with pytest.raises(RuntimeError, match='boom'):
        with staged_folder(target) as tmp:
            (tmp / 'half.txt').write_text('half')
            raise RuntimeError('boom')
    assert list(tmp_path.iterdir()) == []  # the target never appeared, the staging folder is gone


def test_staged_folder_names_the_target_in_os_errors(tmp_path, disk_full_at):
    target = tmp_path / 'repo'
    disk_full_at(1)
    with pytest.raises(OSError) as info:
        with staged_folder(target) as tmp:
            (tmp / 'model.safetensors').write_bytes(b'x')  # fsync'ed (and failing) when the block completes
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target / 'model.safetensors')
    assert list(tmp_path.iterdir()) == []


def test_merge_keeps_other_files_and_write_files_is_all_or_none(tmp_path, disk_full_at):
    folder = tmp_path / 'out'
    folder.mkdir()
    (folder / 'keep.txt').write_text('keep')
    with staged_folder(folder, merge=True) as tmp:
        assert tmp.parent == folder
        (tmp / 'a.txt').write_text('a')
    assert sorted(p.name for p in folder.iterdir()) == ['a.txt', 'keep.txt']
    paths = write_files({folder / 'x.csv': lambda f: f.write(b'x'), folder / 'x.json': lambda f: f.write(b'{}')})
    assert [p.read_bytes() for p in paths] == [b'x', b'{}']
    disk_full_at(2)
    with pytest.raises(OSError) as info:
        write_files({folder / 'y.csv': lambda f: f.write(b'y'), folder / 'y.json': lambda f: f.write(b'{}')})
    assert info.value.filename == str(folder / 'y.json')
    assert sorted(p.name for p in folder.iterdir()) == ['a.txt', 'keep.txt', 'x.csv', 'x.json']


def test_staged_folder_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        with staged_folder(tmp_path / 'f'):
            pass
    finally:
        os.umask(umask)
    assert (tmp_path / 'f').stat().st_mode & 0o777 == 0o755


def test_place_copy_puts_a_finished_file_under_another_name_in_one_rename(tmp_path, monkeypatch):
    (tmp_path / 'tmp.bin').write_bytes(b'new')
    (tmp_path / 'best.bin').write_bytes(b'old')
    place_copy(tmp_path / 'tmp.bin', tmp_path / 'best.bin')
    assert (tmp_path / 'best.bin').read_bytes() == b'new' and (tmp_path / 'tmp.bin').read_bytes() == b'new'

    def no_links(*args):  # a file system without hard links: a copy, with the umask's mode
        raise OSError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(os, 'link', no_links)
    place_copy(tmp_path / 'tmp.bin', tmp_path / 'copy.bin')
    assert (tmp_path / 'copy.bin').read_bytes() == b'new'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.bin', 'copy.bin', 'tmp.bin']  # no temporary left


# ---- hostile-user pass (issue 20 part B) ------------------------------------------------------

_KILLED_WRITER = '''
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location('gczoo_files', sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
with files.staged_folder(sys.argv[2], merge=sys.argv[3] == '1') as tmp:
    (tmp / 'half.bin').write_bytes(b'half')
    print(tmp, flush=True)
    time.sleep(60)
'''


def test_a_file_at_the_target_is_refused_not_replaced_by_a_folder(tmp_path):
    for merge in (False, True):
        target = tmp_path / f'export{merge}'
        target.write_text('precious')
        with pytest.raises(NotADirectoryError, match='is a file') as info:
            with staged_folder(target, merge=merge) as tmp:
                (tmp / 'a.txt').write_text('a')
        assert str(target) in str(info.value) and target.read_text() == 'precious'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exportFalse', 'exportTrue']  # no staging left


@pytest.mark.parametrize('merge', [False, True])
def test_a_run_killed_mid_write_leaves_no_half_folder_and_does_not_block_the_next(tmp_path, merge):
    import signal
    import subprocess
    import sys
    target = tmp_path / 'export'
    if merge:
        target.mkdir()
        (target / 'keep.txt').write_text('keep')
    files_py = os.path.join(os.path.dirname(__file__), os.pardir, 'gczoo', 'files.py')
    proc = subprocess.Popen([sys.executable, '-c', _KILLED_WRITER, files_py, str(target), '1' if merge else '0'],
                            stdout=subprocess.PIPE, text=True)
    try:
        stale = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert stale and os.path.isdir(stale)  # what kill -9 leaves: the staging folder, never `target` half-done
    assert (sorted(p.name for p in target.iterdir()) == [os.path.basename(stale), 'keep.txt'] if merge
            else not target.exists())
    with staged_folder(target, merge=merge) as tmp:
        (tmp / 'whole.bin').write_bytes(b'whole')
    assert not os.path.exists(stale)  # the dead run's staging folder is removed, not taken for output
    expected = ['keep.txt', 'whole.bin'] if merge else ['whole.bin']
    assert sorted(p.name for p in target.iterdir()) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ['export']


def test_a_live_writers_staging_folder_is_left_alone(tmp_path):
    with staged_folder(tmp_path / 'a') as first:
        with staged_folder(tmp_path / 'a') as second:  # the same process: alive, so not stale
            assert first.is_dir() and first != second
            (second / 'x').write_text('x')
        assert first.is_dir()
    assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == []  # the last one to finish wins, whole


def test_two_writers_finishing_at_once_leave_one_whole_folder(tmp_path, monkeypatch):
    target = tmp_path / 'repo'
    real_replace = os.replace
    raced = []

    def other_writer_first(src, dst):  # another writer's folder lands on `target` just before ours
        if str(dst) == str(target) and not raced:
            raced.append(1)
            with staged_folder(target) as other:
                (other / 'theirs.txt').write_text('theirs')
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', other_writer_first)
    with staged_folder(target) as tmp:
        (tmp / 'ours.txt').write_text('ours')
    assert raced and [p.name for p in target.iterdir()] == ['ours.txt']
    assert [p.name for p in tmp_path.iterdir()] == ['repo']  # no staging or old copy left


def test_two_writer_threads_never_fail_or_mix(tmp_path):
    import threading
    target, errors = tmp_path / 'out', []

    def write(who):
        try:
            for _ in range(15):
                with staged_folder(target) as tmp:
                    for i in range(3):
                        (tmp / f'{i}.txt').write_text(who)
        except Exception as e:  # pragma: no cover - the failure being tested for
            errors.append(e)
    threads = [threading.Thread(target=write, args=(who,)) for who in 'ab']
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({p.read_text() for p in target.iterdir()}) == 1 and len(list(target.iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_a_run_killed_between_the_two_renames_gets_the_old_folder_back(tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()  # a pid that no longer runs
    aside = tmp_path / f'.export.staging-{dead.pid}-abc123.old.tmp'
    (aside / 'export').mkdir(parents=True)  # the old `export`, renamed aside; the new one never landed
    (aside / 'export' / 'old.txt').write_text('old')
    with staged_folder(tmp_path / 'export') as tmp:
        assert (tmp_path / 'export' / 'old.txt').read_text() == 'old'  # the target is never missing
        (tmp / 'new.txt').write_text('new')
    assert [p.name for p in (tmp_path / 'export').iterdir()] == ['new.txt']
    assert [p.name for p in tmp_path.iterdir()] == ['export']
