"""FUSE over io_uring (seldonfs/uring.py, seldonfs/_uring.c): the mount's
requests served by a thread per CPU instead of the trio thread.

The kernel's switch (/sys/module/fuse/parameters/enable_uring) is global, so
these tests set it for themselves and put it back; the rest of the suite
runs with what the machine has. Skipped on a kernel without FUSE over
io_uring and when not root; on one with it, the install must have built
the parts (scripts/setup.sh), or the test fails.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from seldonfs import uring

from . import test_cli, test_policy, test_posix
from .conftest import configure, init_store, key_args, log_problems, mounted, needs_fuse, seldonfs, wait_for

pytestmark = [
    needs_fuse,
    pytest.mark.fuse,
    pytest.mark.skipif(not uring.PARAM.exists(), reason="this kernel has no FUSE over io_uring"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch FUSE over io_uring on"),
]

SERVED = re.compile(r"io_uring: (\d+) requests over (\d+) queues \(waiting as SCHED_IDLE\), (\d+) over /dev/fuse")


def switch(on: bool) -> str:
    old = uring.PARAM.read_text().strip()
    uring.PARAM.write_text("Y" if on else "N")
    return old


@pytest.fixture
def ring():
    old = switch(True)
    try:
        assert uring.unavailable() is None
        yield
    finally:
        uring.PARAM.write_text(old)


def served(store: Path) -> tuple[int, int, int]:
    """The last mount's counts: requests over the rings, queues, over /dev/fuse."""
    hits = SERVED.findall((store / "seldonfs.log").read_text())
    assert hits, "the mount did not serve over io_uring"
    ring_requests, queues, dev = map(int, hits[-1])
    return ring_requests, queues, dev


def tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


def make_tree(root: Path) -> None:
    """Sizes around the block and page edges, deep and wide folders, a symlink."""
    sizes = [0, 1, 4095, 4096, 4097, 16383, 16384, 65537, 131072 + 7, 1 << 20, (3 << 20) + 5]
    for d in range(6):
        sub = root / f"d{d}" / "deeper" / f"e{d}"
        sub.mkdir(parents=True)
        for i, size in enumerate(sizes):
            (sub / f"f{i}.bin").write_bytes(os.urandom(size))
        for i in range(40):
            (root / f"d{d}" / f"small{i}.txt").write_text(f"{d} {i}\n" * (i + 1))
    (root / "d0" / "link").symlink_to("deeper/e0/f3.bin")


