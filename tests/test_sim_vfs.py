"""The virtual file system: normalisation, operations, errors, confinement."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from env_server.sim.vfs import HOME, VFS, VFSError, default_tree, normalize


def test_normalize():
    assert normalize("a/b", "/home/user") == "/home/user/a/b"
    assert normalize("~/x") == f"{HOME}/x"
    assert normalize("/../../etc/passwd") == "/etc/passwd"  # never climbs above the VFS root
    assert normalize("/a/./b/../c") == "/a/c"
    with pytest.raises(VFSError):
        normalize("   ")


@given(st.text(max_size=60))
def test_normalize_always_absolute(path):
    try:
        out = normalize(path)
    except VFSError:
        return
    assert out.startswith("/") and "/../" not in out + "/" and "//" not in out


def test_operations_and_errors():
    fs = default_tree()
    fs.mkdir(f"{HOME}/a/b/c", parents=True)
    fs.write(f"{HOME}/a/f.txt", "hi")
    assert fs.read("~/a/f.txt") == "hi"
    assert [n.name for n in fs.listdir(f"{HOME}/a")] == ["b", "f.txt"]
    fs.copy(f"{HOME}/a/f.txt", f"{HOME}/a/b")
    assert fs.read(f"{HOME}/a/b/f.txt") == "hi"
    fs.move(f"{HOME}/a/f.txt", f"{HOME}/a/g.txt")
    assert not fs.exists(f"{HOME}/a/f.txt") and fs.is_file(f"{HOME}/a/g.txt")
    with pytest.raises(VFSError, match="already exists"):
        fs.mkdir(f"{HOME}/a/b")
    with pytest.raises(VFSError, match="into itself"):
        fs.move(f"{HOME}/a", f"{HOME}/a/b")
    with pytest.raises(VFSError, match="no such"):
        fs.delete(f"{HOME}/nope")
    with pytest.raises(VFSError, match="refusing"):
        fs.delete(HOME)
    with pytest.raises(VFSError, match="forbidden character"):
        fs.mkdir(f"{HOME}/bad:name")
    with pytest.raises(VFSError, match="is a folder"):
        fs.read(f"{HOME}/a")
    with pytest.raises(VFSError, match="does not exist"):
        fs.write(f"{HOME}/missing/x.txt", "x")


def test_snapshot_is_the_whole_state():
    a, b = VFS(), VFS()
    for fs in (a, b):
        fs.mkdir("/x")
        fs.write("/x/y", "1")
    assert a.snapshot() == b.snapshot()
    b.write("/x/y", "2")
    assert a.snapshot() != b.snapshot()
