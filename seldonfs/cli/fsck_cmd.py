"""seldonfs fsck STORE [--rebuild]: check the catalog against data/.

Lists what the catalog lacks or holds in excess (file records, quarantine
and version rows, sequence numbers). The record of a committed file that
left through the mount (removed, renamed, quarantined, or by the janitor:
the audit chain says so) is history, not excess; one removed behind the
mount's back is excess. `--rebuild` repairs it from data/ (checksums and
types from the plaintext: the key of an encrypted store is needed): a
file record for each file that lacks one, the records of files gone
behind the mount's back removed, the rest of the files' history and the
audit chain kept; quarantine and version rows and sequence numbers
rebuilt. Exit 26 when damage remains:
any problem without --rebuild, or one --rebuild cannot repair (a lost or
unreadable audit chain; a file whose content differs from its catalog
record, which a rebuild would only hide; a file without a record, or
changed since its record, that fails its folder's checks, which a rebuild
does not record as passed).
`--json`: one JSON document,
{"store", "problems", "fatal", "rebuilt"}. The store must not be mounted
(exit 11).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config, fsck
from ..content import PlainContent
from ..errors import DamageFound
from ..keys import unlock
from ..naming import shown
from ..store import Store, StoreLock
from .common import add_json_arg, add_key_args, add_quiet_arg, key_source, progress, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsck", help="check the catalog against the store, or rebuild it", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("--rebuild", action="store_true", help="rebuild the catalog from data/ (not the audit chain)")
    add_json_arg(p, "one JSON document")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    store = Store(args.store.resolve())
    ident = store.identity()
    cfg = config.load(store.config_path)
    lock = StoreLock(store)
    lock.acquire()
    try:
        block = ident.get("encryption")
        if block is None:
            content = PlainContent()
        else:
            from ..blockformat import EncryptedContent

            content = EncryptedContent(unlock(block, key_source(args)), block["current_key_id"], block["block_size"])
        rep = fsck.check(store, cfg, content, args.rebuild, lambda it, n: progress(it, n, "checking", args.quiet))
    finally:
        lock.release()
    if args.json:
        print(json.dumps({"store": str(store.root), "problems": [shown(p) for p in rep.problems],
                          "fatal": [shown(p) for p in rep.fatal], "rebuilt": rep.rebuilt}))
    else:
        _print(rep)
    left = rep.fatal + ([] if args.rebuild else rep.problems)
    if left:
        raise DamageFound(f"{store.root}: {len(left)} problem(s)" + ("" if args.rebuild else "; --rebuild repairs the catalog"))
    say(args, "catalog consistent with data/" if not rep.problems else "catalog rebuilt")


def _print(rep: fsck.Report) -> None:
    for p in rep.problems:
        print(shown(p))
    for p in rep.fatal:
        print(f"cannot repair: {shown(p)}")
    if rep.rebuilt:
        print("rebuilt: " + ", ".join(f"{n} {t}" for t, n in rep.rebuilt.items()))
