"""Atomic writes: complete files or none, the usual file mode, no temporary files left behind."""

from __future__ import annotations

import os
import stat

import pytest

from llava.fileio import atomic_path, atomic_write_text, usual_mode


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_replaces_the_file_with_the_usual_mode(tmp_path, umask_022):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # as open() would create it under umask 022
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_usual_mode_follows_the_umask_and_leaves_it_unchanged():
    old = os.umask(0o027)
    try:
        assert usual_mode() == 0o640 and usual_mode(directory=True) == 0o750
        assert os.umask(0o027) == 0o027  # still set
    finally:
        os.umask(old)
