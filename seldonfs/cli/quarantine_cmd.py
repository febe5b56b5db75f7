"""seldonfs quarantine: list quarantined files, release one.

`list STORE|MOUNTPOINT` shows what is in quarantine, why, and where it was
written (from the catalog; works with the store mounted or not).
`release FILE` asks the running mount to check FILE (a path inside the
mount's quarantine folder) again and move it back to where it was written,
where it commits under the folder's rules; `--force` skips the checks and
is recorded in the catalog with the caller's uid. Needs root.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import xattrs
from ..catalog import name_of
from ..errors import SeldonError, UsageError
from ..naming import shown
from .common import catalog_readonly, mounted_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quarantine", help="list or release quarantined files", description=__doc__)
    qs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = qs.add_parser("list", help="list quarantined files")
    ls.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    ls.add_argument("--all", action="store_true", help="include released files")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    rel = qs.add_parser("release", help="check a quarantined file again and move it back")
    rel.add_argument("file", type=Path, metavar="FILE")
    rel.add_argument("--force", action="store_true", help="skip the checks (recorded)")
    rel.set_defaults(func=run_release)


def run_list(args: argparse.Namespace) -> None:
    with catalog_readonly(args.target) as conn:
        where = "" if args.all else " WHERE released_ns IS NULL"
        rows = conn.execute(
            "SELECT path, origin, reason, at_ns, released_ns, released_to, forced FROM quarantine"
            + where + " ORDER BY id"
        ).fetchall()
    # names as stored (bytes where they are not UTF-8), shown escaped
    rows = [(shown(name_of(p)), shown(name_of(o)), shown(name_of(r)), at, rel, shown(name_of(to)), f)
            for p, o, r, at, rel, to, f in rows]
    if args.json:
        keys = ("path", "origin", "reason", "at_ns", "released_ns", "released_to", "forced")
        for row in rows:
            print(json.dumps(dict(zip(keys, row))))
        return
    table = Table("quarantined", "path", "written to", "reason")
    for path, origin, reason, at_ns, released_ns, released_to, forced in rows:
        when = datetime.fromtimestamp(at_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        if released_ns:
            reason += f" (released{' by force' if forced else ''} to {released_to})"
        table.add_row(when, Text(path), Text(origin), Text(reason))
    Console(width=200 if not os.isatty(1) else None).print(table)
    print(f"{len(rows)} file(s)")


def run_release(args: argparse.Namespace) -> None:
    path = mounted_file(args.file)
    try:
        os.setxattr(path, xattrs.RELEASE, b"force" if args.force else b"", follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.EACCES:
            try:
                reason = shown(os.getxattr(path, xattrs.REASON))
            except OSError:
                reason = "it failed its checks"
            raise SeldonError(f"{shown(str(args.file))}: still invalid: {reason} (--force to release anyway)") from None
        if e.errno == errno.EINVAL:
            raise UsageError(f"{shown(str(args.file))}: not a quarantined file") from None
        raise SeldonError(f"{shown(str(args.file))}: cannot release: {e.strerror}") from None
    print(f"{shown(str(args.file))}: released")
