"""seldonfs janitor STORE|MOUNTPOINT [--dry-run]: apply the retention rules.

Lists every file the folder rules let go (deleted, archived or moved, and
why) and the directories left empty, then carries it out and prints a
summary of files and bytes; `--dry-run` only lists. Given a MOUNTPOINT,
the running mount's janitor does it (it skips files that are open or
locked, and says so); given an unmounted STORE, this command does it under
the store lock. The mount also runs it on `[janitor] schedule`. Archives
are gzip files written through the store's encryption, with a .meta.json
beside them. Every action goes into the audit chain. `--folder PATH` and
`--rule PATH` narrow the list; `--older-than DURATION` plans as if that
much time had passed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .. import audit, config, janitor
from ..errors import SeldonError, UsageError
from ..janitor import CONTROL_XATTR
from ..mount import FSTYPE, find_mount
from ..blockformat import EncryptedContent, plain_size
from ..config import parse_duration
from ..content import PlainContent
from ..keys import unlock
from ..store import StoreLock
from .common import add_key_args, key_source, store_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("janitor", help="apply the retention rules (or list them: --dry-run)", description=__doc__)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--dry-run", action="store_true", help="list, change nothing")
    p.add_argument("--folder", metavar="PATH", help="only files under PATH (relative to the mount root)")
    p.add_argument("--rule", metavar="PATH", help="only what the folder table PATH asks for")
    p.add_argument("--older-than", metavar="DURATION", help="plan as if DURATION had passed, e.g. 30d")
    p.add_argument("--json", action="store_true", help="one JSON object per action")
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    mounted = find_mount(Path(os.path.abspath(args.target)))
    if not args.dry_run and mounted is not None and mounted[1] == FSTYPE:
        return run_in_mount(args)
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
        f"{'dry run' if args.dry_run else 'plan'}: {len(files)} files, {sum(a.size for a in files):,} bytes "
        f"({', '.join(f'{n} {k}' for k, n in by_kind.items() if n) or 'nothing'}); "
        f"{len(actions) - len(files)} empty directories"
    )
    if args.dry_run or not actions:
        return
    lock = StoreLock(store)
    lock.acquire()  # exit 11 while mounted
    try:
        keys = unlock(block, key_source(args)) if block else None
        content = (
            EncryptedContent(keys, block["current_key_id"], block["block_size"]) if keys else PlainContent()
        )
        now_ns = time.time_ns()
        out = janitor.execute(store.data, actions, content, now_ns)
        if (store.root / audit.KEY_NAME).exists():
            records = [("janitor-" + a.kind, a.rel, a.dest, "OK", a.size, f"{a.reason}; rule {a.rule}") for a in out.done]
            records += [("janitor-" + a.kind, a.rel, a.dest, "SKIPPED", 0, why) for a, why in out.skipped]
            audit.append_offline_many(store.root, store.catalog_path, audit.load_key(store.root, keys), records)
    finally:
        lock.release()
    for a, why in out.skipped:
        print(f"skipped  {a.rel}: {why}")
    print(f"done: {out.summary()}")


def run_in_mount(args: argparse.Namespace) -> None:
    """Ask the running mount to run its janitor now, wait, print the result."""
    mp = os.path.abspath(args.target)
    if args.folder or args.rule:
        raise UsageError("janitor: --folder and --rule work with --dry-run or an unmounted store")
    later = parse_duration(args.older_than, "--older-than", "value") if args.older_than else 0.0
    try:
        before = json.loads(os.getxattr(mp, CONTROL_XATTR))["runs"]
        os.setxattr(mp, CONTROL_XATTR, json.dumps({"older_than": later}).encode())
        while True:
            state = json.loads(os.getxattr(mp, CONTROL_XATTR))
            if not state["running"] and state["runs"] > before:
                break
            time.sleep(0.05)
    except OSError as e:
        raise SeldonError(f"{mp}: cannot run the janitor: {e.strerror}") from None
    last = state["last"]
    for rel, why in last["skipped"]:
        print(f"skipped  {rel}: {why}")
    print(f"done in {last['seconds']} s: {last['summary']}")
