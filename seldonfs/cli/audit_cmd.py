"""seldonfs audit: query the audit chain, or verify it.

    seldonfs audit STORE|MOUNTPOINT [--since T] [--until T] [--path GLOB] [--uid N] [--op OP] [--json]
                   [-n N] [--reverse] [--keyfile FILE | --passphrase-file FILE]
    seldonfs audit verify STORE|MOUNTPOINT [--head FILE|JSON] [--strict] [--keyfile FILE | --passphrase-file FILE]
    seldonfs audit head STORE|MOUNTPOINT
    seldonfs audit reset STORE --reason TEXT [--keyfile FILE | --passphrase-file FILE]

A query prints a table (JSON lines with --json), oldest first; `-n N`
keeps the newest N (on a terminal the newest 100 unless -n or --json says
otherwise), `--reverse` puts the newest first. T is a time such as
2026-11-25T14:00 or an age such as 90m, 12h, 7d (that long ago). `verify`
recomputes every record's MAC and checks the chain's anchors (audit.head,
store.json); it names the first break and its kind (edited, deleted,
inserted, reordered, truncated, anchor): exit 26. It prints every reset
(a new epoch after a break) and gap (records lost) the chain records, in
every run; they exit 0 unless --strict. `--head` also checks heads kept
elsewhere: exit 26 if the chain no longer holds the record one names.
`head` prints the chain's head as one JSON line, to keep elsewhere. `reset`
records a break the mount refuses (a lost, emptied or rebuilt catalog, a
lost head) and starts a new epoch; the store must not be mounted. Query,
verify and head read the catalog read-only and work beside a running
mount; verify and reset need the key of an encrypted store, and so does a
query that reaches into sealed segments (`[audit] segment`): verify walks
them and the table as one chain, a query reads those its time range
touches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import anchor, audit, keys, segments, synclog
from ..errors import DamageFound, SeldonError, UsageError
from ..naming import shown
from ..store import Store, StoreLock
from .common import add_key_args, catalog_readonly, key_source, store_of

_AGE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_AGE_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="query or verify the audit chain", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--since", metavar="T", help="records at or after T")
    p.add_argument("--until", metavar="T", help="records before T")
    p.add_argument("--path", metavar="GLOB", help="records about paths matching GLOB (relative to the mount root)")
    p.add_argument("--uid", type=int, metavar="N")
    p.add_argument("--op", metavar="OP", help="e.g. create, rename, commit, quarantine")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-n", "--limit", type=int, metavar="N",
                   help=f"only the newest N records (on a terminal without --json: {TERMINAL_LIMIT} unless given)")
    p.add_argument("--reverse", action="store_true", help="newest first")
    add_key_args(p)  # records in sealed segments of an encrypted store
    p.set_defaults(func=run)
    # `seldonfs audit verify|head|reset TARGET`: main() turns them into these
    v = sub.add_parser(VERIFY, prog="seldonfs audit verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    v.add_argument("--head", metavar="FILE|JSON",
                   help="also check the chain against heads kept elsewhere (`audit head` lines, or a file of them)")
    v.add_argument("--strict", action="store_true", help="exit 26 also for recorded resets and gaps")
    add_key_args(v)
    v.set_defaults(func=run_verify)
    h = sub.add_parser(HEAD, prog="seldonfs audit head", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    h.set_defaults(func=run_head)
    r = sub.add_parser(RESET, prog="seldonfs audit reset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("store", type=Path, metavar="STORE")
    r.add_argument("--reason", required=True, metavar="TEXT", help="why the break is accepted; recorded")
    add_key_args(r)
    r.set_defaults(func=run_reset)


VERIFY, HEAD, RESET = "audit-verify", "audit-head", "audit-reset"
TERMINAL_LIMIT = 100  # records shown on a terminal unless --limit says otherwise
VERBS = {"verify": VERIFY, "head": HEAD, "reset": RESET}


def parse_time(text: str) -> int:
    m = _AGE.match(text)
    if m:
        return time.time_ns() - int(float(m[1]) * _AGE_S[m[2]] * 1e9)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise UsageError(f"{text!r}: want a time like 2026-11-25T14:00 or an age like 12h") from None


def run(args: argparse.Namespace) -> None:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    limit = args.limit
    if limit is None and not args.json and os.isatty(1):
        limit = TERMINAL_LIMIT
    with catalog_readonly(args.target) as conn:
        sealed = _reader(args, conn, since, until)
        records = audit.query(conn, since, until, args.path, args.uid, args.op,
                              newest_first=limit is not None or args.reverse, sealed=sealed)
        if limit is not None:  # the newest N, shown oldest first unless --reverse
            records = list(itertools.islice(records, max(limit, 0)))
            if not args.reverse:
                records.reverse()
        if args.json:
            for r in records:
                print(json.dumps(r, ensure_ascii=False))
            return
        table = Table("seq", "time", "uid", "pid", "process", "op", "path", "result", "bytes", "detail")
        n = 0
        for r in records:
            when = datetime.fromtimestamp(r["ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            path = r["path"] + (f" -> {r['path2']}" if r["path2"] else "")
            table.add_row(str(r["seq"]), when, str(r["uid"]), str(r["pid"]), Text(shown(r["proc"])), r["op"],
                          Text(shown(path)), r["result"], str(r["bytes"] or ""), Text(shown(r["detail"] or "")))
            n += 1
    Console(width=220 if not os.isatty(1) else None).print(table)
    print(f"{n} record(s)" + (", the newest (-n N for more)" if limit is not None and n == limit else ""))


def _reader(args: argparse.Namespace, conn: sqlite3.Connection, since: int | None,
            until: int | None) -> segments.Reader | None:
    """How to read the sealed segments the query reaches into (None: it
    reaches none); an encrypted store's segments need its key."""
    if not audit.sealed_in(conn, since, until):
        return None
    store = store_of(args.target)
    block = store.identity().get("encryption")
    return _sealed_with(store, block, keys.unlock(block, key_source(args)) if block is not None else None)


