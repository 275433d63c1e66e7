import os
import stat

import pytest

from hybridlm.checkpoints.atomic import atomic_dir, atomic_file


def test_atomic_file_appears_whole_with_normal_permissions(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_file(target) as f:
        f.write("done")
        assert not target.exists()
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failed_writes_leave_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.txt") as f:
            f.write("half")
            raise RuntimeError("crash")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_non_empty_target_unless_overwrite(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    with atomic_dir(target, overwrite=True) as d:
        (d / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
