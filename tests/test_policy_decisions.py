"""policy.py: the folder rules' decisions as pure functions, without a mount."""

from __future__ import annotations

import itertools
import os
import stat
import tomllib

import pytest

from seldonfs import config
from seldonfs.policy import (
    NAME_TRIES, Place, Policy, Quarantine, bad_date, candidates, commits, quarantine_names, version_at_open, version_at_replace,
    version_at_truncate,
)
from seldonfs.rules import Rules
from seldonfs.validation import Verdict


def policy_of(profile: str = "seldon", extra: str = "") -> Policy:
    raw = tomllib.loads(config.profile_text(profile) + extra)
    return Policy(Rules(config.parse(raw, "test.toml")))


@pytest.fixture(scope="module")
def seldon() -> Policy:
    return policy_of()


def test_only_the_filesystem_enters_quarantine(seldon: Policy) -> None:
    assert "only the filesystem" in seldon.refusal("input/quarantine", b"x.json", kind=stat.S_IFREG)
    assert seldon.refusal("input/quarantine", b"sub", kind=stat.S_IFDIR)


def test_no_files_at_the_root_of_temp_but_temporary_names_elsewhere(seldon: Policy) -> None:
    assert "no files directly in temp/" in seldon.refusal("temp", b"x.txt", kind=stat.S_IFREG)
    assert seldon.refusal("temp", b"sub", kind=stat.S_IFDIR) is None
    assert seldon.refusal("temp/working", b"x.txt", kind=stat.S_IFREG) is None
    assert seldon.refusal("input/processed", b"\xff\xfe.bin", kind=stat.S_IFREG) is None  # bytes, not UTF-8


def test_no_fifos_sockets_or_devices_where_files_are_checked(seldon: Policy) -> None:
    for kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        assert "no fifos" in seldon.refusal("input/raw", b"p", kind=kind)
        assert seldon.refusal("input/processed", b"p", kind=kind) is None  # a plain folder is a plain disk
    assert seldon.refusal("input/raw", b"l.json", kind=stat.S_IFLNK) is None


def test_which_writes_are_followed(seldon: Policy) -> None:
    raw, processed, reports = (seldon.for_dir(d) for d in ("input/raw", "input/processed", "output/reports"))
    assert commits(raw) and seldon.tracks(raw, floor=False)
    assert not commits(processed) and not seldon.tracks(processed, floor=False)
    assert seldon.tracks(processed, floor=True)  # the space floor follows every write
    assert not commits(reports) and seldon.tracks(reports, floor=False)  # versions
    assert not seldon.floor_applies("temp/working")


def test_temporary_names_and_the_quarantine_never_commit(seldon: Policy) -> None:
    raw = seldon.for_dir("input/raw")
    assert seldon.commit_applies(raw, "input/raw", "data.json")
    for name in ("data.json.tmp", ".data.json", "data.json~", "data.json.part", "x.swp"):
        assert not seldon.commit_applies(raw, "input/raw", name), name
    assert not seldon.commit_applies(seldon.for_dir("input/quarantine"), "input/quarantine", "x.json")


def test_what_a_mount_that_did_not_end_cleanly_left_uncommitted() -> None:
    pol = policy_of(extra='[folders."checked"]\ncheck_structure = true\n')
    raw, checked = pol.for_dir("input/raw"), pol.for_dir("checked")
    managed = "2024-12-06-14-30-45-123-INP001-001_d.json"
    ok = ("ok", 2_000, 7)  # the newest record: (verdict, committed_ns, ino)

    def left(rule, d: str, name: str, newest, ino: int = 7, mtime_ns: int = 1_000, rewriting: bool = False):
        return pol.left_uncommitted(rule, d, name, newest, ino, mtime_ns, rewriting)

    assert left(raw, "input/raw", "d.json", ok) == "commit"  # not a managed name: never committed
    assert left(raw, "input/raw", managed, ok) is None
    assert left(raw, "input/raw", managed, None) == "commit"  # its record lost with the mount
    assert left(raw, "input/raw", managed, ok, mtime_ns=2_001) == "commit"  # written after its commit
    assert left(raw, "input/raw", managed, ok, ino=8) == "commit"  # another file under that name now
    assert left(raw, "input/raw", managed, ok, rewriting=True) == "commit"  # changed, its mtime set back
    assert left(checked, "checked", "d.json", ok, rewriting=True) == "commit"
    assert left(raw, "input/raw", managed, ("quarantined", 2_000, 7)) == "commit"
    assert left(raw, "input/raw", managed, ("ok", 2_000, 0)) is None  # a record from before inodes were kept
    assert left(checked, "checked", "d.json", ok) is None  # checks only: the record vouches
    assert left(checked, "checked", "d.json", None) == "commit"
    assert left(raw, "input/raw", ".d.json.swp", None) == "leftover"  # commits after temp_max_age
    assert left(pol.for_dir("input/quarantine"), "input/quarantine", "d.json", None) is None
    assert left(pol.for_dir("input/processed"), "input/processed", "d.json", None) is None  # no commit rule
    assert pol.managed_fields(raw, managed) == ("INP001", "d.json")  # what a recommit records
    assert pol.managed_fields(raw, "d.json") is None


