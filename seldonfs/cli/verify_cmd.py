"""seldonfs verify STORE: authenticate every block of every file, offline.

Lists each damaged file with its damaged blocks; exit 26 if there is any.
`--json`: one JSON document, {"store", "files", "damaged": [{"path",
"problems"}]}. The store must not be mounted (exit 11).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import offline
from ..errors import DamageFound
from .common import add_json_arg, add_key_args, add_quiet_arg, each_file, say, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="authenticate every block of a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    add_json_arg(p, "one JSON document")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    with unlocked_store(args.store, args) as u:
        paths = list(offline.files(u.store))
        bad = each_file(u, paths, "verifying", offline.check_file, args.quiet)
    if args.json:
        print(json.dumps({"store": str(u.store.root), "files": len(paths), "damaged": bad}))
    else:
        for d in bad:
            print(f"{d['path']}: {'; '.join(d['problems'])}")
    say(args, f"{len(paths)} files checked, {len(bad)} damaged")
    if bad:
        raise DamageFound(f"{len(bad)} damaged file(s) in {u.store.root}")