def test_tools_from_both_cpus_over_the_ring(ring, store: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    archive = tmp_path / "src.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="src")
    m = tmp_path / "m"
    with mounted(store, m):
        base = m / "input" / "processed"
        cpus = sorted(os.sched_getaffinity(0))
        jobs = []
        for i in range(2):  # at once, from two CPUs: two queues
            (base / f"t{i}").mkdir()
            jobs.append(subprocess.Popen(["taskset", "-c", str(cpus[i % len(cpus)]), "tar", "-xf", str(archive),
                                          "-C", str(base / f"t{i}")], stderr=subprocess.PIPE))
        for j in jobs:
            _, err = j.communicate(timeout=120)
            assert j.returncode == 0, err
        want = tree(src)
        for i in range(2):
            assert tree(base / f"t{i}" / "src") == want
        subprocess.run(["cp", "-a", str(base / "t0" / "src"), str(base / "cp")], check=True)
        subprocess.run(["rsync", "-a", f"{src}/", str(base / "rs")], check=True)
        assert tree(base / "cp") == want and tree(base / "rs") == want
        # rename over, hard link, append, truncate, fsync
        f = base / "rs" / "d1" / "small3.txt"
        os.rename(base / "rs" / "d1" / "small4.txt", f)
        os.link(f, base / "rs" / "hard")
        with open(f, "ab") as fh:
            fh.write(b"more")
            os.fsync(fh.fileno())
        os.truncate(base / "rs" / "d2" / "deeper" / "e2" / "f9.bin", 5000)
        assert (base / "rs" / "hard").read_bytes() == (src / "d1" / "small4.txt").read_bytes() + b"more"
        assert os.stat(base / "rs" / "d2" / "deeper" / "e2" / "f9.bin").st_size == 5000
        subprocess.run(["rm", "-rf", str(base / "t0"), str(base / "t1"), str(base / "cp")], check=True)
        assert sorted(os.listdir(base)) == ["rs"]
        transport = json.loads(seldonfs("stats", m, "--json").stdout)["transport"]
        assert transport["kind"] == "io_uring" and transport["queues"] == os.cpu_count(), transport
        assert transport["requests"]["io_uring"] > 2 * len(want) and not transport["degraded"], transport
        line = next(l for l in seldonfs("stats", m).stdout.splitlines() if l.startswith("transport"))
        assert line.startswith(f"transport  io_uring, {os.cpu_count()} queues; "), line
    ring_requests, queues, dev = served(store)
    assert queues == os.cpu_count() and ring_requests > 2 * len(want)
    # the FORGETs of the three trees removed came in batches (fuseloop.py)
    assert dev < len(want) // 4, dev
    # and the bytes in the store, after a remount over /dev/fuse
    old = switch(False)
    try:
        with mounted(store, m):
            assert (m / "input" / "processed" / "rs" / "hard").read_bytes().endswith(b"more")
            assert tree(m / "input" / "processed" / "rs" / "d3") == {
                k.removeprefix("d3/"): v for k, v in want.items() if k.startswith("d3/")}
    finally:
        uring.PARAM.write_text(old)


def test_a_large_files_check_starts_from_a_queue_thread(ring, store: Path, tmp_path: Path) -> None:
    # past INLINE_CHECK_BYTES, the check is a trio task started from the request
    test_policy.write_rules(store)
    m = tmp_path / "mnt"
    with mounted(store, m):
        test_policy.test_large_files_are_checked_in_a_worker_thread(m)
    assert served(store)[0] > 0


def test_absent_xattrs_answered_by_the_queues_stay_true(ring, store: Path, tmp_path: Path) -> None:
    """A probed xattr an inode lacks is answered ENODATA by the queue
    thread itself (_uring.c), and counted with the handlers' answers. One
    set through the mount is answered with its value from then on (the
    capability test of test_posix, over the rings; a label; an ACL), also
    once the kernel has forgotten the inode and looked it up again."""
    m = tmp_path / "m"
    with mounted(store, m):
        d = m / "input" / "processed"
        f = d / "f"
        f.write_bytes(b"x")
        names = ("security.capability", "security.selinux", "system.posix_acl_access")
        for name in names * 20:
            with pytest.raises(OSError) as e:
                os.getxattr(f, name)
            assert e.value.errno == errno.ENODATA
        stats = json.loads(seldonfs("stats", m, "--json").stdout)
        answered = stats["transport"]["requests"]["absent_xattrs"]
        assert answered >= 60 and stats["ops"]["getxattr"]["ENODATA"] >= answered, stats

        test_posix.test_capability_xattr_after_cached_miss(d)
        os.setxattr(f, "security.selinux", b"label")
        # user::rw- user:65534:r-- group::r-- mask::r-- other::---
        acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in (
            (0x01, 6, 0xFFFFFFFF), (0x02, 4, 65534), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
            (0x20, 0, 0xFFFFFFFF)))
        os.setxattr(f, "system.posix_acl_access", acl)
        for _ in range(2):
            assert os.getxattr(f, "security.selinux") == b"label"
            assert os.getxattr(f, "system.posix_acl_access") == acl
            Path("/proc/sys/vm/drop_caches").write_text("2")  # the kernel forgets f; its next lookup is new
        os.removexattr(f, "security.selinux")
        with pytest.raises(OSError) as e:
            os.getxattr(f, "security.selinux")
        assert e.value.errno == errno.ENODATA
    assert served(store)[0] > 0


def test_a_janitor_run_asked_for_through_the_mount(ring, store: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    with mounted(store, m):
        before = json.loads(os.getxattr(m, "user.seldon.janitor"))["runs"]
        os.setxattr(m, "user.seldon.janitor", b"{}")
        wait_for(lambda: json.loads(os.getxattr(m, "user.seldon.janitor"))["runs"] > before, what="janitor run")
    assert served(store)[0] > 0


def test_a_sigterm_over_the_ring(ring, store: Path, tmp_path: Path) -> None:
    """It writes back through the ring (the trio thread waits meanwhile)."""
    test_cli.test_a_sigterm_stores_what_open_files_were_told_was_written(store, tmp_path)
    assert served(store)[0] > 0


def test_kill_9_over_the_ring(ring, store: Path, tmp_path: Path) -> None:
    test_cli.test_kill_9_then_remount_keeps_closed_and_synced_files(store, tmp_path)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or 0 not in os.sched_getaffinity(0),
                    reason="needs CPU 0 and another")