def test_a_failed_check_goes_to_quarantine_a_passed_one_gets_a_managed_name(seldon: Policy) -> None:
    raw = seldon.for_dir("input/raw")
    assert seldon.destination(raw, "input/raw", "d.json", Verdict(reasons=["ssn"])) == Quarantine(("ssn",))
    assert seldon.destination(raw, "input/raw", "d.json", Verdict()) == Place("input/raw", None, 1)
    managed = "2024-12-06-14-30-45-123-INP001-001_d.json"
    assert seldon.destination(raw, "input/raw", managed, Verdict()) == Place("input/raw", managed, 1)
    assert seldon.quarantine_dir(raw) == "input/quarantine"


def test_routing_by_the_date_in_the_name() -> None:
    reorg = policy_of("reorg")
    inbox = reorg.for_dir("inbox")
    assert reorg.destination(inbox, "inbox", "2024-03-05_scan.pdf", Verdict()) == Place(
        "organized/2024/03/05", "scan.pdf", 3)
    assert reorg.destination(inbox, "inbox", "scan.pdf", Verdict()) == Place("inbox", "scan.pdf", 3)  # left
    strict = policy_of("reorg", '\n[folders."strict"]\nroute = "^(?P<y>\\\\d{4})_(?P<name>.+)$"\n'
                                'route_to = "done/{y}/{name}"\nroute_unmatched = "quarantine"\n')
    rule = strict.for_dir("strict")
    got = strict.destination(rule, "strict", "scan.pdf", Verdict())
    assert isinstance(got, Quarantine) and not got.checked and "routing pattern" in got.reasons[0]


def test_candidates_number_before_the_extension_or_render_afresh() -> None:
    def paths(place, n, fresh=lambda: "never"):  # the first n names tried while each is taken
        return [p for p, _ in itertools.islice(candidates(place, fresh), n)]

    assert paths(Place("a", "x.json", 1), 3) == ["a/x.json", "a/x-1.json", "a/x-2.json"]
    assert paths(Place("a", "x.tar.gz", 1), 2) == ["a/x.tar.gz", "a/x-1.tar.gz"]  # a compound extension stays whole
    assert paths(Place("a", "v.2.final.pdf", 1), 2) == ["a/v.2.final.pdf", "a/v.2.final-1.pdf"]
    assert paths(Place("", "README", 1), 2) == ["README", "README-1"]
    assert len(list(candidates(Place("a", "x", 3), str))) == NAME_TRIES  # taken names do not use up the tries
    fresh = iter(["n1", "n2"])
    assert paths(Place("a", None, 1), 2, lambda: next(fresh)) == ["a/n1", "a/n2"]
    names = quarantine_names("q", "20241206_143045", "x.json")
    assert [next(names), next(names)] == ["q/20241206_143045_x.json", "q/20241206_143045_1_x.json"]


def test_when_versions_are_kept(seldon: Policy) -> None:
    reports, processed = seldon.for_dir("output/reports"), seldon.for_dir("input/processed")
    assert version_at_open(reports, 10, truncating=True) == "truncate"
    assert version_at_open(reports, 10, truncating=False) == "overwrite"
    assert version_at_open(reports, 0, truncating=True) is None  # nothing to keep
    assert version_at_open(processed, 10, truncating=True) is None
    assert version_at_truncate(reports, 10, 0) and not version_at_truncate(reports, 10, 10)
    assert not version_at_truncate(reports, 0, 5)
    assert version_at_replace(reports, True, False)
    assert not version_at_replace(reports, True, True) and not version_at_replace(reports, False, False)


