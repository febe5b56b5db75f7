"""Retention planning: which files the folder rules let go, and why.

The planners are pure functions of the time, the rules and an inventory of
the store; they decide and never touch anything, so they are tested without
FUSE or a clock. They are generators: a run over a million files holds the
folders, not the files (only folders with a size or count cap, and an
emergency plan, keep their candidates).

- `plan(now, cfg, entries)`: the rules (docs/configuration.md, "retention"):
  `patterns` (name globs with their own max age), `max_age` with `action`,
  `archive_after` (archive before `max_age` deletes), `max_total` and
  `max_files` caps enforced `evict = "oldest"` (mtime) or `"lru"` (atime)
  first (a cap counts its folder's whole subtree), `remove_empty_dirs`,
  and orphan sessions: a direct subfolder of an `orphan_sessions` folder
  whose creator is gone (with `orphan_wait`: and untouched for `[janitor]
  orphan_age`), or, with no creator on record, untouched for `orphan_age`,
  goes with its contents. "Untouched" is the newest mtime of the folder and
  of everything in it (`Inventory.newest`): a write changes a file's mtime,
  and a name made, removed or renamed in a folder changes the folder's, so
  a file arriving with an old mtime (cp -p, tar, rename) still counts as a
  change when it arrives.
- `crash_plan(cfg, entries, job)`: a crashed job's folders under temp/.
- `older_plan(now, cfg, entries, age, everywhere)`: `janitor --older-than`,
  every file older than `age` under temp/ (everywhere: in any folder).
- `chunk_plan(entries, job, chunk)`: a finished chunk's folder,
  temp/jobs/JOB/CHUNK, with everything in it.
- `emergency_plan(cfg, entries, need)`: what to delete, in rule priority
  order, to free `need` bytes.
- `Request`: one run asked for (schedule, command, disk check, control
  API) and which planned actions it wants; `next_time`: when a schedule
  fires next.

A file follows its deepest folder's table, as everywhere, except that a
size or count cap counts every file under its folder. Entries list a
directory before what is in it, as `inventory()` does. Carrying a plan out is cleanup.py's.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import posixpath
import stat as stat_m
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import xattrs
from .config import Config, FolderRule, parse_duration
from .host import start_time
from .policy import retained_since
from .rules import Rules
from .store import PRIVATE_DIR, tree

#: xattrs.CREATOR on a folder made through the mount under temp/: JSON
#: {"pid", "start" (clock ticks after boot, so a reused pid is told apart),
#: "comm", "job"} of the process it belongs to (cleanup.creator_record).
TEMP = "temp"  # crash cleanup looks here
JOBS = "temp/jobs"  # chunk cleanup: JOBS/JOB_ID/CHUNK_ID/
ID_MAX = 255  # bytes of a job or chunk id (a file name)


def valid_id(s: str) -> bool:
    """A job or chunk id that names exactly one folder: not empty, `.` or
    `..`, no `/`, NUL or other control character, at most ID_MAX bytes of
    UTF-8 (a lone surrogate, i.e. bytes that were not UTF-8, fails)."""
    if s in ("", ".", "..") or "/" in s or any(ord(c) < 32 or ord(c) == 127 for c in s):
        return False
    try:
        return len(s.encode()) <= ID_MAX
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class Entry:
    rel: str  # relative to the mount root
    size: int  # bytes (plaintext)
    mtime: float
    atime: float
    is_dir: bool = False
    creator_alive: bool | None = None  # directories: None when no creator is on record
    job: str = ""  # directories: the creator's job id, if it had one
    ctime: float = 0.0  # a write-once file's retention runs from max(mtime, ctime)


@dataclass(frozen=True)
class Action:
    kind: str  # delete, archive, move, rmdir
    rel: str
    reason: str
    rule: str  # the folder table that asked for it
    size: int = 0
    dest: str = ""  # archive or move destination folder


def human_age(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= s and seconds % s == 0:
            return f"{int(seconds // s)}{unit}"
    return f"{int(seconds)}s"


def _act(rule: FolderRule, e: Entry, reason: str, kind: str | None = None) -> Action:
    kind = kind or rule.action
    dest = rule.archive_to if kind == "archive" else rule.move_to if kind == "move" else None
    if kind in ("archive", "move") and not dest:
        kind, reason = "delete", reason + f" ({rule.action} has no destination: deleted)"
    return Action(kind, e.rel, reason, rule.path, e.size, dest or "")


def _governed(rule: FolderRule, rel: str) -> str:
    """The concrete folder a (possibly glob) table governs `rel` through."""
    depth = len(rule.path.split("/"))
    return "/".join(rel.split("/")[:depth])


def _under(rel: str, roots: dict[str, str]) -> str | None:
    """The reason of the root in `roots` that `rel` lies under, if any."""
    if not roots:
        return None
    i = rel.find("/")
    while i != -1:
        why = roots.get(rel[:i])
        if why is not None:
            return why
        i = rel.find("/", i + 1)
    return None


class _Tree:
    """Counts what each directory holds and what a plan takes out of it, so
    directories left empty can go at the end (deepest first)."""

    def __init__(self) -> None:
        self.children: dict[str, int] = {}
        self.dirs: list[tuple[str, str, str]] = []  # rel, reason, rule

    def saw(self, rel: str) -> None:
        parent = posixpath.dirname(rel)
        self.children[parent] = self.children.get(parent, 0) + 1

    def took(self, rel: str) -> None:
        self.children[posixpath.dirname(rel)] -= 1

    def empty(self) -> Iterator[Action]:
        for rel, reason, rule in sorted(self.dirs, key=lambda d: -d[0].count("/")):
            if self.children.get(rel, 0) == 0:
                self.took(rel)
                yield Action("rmdir", rel, reason, rule)


def _orphan(rule: FolderRule, e: Entry, now: float, orphan_age: float, newest) -> str | None:
    if not (rule.orphan_sessions and posixpath.dirname(e.rel) == _governed(rule, e.rel)):
        return None
    if e.creator_alive is True:
        return None
    if e.creator_alive is False and not rule.orphan_wait:
        return "orphan session: its creator is gone"
    if now - newest(e, now - orphan_age) <= orphan_age:
        return None
    if e.creator_alive is False:
        return f"orphan session: its creator is gone and it is untouched for {human_age(orphan_age)}"
    return f"orphan session: no creator on record, untouched for {human_age(orphan_age)}"


def plan(now: float, cfg: Config, entries: Iterable[Entry], usage: dict | None = None,
         held_now: float | None = None) -> Iterator[Action]:
    """The rules' actions; `usage`, if given, receives each capped folder's
    (bytes, files, rule) before eviction (for `warn_percent`). A session
    folder's age is `entries.newest` when the entries have it (an
    `Inventory` or `Listed`), else the folder's own mtime. A write-once
    folder's files age from max(mtime, ctime) (policy.retained_since), by
    the clock `held_now` when given (the mount's janitor: a run asked to
    plan as if time had passed cannot take them early)."""
    newest = getattr(entries, "newest", None) or (lambda e, stop_at: e.mtime)
    rules = Rules(cfg)
    tree = _Tree()
    orphans: dict[str, str] = {}  # session folder -> reason
    capped = lru_cache(maxsize=4096)(
        lambda d: tuple((f, r) for f, r in rules.covering(d) if r.max_total is not None or r.max_files is not None)
    )
    kept: dict[str, tuple[FolderRule, list[Entry]]] = {}  # capped folder -> its files left
    for e in entries:
        if e.rel.split("/")[0] == PRIVATE_DIR:
            continue
        tree.saw(e.rel)
        rule = rules.for_dir(e.rel if e.is_dir else posixpath.dirname(e.rel))
        if rule is None:
            continue
        orphaned = _under(e.rel, orphans)
        if e.is_dir:
            why = orphaned or _orphan(rule, e, now, cfg.janitor.orphan_age, newest)
            if why is not None:
                orphans.setdefault(e.rel, why)
                tree.dirs.append((e.rel, why, rule.path))
            elif rule.remove_empty_dirs and e.rel != _governed(rule, e.rel):
                tree.dirs.append((e.rel, "empty", rule.path))
            continue
        a = _file_action(held_now if rule.write_once and held_now is not None else now, rule, e, orphaned)
        if a is not None:
            tree.took(e.rel)
            yield a
            continue
        for folder, r in capped(posixpath.dirname(e.rel)):
            kept.setdefault(folder, (r, []))[1].append(e)
    # A cap counts its folder's whole subtree; inner caps go first.
    gone: set[str] = set()
    for folder in sorted(kept, key=lambda f: (-f.count("/"), f)):
        rule, files = kept[folder]
        files = [e for e in files if e.rel not in gone]
        total, count = sum(e.size for e in files), len(files)
        if usage is not None:
            usage[folder] = (total, count, rule)
        for e in sorted(files, key=lambda e: e.atime if rule.evict == "lru" else e.mtime):
            over_size = rule.max_total is not None and total > rule.max_total
            over_count = rule.max_files is not None and count > rule.max_files
            if not (over_size or over_count):
                break
            gone.add(e.rel)
            tree.took(e.rel)
            yield _act(rule, e, f"{folder}/ over its {'size' if over_size else 'file-count'} cap, {rule.evict} first")
            total -= e.size
            count -= 1
    yield from tree.empty()


def _file_action(now: float, rule: FolderRule, e: Entry, orphaned: str | None) -> Action | None:
    if orphaned is not None:
        return _act(rule, e, orphaned, "delete")
    if rule.write_once:
        age = now - retained_since(e.mtime, e.ctime)
    else:
        age = now - (e.atime if rule.age_by == "atime" else e.mtime)
    name = posixpath.basename(e.rel)
    pattern = next(((g, a) for g, a in rule.patterns if fnmatch.fnmatchcase(name, g)), None)
    if pattern is not None and age > pattern[1]:
        return _act(rule, e, f"matches {pattern[0]}, older than {human_age(pattern[1])}", "delete")
    if rule.max_age is not None and age > rule.max_age:
        return _act(rule, e, f"older than {human_age(rule.max_age)} ({rule.age_by})")
    if rule.archive_after is not None and age > rule.archive_after:
        return _act(rule, e, f"older than {human_age(rule.archive_after)}: archived", "archive")
    return None


def older_plan(now: float, cfg: Config, entries: Iterable[Entry], age: float, everywhere: bool = False,
               held_now: float | None = None) -> Iterator[Action]:
    """`janitor --older-than AGE` (seed 001's `cleanup.py --older-than 1d`,
    "clean files older than 1 day"): every file under temp/ older than
    `age` (`everywhere`: in any folder with a table; the command narrows it
    with --folder or --rule), by its folder's `action` and `age_by`,
    whatever the folder's own ages; nothing younger, no caps, no orphans.
    A write-once folder keeps to its own retention at the clock `held_now`
    when given (the mount's janitor): --older-than does not shorten it."""
    rules = Rules(cfg)
    for e in entries:
        top = e.rel.split("/")[0]
        if e.is_dir or top == PRIVATE_DIR or not (everywhere or top == TEMP):
            continue
        rule = rules.for_dir(posixpath.dirname(e.rel))
        if rule is None:
            continue
        if rule.write_once and held_now is not None and _file_action(held_now, rule, e, None) is None:
            continue  # still held
        if now - (e.atime if rule.age_by == "atime" else e.mtime) > age:
            yield _act(rule, e, f"older than {human_age(age)} ({rule.age_by}; --older-than)")


def crash_plan(cfg: Config, entries: Iterable[Entry], job: str) -> Iterator[Action]:
    """Remove the folders under temp/ that belong to `job`: named after it,
    or made through the mount by a process whose SELDON_JOB_ID it was."""
    why = f"crash cleanup of job {job}"
    rules = Rules(cfg)
    tree = _Tree()
    roots: dict[str, str] = {}
    for e in entries:
        if e.rel.split("/")[0] != TEMP:
            continue
        tree.saw(e.rel)
        inside = _under(e.rel, roots) is not None
        if e.is_dir and (inside or posixpath.basename(e.rel) == job or e.job == job):
            roots.setdefault(e.rel, why)
            tree.dirs.append((e.rel, why, TEMP))
        elif not e.is_dir and inside and not _write_once(rules, e.rel):
            tree.took(e.rel)
            yield Action("delete", e.rel, why, TEMP, e.size)
    yield from tree.empty()


def _write_once(rules: Rules, rel: str) -> bool:
    rule = rules.for_dir(posixpath.dirname(rel))
    return rule is not None and rule.write_once


def chunk_plan(entries: Iterable[Entry], job: str, chunk: str) -> Iterator[Action]:
    """Remove a finished chunk's folder JOBS/JOB/CHUNK with everything in
    it, and nothing else: both ids must pass `valid_id`, and only entries
    at or under that folder count."""
    if not (valid_id(job) and valid_id(chunk)):
        return
    top = f"{JOBS}/{job}/{chunk}"
    why = f"chunk {chunk} of job {job} is done"
    tree = _Tree()
    for e in entries:
        if e.rel != top and not e.rel.startswith(top + "/"):
            continue
        tree.saw(e.rel)
        if e.is_dir:
            tree.dirs.append((e.rel, why, JOBS))
        else:
            tree.took(e.rel)
            yield Action("delete", e.rel, why, JOBS, e.size)
    yield from tree.empty()


def emergency_plan(cfg: Config, entries: Iterable[Entry], need: int) -> Iterator[Action]:
    """Delete until `need` bytes are freed: only from folders that opt in
    with a `priority` and whose rules delete (never what they archive or
    move, never a write-once folder: config.py refuses a priority there
    and on an archive folder), lowest `priority` first;
    within a priority the files of session folders whose creator is gone
    (orphans not yet old enough for the rules) first, then the files the
    folder's `evict` order names first. A folder with `orphan_sessions`
    takes part even without an age or cap: its files are a job's scratch."""
    rules = Rules(cfg)
    gone: dict[str, str] = {}  # session folders whose creator is gone
    candidates: list[tuple[int, bool, float, str, int, FolderRule]] = []
    for e in entries:
        if e.rel.split("/")[0] == PRIVATE_DIR:
            continue
        rule = rules.for_dir(e.rel if e.is_dir else posixpath.dirname(e.rel))
        if (rule is None or rule.priority is None or rule.write_once or rule.action != "delete"
                or not (_retains(rule) or rule.orphan_sessions)):
            continue
        if e.is_dir:
            if (e.creator_alive is False and rule.orphan_sessions
                    and posixpath.dirname(e.rel) == _governed(rule, e.rel)):
                gone[e.rel] = ""
            continue
        when = e.atime if rule.evict == "lru" else e.mtime
        candidates.append((rule.priority, _under(e.rel, gone) is None, when, e.rel, e.size, rule))
    candidates.sort(key=lambda c: c[:4])
    freed = 0
    for prio, alive, _, rel, size, rule in candidates:
        if freed >= need:
            break
        freed += size
        whose = "" if alive else ", its job's creator is gone"
        yield Action("delete", rel, f"emergency cleanup (priority {prio}{whose})", rule.path, size)


def _retains(r: FolderRule) -> bool:
    return bool(r.max_age or r.patterns or r.archive_after or r.max_total or r.max_files or r.remove_empty_dirs)


def has_retention(cfg: Config) -> bool:
    # distribution expiry needs a janitor too, but its folders are no
    # emergency cleanup's to delete from
    return any(_retains(r) or r.orphan_sessions or r.distribution for r in cfg.folders)


def creator_alive(record: bytes) -> tuple[bool | None, str]:
    """Whether the process that made a folder still runs, and its job id."""
    try:
        c = json.loads(record)
        pid, start, job = int(c["pid"]), int(c["start"]), str(c.get("job") or "")
    except (ValueError, KeyError, TypeError, RecursionError):
        return None, ""
    return start_time(pid) == start, job




class Inventory:
    """The store's files and directories, without following a symlink
    (iterate it); `under` (a folder relative to data/) lists only that
    folder, itself first, and nothing if a part of its path is not a real
    directory. `newest(e, stop_at)`: the newest mtime of directory entry
    `e` and of everything in it, read when asked (only session folders are
    asked); it stops early at one of `stop_at` or later."""

    def __init__(self, data: Path, plain_size=lambda n: n, under: str = "") -> None:
        self.data, self.plain_size, self.under = Path(data), plain_size, under.strip("/")

    def __iter__(self) -> Iterator[Entry]:
        base, prefix = self.data, ""
        if self.under:
            for part in self.under.split("/"):
                if part in ("", ".", ".."):
                    return
                base = base / part
                try:
                    st = os.lstat(base)
                except OSError:
                    return
                if not stat_m.S_ISDIR(st.st_mode):
                    return
            prefix = self.under + "/"
            yield self._entry(self.under, str(base), st)
        for rel, d, st in tree(base):
            e = self._entry(prefix + rel, d.path, st)
            if e is not None:
                yield e

    def _entry(self, rel: str, path: str, st: os.stat_result) -> Entry | None:
        if stat_m.S_ISDIR(st.st_mode):
            alive, job = None, ""
            try:
                alive, job = creator_alive(os.getxattr(path, xattrs.CREATOR, follow_symlinks=False))
            except OSError:
                pass
            return Entry(rel, 0, st.st_mtime, st.st_atime, True, alive, job)
        if stat_m.S_ISREG(st.st_mode):
            return Entry(rel, self.plain_size(st.st_size), st.st_mtime, st.st_atime, ctime=st.st_ctime)
        return None

    def newest(self, e: Entry, stop_at: float = float("inf")) -> float:
        newest = e.mtime
        if newest >= stop_at:
            return newest
        for _, _, st in tree(self.data / e.rel):
            if st.st_mtime > newest:
                newest = st.st_mtime
                if newest >= stop_at:
                    break
        return newest


class Listed(list):
    """Entries given as a list (tests, offline tools), with `newest` taken
    from the list itself, as `Inventory.newest` takes it from the disk."""

    def newest(self, e: Entry, stop_at: float = float("inf")) -> float:
        return max([e.mtime] + [x.mtime for x in self if x.rel.startswith(e.rel + "/")])


def inventory(data: Path, plain_size=lambda n: n, under: str = "") -> Inventory:
    """The store's files and directories (an `Inventory`)."""
    return Inventory(data, plain_size, under)


def next_time(schedule: str, now: float) -> float:
    """When `schedule` (a cron line or an interval such as "1h") fires after `now`."""
    from croniter import croniter

    if croniter.is_valid(schedule):
        return croniter(schedule, now).get_next(float)
    return now + max(1.0, parse_duration(schedule, "schedule", "value"))


@dataclass(frozen=True)
class Request:
    """One run asked for: by the schedule, a command or the disk check."""
    trigger: str  # schedule, request, emergency, crash
    rules: frozenset[str] | None = None  # only these folder tables (None: all)
    later: float = 0.0  # plan as if this much time had passed (--as-of)
    older_than: float = 0.0  # only files older than this (--older-than; older_plan)
    folder: str = ""  # only under this folder
    crash: str = ""  # job id: crash cleanup instead of the rules
    chunk: tuple[str, str] | None = None  # (job id, chunk id): chunk cleanup instead of the rules
    emergency: bool = False  # then clean down to the warning level
    orphans: bool = False  # only orphan sessions

    @classmethod
    def parse(cls, value: bytes) -> Request:
        """The JSON a command writes into xattrs.JANITOR."""
        try:
            d = json.loads(value) if value.strip() else {}
            rule = d.get("rule")
            return cls(
                "crash" if d.get("crash") else "emergency" if d.get("emergency") else "request",
                rules=frozenset([str(rule)]) if rule else None,
                later=float(d.get("later", 0)), older_than=float(d.get("older_than", 0)),
                folder=str(d.get("folder", "")).strip("/"),
                crash=str(d.get("crash") or ""), emergency=bool(d.get("emergency", False)),
            )
        except (ValueError, AttributeError, TypeError, RecursionError):
            raise OSError(errno.EINVAL, "not a janitor request") from None

    def wants(self, a: Action) -> bool:
        if self.orphans and not a.reason.startswith("orphan session"):
            return False
        return (self.rules is None or a.rule in self.rules) and (
            not self.folder or (a.rel + "/").startswith(self.folder + "/")
        )
