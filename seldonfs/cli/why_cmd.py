"""seldonfs why PATH [--json]: why the mount refused a file.

PATH is inside a SeldonFS mount (it need not exist: a refused create
leaves nothing). Prints the mount's refusals of that path, oldest first,
one line each: time, operation, path, the error the program saw and the
rule's reason (an extension not allowed, a size limit, the free-space
floor, a quarantine at commit with its checks' reasons). A folder (the
mount point too): the refusals of everything under it as well.

The mount keeps its last 100 refusals in memory (gone at unmount; the
audit chain keeps all of them) and hands them out through
MOUNT/.seldonfs-refusals.json (every profile; not listed, found by its
name): root and the mount's owner see every user's, anyone else only
those of their own uid.
Names are printed with control characters and bytes that are not UTF-8
as \\xNN. `--json`: {"mountpoint", "path", "refusals": [{"time", "uid",
"pid", "op", "path", "path2", "result", "reason"}]}.
Exit 0: refusals found; 1: none known for PATH; 10: not inside a SeldonFS
mount.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import SeldonError
from ..records import text as _text
from ..naming import shown
from ..virtual import REFUSALS_NAME
from .common import add_json_arg, mount_above

REFUSALS = os.fsdecode(REFUSALS_NAME)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("why", help="why the mount refused a file (its last refusals)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, metavar="PATH")
    add_json_arg(p, "the refusals as one JSON document")
    p.set_defaults(func=run)


def matches(r: dict[str, Any], rel: str) -> bool:
    if not rel:
        return True
    under = rel + "/"
    return any(p == rel or p.startswith(under) for p in (r.get("path") or "", r.get("path2") or ""))


def run(args: argparse.Namespace) -> None:
    mnt, rel = mount_above(args.path)
    rel = _text(rel)  # as the mount writes names that are not UTF-8
    try:
        doc = json.loads((mnt / REFUSALS).read_text())
    except (OSError, ValueError) as e:
        raise SeldonError(f"{mnt}: cannot read {REFUSALS}: {e}") from None
    found = [r for r in doc.get("refusals", []) if matches(r, rel)]
    if args.json:
        print(json.dumps({"mountpoint": str(mnt), "path": rel, "refusals": found}, indent=2))
    else:
        for r in found:
            when = datetime.fromtimestamp(r["time"]).strftime("%Y-%m-%d %H:%M:%S")
            to = f" -> {shown(r['path2'])}" if r.get("path2") else ""
            told = "" if r["result"] == "OK" else f"{r['result']}: "
            print(f"{when} {r['op']} {shown(r['path'])}{to}: {told}{shown(r['reason'])} "
                  f"(uid {r['uid']}{', pid ' + str(r['pid']) if r.get('pid') else ''})")
    if not found:
        raise SeldonError(f"{shown(str(args.path))}: no refusal known (the mount keeps its last 100)", 1)
