"""Atomic writes: whole files only, and the mode a plain open(path, "w") would give."""

import os
import stat
import sys

import pytest
import torch

from autoprune.files import atomic_write, torch_save, write_json, write_text

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")

WRITERS = {
    "json": lambda p: write_json({"a": [1, 2]}, p),
    "text": lambda p: write_text("x,y\n1,2\n", p),
    "torch": lambda p: torch_save({"w": torch.zeros(3)}, p),
}


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _plain_open_mode(path) -> int:
    with open(path, "w"):
        pass
    return _mode(path)


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_has_umask_mode(tmp_path, umask, kind, mask, expected):
    umask(mask)
    path = WRITERS[kind](tmp_path / "out" / f"f.{kind}")
    assert _mode(path) == expected == _plain_open_mode(tmp_path / "plain")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_overwrite_gets_the_current_umask_mode(tmp_path, umask):
    path = tmp_path / "arch.json"
    umask(0o077)
    write_json({"v": 1}, path)
    assert _mode(path) == 0o600
    umask(0o022)
    write_json({"v": 2}, path)
    assert _mode(path) == 0o644 and path.read_text() == '{\n  "v": 2\n}\n'


def test_temp_file_is_beside_the_target_until_the_rename(tmp_path):
    path = tmp_path / "trials.csv"
    seen = []

    def write(f):
        f.write("a,b\n")
        seen.extend(p.name for p in tmp_path.iterdir())

    atomic_write(path, write)
    assert len(seen) == 1 and seen[0].startswith(".trials.csv.") and seen[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]
    assert path.read_text() == "a,b\n"


@pytest.mark.parametrize("binary", [False, True])
def test_failure_leaves_neither_target_nor_temp(tmp_path, binary):
    path = tmp_path / "metrics.json"

    def write(f):
        f.write(b"half" if binary else "half")
        f.flush()
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, write, binary=binary)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json({"old": True}, path)
    with pytest.raises(TypeError):
        write_json({"new": object()}, path)  # not JSON-serialisable, fails mid-write
    assert path.read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_interrupt_also_cleans_up(tmp_path):
    def write(f):
        f.write("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.txt", write)
    assert list(tmp_path.iterdir()) == []
