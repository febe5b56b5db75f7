"""seldonfs janitor STORE --dry-run: what the retention rules would do now.

Lists every file the folder rules let go (deleted, archived or moved, and
why) and the directories left empty, with a summary of files and bytes.
Changes nothing; carrying the actions out (inside the mount, skipping open
and locked files) is not built yet, so --dry-run is required.
`--folder PATH` and `--rule PATH` narrow the list; `--older-than DURATION`
pretends the clock is that much later.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import config, janitor
from ..blockformat import plain_size
from ..config import parse_duration
from ..errors import UsageError
from .common import store_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("janitor", help="list what the retention rules would do (dry run)", description=__doc__)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--dry-run", action="store_true", help="list, change nothing (required for now)")
    p.add_argument("--folder", metavar="PATH", help="only files under PATH (relative to the mount root)")
    p.add_argument("--rule", metavar="PATH", help="only what the folder table PATH asks for")
    p.add_argument("--older-than", metavar="DURATION", help="plan as if DURATION had passed, e.g. 30d")
    p.add_argument("--json", action="store_true", help="one JSON object per action")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if not args.dry_run:
        raise UsageError("janitor: only --dry-run is available yet (carrying the actions out is not built)")
    store = store_of(args.target)
    block = store.identity().get("encryption")
    cfg = config.load(store.config_path)
    later = parse_duration(args.older_than, "--older-than", "value") if args.older_than else 0.0
    size = (lambda n: plain_size(n, int(block["block_size"]))) if block else (lambda n: n)
    entries = janitor.inventory(store.data, size)
    if args.folder:
        prefix = args.folder.strip("/") + "/"
        entries = (e for e in entries if (e.rel + "/").startswith(prefix))
    actions = janitor.plan(time.time() + later, cfg, entries)
    if args.rule:
        actions = [a for a in actions if a.rule == args.rule]
    for a in actions:
        if args.json:
            print(json.dumps(a.__dict__))
        else:
            dest = f" -> {a.dest}/" if a.dest else ""
            print(f"{a.kind:<8} {a.rel}{dest}  ({a.reason}; rule {a.rule})")
    files = [a for a in actions if a.kind != "rmdir"]
    by_kind = {k: sum(1 for a in files if a.kind == k) for k in ("delete", "archive", "move")}
    print(
        f"dry run: {len(files)} files, {sum(a.size for a in files):,} bytes "
        f"({', '.join(f'{n} {k}' for k, n in by_kind.items() if n) or 'nothing'}); "
        f"{len(actions) - len(files)} empty directories"
    )
