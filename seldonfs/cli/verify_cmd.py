"""seldonfs verify STORE: authenticate every block of every file, offline.

Lists each damaged file with its damaged blocks; exit 26 if there is any.
The store must not be mounted (exit 11).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import offline
from ..errors import DamageFound
from .common import add_key_args, each_file, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="authenticate every block of a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    with unlocked_store(args.store, args) as u:
        paths = list(offline.files(u.store))
        bad = each_file(u, paths, "verifying", offline.check_file)
    print(f"{len(paths)} files checked, {bad} damaged")
    if bad:
        raise DamageFound(f"{bad} damaged file(s) in {u.store.root}")
