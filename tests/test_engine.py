"""engine.Engine over a real Core and catalog, without FUSE: the hooks
as Core calls them, and what they leave in the store and the catalog."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import tomllib
from pathlib import Path

import pytest
import trio

from seldonfs import checks, config, xattrs
from seldonfs.catalog import Catalog
from seldonfs.content import PlainContent
from seldonfs.core import ROOT_INODE, Caller, Core
from seldonfs.engine import Engine
from seldonfs.hooks import Absent
from seldonfs.policy import Policy
from seldonfs.rules import Rules

ME = Caller(os.getuid(), os.getgid(), os.getpid())
SSN = b'{"ssn": "123-45-6789"}'


@pytest.fixture
def engine(tmp_path: Path):
    data = tmp_path / "data"
    for d in ("input/raw", "input/quarantine", "output/reports", "temp/working"):
        (data / d).mkdir(parents=True)
    cfg = config.parse(tomllib.loads(config.profile_text("seldon")), "test.toml")
    catalog = Catalog.create(tmp_path / "catalog.sqlite")
    core = Core(data, PlainContent())
    e = Engine(core, Policy(Rules(cfg)), catalog, writeback=False)
    yield e
    e.close()
    core.close()
    catalog.close()


def walk(core: Core, path: str) -> int:
    ino = ROOT_INODE
    for part in path.split("/"):
        ino = core.lookup(ino, part.encode()).ino
    return ino


def write(core: Core, folder: str, name: bytes, data: bytes, who: Caller = ME) -> tuple[int, int | None]:
    """create, write, close(2): (inode, the errno close gave, or None)."""
    fh, st = core.create(walk(core, folder), name, 0o644, os.O_WRONLY, who)
    core.write(fh, 0, data)
    err = None
    try:
        core.flush(fh)
    except OSError as e:
        err = e.errno
    core.release(fh)
    return st.ino, err


def rows(engine: Engine, sql: str) -> list[tuple]:
    engine.close()  # the file records' batch
    return engine.catalog.conn.execute(sql).fetchall()


def test_a_valid_file_commits_under_its_managed_name(engine: Engine, tmp_path: Path) -> None:
    ino, err = write(engine.core, "input/raw", b"data.json", b'{"a": 1}')
    assert err is None
    (name,) = os.listdir(tmp_path / "data/input/raw")
    assert name.endswith("-001_data.json") and engine.core.rel_path(ino) == f"input/raw/{name}"
    ((path, original, verdict),) = rows(engine, "SELECT path, original_name, verdict FROM files")
    assert (path, original, verdict) == (f"input/raw/{name}", "data.json", "ok")
    assert engine.counts["commit"] == 1


def test_an_invalid_file_goes_to_quarantine_with_its_reason(engine: Engine, tmp_path: Path) -> None:
    ino, err = write(engine.core, "input/raw", b"ssn.json", SSN)
    assert err is None  # the seldon profile quarantines without failing close(2)
    assert os.listdir(tmp_path / "data/input/raw") == []
    (name,) = os.listdir(tmp_path / "data/input/quarantine")
    q = tmp_path / "data/input/quarantine" / name
    assert b"social security number" in os.getxattr(q, xattrs.REASON) and os.getxattr(q, xattrs.ORIGIN) == b"input/raw/ssn.json"
    assert rows(engine, "SELECT verdict FROM files") == [("quarantined",)]
    with pytest.raises(OSError) as e:  # only root releases
        engine.core.setxattr(ino, xattrs.RELEASE, b"", Caller(1000, 1000, 1))
    assert e.value.errno == errno.EPERM
    engine.core.setxattr(ino, xattrs.RELEASE, b"force", Caller(0, 0, 1))
    assert os.listdir(tmp_path / "data/input/quarantine") == []
    (back,) = os.listdir(tmp_path / "data/input/raw")
    assert back.endswith("_ssn.json") and not os.listxattr(tmp_path / "data/input/raw" / back)


def test_the_old_name_resolves_for_its_writers_user_only(engine: Engine) -> None:
    core = engine.core
    raw = walk(core, "input/raw")
    ino, _ = write(core, "input/raw", b"d.json", b"{}")
    st = core.lookup(raw, b"d.json", ME.uid)  # any process of the writer's user
    assert st.ino == ino and st.volatile  # the kernel must not cache the old name
    for uid in (ME.uid + 1, -1):  # another user, the filesystem itself
        with pytest.raises(Absent):
            core.lookup(raw, b"d.json", uid)
    with pytest.raises(FileNotFoundError) as e:
        core.lookup(raw, b"never.json", ME.uid)
    assert not isinstance(e.value, Absent)  # an ordinary miss may be cached


def test_an_overwrite_keeps_a_version_and_restore_brings_it_back(engine: Engine, tmp_path: Path) -> None:
    core = engine.core
    ino, _ = write(core, "output/reports", b"q3.txt", b"first")
    fh = core.open(ino, os.O_WRONLY | os.O_TRUNC, ME)
    core.write(fh, 0, b"second")
    core.release(fh)
    listing = json.loads(core.getxattr(ino, xattrs.VERSIONS))
    assert [(v["n"], v["size"], v["cause"]) for v in listing] == [(1, 5, "truncate")]
    core.setxattr(ino, xattrs.RESTORE, b"1", ME)
    assert (tmp_path / "data/output/reports/q3.txt").read_bytes() == b"first"
    assert engine.counts["version"] == 2 and engine.counts["restore"] == 1


def test_the_private_folder_is_out_of_reach(engine: Engine) -> None:
    core = engine.core
    with pytest.raises(FileNotFoundError):
        core.lookup(ROOT_INODE, b".seldon")
    for make in (lambda: core.mkdir(ROOT_INODE, b".seldon", 0o755, ME),
                 lambda: core.create(ROOT_INODE, b".seldon", 0o644, os.O_WRONLY, ME)):
        with pytest.raises(OSError) as e:
            make()
        assert e.value.errno == errno.EACCES
    fh = core.opendir(ROOT_INODE)
    assert b".seldon" not in [name for name, _, _ in core.readdir(fh, 0)]
    core.releasedir(fh)


def test_refusals_and_reserved_attributes(engine: Engine) -> None:
    core = engine.core
    with pytest.raises(OSError) as e:
        core.create(walk(core, "temp"), b"loose.txt", 0o644, os.O_WRONLY, ME)
    assert e.value.errno == errno.EACCES
    with pytest.raises(OSError) as e:
        core.mkdir(walk(core, "input/quarantine"), b"mine", 0o755, ME)
    assert e.value.errno == errno.EACCES
    ino, _ = write(core, "temp/working", b"x", b"x")
    with pytest.raises(OSError) as e:
        core.setxattr(ino, xattrs.REASON, b"forged", ME)
    assert e.value.errno == errno.EPERM
    assert stat.S_ISREG(core.getattr(ino).mode)


@pytest.mark.trio
async def test_a_large_file_is_checked_in_the_background(engine: Engine, tmp_path: Path) -> None:
    big = b'{"pad": "' + b"a" * (2 << 20) + b'", "ssn": "123-45-6789"}'
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        ino, err = write(engine.core, "input/raw", b"big.json", big)
        assert err is None and os.listdir(tmp_path / "data/input/raw") == ["big.json"]  # close did not wait
        with trio.fail_after(20):
            while os.listdir(tmp_path / "data/input/raw"):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert len(os.listdir(tmp_path / "data/input/quarantine")) == 1
    conn = sqlite3.connect(engine.catalog.path)
    engine.close()
    assert conn.execute("SELECT verdict FROM files").fetchall() == [("quarantined",)]
    conn.close()


@pytest.mark.trio
async def test_a_failing_catalog_batch_never_ends_the_mount_and_loses_no_record(engine: Engine, tmp_path: Path) -> None:
    from seldonfs.alerts import Failures

    failures = Failures()
    engine.committer.failed = failures
    real = engine.catalog.add_files
    calls = []

    def full_disk(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(rows)

    engine.catalog.add_files = full_disk
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        write(engine.core, "input/raw", b"a.json", b"{}")
        with trio.fail_after(10):
            while len(calls) < 2:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert failures.counts == {"catalog batch": 1}
    assert engine.catalog.conn.execute("SELECT original_name FROM files").fetchall() == [("a.json",)]


def test_failures_are_counted_each_time_and_alerted(tmp_path: Path) -> None:
    from seldonfs.alerts import Alerts, Failures
    from seldonfs.config import AlertsConfig

    alerts = Alerts(AlertsConfig(notifications=""), tmp_path, PlainContent(), "/mnt")
    failures = Failures(alerts)
    for _ in range(3):
        failures("janitor disk check", OSError(errno.EIO, "Input/output error"))
    assert failures.counts == {"janitor disk check": 3}
    (alert,) = alerts.active()
    assert alert["kind"] == "task-failed" and alert["level"] == "critical" and "janitor disk check" in alert["message"]


def test_the_written_copies_stay_within_their_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "SHADOW_BYTES", 100)
    c = checks.Checks(PlainContent(), {})
    for ino in (1, 2, 3):
        c.keep_written(ino)
    c.wrote(1, 0, b"a" * 60)
    c.wrote(2, 0, b"b" * 30)
    c.wrote(2, 10, b"c" * 20)  # overwrites within the copy: no growth
    assert c.shadowed == 90
    c.wrote(3, 0, b"d" * 20)  # past the budget: this copy goes, the others stay
    assert 3 not in c.written and c.shadowed == 90
    c.truncated(1, 10)
    assert c.shadowed == 40
    c.truncated(2, 80)  # grows within the budget
    assert c.shadowed == 90
    c.truncated(2, 91)  # and past it: dropped
    assert 2 not in c.written and c.shadowed == 10
    assert bytes(c.source(1, (0, 10), None).buf) == b"a" * 10  # handed to the check, uncounted
    assert c.written == {} and c.shadowed == 0
    c.keep_written(4)
    c.wrote(4, 5, b"e")  # a hole counts as what it holds
    assert c.shadowed == 6
    c.keep_written(4)  # a reused inode number starts a fresh copy
    c.forget(5)
    assert c.written == {4: bytearray()} and c.shadowed == 0
