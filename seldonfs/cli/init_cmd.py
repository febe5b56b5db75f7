"""seldonfs init STORE [--profile NAME] [--no-encryption] [--keyfile FILE | --passphrase-file FILE]:
create a store.

Contents are encrypted unless --no-encryption is given. The master key is
wrapped by a passphrase (asked twice on a terminal, or from
--passphrase-file / $SELDONFS_PASSPHRASE_FILE / $SELDONFS_PASSPHRASE) or by
a key file; --keyfile FILE creates FILE (32 random bytes, mode 0600) if it
does not exist. Keep the key file outside the store. `--json`: one JSON
document, {"store", "profile", "encrypted", "keyfile_created"}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import keys
from ..config import profile_names, profile_text
from ..store import check_init_target, init_store
from .common import add_json_arg, add_key_args, key_source, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE", help="directory to create (missing or empty)")
    p.add_argument(
        "--profile", default="seldon", metavar="NAME",
        help=f"rules and folder tree to start from: {', '.join(profile_names())} (default: seldon)",
    )
    p.add_argument("--no-encryption", action="store_true", help="store contents as they are")
    add_json_arg(p, "one JSON document")
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..blockformat import DEFAULT_BLOCK_SIZE

    profile_text(args.profile)  # unknown profile: fail before asking for secrets
    check_init_target(args.store)
    encryption = None
    created = None
    if not args.no_encryption:
        if args.keyfile is not None and not args.keyfile.exists():
            keys.generate_keyfile(args.keyfile)
            created = str(args.keyfile.resolve())
            say(args, f"created key file {args.keyfile} (mode 0600): keep it safe, outside the store")
        encryption = keys.new_block(key_source(args), DEFAULT_BLOCK_SIZE)
    store = init_store(args.store, args.profile, encryption)
    if args.json:
        print(json.dumps({"store": str(store.root), "profile": args.profile, "encrypted": encryption is not None,
                          "keyfile_created": created}))
    else:
        print(f"created {'plain' if encryption is None else 'encrypted'} store {store.root} (profile {args.profile})")
