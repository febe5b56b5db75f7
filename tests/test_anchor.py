"""anchor.judge: what a store's anchors say about its catalog's chain (pure,
no FUSE); what the audit writer lets the head name."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time

import pytest

from seldonfs import anchor, audit, faults, segments
from seldonfs.anchor import Found
from seldonfs.catalog import Catalog
from seldonfs.store import Store

KEY = bytes(range(32))
M1, M5, OTHER = b"\x01" * 32, b"\x05" * 32, b"\x07" * 32
HEAD = {"seq": 5, "mac": M5.hex(), "tag": anchor.head_tag(KEY, 5, M5)}
ANCHOR = {"epoch": 1, "seq": 1, "mac": M1.hex(), "tag": anchor.anchor_tag(KEY, 1, 1, M1)}
STORED = {1: M1, 5: M5}
GENESIS = {"seq": 0, "mac": bytes(32).hex(), "tag": anchor.head_tag(KEY, 0, bytes(32))}  # a new chain's first head


@pytest.mark.parametrize(
    "found, said",
    [
        (Found(KEY, "ok", (5, M5), HEAD, ANCHOR, STORED), None),
        (Found(KEY, "ok", (6, OTHER), HEAD, ANCHOR, STORED), None),  # a batch stored, the head not yet rewritten
        (Found(KEY, "ok", (5, M5), HEAD, None, STORED), None),  # a store from before the anchor
        (Found(None, "missing", None, None, None, {}), None),  # never audited
        (Found(None, "ok", None, None, None, {}), None),
        (Found(KEY, "ok", None, None, None, {}), None),  # a key, no chain yet (encrypted store, audit was off)
        (Found(KEY, "missing", None, HEAD, ANCHOR, {}), "catalog.sqlite is missing"),
        (Found(KEY, "unreadable (file is not a database)", None, HEAD, ANCHOR, {}), "catalog.sqlite is unreadable"),
        (Found(None, "ok", (5, M5), HEAD, ANCHOR, STORED), "audit.key is missing"),
        (Found(KEY, "ok", None, HEAD, ANCHOR, {}), "no audit records; audit.head names 5"),
        (Found(KEY, "ok", None, None, ANCHOR, {}), "no audit records; store.json anchors epoch 1 at record 1"),
        (Found(KEY, "ok", (3, M1), HEAD, ANCHOR, {1: M1}), "records 4..5 are missing at the end"),
        (Found(KEY, "ok", (5, M5), None, ANCHOR, STORED), "audit.head is missing"),
        (Found(KEY, "ok", (5, M5), GENESIS, None, STORED), None),  # killed before a new chain's first settle
        (Found(KEY, "ok", (5, M5), GENESIS, ANCHOR, STORED), "audit.head names record 0, before record 1"),
        (Found(KEY, "ok", (5, OTHER), HEAD, ANCHOR, {1: M1, 5: OTHER}), "record 5 is not the one audit.head names"),
        (Found(KEY, "ok", (5, M5), HEAD, ANCHOR, {5: M5}), "record 1 is not the one store.json anchors"),
        (Found(KEY, "ok", (5, M5), dict(HEAD, seq=9), ANCHOR, STORED), "audit.head does not authenticate"),
        (Found(KEY, "ok", (5, M5), HEAD, dict(ANCHOR, epoch=2), STORED), "anchor in store.json does not authenticate"),
        (Found(KEY, "ok", (5, M5), {"seq": "x"}, ANCHOR, STORED), "audit.head does not authenticate"),
    ],
)
def test_judge(found: Found, said: str | None) -> None:
    got = anchor.judge(found)
    assert (got is None) if said is None else (got is not None and said in got), got


def test_a_reset_takes_the_number_after_every_authentic_one() -> None:
    assert anchor.next_seq(Found(KEY, "missing", None, HEAD, ANCHOR, {}), 0) == 6
    assert anchor.next_seq(Found(KEY, "ok", (7, M1), HEAD, ANCHOR, {}), 7) == 8
    forged = dict(HEAD, seq=10**9)  # a forged head does not push the numbers
    assert anchor.next_seq(Found(KEY, "ok", None, forged, None, {}), 0) == 1


def test_a_kept_head() -> None:
    assert anchor.check_kept(dict(HEAD, store="s"), KEY, "s", M5, 9) is None
    assert "not in the chain (it ends at 3)" in anchor.check_kept(HEAD, KEY, "s", None, 3)
    assert "no longer in the chain" in anchor.check_kept(HEAD, KEY, "s", None, 9)
    assert "rewritten" in anchor.check_kept(HEAD, KEY, "s", OTHER, 9)
    assert "not of this one" in anchor.check_kept(dict(HEAD, store="t"), KEY, "s", M5, 9)
    assert "does not authenticate" in anchor.check_kept(HEAD, bytes(32), "s", M5, 9)
    assert "not a head" in anchor.check_kept({"seq": 1}, KEY, "s", M5, 9)


def test_the_head_is_rewritten_in_place_over_its_older_slot(tmp_path) -> None:
    path = tmp_path / anchor.HEAD_NAME
    path.write_text(json.dumps(HEAD))  # a head written before the two slots
    assert anchor.read_head(tmp_path) == HEAD
    anchor.write_head(tmp_path, KEY, 6, OTHER, durable=True)  # replaced whole: both slots
    ino = path.stat().st_ino
    assert path.stat().st_size == 2 * anchor.HEAD_SLOT and anchor.read_head(tmp_path)["seq"] == 6
    for seq in (7, 8, 9):
        anchor.write_head(tmp_path, KEY, seq, OTHER, durable=seq % 2 == 0)
        head = anchor.read_head(tmp_path)
        assert head == {"seq": seq, "mac": OTHER.hex(), "tag": anchor.head_tag(KEY, seq, OTHER)}
    assert path.stat().st_ino == ino and oct(path.stat().st_mode & 0o777) == "0o600"
    # A write torn by a crash garbles the slot it went to: the other one counts.
    data = bytearray(path.read_bytes())
    newer = 0 if json.loads(data[: anchor.HEAD_SLOT])["seq"] == 9 else 1
    data[newer * anchor.HEAD_SLOT + 10 : newer * anchor.HEAD_SLOT + 60] = b"\0" * 50
    path.write_bytes(bytes(data))
    assert anchor.read_head(tmp_path)["seq"] == 8
    anchor.write_head(tmp_path, KEY, 10, OTHER, durable=True)  # over the garbled slot
    assert anchor.read_head(tmp_path)["seq"] == 10
    assert json.loads(path.read_bytes()[(1 - newer) * anchor.HEAD_SLOT :])["seq"] == 8
    path.write_bytes(b"\0" * 2 * anchor.HEAD_SLOT)  # neither parses: fails its tag check
    assert anchor.judge(Found(KEY, "ok", (5, M5), anchor.read_head(tmp_path), ANCHOR, STORED))


def test_the_head_names_only_records_on_disk_for_good(tmp_path) -> None:
    """A batch stored without a sync is named by the head once settled: a
    power cut that takes the batch back leaves a head the catalog has."""
    (tmp_path / "store.json").write_text("{}")
    catalog = tmp_path / "catalog.sqlite"
    c = Catalog(catalog)
    c.migrate()
    c.close()
    w = audit.ChainWriter(tmp_path, catalog, KEY)
    item = (time.time_ns(), 0, 0, 1, "t", "setattr", "/a", "", "OK", 0, "size=1")
    try:
        assert w.write([item] * 3, durable=True)
        assert anchor.read_head(tmp_path)["seq"] == 3 and w.due() is None
        cut = tmp_path / "cut"  # what a power cut leaves: the synced catalog...
        cut.mkdir()
        for name in (catalog.name, catalog.name + "-wal"):
            shutil.copy(tmp_path / name, cut / name)
        assert w.write([item] * 2, durable=False)
        assert anchor.read_head(tmp_path)["seq"] == 3 and 0 < w.due() <= audit.SETTLE_S
        shutil.copy(tmp_path / anchor.HEAD_NAME, cut / anchor.HEAD_NAME)  # ...and the head as written
        conn = sqlite3.connect(cut / catalog.name)
        try:
            assert audit.verify(conn, KEY, anchor.read_head(cut)) == (3, None)
        finally:
            conn.close()
        w.settle_at = time.monotonic()  # due: the next batch settles the ones before
        assert w.write([item], durable=False)
        assert anchor.read_head(tmp_path)["seq"] == 6 and w.due() is None
        assert w.write([item], durable=False) and anchor.read_head(tmp_path)["seq"] == 6
        w.settle()
        assert anchor.read_head(tmp_path)["seq"] == 7 and w.due() is None
        assert json.loads((tmp_path / "store.json").read_text())[anchor.FIELD]["seq"] == 1
        assert w.write([item], durable=False)
        w.sync()  # an fsync's: on disk, named by the head at the settle
        assert w.synced == 8 and anchor.read_head(tmp_path)["seq"] == 7 and 0 < w.due() <= audit.SETTLE_S
        w.settle()
        assert anchor.read_head(tmp_path)["seq"] == 8 and w.due() is None
        assert w.write([item], durable=False)  # left unsettled by a writer that ends here
    finally:
        w.close()
    w = audit.ChainWriter(tmp_path, catalog, KEY)  # the next one settles it first
    try:
        assert w.due() == 0 and anchor.read_head(tmp_path)["seq"] == 8
        w.settle()
        assert anchor.read_head(tmp_path)["seq"] == 9 and w.due() is None
    finally:
        w.close()


def test_a_failed_wal_sync_is_not_taken_back_by_the_next(tmp_path, monkeypatch) -> None:
    """fsyncgate: after a failed fdatasync the kernel may keep the failed
    pages as clean, and the next fdatasync succeeds without writing them.
    The writer says the sync failed, names nothing in the head meanwhile,
    and writes the WAL again before its next sync counts."""
    (tmp_path / "store.json").write_text("{}")
    catalog = tmp_path / "catalog.sqlite"
    c = Catalog(catalog)
    c.migrate()
    c.close()
    item = (time.time_ns(), 0, 0, 1, "t", "setattr", "/a", "", "OK", 0, "size=1")
    syncs = 0
    real_sync, real_pwrite = faults.walsync, os.pwrite

    def fail_first(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        if syncs == 1:
            raise OSError(errno.EIO, "injected")
        real_sync(fd)

    rewritten: list[int] = []
    monkeypatch.setattr(faults, "walsync", fail_first)
    w = audit.ChainWriter(tmp_path, catalog, KEY)
    try:
        assert w.write([item] * 2, durable=False)  # settled at once (no anchor yet): the sync fails
        assert syncs == 1 and w.sync_failed and w.synced < w.seq and anchor.read_head(tmp_path)["seq"] == 0
        # a new chain's first head, written before its first records: a
        # kill now leaves a store that mounts (and the next writer settles)
        assert anchor.judge(anchor.look(Store(tmp_path), KEY)) is None
        monkeypatch.setattr(os, "pwrite", lambda fd, data, off: rewritten.append(off) or real_pwrite(fd, data, off))
        assert w.sync()
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        assert rewritten and rewritten[0] == 0 and not w.sync_failed and w.synced == w.seq == 2
        w.settle()
        assert anchor.read_head(tmp_path)["seq"] == 2
        syncs = 0  # the same for an fsync's sync: False, then written again
        assert w.write([item], durable=False) and not w.sync()
        rewritten.clear()
        monkeypatch.setattr(os, "pwrite", lambda fd, data, off: rewritten.append(off) or real_pwrite(fd, data, off))
        assert w.sync() and rewritten and w.synced == 3
    finally:
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        w.close()
    conn = sqlite3.connect(catalog)
    try:
        assert audit.verify(conn, KEY, anchor.read_head(tmp_path))[1] is None
    finally:
        conn.close()


def test_the_writer_asks_for_a_due_segment_only_once_one_can_be(tmp_path, monkeypatch) -> None:
    """A monthly segment: the old month's records are sealed at the first
    batch; while this month runs no batch asks the table; once it is over
    the next batch seals it. Chores left to the caller wait for it."""
    (tmp_path / "store.json").write_text("{}")
    (tmp_path / "data").mkdir()
    catalog = tmp_path / "catalog.sqlite"
    c = Catalog(catalog)
    c.migrate()
    c.close()
    w = audit.ChainWriter(tmp_path, catalog, KEY, seal=segments.Spec("monthly", "archive/audit"))
    asked: list[str] = []
    w.conn.set_trace_callback(lambda sql: asked.append(sql) if "FROM audit ORDER BY seq LIMIT 1" in sql else None)
    now = time.time_ns()
    month_end = segments.period_end_ns(now, "monthly")
    old = (month_end - 40 * 86400 * 10**9, 0, 0, 1, "t", "setattr", "/a", "", "OK", 0, "")  # last month
    new = (now, 0, 0, 1, "t", "setattr", "/b", "", "OK", 0, "")
    sealed = lambda: sorted(p.name for p in (tmp_path / "data" / "archive" / "audit").glob("audit-*.jsonl.gz"))
    try:
        assert w.write([old] * 3 + [new], durable=True)
        assert sealed() == ["audit-000000000001-000000000003.jsonl.gz"]
        asked.clear()
        for _ in range(5):
            assert w.write([new], durable=False)
        assert asked == [] and len(sealed()) == 1
        monkeypatch.setattr(audit.time, "time_ns", lambda: month_end + 1)
        assert w.write([new], durable=False, chores=False)
        assert asked == [] and len(sealed()) == 1  # the caller runs them
        w.chores()
        assert asked and sealed()[1:] == ["audit-000000000004-000000000009.jsonl.gz"]
    finally:
        w.close()
