"""POSIX behaviour through a real mount, in a folder without policy
(input/processed), compared with what a local disk does."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from seldonfs import _libc

from .conftest import as_user, mounted, needs_fuse, needs_root, stored, wait_for

pytestmark = [needs_fuse]

NOBODY = 65534


def test_root_shows_profile_tree(mnt: Path) -> None:
    assert sorted(os.listdir(mnt)) == ["archive", "input", "output", "system", "temp"]
    assert sorted(os.listdir(mnt / "input")) == ["imports", "processed", "quarantine", "raw", "uploads"]
    assert stat.S_IMODE(os.stat(mnt / "input/quarantine").st_mode) == 0o700
    assert os.stat(mnt).st_ino == 1


def test_write_read_and_backing_file(plain: Path, store: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (plain / "f.bin").write_bytes(data)
    assert (plain / "f.bin").read_bytes() == data
    assert os.stat(plain / "f.bin").st_size == len(data)
    assert stored(store, "input/processed/f.bin") == data


def test_create_honours_mode_and_umask(plain: Path) -> None:
    old = os.umask(0o027)
    try:
        fd = os.open(plain / "m", os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)
        os.mkdir(plain / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(plain / "m").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(plain / "d").st_mode) == 0o750


@needs_root
def test_create_as_other_user_owns_file(plain: Path) -> None:
    os.chmod(plain, 0o1777)
    r = as_user(NOBODY, NOBODY, "import os,sys; os.mkdir(sys.argv[1]+'/d'); open(sys.argv[1]+'/f','w').write('x');"
                "os.symlink('f', sys.argv[1]+'/l'); os.mkfifo(sys.argv[1]+'/p')", str(plain))
    assert r.returncode == 0, r.stderr
    for name in ("d", "f", "l", "p"):
        st = os.lstat(plain / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name


@needs_root
def test_permissions_enforced_for_other_user(plain: Path) -> None:
    (plain / "secret").write_text("s")
    os.chmod(plain / "secret", 0o600)
    r = as_user(NOBODY, NOBODY, "import sys; open(sys.argv[1]).read()", str(plain / "secret"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_user(NOBODY, NOBODY, "import os,sys; os.chmod(sys.argv[1], 0o666)", str(plain / "secret"))
    assert "Operation not permitted" in r.stderr
    r = as_user(NOBODY, NOBODY, "import os,sys; os.unlink(sys.argv[1])", str(plain / "secret"))
    assert "Permission denied" in r.stderr  # the directory is root's 0755
    assert os.access(plain / "secret", os.R_OK)


@needs_root
def test_setgid_directory_passes_group_down(plain: Path) -> None:
    os.mkdir(plain / "g")
    os.chown(plain / "g", 0, 1234)
    os.chmod(plain / "g", 0o2777)
    r = as_user(NOBODY, NOBODY, "import os,sys; open(sys.argv[1]+'/f','w'); os.mkdir(sys.argv[1]+'/sub')", str(plain / "g"))
    assert r.returncode == 0, r.stderr
    assert os.stat(plain / "g/f").st_gid == 1234
    assert os.stat(plain / "g/sub").st_gid == 1234
    assert os.stat(plain / "g/sub").st_mode & stat.S_ISGID


def test_chmod_chown_utimens(plain: Path) -> None:
    f = plain / "f"
    f.write_text("x")
    os.chmod(f, 0o4751)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4751
    os.chown(f, 1000, 1001)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    # UTIME_OMIT keeps one time, UTIME_NOW sets the other to now
    fd = os.open(f, os.O_RDONLY)
    try:
        times = (_libc._Timespec * 2)(_libc._Timespec(0, _libc.UTIME_OMIT), _libc._Timespec(0, _libc.UTIME_NOW))
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.futimens(fd, times) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_123
    assert abs(st.st_mtime_ns - time.time_ns()) < 5 * 10**9


def test_symlink_readlink_and_lchown(plain: Path) -> None:
    os.symlink("../../outside/target", plain / "l")
    assert os.readlink(plain / "l") == "../../outside/target"
    assert stat.S_ISLNK(os.lstat(plain / "l").st_mode)
    os.chown(plain / "l", 7, 8, follow_symlinks=False)
    assert (os.lstat(plain / "l").st_uid, os.lstat(plain / "l").st_gid) == (7, 8)
    os.utime(plain / "l", ns=(5, 6), follow_symlinks=False)
    assert os.lstat(plain / "l").st_mtime_ns == 6


def test_mknod_fifo_socket_device(plain: Path) -> None:
    os.mkfifo(plain / "fifo", 0o640)
    assert stat.S_ISFIFO(os.stat(plain / "fifo").st_mode)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(plain / "sock"))
    finally:
        s.close()
    assert stat.S_ISSOCK(os.stat(plain / "sock").st_mode)
    if os.geteuid() == 0:
        os.mknod(plain / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        st = os.stat(plain / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_mkdir_rmdir_and_errors(plain: Path) -> None:
    os.mkdir(plain / "d")
    (plain / "d/f").write_text("x")
    with pytest.raises(OSError) as e:
        os.rmdir(plain / "d")
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(plain / "d/f")
    os.rmdir(plain / "d")
    assert not (plain / "d").exists()
    with pytest.raises(FileExistsError):
        os.mkdir(plain)
    with pytest.raises(OSError) as e:
        os.open(plain / ("x" * 256), os.O_CREAT | os.O_WRONLY)
    assert e.value.errno == errno.ENAMETOOLONG
    name = "x" * 255
    (plain / name).write_text("long")
    assert (plain / name).read_text() == "long"


def test_non_utf8_names(plain: Path) -> None:
    d = os.fsencode(plain)
    name = b"caf\xe9-\xff.bin"
    with open(d + b"/" + name, "wb") as f:
        f.write(b"latin-1")
    assert name in os.listdir(d)
    with open(d + b"/" + name, "rb") as f:
        assert f.read() == b"latin-1"


def test_rename_over_existing_and_flags(plain: Path) -> None:
    (plain / "a").write_text("A")
    (plain / "b").write_text("B")
    ino_a = os.stat(plain / "a").st_ino
    os.rename(plain / "a", plain / "b")
    assert (plain / "b").read_text() == "A" and os.stat(plain / "b").st_ino == ino_a
    assert not (plain / "a").exists()
    (plain / "c").write_text("C")
    pd = os.open(plain, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            _libc.renameat2(pd, b"b", pd, b"c", _libc.RENAME_NOREPLACE)
        _libc.renameat2(pd, b"b", pd, b"c", _libc.RENAME_EXCHANGE)
    finally:
        os.close(pd)
    assert (plain / "b").read_text() == "C" and (plain / "c").read_text() == "A"
    # directories move with their contents, across parents without rules
    os.makedirs(plain / "x/y")
    (plain / "x/y/f").write_text("deep")
    exports = plain.parent.parent / "output" / "exports"
    os.rename(plain / "x", exports / "moved")
    assert (exports / "moved/y/f").read_text() == "deep"
    with pytest.raises(OSError) as e:  # into input/raw its files would skip the checks there
        os.rename(exports / "moved", plain.parent / "raw" / "moved")
    assert e.value.errno == errno.EXDEV


def test_hard_links_share_inode(plain: Path) -> None:
    (plain / "a").write_text("one")
    os.link(plain / "a", plain / "b")
    sa, sb = os.stat(plain / "a"), os.stat(plain / "b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    with open(plain / "b", "a") as f:
        f.write("+two")
    assert (plain / "a").read_text() == "one+two"
    os.unlink(plain / "a")
    assert os.stat(plain / "b").st_nlink == 1
    # a hard link to a symlink is a symlink
    os.symlink("b", plain / "s")
    os.link(plain / "s", plain / "s2", follow_symlinks=False)
    assert os.readlink(plain / "s2") == "b"


def test_inode_numbers_stable(plain: Path) -> None:
    (plain / "f").write_text("x")
    ino = os.stat(plain / "f").st_ino
    os.rename(plain / "f", plain / "g")
    assert os.stat(plain / "g").st_ino == ino
    assert {e.name: e.inode() for e in os.scandir(plain)}["g"] == ino


def test_truncate_and_sparse(plain: Path) -> None:
    f = plain / "sparse"
    with open(f, "wb") as fh:
        fh.seek(10 * 1024 * 1024)
        fh.write(b"end")
    st = os.stat(f)
    assert st.st_size == 10 * 1024 * 1024 + 3
    assert st.st_blocks * 512 < 1024 * 1024  # holes stay holes
    with open(f, "rb") as fh:
        assert fh.read(4096) == b"\0" * 4096
    os.truncate(f, 5)
    assert f.read_bytes() == b"\0" * 5
    os.truncate(f, 8192)
    assert f.read_bytes() == b"\0" * 8192
    with open(f, "r+b") as fh:
        fh.write(b"abc")
        fh.flush()
        os.ftruncate(fh.fileno(), 2)
    assert f.read_bytes() == b"ab"


def test_append_and_unlinked_open_file(plain: Path) -> None:
    f = plain / "log"
    with open(f, "a") as a:
        a.write("1")
    with open(f, "a") as a:
        a.write("2")
    assert f.read_text() == "12"
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        os.pwrite(fd, b"xyz", 1)
        assert os.pread(fd, 10, 0) == b"1xyz"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_mmap_shared_write(plain: Path) -> None:
    import mmap

    f = plain / "mm"
    f.write_bytes(b"\0" * 8192)
    with open(f, "r+b") as fh:
        m = mmap.mmap(fh.fileno(), 8192)
        m[4096:4101] = b"hello"
        m.flush()
        m.close()
    assert f.read_bytes()[4096:4101] == b"hello"


def test_xattrs_and_reserved_prefix(plain: Path) -> None:
    f = plain / "f"
    f.write_text("x")
    os.setxattr(f, "user.colour", b"blue")
    assert os.getxattr(f, "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(f)
    os.removexattr(f, "user.colour")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.colour")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(PermissionError):
        os.setxattr(f, "user.seldon.reason", b"forged")


def test_statfs_matches_backing(plain: Path, store: Path) -> None:
    a, b = os.statvfs(plain), os.statvfs(store / "data")
    assert (a.f_bsize, a.f_blocks, a.f_namemax) == (b.f_bsize, b.f_blocks, b.f_namemax)
    assert abs(a.f_bavail - b.f_bavail) < b.f_blocks // 100 + 1000


def test_readdir_offsets_stable_while_changing(plain: Path) -> None:
    names = {f"f{i:04d}" for i in range(600)}
    for n in names:
        (plain / n).touch()
    seen = []
    with os.scandir(plain) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:  # churn the directory mid-listing
                for k in range(100):
                    (plain / f"new{k}").touch()
                for n in sorted(names)[300:350]:
                    os.unlink(plain / n)
    assert len(seen) == len(set(seen)), "no entry twice"
    survivors = names - set(sorted(names)[300:350])
    assert survivors <= set(seen), "every entry that stayed is listed"


def test_fsync_and_fsyncdir(plain: Path) -> None:
    fd = os.open(plain / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(plain, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def test_real_tools_cp_tar_rsync(plain: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub/deeper").mkdir(parents=True)
    for i in range(30):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(i * 1000))
    (src / "sub/deeper/big").write_bytes(os.urandom(2_000_000))
    os.symlink("f1", src / "sub/link")
    subprocess.run(["cp", "-a", str(src), str(plain / "cp")], check=True)
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tmp_path / "t.tar"), "src"], check=True)
    (plain / "tar").mkdir()
    subprocess.run(["tar", "-C", str(plain / "tar"), "-xf", str(tmp_path / "t.tar")], check=True)
    subprocess.run(["rsync", "-a", f"{src}/", str(plain / "rsync")], check=True)
    for dest in (plain / "cp", plain / "tar/src", plain / "rsync"):
        r = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(dest)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # rsync again: nothing to do, and the tree still matches
    r = subprocess.run(["rsync", "-ai", f"{src}/", str(plain / "rsync")], check=True, capture_output=True, text=True)
    assert r.stdout.strip() == ""


def test_access(plain: Path) -> None:
    f = plain / "f"
    f.write_text("x")
    os.chmod(f, 0o644)
    assert os.access(f, os.R_OK | os.W_OK)
    assert not os.access(f, os.X_OK)


def mount_options(m: Path) -> list[str]:
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return [l.split()[3].split(",") for l in lines if l.split()[1] == str(m)]


@needs_root
def test_without_allow_other_only_the_owner_enters_and_the_store_checks(store: Path, tmp_path: Path) -> None:
    """Without allow_other the kernel lets only the mounting user in, and
    SeldonFS leaves out default_permissions: the backing store checks the
    same user. What a user can do stays the same."""
    m = tmp_path / "own"
    with mounted(store, m, opts=""):
        (opts,) = mount_options(m)
        assert "default_permissions" not in opts and "allow_other" not in opts
        f = m / "input" / "processed" / "run.sh"
        f.write_text("#!/bin/sh\necho hi\n")
        f.chmod(0o644)
        with pytest.raises(PermissionError):  # no x bit: not even root may run it
            subprocess.run([str(f)])
        assert not os.access(f, os.X_OK) and os.access(f, os.R_OK | os.W_OK)
        f.chmod(0o700)
        assert subprocess.run([str(f)], capture_output=True, text=True).stdout == "hi\n"
        f.chmod(0o444)
        f.write_text("root writes anyway\n")  # as on any filesystem
        r = as_user(NOBODY, NOBODY, "import os,sys; os.stat(sys.argv[1])", str(f))
        assert "Permission denied" in r.stderr  # the kernel keeps everyone else out
    with mounted(store, m):  # allow_other: the kernel checks for them
        (opts,) = mount_options(m)
        assert "default_permissions" in opts and "allow_other" in opts


def test_o_direct_read_write(plain: Path) -> None:
    import mmap

    buf = mmap.mmap(-1, 8192)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(8192))
    fd = os.open(plain / "direct", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        assert os.pwrite(fd, buf, 4096) == 8192
        back = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [back], 4096) == 8192
        assert back[:] == buf[:]
    finally:
        os.close(fd)
    assert (plain / "direct").read_bytes() == b"\0" * 4096 + buf[:]


@needs_root
@needs_root
def test_set_id_bits_after_writes_as_on_a_local_disk(plain: Path, tmp_path: Path) -> None:
    """A write, truncate(2) or open(O_TRUNC) by a user without CAP_FSETID
    takes set-user-ID away, and set-group-ID where group execute is set or
    the user is not in the file's group; root's keep them. The kernel does
    it for the first two; the O_TRUNC it leaves to the filesystem."""
    how = {
        "write": "open(sys.argv[1], 'ab').write(b'x')",
        "truncate": "os.truncate(sys.argv[1], 1)",
        "o_trunc": "os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC))",
    }

    def modes_after(d: Path) -> dict[str, int]:
        d.mkdir()
        d.chmod(0o777)
        out = {}
        for name, code in how.items():
            for uid, mode in ((NOBODY, 0o6777), (NOBODY, 0o4777), (NOBODY, 0o2777), (NOBODY, 0o2767), (0, 0o6777)):
                f = d / f"{name}-{uid}-{mode:o}"
                f.write_bytes(b"data")
                f.chmod(mode)
                r = as_user(uid, uid, "import os, sys; " + code, str(f))
                assert r.returncode == 0, r.stderr
                out[f.name] = stat.S_IMODE(os.stat(f).st_mode)
        return out

    seen, disk = modes_after(plain / "ids"), modes_after(tmp_path / "disk")
    # Before a write the kernel's FUSE code drops set-group-ID only where
    # group execute is set (fuse_setattr); a local disk also where the
    # writer is not in the group. The filesystem never hears of it.
    del seen["write-65534-2767"], disk["write-65534-2767"]
    assert seen == disk
    assert (seen["o_trunc-65534-6777"], seen["o_trunc-65534-2767"], seen["o_trunc-0-6777"]) == (0o777, 0o767, 0o6777)


def test_capability_xattr_after_cached_miss(plain: Path) -> None:
    import struct

    f = plain / "tool"
    f.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA  # remembered as absent from here on
    caps = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep
    os.setxattr(f, "security.capability", caps)
    assert os.getxattr(f, "security.capability") == caps
    with open(f, "ab") as fh:  # a write drops file capabilities, as on ext4
        fh.write(b"exit 0\n")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA
    os.setxattr(f, "security.capability", caps)
    os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))  # and so does a truncating open, root's too
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA
    os.setxattr(f, "security.capability", caps)
    os.removexattr(f, "security.capability")
    with pytest.raises(OSError):
        os.getxattr(f, "security.capability")



def test_huge_sparse_offset(plain: Path) -> None:
    f = plain / "huge"
    with open(f, "wb") as fh:
        fh.seek(1 << 40)
        fh.write(b"!")
    assert os.stat(f).st_size == (1 << 40) + 1
    with open(f, "rb") as fh:
        assert fh.read(4) == b"\0\0\0\0"
        fh.seek(1 << 40)
        assert fh.read() == b"!"
    os.unlink(f)


@needs_fuse
def test_more_files_than_the_inode_budget(tmp_path: Path) -> None:
    """With room for 200 inodes (a descriptor each), 2,000 files are made,
    listed, read and removed: the kernel is asked to forget the oldest."""
    from .conftest import init_store, mounted

    store = init_store(tmp_path / "store", encrypted=False)
    conf = store / "seldonfs.toml"
    conf.write_text(conf.read_text().replace("[mount]\n", "[mount]\nmax_inodes = 200\n", 1))
    assert "max_inodes = 200" in conf.read_text()
    m = tmp_path / "mnt"
    with mounted(store, m):
        d = m / "input" / "processed"
        for i in range(2000):
            (d / f"f{i:04d}").write_bytes(b"%d" % i)
        assert sorted(os.listdir(d)) == [f"f{i:04d}" for i in range(2000)]
        assert all((d / f"f{i:04d}").read_bytes() == b"%d" % i for i in range(2000))
        # The invalidations go to the kernel from one queue and the forgets
        # come back later: on a loaded machine they lag behind the reads.
        stats = m / "system" / "monitoring" / "stats.json"
        wait_for(lambda: json.loads(stats.read_text())["inodes_known"] < 600, timeout=60,
                 what="fewer than 600 inodes known (the kernel forgetting the oldest)")
        for i in range(2000):
            (d / f"f{i:04d}").unlink()
        assert os.listdir(d) == []


@needs_fuse
def test_committed_files_are_forgotten_under_the_budget_too(tmp_path: Path) -> None:
    """A commit moves a new file to its managed name in the store; the
    kernel still holds it by the written name, and after a listing by the
    managed name as well. Asked to drop only the name in the store, it kept
    committed files, and a naming folder ran out of descriptors (EMFILE at
    every create) after about 20,000 files."""
    from .conftest import init_store, mounted

    store = init_store(tmp_path / "store", encrypted=False)
    conf = store / "seldonfs.toml"
    conf.write_text(conf.read_text().replace("[mount]\n", "[mount]\nmax_inodes = 200\n", 1)
                    + '\n[folders."named"]\nnaming = "{seq:05d}_{name}"\n')
    (store / "data" / "named").mkdir()
    m = tmp_path / "mnt"
    with mounted(store, m):
        d = m / "named"
        for i in range(1500):
            (d / f"f{i:04d}.txt").write_bytes(b"%d" % i)
            if i % 50 == 49:
                assert len(os.listdir(d)) == i + 1  # the kernel learns the managed names too
        assert len(os.listdir(d)) == 1500 and all(n[5] == "_" for n in os.listdir(d))
        stats = m / "system" / "monitoring" / "stats.json"
        wait_for(lambda: json.loads(stats.read_text())["inodes_known"] < 600, timeout=60,
                 what="fewer than 600 inodes known (the kernel forgetting committed files)")
        assert sorted(p.read_bytes() for p in d.iterdir()) == sorted(b"%d" % i for i in range(1500))
