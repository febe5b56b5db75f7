"""Where the audit chain is anchored outside the catalog, and the pure
judgement whether the catalog's chain still matches its anchors.

Two anchors, both sealed with a tag under the audit key (docs/audit.md):

    STORE/audit.head    {"seq", "mac", "tag"}: the last record stored,
                        rewritten after every batch (two slots, in place)
    STORE/store.json    "audit": {"epoch", "seq", "mac", "tag"}: the first
                        record of the current epoch (record 1, or the
                        `reset` record of `seldonfs audit reset`), written
                        once per epoch

so a deleted, emptied or rebuilt catalog, an emptied audit table, or all of
it with audit.head deleted too, is noticed: `look()` gathers what the store
holds, `judge()` says what is wrong with it. Neither proves anything against
someone who holds the audit key or rewrites every local file; an external
copy of the head (`seldonfs audit head`) does.
"""

from __future__ import annotations

import errno
import hmac
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DamageFound
from .store import IDENTITY_NAME, Store

HEAD_NAME = "audit.head"
FIELD = "audit"  # the anchor's key in store.json


def head_tag(key: bytes, seq: int, mac: bytes) -> str:
    return hmac.digest(key, b"head\0%d\0" % seq + mac, "sha256").hex()


def anchor_tag(key: bytes, epoch: int, seq: int, mac: bytes) -> str:
    return hmac.digest(key, b"anchor\0%d\0%d\0" % (epoch, seq) + mac, "sha256").hex()


HEAD_SLOT = 256  # audit.head: two slots of this size, each a JSON line padded with spaces


def read_head(root: Path) -> dict[str, Any] | None:
    """The newer of audit.head's two slots that parses (an older store's
    single document is read too); one that fails its tag check when
    neither parses: reported."""
    try:
        data = (root / HEAD_NAME).read_bytes()
    except FileNotFoundError:
        return None
    docs = [doc for doc in map(_head_doc, _head_slots(data)) if doc is not None]
    return max(docs, key=_head_seq) if docs else {"seq": 0, "mac": "", "tag": ""}


def _head_slots(data: bytes) -> list[bytes]:
    """A two-slot head's slots; an older single document as one."""
    return [data[:HEAD_SLOT], data[HEAD_SLOT:]] if len(data) == 2 * HEAD_SLOT else [data]


