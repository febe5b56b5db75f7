"""The folder rules' decisions, as pure functions of values.

Which rule governs a folder is rules.py's, which name a file gets is
naming.py's, what its content says is validation.py's; this module decides
what the filesystem does with them:

- `refusal`: whether a new entry may be made at all (open(O_CREAT),
  mkdir, link, rename into a folder);
- `tracks`, `floor_applies`: which open files the engine follows;
- `commit_applies` and `destination`: what a commit does with a file:
  `Place` it (under its managed name, or routed) or `Quarantine` it;
- `left_uncommitted`: which files a mount that did not end cleanly left
  without their commit;
- `candidates`, `quarantine_names`: the names tried for a move, in order;
- `version_at_open`, `version_at_truncate`, `version_at_replace`: when an
  overwritten file's old content is kept;
- `held`, `retained_since`, `write_once_area`: write-once folders (`write_once = true`):
  which files no call through the mount may change yet;
- `moves_unchecked`: a folder renamed where a commit rule would cover
  files it has not checked.

Nothing here does I/O or reads a clock; engine.py carries the decisions
out. Unit-tested in tests/test_policy_decisions.py without a mount.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import stat as stat_m
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

from . import validation
from .config import FolderRule
from .naming import NAME_MAX, Template, fit, is_temporary, split_ext
from .rules import Rules

#: Names a commit tries while each is taken before it gives up (a managed
#: name: a new sequence number each time; a kept or routed name: -1, -2...).
#: Failed moves are retried `Place.tries` times (routing: `route_retries`).
NAME_TRIES = 1000


@dataclass(frozen=True, slots=True)
class Place:
    """Move the file to `dir`/`name`; `name` None: a fresh managed name.
    `tries`: moves that fail (not for a name taken) before it gives up."""

    dir: str
    name: str | None
    tries: int


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Move the file to quarantine for `reasons`; `checked`: the reasons are
    the content checks' (the commit is on record as quarantined)."""

    reasons: tuple[str, ...]
    checked: bool = True


def commits(rule: FolderRule | None) -> bool:
    """A file in a folder with this rule commits (is named, checked or routed)."""
    return rule is not None and bool(rule.naming or rule.validates or rule.route)


