"""The command line and the mount's life cycle: init, mount (daemon and
foreground), umount, signals, kill -9, mount(8), and the documented exit codes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (
    init_store, key_args, log_problems, mounted, needs_fuse, needs_root, seldonfs, small_disk, stored, unmount,
    wait_for,
)


def test_init_creates_store(tmp_path: Path) -> None:
    r = seldonfs("init", tmp_path / "s", "--keyfile", tmp_path / "s.key")
    assert r.returncode == 0, r.stderr
    s = tmp_path / "s"
    assert json.loads((s / "store.json").read_text())["encryption"]["cipher"] == "AES-256-GCM"
    assert (s / "store.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "s.key").stat().st_mode & 0o777 == 0o600
    assert json.loads((s / "store.json").read_text())["format_version"] == 1
    assert (s / "seldonfs.toml").is_file() and (s / "catalog.sqlite").is_file()
    for d in ("input/raw", "input/quarantine", "output/reports", "temp/sessions", "archive/compliance", "system/logs"):
        assert (s / "data" / d).is_dir(), d


def test_init_refuses_non_empty_dir_and_existing_store(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious").write_text("keep me")
    r = seldonfs("init", tmp_path / "busy")
    assert r.returncode == 1 and "not empty" in r.stderr
    assert (tmp_path / "busy" / "precious").read_text() == "keep me"
    init_store(tmp_path / "s")
    r = seldonfs("init", tmp_path / "s")
    assert r.returncode == 1 and "already a SeldonFS store" in r.stderr


@pytest.mark.parametrize("fault", ["fsync:1:KILL", "rename:1:KILL"])
def test_an_init_killed_before_its_store_json_is_finished_by_the_next(tmp_path: Path, fault: str) -> None:
    """`init` killed (as by kill -9 or a power loss) before store.json is in
    place leaves its mark: the mount says so and the next init clears
    what it made and makes the store. A directory with the mark and
    anything init does not make is refused, and nothing of it removed."""
    s, key = tmp_path / "s", tmp_path / "s.key"
    r = seldonfs("init", s, "--keyfile", key, env={**os.environ, "SELDONFS_FAULTS": fault})
    assert r.returncode == -signal.SIGKILL and not (s / "store.json").exists() and (s / "catalog.sqlite").exists()
    r = seldonfs("mount", "--keyfile", key, s, tmp_path / "m")
    assert r.returncode == 14 and "its `seldonfs init` did not finish" in r.stderr
    r = seldonfs("init", s, "--keyfile", key)
    assert r.returncode == 0, r.stderr
    assert "init that did not finish" in r.stdout
    assert sorted(p.name for p in s.iterdir()) == ["catalog.sqlite", "data", "seldonfs.toml", "store.json"]
    assert seldonfs("fsck", "--keyfile", key, s).returncode == 0

    t = tmp_path / "t"
    seldonfs("init", t, "--keyfile", key, env={**os.environ, "SELDONFS_FAULTS": fault})
    (t / "data" / "input" / "raw" / "precious").write_text("keep me")
    (t / "data" / "link").symlink_to("/etc")
    (t / "seldonfs.toml").unlink()
    (t / "seldonfs.toml").symlink_to("/etc")  # one of init's names, but not a file init made
    r = seldonfs("init", t, "--keyfile", key)
    assert r.returncode == 1 and "holds an unfinished init and more" in r.stderr, r.stderr
    assert (t / "data" / "input" / "raw" / "precious").read_text() == "keep me" and (t / "init.unfinished").exists()
    (t / "data" / "input" / "raw" / "precious").unlink()
    (t / "data" / "link").unlink()
    r = seldonfs("init", t, "--keyfile", key)  # only the symlink among init's names now
    assert r.returncode == 1 and "(first: seldonfs.toml)" in r.stderr, r.stderr
    assert (t / "seldonfs.toml").is_symlink() and (t / "catalog.sqlite").exists()


def test_unknown_profile_is_usage_error(tmp_path: Path) -> None:
    r = seldonfs("init", tmp_path / "s", "--profile", "nope")
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr
    assert not (tmp_path / "s").exists()


def test_usage_error_exit_2() -> None:
    assert seldonfs("mount").returncode == 2
    assert seldonfs("frobnicate").returncode == 2


@needs_fuse
class TestMountErrors:
    def test_mountpoint_missing(self, store: Path, tmp_path: Path) -> None:
        r = seldonfs("mount", *key_args(store), store, tmp_path / "nope")
        assert r.returncode == 10 and "does not exist" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

    def test_mountpoint_not_empty(self, store: Path, tmp_path: Path) -> None:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "x").touch()
        r = seldonfs("mount", *key_args(store), store, tmp_path / "m")
        assert r.returncode == 10 and "not empty" in r.stderr

    def test_already_mounted_and_store_locked(self, store: Path, tmp_path: Path) -> None:
        with mounted(store, tmp_path / "m"):
            r = seldonfs("mount", *key_args(store), store, tmp_path / "m")
            assert r.returncode == 10 and "already mounted" in r.stderr
            (tmp_path / "m2").mkdir()
            r = seldonfs("mount", *key_args(store), store, tmp_path / "m2")
            assert r.returncode == 11 and "in use" in r.stderr
            assert not os.path.ismount(tmp_path / "m2")

    def test_not_a_store(self, tmp_path: Path) -> None:
        (tmp_path / "m").mkdir()
        (tmp_path / "plain").mkdir()
        r = seldonfs("mount", tmp_path / "plain", tmp_path / "m")
        assert r.returncode == 14 and "not a SeldonFS store" in r.stderr

    def test_unknown_format_version(self, store: Path, tmp_path: Path) -> None:
        ident = json.loads((store / "store.json").read_text())
        ident["format_version"] = 99
        (store / "store.json").write_text(json.dumps(ident))
        (tmp_path / "m").mkdir()
        r = seldonfs("mount", *key_args(store), store, tmp_path / "m")
        assert r.returncode == 14 and "want=1 have=99" in r.stderr

    @pytest.mark.parametrize(
        "text, needle",
        [
            ("[mount\n", "not valid TOML"),
            ("[mount]\nentry_timeout = 'soon'\n", "mount.entry_timeout: wrong type str"),
            ("[mount]\nbogus = 1\n", "mount.bogus: unknown key"),
            ('[folders."../escape"]\n', "must be a relative path"),
        ],
    )
    def test_broken_config(self, store: Path, tmp_path: Path, text: str, needle: str) -> None:
        (store / "seldonfs.toml").write_text(text)
        (tmp_path / "m").mkdir()
        r = seldonfs("mount", *key_args(store), store, tmp_path / "m")
        assert r.returncode == 13, r.stderr
        assert str(store / "seldonfs.toml") in r.stderr and needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def _daemon_pid(store: Path) -> int:
    return int((store / "lock").read_text())


def _lock_free(store: Path) -> bool:
    return (store / "lock").read_text() == ""


@needs_fuse
def test_daemon_mount_and_umount(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    try:
        # relative paths, resolved before the daemon leaves the directory
        r = seldonfs("mount", "-o", "allow_other", *key_args(store), store.relative_to(tmp_path), "m", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert os.readlink(f"/proc/{_daemon_pid(store)}/cwd") == "/"
        assert os.path.ismount(m)  # ready when the command returns
        (m / "input/processed/f").write_text("daemon")
        pid = _daemon_pid(store)
        r = seldonfs("umount", m)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(m)
        assert _lock_free(store)  # umount waited for the daemon to let go
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what="daemon exit")
        r = seldonfs("umount", m)
        assert r.returncode == 10 and "not a SeldonFS mount" in r.stderr
    finally:
        unmount(m)
    assert stored(store, "input/processed/f") == b"daemon"
    assert log_problems(store) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@needs_fuse
def test_umount_busy_mount_is_refused(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    with mounted(store, m):
        with open(m / "input/processed/open", "w"):
            r = seldonfs("umount", m)
            assert r.returncode == 10 and "busy" in r.stderr.lower()
            assert os.path.ismount(m)


@needs_fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(store: Path, tmp_path: Path, sig: int) -> None:
    m = tmp_path / "m"
    with mounted(store, m) as proc:
        (m / "input/processed/f").write_text("x")
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        assert not os.path.ismount(m)
        assert _lock_free(store)


@needs_fuse
def test_a_sigterm_stores_what_open_files_were_told_was_written(store: Path, tmp_path: Path) -> None:
    """The writeback cache (an encrypted store) holds written bytes in the
    kernel until close; a SIGTERM has them sent before it unmounts."""
    m = tmp_path / "m"
    data = [os.urandom(300_000) for _ in range(4)]
    with mounted(store, m) as proc:
        fds = [os.open(m / f"input/processed/open{i}", os.O_CREAT | os.O_WRONLY, 0o644) for i in range(4)]
        for fd, d in zip(fds, data):
            assert os.write(fd, d) == len(d)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # the mount is gone: the close's flush cannot reach it
    for i, d in enumerate(data):
        assert stored(store, f"input/processed/open{i}") == d


@needs_fuse
def test_fusermount_u_ends_daemon(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    with mounted(store, m) as proc:
        subprocess.run(["fusermount3", "-u", str(m)], check=True)
        assert proc.wait(timeout=20) == 0
        assert _lock_free(store)


@needs_fuse
def test_kill_9_then_remount_keeps_closed_and_synced_files(store: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    closed = os.urandom(300_000)
    synced = os.urandom(200_000)
    with mounted(store, m) as proc:
        (m / "input/processed/closed").write_bytes(closed)
        fd = os.open(m / "input/processed/synced", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, synced)
        os.fsync(fd)
        proc.kill()
        proc.wait()
        try:
            os.close(fd)
        except OSError:
            pass  # the flush on close cannot reach a dead daemon
        # a dead mount: a clear error, then fusermount3 -uz clears it
        r = seldonfs("mount", *key_args(store), store, m)
        assert r.returncode == 10 and "fusermount3 -uz" in r.stderr
        unmount(m)
    with mounted(store, m):
        assert (m / "input/processed/closed").read_bytes() == closed
        assert (m / "input/processed/synced").read_bytes() == synced


@needs_fuse
@needs_root
def test_mount_t_fuse_seldonfs(store: Path, tmp_path: Path) -> None:
    if not os.path.exists("/sbin/mount.fuse.seldonfs"):
        pytest.skip("mount helper not installed (scripts/setup.sh installs it)")
    m = tmp_path / "m"
    m.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "fuse.seldonfs", str(store), str(m), "-o",
             ",".join(["allow_other", "defaults", "nofail"] + [f"keyfile={k}" for k in key_args(store)[1:]])],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(m)
        line = next(l for l in Path("/proc/self/mounts").read_text().splitlines() if f" {m} " in l)
        assert line.split()[:3] == [str(store), str(m), "fuse.seldonfs"]
        assert "allow_other" in line
        assert seldonfs("umount", m).returncode == 0
    finally:
        unmount(m)


@needs_fuse
def test_sigterm_under_a_stream_of_requests(store: Path, tmp_path: Path) -> None:
    """The request loop's fast path still lets the signal task run."""
    m = tmp_path / "m"
    with mounted(store, m) as proc:
        target = m / "input/processed"
        busy = subprocess.Popen(
            ["python3", "-c", "import os,sys\nwhile True:\n    os.listdir(sys.argv[1])", str(target)],
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            busy.kill()
            busy.wait()


@needs_fuse
def test_unknown_mount_option_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    r = seldonfs("mount", "-o", "allow_other,no_such_option", *key_args(store), store, tmp_path / "m")
    assert r.returncode == 2 and "FUSE refused the mount options" in r.stderr
    assert "no_such_option" in (store / "seldonfs.log").read_text()
    assert not os.path.ismount(tmp_path / "m")


@needs_fuse
@needs_root
def test_full_disk_gives_enospc_and_keeps_what_was_written(tmp_path: Path) -> None:
    """A store on a 12 MiB tmpfs: the write that does not fit fails with
    ENOSPC, the mount stays up, and what was closed before is intact."""
    with small_disk(tmp_path / "small", 12) as small:
        store = init_store(small / "store")
        m = tmp_path / "m"
        with mounted(store, m):
            keep = os.urandom(1 << 20)
            (m / "input/processed/keep").write_bytes(keep)
            with pytest.raises(OSError) as e:
                with open(m / "input/processed/fill", "wb") as f:
                    for _ in range(64):
                        f.write(os.urandom(1 << 20))
                        f.flush()
                        os.fsync(f.fileno())
            assert e.value.errno == errno.ENOSPC
            os.unlink(m / "input/processed/fill")
            assert (m / "input/processed/keep").read_bytes() == keep
            (m / "input/processed/after").write_bytes(b"room again")
        assert stored(store, "input/processed/keep") == keep
