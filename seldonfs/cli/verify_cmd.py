"""seldonfs verify STORE: authenticate every block of every file, offline,
and compare each file the catalog vouches for with its record.

Lists each damaged file with what is wrong (damaged blocks, a cut file,
content that differs from its catalog record); exit 26 if there is any.
`--json`: one JSON document, {"store", "files", "damaged": [{"path",
"problems"}]}. The store must not be mounted (exit 11).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import fsck, offline
from ..blockformat import plain_size
from ..errors import DamageFound
from .common import add_json_arg, add_key_args, add_quiet_arg, each_file, say, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="authenticate every block of a store, compare files with the catalog", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    add_json_arg(p, "one JSON document")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    with unlocked_store(args.store, args) as u:
        paths = list(offline.files(u.store))
        recorded = fsck.Recorded.of_store(u.store, u.keys, int(u.block["current_key_id"]))

        def check(path: Path, keys: dict[int, bytes], kid: int, bs: int) -> offline.Damage:
            rec = recorded.applies(path.relative_to(u.store.data).as_posix(), os.lstat(path).st_mtime_ns)
            damage = offline.check_file(path, keys, kid, bs, recorded.checksum if rec else None)
            if rec is not None and damage.digest:
                size = os.lstat(path).st_size
                if problem := recorded.differs(rec, plain_size(size, bs), damage.digest):
                    damage.problems.append(problem)
            return damage

        bad = each_file(u, paths, "verifying", check, args.quiet)
    if args.json:
        print(json.dumps({"store": str(u.store.root), "files": len(paths), "damaged": bad}))
    else:
        for d in bad:
            print(f"{d['path']}: {'; '.join(d['problems'])}")
    say(args, f"{len(paths)} files checked, {len(bad)} damaged")
    if bad:
        raise DamageFound(f"{len(bad)} damaged file(s) in {u.store.root}")