class Policy:
    """The decisions for one configuration (immutable, shared freely)."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.pol = rules.policy
        self.templates = {r.naming: Template(r.naming) for r in rules.cfg.folders if r.naming}
        self.quarantine_dirs = frozenset({self.pol.quarantine} | {
            r.quarantine for r in rules.cfg.folders if r.quarantine
        })
        self.extra_patterns = validation.compile_patterns(self.pol.patterns)
        # most configurations have none: the checks before each change end here
        self.any_write_once = any(r.write_once for r in rules.cfg.folders)

    def for_dir(self, d: str) -> FolderRule | None:
        return self.rules.for_dir(d)

    # ------------------------------------------------------------ new entries

    def refusal(self, d: str, name: bytes, kind: int) -> str | None:
        """Why an entry `name` of `kind` (stat.S_IFMT) may not be made in
        folder `d` (None: it may)."""
        if d in self.quarantine_dirs:
            return "only the filesystem moves files into quarantine"
        if kind == stat_m.S_IFDIR:
            return None
        rule = self.rules.for_dir(d)
        if rule is None:
            return None
        if kind not in (stat_m.S_IFREG, stat_m.S_IFLNK) and commits(rule):
            return "no fifos, sockets or devices in a checked folder"
        text = os.fsdecode(name)
        at_root = rule is not None and bool(d) and len(d.split("/")) == self.rules.rule_depth(rule)
        # A temporary name never commits; its rename to the final name is checked.
        temporary = is_temporary(text, self.pol.temp_patterns)
        return validation.check_create(rule, at_root, text, place_only=temporary)

    def floor_applies(self, d: str) -> bool:
        """The space floor covers every folder but temp/ and its subtree."""
        return self.pol.min_free > 0 and d.split("/")[0] != "temp"

    def below_floor(self, free_percent: float) -> bool:
        return free_percent < self.pol.min_free

    @staticmethod
    def tracks(rule: FolderRule | None, floor: bool) -> bool:
        """Whether a file opened for writing in this folder is followed:
        it commits, has a size limit or versions, is write-once (sealed when
        its writer's last handle goes), or the floor applies."""
        return floor or rule is not None and bool(
            commits(rule) or rule.max_size is not None or rule.versions or rule.write_once
        )

    @staticmethod
    def too_big(rule: FolderRule | None, size: int) -> bool:
        return validation.too_big(rule, size)

    # ------------------------------------------------------------ commit

    def commit_applies(self, rule: FolderRule | None, d: str, name: str, left_over: bool = False) -> bool:
        """A file `name` in folder `d` commits (the quarantine never does; a
        temporary name only when it was `left_over`: see leftovers.py)."""
        return (
            commits(rule) and (left_over or not self.temporary(name))
            and d not in self.quarantine_dirs
        )

    def left_uncommitted(
        self, rule: FolderRule | None, d: str, name: str, newest: tuple[str, int, int] | None, ino: int,
        mtime_ns: int, rewriting: bool = False,
    ) -> str | None:
        """What file `name` in folder `d` needs at a mount after one that
        did not end cleanly (its writers cut off before their close):
        "commit" when it never committed as it is now (its name is not a
        managed one, or `newest`, the catalog's newest record of its path
        as (verdict, committed_ns, ino), is missing, a quarantine, of
        another inode, or older than its last change `mtime_ns`, or the
        file is marked `rewriting`: a change began and did not commit,
        whatever its mtime says);
        "leftover" for a temporary name (it commits after temp_max_age:
        leftovers.py); None when it is committed or nothing commits here."""
        if not self.commit_applies(rule, d, name, left_over=True):
            return None
        if self.temporary(name):
            return "leftover"
        assert rule is not None
        template = self.template(rule)
        if (template is not None and not template.is_managed(name)) or newest is None:
            return "commit"
        verdict, committed_ns, rec_ino = newest
        if verdict != "ok" or (rec_ino and rec_ino != ino) or mtime_ns > committed_ns or rewriting:
            return "commit"
        return None

    def temporary(self, name: str) -> bool:
        return is_temporary(name, self.pol.temp_patterns)

    def destination(self, rule: FolderRule, d: str, name: str, verdict: validation.Verdict) -> Place | Quarantine:
        """Where a checked file goes: quarantine when a check failed or its
        name does not match the folder's route (and the rule says so),
        else its routed place under its managed name."""
        if not verdict.ok:
            return Quarantine(tuple(verdict.reasons))
        new_dir, new_name = d, name
        if rule.route:
            m = re.fullmatch(rule.route, name, re.DOTALL)
            bad = m is not None and bad_date(m.groupdict())
            if m is None or bad:
                if rule.route_unmatched == "quarantine":
                    why = bad or f"name does not match the routing pattern {rule.route}"
                    return Quarantine((why,), checked=False)
            else:
                groups = {"name": name, **{k: v for k, v in m.groupdict().items() if v is not None}}
                new_dir, new_name = posixpath.split(rule.route_to.format(**groups))  # type: ignore[union-attr]
        template = self.template(rule)
        fresh = template is not None and not template.is_managed(new_name)
        tries = max(1, rule.route_retries) if rule.route else 1
        return Place(new_dir, None if fresh else new_name, tries)

    def template(self, rule: FolderRule) -> Template | None:
        return self.templates.get(rule.naming) if rule.naming else None

    def managed_fields(self, rule: FolderRule, name: str) -> tuple[str, str] | None:
        """(job, written name) that a managed `name` of the folder holds
        (Template.held); None for a name the template did not make."""
        template = self.template(rule)
        held = template.held(name) if template is not None else None
        return None if held is None else held[:2]

    def quarantine_dir(self, rule: FolderRule) -> str:
        return rule.quarantine or self.pol.quarantine


def bad_date(groups: dict[str, str | None]) -> str | None:
    """Why the date a route's named groups `y`, `m`, `d` spell is not a day
    of the calendar (None: it is, or the route names no date)."""
    y, m, d = groups.get("y"), groups.get("m"), groups.get("d")
    if not (y and m and d):
        return None
    try:
        date(int(y), int(m), int(d))
    except ValueError:
        return f"invalid date {y}-{m}-{d}"
    return None


def candidates(place: Place, fresh: Callable[[], str]) -> Iterator[tuple[str, bool]]:
    """The paths a placed file tries, in order, while the names before
    are taken (NAME_TRIES at most), each with whether its name had to be
    shortened to fit NAME_MAX (naming.fit): its name, then the name with
    -1, -2... before the extension (naming.split_ext: `a-1.tar.gz`); or a
    fresh managed name each time."""
    for attempt in range(NAME_TRIES):
        if place.name is None:
            name = fresh()
        elif attempt == 0:
            name = place.name
        else:
            stem, ext = split_ext(place.name)
            name = f"{stem}-{attempt}{ext}"
        short = fit(name)
        yield (posixpath.join(place.dir, short) if place.dir else short), short != name


def quarantine_names(qdir: str, stamp: str, name: str) -> Iterator[str]:
    """Where a quarantined file may go: `stamp`_name, then `stamp`_N_name."""
    for n in range(NAME_TRIES):
        yield posixpath.join(qdir, fit(f"{stamp}_{name}" if n == 0 else f"{stamp}_{n}_{name}", NAME_MAX))


# ------------------------------------------------------------ versions


def version_at_open(rule: FolderRule | None, size: int, truncating: bool) -> str | None:
    """At an open for writing: 'truncate' (keep the old content now),
    'overwrite' (keep it before the first write), or None."""
    if rule is None or not rule.versions or size <= 0:
        return None
    return "truncate" if truncating else "overwrite"


def version_at_truncate(rule: FolderRule | None, cur_size: int, size: int) -> bool:
    return rule is not None and bool(rule.versions) and cur_size > 0 and size != cur_size


def version_at_replace(rule: FolderRule | None, target_is_file: bool, same_inode: bool) -> bool:
    """A rename over another regular file keeps that file as a version."""
    return rule is not None and bool(rule.versions) and target_is_file and not same_inode


# ------------------------------------------------------------ write-once


def retained_since(mtime: float, ctime: float) -> float:
    """When a write-once file's retention started: its last write or its
    arrival in the folder (a rename sets ctime), whichever is later, so a
    file moved in with an old mtime is still kept its whole time."""
    return max(mtime, ctime)


def held(rule: FolderRule | None, name: str, mtime: float, ctime: float, now: float,
         temp_patterns: tuple[str, ...]) -> bool:
    """A file `name` under `rule` is held: it may not be deleted, renamed
    away or over, opened for writing, truncated, linked, or have its mode,
    owner, times or attributes changed. That is every file of a write-once
    folder whose retention (`max_age`; none: for ever) has not passed,
    except a temporary name (`[policy] temp_patterns`), which is not yet a
    record: its rename to the final name seals it."""
    if rule is None or not rule.write_once or is_temporary(name, temp_patterns):
        return False
    return rule.max_age is None or now - retained_since(mtime, ctime) < rule.max_age


def _tables_inside(rules: Rules, rel: str) -> Iterator[FolderRule]:
    """The folder tables whose folder lies strictly inside directory `rel`."""
    parts = tuple(rel.split("/")) if rel else ()
    for r in rules.cfg.folders:
        p = r.path.split("/")
        if len(p) > len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p)):
            yield r


def write_once_area(rules: Rules, rel: str) -> bool:
    """Directory `rel` is, holds or lies inside a write-once folder: it may
    not be renamed (its files would leave their folder's rule)."""
    rule = rules.for_dir(rel)
    if rule is not None and rule.write_once:
        return True
    return any(r.write_once for r in _tables_inside(rules, rel))


def moves_unchecked(rules: Rules, src: str, dst: str) -> bool:
    """Directory `src` renamed to `dst` would put the files in it under a
    commit rule that has not checked them: the rule at `dst` commits and is
    not the one at `src`, or a table of a folder inside either is at stake
    while a commit rule is. One rename cannot commit a whole tree, so the
    engine refuses it with EXDEV, as overlayfs does for its folders, and
    `mv` copies instead: each file then commits where it lands."""
    to, at = rules.for_dir(dst), rules.for_dir(src)
    if commits(to) and to is not at:
        return True
    inside = [*_tables_inside(rules, src), *_tables_inside(rules, dst)]
    return bool(inside) and (commits(to) or commits(at) or any(commits(r) for r in inside))
