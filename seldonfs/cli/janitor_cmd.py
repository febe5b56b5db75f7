"""seldonfs janitor STORE|MOUNTPOINT [--dry-run]: apply the retention rules.

Lists every file the folder rules let go (deleted, archived or moved, and
why), orphan session folders and the directories left empty, then carries
it out and prints a summary of files and bytes; `--dry-run` only lists.
Given a MOUNTPOINT, the running mount's janitor does it (it skips files
that are open or locked, and says so); given an unmounted STORE, this
command does it under the store lock. The mount also runs each folder's
rules on their `schedule`. Archives are gzip files written through the
store's encryption, with a .meta.json beside them. Every action goes into
the audit chain, every run into the catalog (`--runs` lists the last).

`--folder PATH` and `--rule PATH` narrow the list; `--older-than DURATION`
plans as if that much time had passed. `--crash JOB_ID` removes that job's
folders under temp/ instead (named after it, or made by a process with
SELDON_JOB_ID=JOB_ID). `--emergency` then goes on deleting, lowest rule
`priority` first, until the store's disk is under `[janitor] warning`.

`--json` writes JSON lines to stdout: one object per action planned
({"kind", "rel", "dest", "size", "reason", "rule", ...}), or, given a
MOUNTPOINT, one object with the mount's run (its "summary", "skipped",
...), or one per run with `--runs`; the text summaries go to stderr.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from .. import anchor, audit, config, distributions, janitor, xattrs
from ..blockformat import EncryptedContent, plain_size
from ..catalog import Catalog, due_distributions, expired_files
from ..cleanup import Outcome, execute
from ..config import parse_duration
from ..content import PlainContent
from ..errors import SeldonError, UsageError
from ..host import FSTYPE, bytes_over, find_mount
from ..keys import unlock
from ..naming import shown
from ..store import StoreLock
from .common import add_json_arg, add_key_args, add_quiet_arg, catalog_readonly, key_source, progress, say, store_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("janitor", help="apply the retention rules (or list them: --dry-run)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--dry-run", action="store_true", help="list, change nothing")
    p.add_argument("--folder", metavar="PATH", help="only files under PATH (relative to the mount root)")
    p.add_argument("--rule", metavar="PATH", help="only what the folder table PATH asks for")
    p.add_argument("--older-than", metavar="DURATION", help="plan as if DURATION had passed, e.g. 30d")
    p.add_argument("--crash", metavar="JOB_ID", help="remove the temp/ folders of a crashed job instead")
    p.add_argument("--emergency", action="store_true", help="then delete by rule priority down to the warning level")
    p.add_argument("--runs", action="store_true", help="list the last janitor runs and stop")
    add_json_arg(p, "JSON lines: one object per action (per run with --runs)")
    add_quiet_arg(p)
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.runs:
        return list_runs(args)
    mounted = find_mount(Path(os.path.abspath(args.target)))
    if not args.dry_run and mounted is not None and mounted[1] == FSTYPE:
        return run_in_mount(args)
    store = store_of(args.target)
    block = store.identity().get("encryption")
    cfg = config.load(store.config_path)
    later = _later(args)
    size = (lambda n: plain_size(n, int(block["block_size"]))) if block else (lambda n: n)
    now = time.time() + later
    actions = _wanted(args, _plan(args, cfg, store.data, size, now))
    exp, due = (None, 0) if args.crash else _expiry(store, cfg, size, now)
    if exp is not None:
        actions += _wanted(args, exp.actions)
    for a in actions:
        _show(args, a)
    files = [a for a in actions if a.kind != "rmdir"]
    by_kind = {k: sum(1 for a in files if a.kind == k) for k in ("delete", "archive", "move")}
    say(
        args,
        f"{'dry run' if args.dry_run else 'plan'}: {len(files)} files, {sum(a.size for a in files):,} bytes "
        f"({', '.join(f'{n} {k}' for k, n in by_kind.items() if n) or 'nothing'}); "
        f"{len(actions) - len(files)} directories"
    )
    if args.dry_run or not (actions or due):
        return
    lock = StoreLock(store)
    lock.acquire()  # exit 11 while mounted
    try:
        keys = unlock(block, key_source(args)) if block else None
        akey = audit.load_key(store.root, keys) if (store.root / audit.KEY_NAME).exists() else None
        anchor.refuse_broken(store, akey)  # before acting: the actions' records could not be stored
        content = (
            EncryptedContent(keys, block["current_key_id"], block["block_size"]) if keys else PlainContent()
        )
        t0 = time.time()
        out = Outcome()
        records = []
        batches = (actions[i:i + 256] for i in range(0, len(actions), 256))
        for batch in progress(batches, len(actions), "cleaning", args.quiet, count=len):
            done, skipped = execute(store.data, batch, content, time.time_ns())
            for a in done:
                out.add_done(a)
                records.append(("janitor-" + a.kind, a.rel, a.dest, "OK", a.size, f"{a.reason}; rule {a.rule}"))
            for a, why in skipped:
                out.add_skipped(a, why)
                records.append(("janitor-" + a.kind, a.rel, a.dest, "SKIPPED", 0, why))
        if akey is not None:
            audit.append_offline_many(store.root, store.catalog_path, akey, records)
        cat = Catalog(store.catalog_path)
        try:
            cat.migrate()
            if exp is not None:  # records past their expiry, files archived or deleted for them
                cat.expire_distributions(int(now * 1e9), time.time_ns())
                distributions.settle(cat, exp, distributions.backing_stat(store.data, size))
            cat.add_janitor_run({
                "started_ns": int(t0 * 1e9), "seconds": round(time.time() - t0, 3),
                "trigger": "crash" if args.crash else "emergency" if args.emergency else "offline",
                "rules": args.rule or "*", "planned": len(actions), "done": out.done, "skipped": out.skipped,
                "freed": out.freed, "summary": out.summary(),
            })
        finally:
            cat.close()
    finally:
        lock.release()
    for rel, why in out.skipped_sample:
        say(args, f"skipped  {shown(rel)}: {why}")
    say(args, f"done: {out.summary()}")


def _later(args: argparse.Namespace) -> float:
    return parse_duration(args.older_than, "--older-than", "value") if args.older_than else 0.0


def _expiry(store, cfg, size, now: float) -> tuple[distributions.Expiry | None, int]:
    """What distribution expiry asks for (distributions.py), and how many
    records are due; read only (a catalog from before distributions has none)."""
    try:
        with catalog_readonly(store.root) as conn:
            files = expired_files(conn, int(now * 1e9))
            due = due_distributions(conn, int(now * 1e9))
    except sqlite3.OperationalError:
        return None, 0
    return distributions.expiry_plan(cfg, files, distributions.backing_stat(store.data, size)), due


def _plan(args: argparse.Namespace, cfg, data: Path, size, now: float) -> list[janitor.Action]:
    if args.crash:
        return list(janitor.crash_plan(cfg, janitor.inventory(data, size), args.crash))
    actions = list(janitor.plan(now, cfg, janitor.inventory(data, size)))
    if args.emergency:
        need = bytes_over(data, cfg.janitor.warning) - sum(a.size for a in actions if a.kind == "delete")
        if need > 0:
            planned = {a.rel for a in actions}
            rest = (e for e in janitor.inventory(data, size) if e.rel not in planned)
            actions += janitor.emergency_plan(cfg, rest, need)
    return actions


def _wanted(args: argparse.Namespace, actions: list[janitor.Action]) -> list[janitor.Action]:
    if args.folder:
        prefix = args.folder.strip("/") + "/"
        actions = [a for a in actions if (a.rel + "/").startswith(prefix)]
    if args.rule:
        actions = [a for a in actions if a.rule == args.rule]
    return actions


def _show(args: argparse.Namespace, a: janitor.Action) -> None:
    if args.json:
        print(json.dumps({**a.__dict__, "rel": shown(a.rel)}))
    else:
        dest = f" -> {a.dest}/" if a.dest else ""
        print(f"{a.kind:<8} {shown(a.rel)}{dest}  ({shown(a.reason)}; rule {a.rule})")


def run_in_mount(args: argparse.Namespace) -> None:
    """Ask the running mount's janitor to run now, wait, print the result."""
    mp = os.path.abspath(args.target)
    ask = {"older_than": _later(args), "folder": args.folder or "", "rule": args.rule or "",
           "crash": args.crash or "", "emergency": args.emergency}
    try:
        before = json.loads(os.getxattr(mp, xattrs.JANITOR))["runs"]
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise SeldonError(f"{mp}: cannot run the janitor: {e.strerror}") from None
        say(args, "nothing to do: the store's rules keep everything (no retention keys)")
        return
    tty = sys.stderr.isatty() and not args.quiet
    try:
        os.setxattr(mp, xattrs.JANITOR, json.dumps(ask).encode())
        while True:
            state = json.loads(os.getxattr(mp, xattrs.JANITOR))
            if not state["running"] and state["runs"] > before:
                break
            now = state.get("now") or {}
            if tty and state["running"] and now:  # progress on a terminal, quiet in scripts
                print(f"\r{now['done']:,} done, {now['skipped']:,} skipped of {now['planned']:,} planned so far",
                      end="", file=sys.stderr, flush=True)
            time.sleep(0.05 if not tty else 0.2)
    except OSError as e:
        raise SeldonError(f"{mp}: cannot run the janitor: {e.strerror}") from None
    if tty:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    last = state["last"]
    if args.json:
        print(json.dumps(last))
    for rel, why in last.get("skipped", []):
        say(args, f"skipped  {shown(rel)}: {why}")
    if not last or last.get("error"):
        raise SeldonError(f"{mp}: the janitor run failed: {last.get('error', '?')} (see the mount's log)")
    say(args, f"done in {last['seconds']} s: {last['summary']}")


def list_runs(args: argparse.Namespace) -> None:
    with catalog_readonly(args.target) as conn:
        try:
            cur = conn.execute("SELECT * FROM janitor_runs ORDER BY id DESC LIMIT 20")
        except sqlite3.OperationalError:
            raise UsageError(f"{args.target}: no janitor runs recorded yet (mount it once to upgrade the catalog)") from None
        names = [c[0] for c in cur.description]
        rows = [dict(zip(names, r)) for r in cur]
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started_ns"] / 1e9))
            print(f"{when}  {r['trigger']:<9} {r['seconds']:>8.3f} s  {r['summary']}")
