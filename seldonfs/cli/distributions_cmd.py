"""seldonfs distributions STORE|MOUNTPOINT [list | show ID | status ID STATUS]: distribution records.

A file in a folder with `distribution = true` gets one record per recipient
set on it through the mount (`setfattr -n user.seldon.recipient -v 'Name
<name@example.org>' FILE`, by the file's owner, the store's owner or root):
its checksum then, the recipient, when, the status, the first open for
reading through the mount and how many there were, and when it expires.
Sending the file is not the filesystem's business: whatever sends it sets
the recipient and, later, the status.

`list` (the default) shows every record, `show ID` one, `status ID STATUS`
sets a record's status to sent, delivered, failed or revoked (a revoked or
failed record counts no more downloads and does not keep its file from
expiring; the janitor sets expired). Recipients are personal data: only
the store's owner or root can read the catalog. Works with the store
mounted (a status goes through the mount) or not (under the store lock).
`--json`: list prints one JSON object per line, show and status one.
Exit 2 for an unknown ID or STATUS, 1 when the catalog is not readable
(another user), 11 when an unmounted store is held by another command.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import anchor, audit, xattrs
from ..catalog import Catalog, name_of
from ..distributions import STATUSES
from ..errors import SeldonError, UsageError
from ..host import FSTYPE, find_mount, seldonfs_mounts
from ..keys import unlock
from ..naming import shown
from ..store import StoreLock
from .common import add_key_args, key_source, store_of

ACTIONS = ("list", "show", "status")
COLUMNS = ("id", "path", "sha256", "size", "name", "address", "sent_ns", "set_by", "status", "status_ns",
           "opened_ns", "downloads", "expires_ns", "expired_ns", "modified_ns", "outcome")
#: JSON keys of the columns whose name says less than the record's field in docs.
KEYS = {"sha256": "checksum", "name": "recipient_name", "address": "recipient_address",
        "opened_ns": "first_opened_ns", "downloads": "download_count"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distributions", help="list distribution records, show one, set its status",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("action", nargs="?", default="list", choices=ACTIONS, metavar="ACTION",
                   help="list (default), show ID, status ID STATUS")
    p.add_argument("args", nargs="*", metavar="ARG", help="ID, or ID STATUS")
    p.add_argument("--json", action="store_true", help="JSON: one object per record")
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    want = {"list": 0, "show": 1, "status": 2}[args.action]
    if len(args.args) != want:
        raise UsageError(f"distributions {args.action}: want {['no argument', 'ID', 'ID STATUS'][want]}")
    if want and not args.args[0].isdigit():
        raise UsageError(f"distributions {args.action}: {shown(args.args[0])}: not a record id")
    if args.action == "status":
        return set_status(args, int(args.args[0]), args.args[1])
    rows = _rows(args.target, None if args.action == "list" else int(args.args[0]))
    if args.action == "show" and not rows:
        raise UsageError(f"distributions show: no record {args.args[0]}")
    for rec in rows:
        if args.json:
            print(json.dumps(rec))
        elif args.action == "show":
            for k, v in rec.items():
                print(f"{k:<20} {_when(v) if k.endswith('_ns') and v else shown(str(v))}")
        else:
            opened = _when(rec["first_opened_ns"]) if rec["first_opened_ns"] else "never opened"
            print(f"{rec['id']:>5}  {rec['status']:<9} {rec['download_count']:>5}  {opened:<19}  "
                  f"{_when(rec['expires_ns'])}  {shown(rec['recipient_address'])}  {shown(rec['path'])}")
    if args.action == "list" and not args.json:
        print(f"{len(rows)} record(s)")


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _rows(target: Path, rid: int | None) -> list[dict]:
    store = store_of(target)
    if not os.access(store.catalog_path, os.R_OK):
        raise SeldonError(f"{shown(str(target))}: permission denied: distribution records are the store owner's")
    where, params = ("", ()) if rid is None else (" WHERE id = ?", (rid,))
    try:
        conn = sqlite3.connect(f"file:{store.catalog_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM distributions{where} ORDER BY id", params).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []  # a store not mounted since distributions came
        raise SeldonError(f"{shown(str(target))}: cannot read the catalog: {e}") from None
    out = []
    for row in rows:
        rec = {KEYS.get(c, c): v for c, v in zip(COLUMNS, row)}
        rec["path"] = shown(name_of(rec["path"]))
        out.append(rec)
    return out


def _mountpoint(target: Path) -> str | None:
    """The mount point serving STORE|MOUNTPOINT, if it is mounted."""
    path = os.path.abspath(target)
    found = find_mount(Path(path))
    if found is not None and found[1] == FSTYPE:
        return path
    real = os.path.realpath(target)
    return next((mnt for store, mnt in seldonfs_mounts() if store == real), None)


def set_status(args: argparse.Namespace, rid: int, status: str) -> None:
    if status not in STATUSES:
        raise UsageError(f"distributions status: {shown(status)}: want one of {', '.join(STATUSES)}")
    mnt = _mountpoint(args.target)
    if mnt is not None:
        try:
            os.setxattr(mnt, xattrs.DISTRIBUTION, f"{rid} {status}".encode())
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise UsageError(f"distributions status: no record {rid} that is not expired") from None
            raise SeldonError(f"{mnt}: cannot set the status: {e.strerror}") from None
    else:
        _set_offline(args, rid, status)
    if args.json:
        print(json.dumps({"id": rid, "status": status}))
    else:
        print(f"record {rid}: {status}")


def _set_offline(args: argparse.Namespace, rid: int, status: str) -> None:
    store = store_of(args.target)
    if not os.access(store.catalog_path, os.W_OK):
        raise SeldonError(f"{shown(str(args.target))}: permission denied: distribution records are the store owner's")
    lock = StoreLock(store)
    lock.acquire()  # exit 11 when something else holds it
    try:
        block = store.identity().get("encryption")
        akey = None
        if (store.root / audit.KEY_NAME).exists():
            akey = audit.load_key(store.root, unlock(block, key_source(args)) if block else None)
            anchor.refuse_broken(store, akey)
        cat = Catalog(store.catalog_path)
        try:
            cat.migrate()
            if not cat.set_distribution_status(rid, status, time.time_ns()):
                raise UsageError(f"distributions status: no record {rid} that is not expired")
        finally:
            cat.close()
        if akey is not None:
            audit.append_offline_many(store.root, store.catalog_path, akey,
                                      [("distribution", "", "", "OK", 0, f"record {rid}: {status}")])
    finally:
        lock.release()
