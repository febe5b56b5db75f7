"""seldonfs rekey STORE: move every file to a new master key.

Each file is rewritten in place under the new key, in the newest file
format (version 2: how a store of version 1 files moves on); a killed rekey resumes
where it stopped when run again. Until it finishes both keys stay in the
store, so a mount in between reads every file. `--json`: one JSON
document, {"store", "moved", "key_id"}. The store must not be mounted
(exit 11).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import anchor, audit, offline
from .common import add_json_arg, add_key_args, add_quiet_arg, progress, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rekey", help="move every file to a new master key", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    add_json_arg(p, "one JSON document")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    with unlocked_store(args.store, args) as u:
        akey = audit.load_key(u.store.root, u.keys) if (u.store.root / audit.KEY_NAME).exists() else None
        anchor.refuse_broken(u.store, akey)  # before the change its record could not be stored
        block = u.block
        if len(u.keys) == 1:  # not resuming: add the new key first
            block = offline.start_rekey(block, u.keys, u.kek)
            u.store.write_identity(dict(u.ident, encryption=block))
        job = offline.Rekey(u.store, u.keys, block)
        job.finish_interrupted()
        todo = job.pending()
        for p in progress(todo, len(todo), "rekeying", args.quiet):
            job.move(p)
        # the audit key moves to the new master key before the old one goes
        if akey is not None:
            audit.write_key(u.store.root, akey, u.keys, job.target)
        u.store.write_identity(dict(u.ident, encryption=job.finish()))
        if akey is not None:
            audit.append_offline(u.store.root, u.store.catalog_path, akey, "rekey",
                                 f"{len(todo)} files moved to key {job.target:08x}")
    if args.json:
        print(json.dumps({"store": str(u.store.root), "moved": len(todo), "key_id": f"{job.target:08x}"}))
    else:
        print(f"{len(todo)} files moved to key {job.target:08x}")
