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
