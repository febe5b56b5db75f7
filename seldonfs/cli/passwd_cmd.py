"""seldonfs passwd STORE: change the passphrase or key file.

Unlock with the current secret (--passphrase-file / --keyfile, or the usual
sources), then give the new one with --new-passphrase-file or --new-keyfile
(a missing key file is created, mode 0600), or at the prompt. Only the
wrapping of the master keys changes; no file is rewritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import anchor, audit, keys
from ..keys import KeySource
from .common import add_key_args, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("passwd", help="change the passphrase or key file", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    add_key_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--new-passphrase-file", type=Path, metavar="FILE")
    g.add_argument("--new-keyfile", type=Path, metavar="FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    with unlocked_store(args.store, args) as u:
        akey = audit.load_key(u.store.root, u.keys) if (u.store.root / audit.KEY_NAME).exists() else None
        anchor.refuse_broken(u.store, akey)  # before the change its record could not be stored
        if args.new_keyfile is not None and not args.new_keyfile.exists():
            keys.generate_keyfile(args.new_keyfile)
        new = KeySource(keyfile=args.new_keyfile, passphrase_file=args.new_passphrase_file)
        if new.keyfile is None and new.passphrase_file is None:
            new = KeySource()  # prompt (twice)
        block = keys.rewrap(u.block, u.keys, new)
        u.store.write_identity(dict(u.ident, encryption=block))
        if akey is not None:
            audit.append_offline(u.store.root, u.store.catalog_path, akey, "passwd",
                                 f"master key rewrapped ({block['unlock']['method']})")
    print(f"{u.store.root}: master key rewrapped ({block['unlock']['method']})")
