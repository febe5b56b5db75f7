"""Every retention rule of the five profiles, enforced through a real mount.

For each profile, the cases come from its own tables (so a rule added to a
profile is tested without a new test): a file past `max_age` is deleted,
archived or moved as `action` says and one younger stays; `archive_after`
archives; each `patterns` age deletes a matching name; a `max_total` or
`max_files` cap evicts the oldest (or least recently used) file, and
alerts at `warn_percent`; an empty
subfolder goes where `remove_empty_dirs` says; the session folder of a
process that exited goes where `orphan_sessions` says (with `orphan_wait`,
only once it is also older than `[janitor] orphan_age`). Files are written
with ordinary file I/O, aged with utime(2) through the mount, and the
mount's janitor is asked to run once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from seldonfs import config, janitor
from seldonfs.config import FolderRule
from seldonfs.rules import Rules

from .conftest import init_store, log_problems, mounted, needs_fuse, seldonfs

H, D = 3600.0, 86400.0
CONTENT = {".json": b'{"id": 1}\n', ".csv": b"id,value\n1,2\n", ".md": b"# note\n", ".txt": b"a note\n"}


@dataclass
class Case:
    rule: str
    what: str
    rel: str = ""  # where the file is after its commit
    expect: str = "kept"  # kept, delete, archive, move, rmdir
    dest: str = ""


def _cases_dir(rule: FolderRule, rules: Rules) -> str:
    folder = rule.path.replace("*", "x")
    d = folder if rule.files_at_root else f"{folder}/t"
    assert rules.for_dir(d) is rule, f"{d} is not governed by {rule.path}"
    return d


def _write(m: Path, d: str, name: str, age: float, size: int | None = None, atime_age: float | None = None) -> str:
    """Write a file as a program would, age it; returns its path after commit."""
    folder = m / d
    folder.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(folder))
    ext = os.path.splitext(name)[1]
    with open(folder / name, "wb") as f:
        f.write(CONTENT.get(ext, b"data\n"))
    new = set(os.listdir(folder)) - before
    assert len(new) == 1, f"{d}/{name}: committed as {new} (quarantined?)"
    rel = f"{d}/{new.pop()}"
    if size is not None:
        os.truncate(m / rel, size)  # sparse in a plain store
    now = time.time()
    os.utime(m / rel, (now - (age if atime_age is None else atime_age), now - age))
    return rel


def _name(rule: FolderRule, stem: str) -> str:
    ext = rule.allow_extensions[0] if rule.allow_extensions else ".txt"
    return stem + (ext if ext.startswith(".") else "." + ext)


def _make_cases(m: Path, cfg: config.Config) -> list[Case]:
    rules = Rules(cfg)
    cases: list[Case] = []
    for r in cfg.folders:
        d = _cases_dir(r, rules)
        limit = min(x for x in (r.max_age, r.archive_after, *(a for _, a in r.patterns), 400 * D) if x)
        young = limit / 2
        if r.max_age:
            dest = r.archive_to if r.action == "archive" else r.move_to if r.action == "move" else ""
            c = Case(r.path, "max_age", expect=r.action if dest else "delete", dest=dest or "")
            c.rel = _write(m, d, _name(r, "old"), r.max_age + D)
            cases.append(c)
        if r.archive_after:
            older = (r.archive_after + (r.max_age or 3 * r.archive_after)) / 2
            cases.append(Case(r.path, "archive_after", _write(m, d, _name(r, "aging"), older), "archive", r.archive_to or ""))
        for glob, age in r.patterns:
            if r.max_age is None or age < r.max_age:
                cases.append(Case(r.path, f"pattern {glob}", _write(m, d, glob.replace("*", "p"), age + H), "delete"))
        if r.max_age or r.archive_after or r.patterns:
            cases.append(Case(r.path, "younger than every age", _write(m, d, _name(r, "young"), young)))
        if r.max_total is not None or r.max_files is not None:
            size = int(r.max_total * 0.6) if r.max_total else 10
            n = 2 if r.max_total else r.max_files + 1
            lru = r.evict == "lru"
            # The first file is the one to go: oldest by mtime, or by atime for LRU
            # (then its mtime is the newest, so an mtime order would keep it).
            first = Case(r.path, f"{'max_total' if r.max_total else 'max_files'} ({r.evict})", expect="delete")
            first.rel = _write(m, d, _name(r, "evicted"), 0.1 * limit if lru else 0.7 * limit, size, 0.7 * limit)
            cases.append(first)
            for i in range(1, n):
                cases.append(Case(r.path, "under the cap", _write(m, d, _name(r, f"capped{i}"), 0.6 * limit, size)))
        if r.remove_empty_dirs:
            (m / d / "empty").mkdir(parents=True)
            cases.append(Case(r.path, "remove_empty_dirs", f"{d}/empty", "rmdir"))
        if r.orphan_sessions:
            code = "import os, sys; os.makedirs(sys.argv[1]); open(sys.argv[1] + '/f', 'w').write('x')"
            subprocess.run([sys.executable, "-c", code, str(m / r.path / "exited")], check=True)
            cases.append(Case(r.path, "orphan_sessions", f"{r.path}/exited", "kept" if r.orphan_wait else "rmdir"))
            if r.orphan_wait:  # gone and untouched for orphan_age: an orphan
                subprocess.run([sys.executable, "-c", code, str(m / r.path / "exited-old")], check=True)
                old = time.time() - cfg.janitor.orphan_age - H
                for p in (m / r.path / "exited-old" / "f", m / r.path / "exited-old"):
                    os.utime(p, (old, old))
                cases.append(Case(r.path, "orphan_wait", f"{r.path}/exited-old", "rmdir"))
    return cases


def _check(m: Path, c: Case) -> str | None:
    here = os.path.lexists(m / c.rel)
    if c.expect == "kept":
        return None if here else "was removed"
    if here:
        return f"still there (expected {c.expect})"
    if c.expect == "archive" and not (m / c.dest / (c.rel + ".gz")).exists():
        return f"no archive in {c.dest}/"
    if c.expect == "move" and not (m / c.dest / c.rel).exists():
        return f"not in {c.dest}/"
    return None


@needs_fuse
@pytest.mark.parametrize("profile", config.profile_names())
def test_every_retention_rule_of_the_profile(profile: str, tmp_path: Path) -> None:
    cfg = config.parse(tomllib.loads(config.profile_text(profile)), profile)
    store = init_store(tmp_path / "store", "--profile", profile, encrypted=False)
    m = tmp_path / "mnt"
    warns = [r.path for r in cfg.folders if r.warn_percent and r.max_total]
    with mounted(store, m, expect_log_problems=bool(warns)):
        cases = _make_cases(m, cfg)
        r = seldonfs("janitor", m)
        assert r.returncode == 0, r.stderr
        wrong = [f"{c.rule}: {c.what}: {c.rel} {why}" for c in cases if (why := _check(m, c))]
    assert not wrong, "\n".join(wrong) + "\n" + r.stdout
    alerts = "\n".join(log_problems(store))
    for w in warns:  # the caps were 120 % full before eviction
        assert f"folder-full): {w}/ holds" in alerts
    assert bool(cases) == janitor.has_retention(cfg)  # reorg has none: nothing to enforce