def run_verify(args: argparse.Namespace) -> None:
    target = args.target
    store = store_of(target)
    block = store.identity().get("encryption")
    unlocked = keys.unlock(block, key_source(args)) if block is not None else None
    key = audit.load_key(store.root, unlocked)
    kept = _kept_heads(args.head) if args.head else []
    t0 = time.perf_counter()
    if not store.catalog_path.exists():
        raise DamageFound(f"{store.catalog_path}: missing: the audit chain is gone")
    events: list[audit.Event] = []
    try:
        with catalog_readonly(target) as conn:
            cfg = store.load_config()
            n, brk = audit.verify(conn, key, audit.read_head(store.root), events,
                                  sealed=_sealed_with(store, block, unlocked), retain_s=cfg.audit.retain)
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0]
            store_id = store.identity().get("store_id", "")
            wrong = [(h.get("seq"), anchor.check_kept(h, key, store_id, audit.mac_at(conn, h.get("seq")), last))
                     for h in kept]
            waiting = audit.waiting_in_log(store.root, conn, key)
    except sqlite3.DatabaseError as e:
        raise DamageFound(f"{store.catalog_path}: unreadable ({e}): the audit chain cannot be verified") from None
    secs = time.perf_counter() - t0
    for ev in events:  # a reset's reason is anyone's text: one line, no escapes to the terminal
        detail = shown(ev.detail)
        print(f"epoch {ev.epoch} started at seq {ev.seq} after a break: {detail}" if ev.op == audit.RESET_OP
              else detail if ev.op == audit.EXPIRED else f"gap at record {ev.seq}: {detail}")
    if brk is None:
        problem = anchor.judge(anchor.look(store, key))
        brk = None if problem is None else audit.Break(0, "anchor", problem)
    if brk is not None:
        print(f"{f'record {brk.seq}' if brk.seq else 'chain'}: {brk.kind}: {shown(brk.detail)}")  # names from the catalog
        raise DamageFound(f"audit chain broken at record {brk.seq} ({brk.kind}); {n} records read")
    wrong = [(seq, w) for seq, w in wrong if w is not None]
    for seq, w in wrong:
        print(f"kept head {seq}: {w}")
    if wrong:
        raise DamageFound(f"{len(wrong)} of {len(kept)} kept head(s) do not match the chain")
    rate = f"{n / secs:,.0f} records/s" if secs > 0 else ""
    matched = f"; {len(kept)} kept head(s) match" if kept else ""
    noted = f" ({len(events)} reset(s), gap(s) and expired segment(s) above)" if events else ""
    print(f"{n} records verified in {secs:.2f} s ({rate}): chain intact{noted}{matched}")
    if waiting:
        print(f"{waiting} records are only in {synclog.NAME}, not in the chain yet: a running mount stores them "
              "within a second, else the next mount or offline command does")
    if events and args.strict:
        raise DamageFound(f"{len(events)} reset(s) and gap(s): the history is incomplete (--strict)")


def _sealed_with(store: Store, block: dict | None, unlocked: dict[int, bytes] | None) -> segments.Reader:
    if block is None or unlocked is None:
        return segments.Reader(store.data, None)
    return segments.Reader(store.data, (unlocked, block["current_key_id"], block["block_size"]))


def _kept_heads(text: str) -> list[dict]:
    """Heads from --head: one JSON line, or a file of them (each line a
    head, or a webhook's audit-head alert that carries one)."""
    if text.lstrip().startswith("{"):
        lines = [text]
    else:
        try:
            lines = [line for line in Path(text).read_text().splitlines() if line.strip()]
        except OSError as e:
            raise UsageError(f"{text}: {e.strerror}") from None
    heads = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            raise UsageError(f"--head: not JSON: {line[:80]!r}") from None
        if not isinstance(doc, dict):
            raise UsageError(f"--head: not a head: {line[:80]!r}")
        heads.append(doc["head"] if isinstance(doc.get("head"), dict) else doc)
    if not heads:
        raise UsageError(f"{text}: no head in it")
    return heads


def run_head(args: argparse.Namespace) -> None:
    store = store_of(args.target)
    head = anchor.current_head(store)
    if head is None:
        raise SeldonError(f"{store.root / anchor.HEAD_NAME}: missing: the chain has not begun (or its head is lost)")
    print(json.dumps(head))


def run_reset(args: argparse.Namespace) -> None:
    store = Store(args.store.resolve())
    block = store.identity().get("encryption")
    lock = StoreLock(store)
    lock.acquire()
    try:
        key = audit.load_key(store.root, keys.unlock(block, key_source(args)) if block is not None else None)
        found = anchor.look(store, key)
        problem = anchor.judge(found)
        if problem is None:
            raise UsageError(f"{store.root}: the audit chain matches its anchors: nothing to reset")
        if found.catalog not in ("ok", "missing"):
            raise DamageFound(f"{store.catalog_path}: {found.catalog}: `seldonfs fsck --rebuild {store.root}` first")
        epoch, seq = audit.reset(store.root, store.catalog_path, key, args.reason, found, problem)
    finally:
        lock.release()
    print(f"epoch {epoch} started at seq {seq} after a break: {problem}")
    if found.catalog == "missing":
        print(f"catalog.sqlite made anew: `seldonfs fsck --rebuild {store.root}` rebuilds its file records")
