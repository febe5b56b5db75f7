"""seldonfs config check STORE|MOUNTPOINT|FILE [--json]: every problem in a seldonfs.toml.

Reads the store's seldonfs.toml (or FILE, e.g. a copy being edited before
it goes in) as a mount reads it, the TEMP_STORAGE_CLEANUP_* environment
variables applied, and prints every problem found, one line each, in the
file's order: the file, the key's dotted path and what is wrong. A mount stops at the first
and names only it. Exit 0 when there is none, 13 when there is any.
`--json`: one JSON document on stdout, {"file", "ok", "problems": [{"key",
"message"}]}, "key" "" for the file as a whole (missing, not TOML).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config
from ..errors import ConfigError
from .common import add_json_arg, store_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a store's seldonfs.toml", description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    c = verbs.add_parser("check", help="list every problem in seldonfs.toml; exit 13 if any", description=__doc__)
    c.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT|FILE",
                   help="a store, its mount point, or a seldonfs.toml file")
    add_json_arg(c, "one JSON document")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> None:
    path = args.target if args.target.is_file() else store_of(args.target).config_path
    _, problems = config.check_file(path)
    if args.json:
        print(json.dumps({"file": str(path), "ok": not problems,
                          "problems": [{"key": p.key, "message": p.message} for p in problems]}, indent=2))
    else:
        for p in problems:
            print(f"{path}: {p}")
    if problems:
        n = len(problems)
        raise ConfigError(f"{path}: {n} problem{'s' if n > 1 else ''}", problems)
    if not args.json:
        print(f"{path}: no problems")
