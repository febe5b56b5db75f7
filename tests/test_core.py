"""core.Core without FUSE: the inode table, names and handles over a temp tree."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from seldonfs.content import PlainContent
from seldonfs.core import ROOT_INODE, Caller, Core
from seldonfs.entries import credentials, set_id_left

ME = Caller(os.getuid(), os.getgid(), os.getpid())


@pytest.fixture
def core(tmp_path: Path):
    (tmp_path / "data").mkdir()
    c = Core(tmp_path / "data", PlainContent())
    yield c
    c.close()


def test_root_is_inode_1(core: Core) -> None:
    assert core.getattr(ROOT_INODE).ino == ROOT_INODE


def test_create_write_read_release(core: Core, tmp_path: Path) -> None:
    fh, st = core.create(ROOT_INODE, b"f", 0o640, os.O_WRONLY, ME)
    assert core.write(fh, 0, b"hello") == 5
    core.release(fh)
    assert (tmp_path / "data/f").read_bytes() == b"hello"
    fh = core.open(st.ino, os.O_RDONLY)
    assert core.read(fh, 1, 3) == b"ell"
    core.release(fh)


def test_lookup_counts_and_forget(core: Core) -> None:
    fh, st = core.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    assert core.lookup(ROOT_INODE, b"f").ino == st.ino
    assert core.nodes[st.ino].nlookup == 2
    fd = core.nodes[st.ino].fd
    core.forget([(st.ino, 1)])
    assert core.nodes[st.ino].nlookup == 1
    core.unlink(ROOT_INODE, b"f")
    core.forget([(st.ino, 1)])
    assert st.ino not in core.nodes
    with pytest.raises(OSError) as e:
        core.getattr(st.ino)
    assert e.value.errno == errno.ESTALE
    core.close()  # waits for the closer thread: the pinned descriptor is gone
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF


def test_node_follows_rename_of_parent(core: Core, tmp_path: Path) -> None:
    d = core.mkdir(ROOT_INODE, b"d", 0o755, ME)
    fh, f = core.create(d.ino, b"f", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    core.rename(ROOT_INODE, b"d", ROOT_INODE, b"e", 0)
    assert core.getattr(f.ino).ino == f.ino
    fh = core.open(f.ino, os.O_RDWR)
    core.write(fh, 0, b"moved")
    core.release(fh)
    assert (tmp_path / "data/e/f").read_bytes() == b"moved"


def test_hard_link_same_node(core: Core) -> None:
    fh, f = core.create(ROOT_INODE, b"a", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    b = core.link(f.ino, ROOT_INODE, b"b")
    assert b.ino == f.ino and b.nlink == 2
    assert core.nodes[f.ino].nlookup == 2


def test_names_cannot_escape(core: Core, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    os.symlink(str(tmp_path / "outside"), tmp_path / "data/evil")
    st = core.lookup(ROOT_INODE, b"evil")
    with pytest.raises(OSError):
        core.open(st.ino, os.O_RDONLY)  # an O_PATH symlink fd does not reopen as a file
    with pytest.raises(OSError):
        core.getxattr(st.ino, b"user.x")
    with pytest.raises(OSError):
        core.lookup(st.ino, b"x")  # nor serve as a directory


def test_reserved_xattr_prefix(core: Core) -> None:
    fh, f = core.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    with pytest.raises(OSError) as e:
        core.setxattr(f.ino, b"user.seldon.reason", b"x")
    assert e.value.errno == errno.EPERM


def test_readdir_snapshot_and_lookups(core: Core) -> None:
    for n in (b"a", b"b", b"c"):
        fh, _ = core.create(ROOT_INODE, n, 0o644, os.O_WRONLY, ME)
        core.release(fh)
    dh = core.opendir(ROOT_INODE)
    it = core.readdir(dh, 0)
    first = next(it)
    core.unlink(ROOT_INODE, b"c" if first[0] != b"c" else b"b")
    rest = list(it)
    names = [first[0]] + [n for n, _, _ in rest]
    assert len(names) == 2 and len(set(names)) == 2
    offs = [first[2]] + [o for _, _, o in rest]
    assert offs == sorted(offs)
    core.releasedir(dh)


def test_open_trunc_goes_through_content(core: Core, tmp_path: Path) -> None:
    (tmp_path / "data/t").write_bytes(b"old contents")
    st = core.lookup(ROOT_INODE, b"t")
    fh = core.open(st.ino, os.O_WRONLY | os.O_TRUNC)
    core.release(fh)
    assert (tmp_path / "data/t").read_bytes() == b""


def test_dot_names_never_leave_the_store(core: Core) -> None:
    for name in (b".", b".."):
        with pytest.raises(FileNotFoundError):
            core.lookup(ROOT_INODE, name)


def test_new_entries_remember_absent_probe_xattrs(core: Core) -> None:
    """Answered without a syscall (the kernel asks before every write), yet
    a value set later is seen."""
    fh, f = core.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    assert core.nodes[f.ino].absent_xattrs & 1  # security.capability
    with pytest.raises(OSError) as e:
        core.getxattr(f.ino, b"security.capability")
    assert e.value.errno == errno.ENODATA
    core.setxattr(f.ino, b"user.x", b"1")
    assert core.getxattr(f.ino, b"user.x") == b"1"
    d = core.mkdir(ROOT_INODE, b"d", 0o755, ME)
    assert core.nodes[d.ino].absent_xattrs & 1


def test_past_the_budget_the_oldest_unopened_files_are_offered_to_forget(core: Core) -> None:
    core.max_inodes = 100
    asked: list[tuple[int, int, bytes]] = []  # (inodes known when asked, parent, name)
    core.notify = lambda parent, name: asked.append((len(core.nodes), parent, name))
    d = core.mkdir(ROOT_INODE, b"d", 0o755, ME).ino
    fh, kept = core.create(d, b"open-one", 0o644, os.O_WRONLY, ME)  # oldest, but open
    for i in range(100):
        h, _ = core.create(d, b"f%03d" % i, 0o644, os.O_WRONLY, ME)
        core.release(h)
    assert len({n for n, _, _ in asked}) == 1  # crossing the budget once asks once
    names = [n for _, _, n in asked]
    assert names[0] == b"f000" and b"open-one" not in names  # oldest first, never an open file
    assert {p for _, p, _ in asked} == {d} and len(names) == 101 - 75  # asked at the 101st inode, down to 3/4
    core.release(fh)


def test_a_files_path_is_remembered_until_something_moves(core: Core) -> None:
    fh, st = core.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, ME)
    core.release(fh)
    core.note_path(st.ino, "f")
    assert core.rel_path(st.ino) == "f"
    d = core.mkdir(ROOT_INODE, b"d", 0o755, ME)
    core.rename(ROOT_INODE, b"f", d.ino, b"g", 0)
    assert core.rel_path(st.ino) == "d/g"
    core.rename(ROOT_INODE, b"d", ROOT_INODE, b"e", 0)  # a parent moves
    assert core.rel_path(st.ino) == "e/g"
    core.link(st.ino, ROOT_INODE, b"h")
    core.unlink(d.ino, b"g")  # the name the inode is pinned by is gone
    assert core.rel_path(st.ino) is None


@pytest.mark.parametrize(
    ("mode", "privileged", "groups", "left"),
    [
        (0o106777, False, {5}, 0o100777),  # set-user-ID and group-executable set-group-ID go
        (0o106777, True, {5}, 0o106777),  # CAP_FSETID keeps them
        (0o102767, False, {5}, 0o102767),  # set-group-ID without group execute stays in the group
        (0o102767, False, {6}, 0o100767),  # and goes outside it
        (0o046777, False, {6}, 0o046777),  # a directory's are not a truncate's business
    ],
)
def test_set_id_left_by_a_truncate(mode: int, privileged: bool, groups: set[int], left: int) -> None:
    assert set_id_left(mode, 5, privileged, frozenset(groups)) == left


def test_credentials_of_this_process_and_of_one_gone() -> None:
    privileged, groups = credentials(Caller(os.getuid(), os.getgid(), os.getpid()))
    assert privileged == (os.geteuid() == 0) and os.getgid() in groups
    assert credentials(Caller(1000, 1000, 2**22 + 1)) == (False, frozenset({1000}))


def test_a_sequential_reader_is_read_ahead_and_a_random_one_is_not(core: Core, tmp_path: Path) -> None:
    from seldonfs import readahead

    size = 24 << 20
    (tmp_path / "data/big").write_bytes(os.urandom(size))
    ino = core.lookup(ROOT_INODE, b"big").ino  # its node keeps a descriptor
    fds = len(os.listdir("/proc/self/fd"))
    fh = core.open(ino, os.O_RDONLY)
    got = bytearray()
    for off in range(0, size, 128 << 10):
        got += core.read(fh, off, 128 << 10)
    assert bytes(got) == (tmp_path / "data/big").read_bytes()
    # followed from AFTER on, up to LEAD past the end, a STEP at a time
    want = -(-(size - readahead.AFTER + readahead.LEAD) // readahead.STEP)
    assert core.read_ahead.asked in (want - 1, want), core.read_ahead.asked
    asked = core.read_ahead.asked
    for i in range(200):  # jumps: nothing asked
        core.read(fh, (i * 7919 << 12) % size, 4096)
    core.release(fh)
    assert core.read_ahead.asked == asked
    # the thread closes every descriptor it was handed
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) == fds