def _head_doc(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _head_seq(doc: dict[str, Any] | None) -> int:
    seq = doc.get("seq") if doc is not None else None
    return seq if isinstance(seq, int) else -1


def write_head(root: Path, key: bytes, seq: int, mac: bytes, durable: bool) -> None:
    """Name record `seq` in audit.head. It is written in place, over the
    older of its two slots, so a write torn by a crash leaves the other
    (at most one batch older), and a sync is one fdatasync of a file that
    keeps its size: 0.23 ms against 0.6 ms for a new file, fsync and rename (measured;
    an application's fsync waits for it). A missing or old-format head is
    replaced whole, by rename."""
    line = json.dumps({"seq": seq, "mac": mac.hex(), "tag": head_tag(key, seq, mac)}).encode()
    line = line.ljust(HEAD_SLOT - 1) + b"\n"
    path = root / HEAD_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        try:
            slots = _head_slots(os.pread(fd, 2 * HEAD_SLOT + 1, 0))
            if len(slots) == 2:
                seqs = [_head_seq(_head_doc(slot)) for slot in slots]
                older = seqs.index(min(seqs))
                if os.pwrite(fd, line, older * HEAD_SLOT) != HEAD_SLOT:
                    raise OSError(errno.EIO, "short write")
                if durable:
                    os.fdatasync(fd)
                return
        finally:
            os.close(fd)
    tmp = root / (HEAD_NAME + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line + line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_anchor(root: Path) -> dict[str, Any] | None:
    """store.json's anchor (None: none written yet, or store.json unreadable:
    the store's other commands report that one)."""
    try:
        doc = json.loads((root / IDENTITY_NAME).read_text()).get(FIELD)
    except (OSError, ValueError, AttributeError):
        return None
    return doc if isinstance(doc, dict) else None


def write_anchor(root: Path, key: bytes, epoch: int, seq: int, mac: bytes) -> None:
    """Seal epoch `epoch`, begun at record `seq` with `mac`, into store.json
    (atomically, 0600, as every writer of store.json: it holds wrapped keys).
    Callers own the store (its lock, or the mount's writer process)."""
    store = Store(root)
    ident = json.loads((root / IDENTITY_NAME).read_text())
    ident[FIELD] = {"epoch": epoch, "seq": seq, "mac": mac.hex(), "tag": anchor_tag(key, epoch, seq, mac)}
    store.write_identity(ident)


def _sealed(doc: dict[str, Any] | None, fields: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The numbers of `doc` and its mac, or None when a field is missing or malformed."""
    try:
        return (*(int(doc[f]) for f in fields), bytes.fromhex(doc["mac"]), str(doc["tag"]))  # type: ignore[index]
    except (KeyError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------- judging


@dataclass(frozen=True)
class Found:
    """What the store holds about its chain, gathered by `look()`."""

    key: bytes | None  # the audit key (None: audit.key missing)
    catalog: str  # "ok", "missing", or why it is unreadable
    last: tuple[int, bytes] | None  # the catalog's last record (seq, mac); None: no records
    head: dict[str, Any] | None  # audit.head as read
    anchor: dict[str, Any] | None  # store.json's anchor as read
    mac_at: dict[int, bytes]  # stored MACs of the records the head and the anchor name


def look(store: Store, key: bytes | None) -> Found:
    """Read the anchors and the few catalog rows they name (index lookups:
    cheap enough for every mount)."""
    head, anchor = read_head(store.root), read_anchor(store.root)
    if not store.catalog_path.exists():
        return Found(key, "missing", None, head, anchor, {})
    try:
        conn = sqlite3.connect(f"file:{store.catalog_path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            macs = {}
            for doc in (head, anchor):
                if doc is not None and isinstance(doc.get("seq"), int):
                    r = conn.execute("SELECT mac FROM audit WHERE seq = ?", (doc["seq"],)).fetchone()
                    if r is None and doc is anchor:  # an epoch's first record may be a segment's first
                        r = _segment_first(conn, doc["seq"])
                    if r is not None:
                        macs[doc["seq"]] = bytes(r[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        if "no such table" in str(e):  # a catalog made but never migrated: no records
            return Found(key, "ok", None, head, anchor, {})
        return Found(key, f"unreadable ({e})", None, head, anchor, {})
    return Found(key, "ok", (row[0], bytes(row[1])) if row else None, head, anchor, macs)


def _segment_first(conn: sqlite3.Connection, seq: int) -> tuple | None:
    try:
        return conn.execute("SELECT first_mac FROM audit_segments WHERE first_seq = ?", (seq,)).fetchone()
    except sqlite3.OperationalError:  # a catalog from before segments
        return None


def judge(f: Found) -> str | None:
    """What is wrong with the chain's anchoring, in one phrase; None: the
    catalog's chain is the one the anchors name (or none was ever begun)."""
    began = f.head is not None or f.anchor is not None
    if f.catalog == "missing":
        return "catalog.sqlite is missing" if began or f.key is not None else None
    if f.catalog != "ok":
        return f"catalog.sqlite is {f.catalog}"
    if f.key is None:
        return "audit.key is missing: the chain cannot be checked" if began or f.last else None
    head = _sealed(f.head, ("seq",)) if f.head is not None else None
    if f.head is not None and (head is None or not hmac.compare_digest(head[2], head_tag(f.key, head[0], head[1]))):
        return f"{HEAD_NAME} does not authenticate"
    anchor = _sealed(f.anchor, ("epoch", "seq")) if f.anchor is not None else None
    if f.anchor is not None and (
        anchor is None or not hmac.compare_digest(anchor[3], anchor_tag(f.key, anchor[0], anchor[1], anchor[2]))
    ):
        return f"the audit anchor in {IDENTITY_NAME} does not authenticate"
    if f.last is None:
        if head is not None and head[0] > 0:
            return f"the catalog has no audit records; {HEAD_NAME} names {head[0]}"
        if anchor is not None:
            return f"the catalog has no audit records; {IDENTITY_NAME} anchors epoch {anchor[0]} at record {anchor[1]}"
        return None
    if head is None:
        return f"{HEAD_NAME} is missing: the end of the chain cannot be checked"
    if head[0] > f.last[0]:
        return f"records {f.last[0] + 1}..{head[0]} are missing at the end ({HEAD_NAME} names {head[0]})"
    if anchor is not None and head[0] < anchor[1]:  # an epoch is anchored only after a head names its first record
        return (f"{HEAD_NAME} names record {head[0]}, before record {anchor[1]} where {IDENTITY_NAME} anchors "
                f"epoch {anchor[0]} (an old head put back?)")
    if head[0] and f.mac_at.get(head[0]) != head[1]:
        return f"record {head[0]} is not the one {HEAD_NAME} names"
    if anchor is not None and f.mac_at.get(anchor[1]) != anchor[2]:
        return f"record {anchor[1]} is not the one {IDENTITY_NAME} anchors epoch {anchor[0]} at (rolled back?)"
    return None


def sealed_head(f: Found) -> tuple[int, bytes] | None:
    """(seq, mac) of audit.head if it authenticates."""
    head = _sealed(f.head, ("seq",)) if f.head is not None and f.key is not None else None
    if head is None or not hmac.compare_digest(head[2], head_tag(f.key, head[0], head[1])):  # type: ignore[arg-type]
        return None
    return head[0], head[1]


def next_seq(f: Found, last: int) -> int:
    """The number of a reset record: past the last stored record and past
    every number the anchors that authenticate name (a lost chain's numbers
    are not used again)."""
    seqs = [last]
    head = sealed_head(f)
    if head is not None:
        seqs.append(head[0])
    a = _sealed(f.anchor, ("epoch", "seq")) if f.anchor is not None and f.key is not None else None
    if a is not None and hmac.compare_digest(a[3], anchor_tag(f.key, a[0], a[1], a[2])):  # type: ignore[arg-type]
        seqs.append(a[1])
    return max(seqs) + 1


def refuse_broken(store: Store, key: bytes | None) -> None:
    """DamageFound (exit 26, one line) when the chain lost its anchoring:
    before a mount or an offline command writes to it and so covers it."""
    problem = judge(look(store, key))
    if problem is not None:
        raise DamageFound(
            f"{store.root}: the audit chain is broken: {problem}; "
            f"`seldonfs audit reset {store.root} --reason TEXT` records the break and starts a new epoch"
        )


def check_kept(kept: dict[str, Any], key: bytes, store_id: str, stored_mac: bytes | None, last: int) -> str | None:
    """A head kept elsewhere (`seldonfs audit head`) against this store's
    chain: what is wrong, or None when the records up to it are the ones it
    names (`stored_mac`: the MAC the catalog holds for its seq)."""
    sealed = _sealed(kept, ("seq",))
    if sealed is None:
        return "not a head: want the JSON line of `seldonfs audit head`"
    seq, mac, tag = sealed
    if kept.get("store", store_id) != store_id:
        return f"a head of store {kept['store']}, not of this one ({store_id})"
    if not hmac.compare_digest(tag, head_tag(key, seq, mac)):
        return "does not authenticate under this store's audit key (a new key: the store was made anew?)"
    if stored_mac is None:
        return (f"record {seq} is not in the chain (it ends at {last})" if seq > last
                else f"record {seq} is no longer in the chain")
    if stored_mac != mac:
        return f"record {seq} is not the one the kept head names: the chain was rewritten"
    return None


def current_head(store: Store) -> dict[str, Any] | None:
    """The head to keep elsewhere: the store's id, the epoch, and audit.head
    as it is (None: the chain has not begun). Needs no key: the tag is
    checked when the copy is used (`seldonfs audit verify --head`)."""
    head = read_head(store.root)
    if head is None:
        return None
    return {"store": store.identity().get("store_id", ""), "epoch": epoch_of(read_anchor(store.root)),
            "seq": head.get("seq"), "mac": head.get("mac"), "tag": head.get("tag")}


def epoch_of(anchor: dict[str, Any] | None) -> int:
    """The epoch store.json names (1 before any anchor was written)."""
    sealed = _sealed(anchor, ("epoch", "seq")) if anchor is not None else None
    return sealed[0] if sealed is not None else 1
