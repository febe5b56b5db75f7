"""seldonfs audit: query the audit chain, or verify it.

    seldonfs audit STORE|MOUNTPOINT [--since T] [--until T] [--path GLOB] [--uid N] [--op OP] [--json]
    seldonfs audit verify STORE|MOUNTPOINT [--keyfile FILE | --passphrase-file FILE]

A query prints a table (JSON lines with --json). T is a time such as
2026-11-25T14:00 or an age such as 90m, 12h, 7d (that long ago). `verify`
recomputes every record's MAC and names the first break and its kind
(edited, deleted, inserted, reordered, truncated): exit 26. Both read the
catalog read-only and work beside a running mount; `verify` needs the key
of an encrypted store.
"""

from __future__ import annotations

import argparse
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

from .. import audit, keys
from ..errors import DamageFound, UsageError
from ..naming import shown
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
    p.set_defaults(func=run)
    # `seldonfs audit verify TARGET`: main() turns it into this one
    v = sub.add_parser(VERIFY, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    add_key_args(v)
    v.set_defaults(func=run_verify)


VERIFY = "audit-verify"


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
    with catalog_readonly(args.target) as conn:
        records = audit.query(conn, since, until, args.path, args.uid, args.op)
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
    print(f"{n} record(s)")


def run_verify(args: argparse.Namespace) -> None:
    target = args.target
    store = store_of(target)
    block = store.identity().get("encryption")
    unlocked = keys.unlock(block, key_source(args)) if block is not None else None
    key = audit.load_key(store.root, unlocked)
    t0 = time.perf_counter()
    if not store.catalog_path.exists():
        raise DamageFound(f"{store.catalog_path}: missing: the audit chain is gone")
    try:
        with catalog_readonly(target) as conn:
            n, brk = audit.verify(conn, key, audit.read_head(store.root))
    except sqlite3.DatabaseError as e:
        raise DamageFound(f"{store.catalog_path}: unreadable ({e}): the audit chain cannot be verified") from None
    secs = time.perf_counter() - t0
    rate = f"{n / secs:,.0f} records/s" if secs > 0 else ""
    if brk is not None:
        print(f"record {brk.seq}: {brk.kind}: {brk.detail}")
        raise DamageFound(f"audit chain broken at record {brk.seq} ({brk.kind}); {n} records read")
    print(f"{n} records verified in {secs:.2f} s ({rate}): chain intact")
