"""seldonfs init STORE [--profile NAME]: create a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import profile_names
from ..store import init_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE", help="directory to create (missing or empty)")
    p.add_argument(
        "--profile", default="seldon", metavar="NAME",
        help=f"rules and folder tree to start from: {', '.join(profile_names())} (default: seldon)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    store = init_store(args.store, args.profile)
    print(f"created store {store.root} (profile {args.profile})")