def test_names_that_grow_past_255_bytes_are_shortened_the_same_way_every_time() -> None:
    long = "x" * 250 + ".json"
    path, short = next(candidates(Place("in", "2024-12-06-14-30-45-123-INP001-001_" + long, 1), lambda: ""))
    name = path.split("/")[1]
    assert short and len(name.encode()) <= 255 and name.endswith(".json") and name.startswith("2024-12-06")
    assert next(candidates(Place("in", "2024-12-06-14-30-45-123-INP001-001_" + long, 1), str))[0] == path
    other = "2024-12-06-14-30-45-123-INP001-001_" + "x" * 249 + "y.json"
    assert next(candidates(Place("in", other, 1), str))[0] != path  # a hash of the whole name keeps them apart
    q = next(quarantine_names("input/quarantine", "20241206_143045", "\udcff" * 250))
    assert len(os.fsencode(q.split("/")[-1])) <= 255


def test_write_once_holds_records_until_their_retention(seldon: Policy) -> None:
    from seldonfs.policy import held, write_once_area

    rule = seldon.for_dir("archive/compliance")
    tp = seldon.pol.temp_patterns
    year = 365 * 86400
    now = 100 * year
    assert held(rule, "ledger.csv", now - 6 * year, now - 6 * year, now, tp)
    assert not held(rule, "ledger.csv", now - 8 * year, now - 8 * year, now, tp)  # retention passed
    assert held(rule, "ledger.csv", 0.0, now - 1, now, tp)  # an old mtime: it arrived (ctime) a moment ago
    assert not held(rule, ".ledger.csv.tmp", now, now, now, tp)  # not a record yet
    assert not held(seldon.for_dir("archive/historical"), "h.csv", now, now, now, tp)
    assert all(write_once_area(seldon.rules, d) for d in ("", "archive", "archive/compliance", "archive/compliance/x"))
    assert not any(write_once_area(seldon.rules, d) for d in ("archive/historical", "output", "archived"))


def test_a_folder_moved_where_a_commit_rule_would_cover_its_files_unchecked(seldon: Policy) -> None:
    from seldonfs.policy import moves_unchecked

    r = seldon.rules
    assert moves_unchecked(r, "input/processed/batch", "input/raw/batch")  # free -> checked
    assert moves_unchecked(r, "input/uploads/batch", "input/raw/batch")  # checked by another table
    assert moves_unchecked(r, "input/processed", "input/raw/p")  # a table moves in
    assert moves_unchecked(r, "input", "old-input")  # the tables inside commit
    assert moves_unchecked(r, "input/processed/x", "input/raw")  # over a folder that commits
    assert not moves_unchecked(r, "input/raw/a", "input/raw/b")  # the same table: checked by it
    assert not moves_unchecked(r, "input/raw/a", "input/processed/a")  # out of a commit rule
    assert not moves_unchecked(r, "temp/cache/a", "output/exports/a")  # no commit rule either side


def test_a_route_date_must_be_a_day_of_the_calendar() -> None:
    reorg = policy_of("reorg")
    inbox = reorg.for_dir("inbox")
    for name in ("2024-13-45_bad.txt", "2024-02-30_x.txt", "2023-02-29_x.txt", "2024-00-10_x.txt", "0000-01-01_x"):
        assert reorg.destination(inbox, "inbox", name, Verdict()) == Place("inbox", name, 3), name  # left
    assert reorg.destination(inbox, "inbox", "2024-02-29_leap.txt", Verdict()) == Place(
        "organized/2024/02/29", "leap.txt", 3)
    assert reorg.destination(inbox, "inbox", "2024-01-05_a\nb.txt", Verdict()) == Place(
        "organized/2024/01/05", "a\nb.txt", 3)  # a newline in the name routes too
    assert bad_date({"y": "2024", "m": "13", "d": "45"}) == "invalid date 2024-13-45"
    assert bad_date({"y": "2024", "name": "x"}) is None  # no whole date: nothing to check
    strict = policy_of("reorg", '\n[folders."strict"]\nroute = "^(?P<y>\\\\d{4})-(?P<m>\\\\d\\\\d)-(?P<d>\\\\d\\\\d)_(?P<name>.+)$"\n'
                                'route_to = "done/{y}/{m}/{d}/{name}"\nroute_unmatched = "quarantine"\n')
    got = strict.destination(strict.for_dir("strict"), "strict", "2023-02-29_x.txt", Verdict())
    assert got == Quarantine(("invalid date 2023-02-29",), checked=False)