def test_a_queue_that_ends_raises_a_critical_alert(ring, store: Path, tmp_path: Path) -> None:
    """CPU 0's queue thread ends after its first request (SELDONFS_FAULTS,
    as on an unexpected ring error): the requests of CPU 0 would wait from
    then on, so `ctl health` turns degraded with a transport-stalled alert,
    stats name the queue, and the other CPU's queue still serves. This
    process, the mount's and the tools after the fault run on the other
    CPU; from CPU 0 comes one STATFS alone (of the mount's root: no lookup,
    no open file whose close would send a FLUSH), the request that ends
    the queue. A second would wait until the mount is gone."""
    live = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {live})
    m = tmp_path / "m"
    try:
        with mounted(store, m, env={"SELDONFS_FAULTS": "ring:1:EIO"}, expect_log_problems=True):
            f = m / "input" / "processed" / "f"
            f.write_bytes(b"before")  # written back at the close: nothing left for a flusher on CPU 0
            p = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c",
                                  "import os, sys; print(os.statvfs(sys.argv[1]).f_namemax)", str(m)],
                                 stdout=subprocess.PIPE, text=True)
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()  # it waits in the kernel until the mount is gone: no wait for it here
                pytest.fail("the one request from CPU 0 was not answered")
            assert p.returncode == 0 and out == "255\n", out
            health: dict = {}

            def stalled() -> bool:
                nonlocal health
                health = json.loads(seldonfs("ctl", m, "health").stdout)
                return health["status"] == "degraded"

            wait_for(stalled, timeout=30, what="health degraded")
            [alert] = health["alerts"]
            assert alert["kind"] == "transport-stalled" and alert["level"] == "critical", alert
            assert alert["message"] == ("the io_uring queue of CPU 0 ended (Input/output error): requests from there "
                                        "wait until the mount is unmounted; unmount and mount again"), alert
            transport = json.loads(seldonfs("stats", m, "--json").stdout)["transport"]
            assert transport["ended"] == [0] and transport["error"] == "Input/output error", transport
            assert transport["degraded"], transport
            assert ", the queue of CPU 0 ended and its requests wait: see the log;" in seldonfs("stats", m).stdout
            f.write_bytes(b"after")  # from the live CPU, over its queue
            assert f.read_bytes() == b"after"
    finally:
        os.sched_setaffinity(0, before)
    log = (store / "seldonfs.log").read_text()
    assert "critical alert (transport-stalled): the io_uring queue of CPU 0 ended" in log
    assert "seldonfs: io_uring queue 0: Input/output error" in (store.parent / "mount-m.stderr").read_text()
    seen = len(log_problems(store))
    with mounted(store, m, expect_log_problems=True):  # a new mount has every queue again
        assert (m / "input" / "processed" / "f").read_bytes() == b"after"
        assert json.loads(seldonfs("stats", m, "--json").stdout)["transport"]["ended"] == []
    assert log_problems(store)[seen:] == []


def test_io_uring_setting(tmp_path: Path) -> None:
    store = init_store(tmp_path / "s")
    m = tmp_path / "m"
    m.mkdir()
    old = switch(False)
    try:
        configure(store, "mount", "io_uring = true")
        r = seldonfs("mount", *key_args(store), str(store), str(m))
        assert r.returncode == 2 and not os.path.ismount(m)
        assert r.stderr.strip().splitlines() == [
            f"seldonfs: [mount] io_uring = true, but the kernel has FUSE over io_uring switched off "
            f"({uring.PARAM} is N; root can write Y)"]
        switch(True)
        (store / "seldonfs.toml").write_text((store / "seldonfs.toml").read_text().replace(
            "io_uring = true", "io_uring = false"))
        with mounted(store, m):
            (m / "input" / "processed" / "f").write_text("x")
            stats = json.loads(seldonfs("stats", m, "--json").stdout)
            assert stats["transport"] == {"kind": "dev_fuse", "why": "[mount] io_uring = false"}
            assert "transport  /dev/fuse: [mount] io_uring = false" in seldonfs("stats", m).stdout
        assert not SERVED.search((store / "seldonfs.log").read_text())
        (store / "seldonfs.toml").write_text((store / "seldonfs.toml").read_text().replace(
            "io_uring = false", 'io_uring = "sometimes"'))
        r = seldonfs("mount", *key_args(store), str(store), str(m))
        assert r.returncode != 0 and "mount.io_uring" in r.stderr
    finally:
        uring.PARAM.write_text(old)
