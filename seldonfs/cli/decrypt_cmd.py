"""seldonfs decrypt STORE [PATH...] -o OUTDIR: recover plaintext offline.

PATHs are relative to the mount root (files or folders; default: all).
Damaged blocks are reported and written as zeros; the rest is recovered.
Exit 26 if anything was damaged. `--json`: one JSON document, {"store",
"output", "files", "damaged": [{"path", "problems"}]}. The store must not
be mounted (exit 11).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import offline
from ..errors import DamageFound, UsageError
from .common import add_json_arg, add_key_args, add_quiet_arg, each_file, say, unlocked_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decrypt", help="recover plaintext from a store without mounting", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders, relative to the mount root")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    add_json_arg(p, "one JSON document")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    for p in args.paths:
        if Path(p).is_absolute() or ".." in Path(p).parts:
            raise UsageError(f"{p}: give paths relative to the mount root")
    with unlocked_store(args.store, args) as u:
        try:
            paths = list(offline.files(u.store, args.paths))
        except FileNotFoundError as e:
            raise UsageError(f"{e.filename}: no such file in the store") from None
        data = u.store.data
        bad = each_file(
            u, paths, "decrypting",
            lambda p, keys, kid, bs: offline.decrypt_file(p, args.output / p.relative_to(data), keys, kid, bs),
            args.quiet,
        )
    if args.json:
        print(json.dumps({"store": str(u.store.root), "output": str(args.output), "files": len(paths), "damaged": bad}))
    else:
        for d in bad:
            print(f"{d['path']}: {'; '.join(d['problems'])} (written as zeros)")
    say(args, f"{len(paths)} files decrypted into {args.output}, {len(bad)} damaged")
    if bad:
        raise DamageFound(f"{bad} damaged file(s): the rest was recovered")
