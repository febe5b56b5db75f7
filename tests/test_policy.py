"""The policy engine through the real mount, driven by the tools people use.

The store gets a rules file written for these tests (below), so they do not
depend on what a shipped profile holds; tests/test_profile_<name>.py cover those.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from seldonfs import _libc

from .conftest import as_user, mounted, needs_fuse, needs_root, seldonfs, stored, wait_for

pytestmark = needs_fuse

RULES = """
[store]
profile = "test"

[policy]
quarantine = "q"
grace = "30s"
{policy_extra}

[folders."in"]
naming = "{{ts}}-{{job}}-{{seq:03d}}_{{name}}"
job = "INP001"
max_size = "1MB"
allow_mime = ["application/json", "text/*", "inode/x-empty"]
check_extension = true
check_structure = true
sensitive = ["ssn", "card", "aws_key", "private_key"]

[folders."strict"]
naming = "{{ts}}-{{job}}-{{seq:03d}}_{{name}}"
check_structure = true
on_invalid = "reject"

[folders."bulk"]
naming = "{{ts}}-{{job}}-{{seq:03d}}_{{name}}"
check_structure = true
sensitive = ["private_key"]

[folders."jsononly"]
naming = "{{ts}}-{{job}}-{{seq:03d}}_{{name}}"
allow_mime = ["application/json"]
check_structure = true

[folders."typed"]
allow_extensions = [".json", ".csv"]
deny_names = ["*.exe"]

[folders."q"]
mode = 0o700

[folders."reports"]
versions = 3

[folders."temp"]
files_at_root = false

[folders."temp/work"]

[folders."inbox"]
route = '^(?P<y>\\d{{4}})-(?P<m>\\d{{2}})-(?P<d>\\d{{2}})_(?P<name>.+)$'
route_to = "sorted/{{y}}/{{m}}/{{d}}/{{name}}"
route_unmatched = "quarantine"

[folders."plain"]
"""
MANAGED = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}-(?P<job>[A-Za-z0-9._-]+)-(?P<seq>\d{3,})_(?P<name>.+)$")
FOLDERS = ("in", "strict", "bulk", "jsononly", "typed", "q", "reports", "temp/work", "inbox", "sorted", "plain")


def write_rules(store: Path, policy_extra: str = "") -> None:
    (store / "seldonfs.toml").write_text(RULES.format(policy_extra=policy_extra))
    for f in FOLDERS:
        (store / "data" / f).mkdir(parents=True, exist_ok=True)
    (store / "data" / "q").chmod(0o700)


@pytest.fixture
def pmnt(store: Path, tmp_path: Path):
    write_rules(store)
    m = tmp_path / "mnt"
    with mounted(store, m):
        yield m


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def managed(d: Path, original: str) -> Path:
    """The one file in `d` that commit named after `original`."""
    hits = [p for p in d.iterdir() if (m := MANAGED.match(p.name)) and m["name"] == original]
    assert len(hits) == 1, (original, names(d))
    return hits[0]


def reason(p: Path) -> str:
    return os.getxattr(p, "user.seldon.reason").decode()


# ---------------------------------------------------------------- naming


def test_python_write_commits_under_a_managed_name(pmnt: Path, store: Path) -> None:
    (pmnt / "in" / "prospect_data.json").write_text('{"a": 1}')
    f = managed(pmnt / "in", "prospect_data.json")
    assert MANAGED.match(f.name)["job"] == "INP001"
    assert f.read_text() == '{"a": 1}'
    assert stored(store, f"in/{f.name}") == b'{"a": 1}'
    assert (pmnt / "in" / "prospect_data.json").exists()  # for its writer's user, a while
    assert subprocess.run(["test", "-e", pmnt / "in" / "prospect_data.json"]).returncode == 0  # any of its processes
    code = "import os, sys\nprint(os.path.exists(sys.argv[1]))"
    assert as_user(65534, 65534, code, str(pmnt / "in" / "prospect_data.json")).stdout.strip() == "False"


def test_common_tools_commit_and_never_commit_temp_names(pmnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}.json").write_text(json.dumps({"i": i}))
    (src / "sub" / "s.csv").write_text("a,b\n1,2\n")
    os.utime(src / "f0.json", (1_600_000_000, 1_600_000_000))
    inn = pmnt / "in"
    # tar x, rsync -a (temp name, then rename), cp -p, mv, sed -i, an editor's
    # write-temp-then-rename, python
    subprocess.run(f"tar -C {tmp_path} -cf - src | tar -C {inn}/ -xf - ", shell=True, check=True)
    (inn / "rs").mkdir()
    subprocess.run(["rsync", "-a", f"{src}/", f"{inn}/rs/"], check=True)
    subprocess.run(["cp", "-p", src / "f1.json", inn / "cp.json"], check=True)
    shutil.copy(src / "f2.json", tmp_path / "moved.json")
    subprocess.run(["mv", tmp_path / "moved.json", inn / "moved.json"], check=True)
    sed_target = managed(inn / "rs", "f3.json")
    subprocess.run(["sed", "-i", "s/3/33/", sed_target], check=True)
    editor_tmp = inn / ".notes.json.swp"
    editor_tmp.write_text('{"notes": true}')
    assert editor_tmp.exists()  # a temporary name never commits
    os.rename(editor_tmp, inn / "notes.json")

    for d, expected in (
        (inn / "src", ["f0.json", "f1.json", "f2.json", "f3.json", "f4.json", "sub"]),
        (inn / "rs", ["f0.json", "f1.json", "f2.json", "f3.json", "f4.json", "sub"]),
    ):
        got = sorted(MANAGED.match(n)["name"] if MANAGED.match(n) else n for n in names(d))
        assert got == expected
        assert json.loads(managed(d, "f4.json").read_text()) == {"i": 4}
        assert managed(d / "sub", "s.csv").read_text() == "a,b\n1,2\n"
    # times set by path right after close still reached the file (grace period)
    assert managed(inn / "src", "f0.json").stat().st_mtime == 1_600_000_000
    assert managed(inn / "rs", "f0.json").stat().st_mtime == 1_600_000_000
    assert managed(inn, "cp.json").stat().st_mtime == (src / "f1.json").stat().st_mtime
    assert json.loads(managed(inn, "moved.json").read_text()) == {"i": 2}
    assert sed_target.read_text() == '{"i": 33}'  # a managed name is kept
    assert managed(inn, "notes.json").read_text() == '{"notes": true}'
    leftovers = [n for n in names(inn) + names(inn / "rs") if not MANAGED.match(n)]
    assert sorted(leftovers) == ["rs", "src", "sub"]


def test_concurrent_writers_get_distinct_names(pmnt: Path) -> None:
    # Each writer reuses one name: every close commits a new file, and the
    # next open of that name makes a new one (not the committed file, though
    # the name still resolves to it for this writer). Two writers of one
    # uncommitted name would share the file, as on any disk.
    code = (
        "import sys\n"
        "d, w = sys.argv[1], sys.argv[2]\n"
        "for i in range(200):\n"
        "    with open(f'{d}/w{w}.json', 'w') as f:\n"
        "        f.write('{\"w\": %s, \"i\": %d}' % (w, i))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(pmnt / "in"), str(w)]) for w in range(8)
    ]
    assert [p.wait() for p in procs] == [0] * 8
    files = names(pmnt / "in")
    assert len(files) == 1600 and len(set(files)) == 1600
    seen = {tuple(json.loads((pmnt / "in" / n).read_text()).values()) for n in files}
    assert seen == {(w, i) for w in range(8) for i in range(200)}


def test_names_stay_unique_across_remounts(store: Path, tmp_path: Path) -> None:
    write_rules(store)
    seqs = []
    for _ in range(2):
        with mounted(store, tmp_path / "mnt") as _:
            for i in range(3):
                (tmp_path / "mnt" / "in" / "x.json").write_text("{}")
            seqs = [int(MANAGED.match(n)["seq"]) for n in names(tmp_path / "mnt" / "in")]
    assert len(seqs) == 6 and len(set(seqs)) == 6


def test_job_id_from_environment_or_attribute(pmnt: Path) -> None:
    env = dict(os.environ, SELDON_JOB_ID="ETL042")
    subprocess.run(["cp", "/etc/hostname", pmnt / "in" / "host.txt"], env=env, check=True)
    assert MANAGED.match(managed(pmnt / "in", "host.txt").name)["job"] == "ETL042"
    with open(pmnt / "in" / "tagged.txt", "w") as f:
        f.write("hello")
        os.setxattr(f.fileno(), "user.seldon.job", b"TAG7")
    assert MANAGED.match(managed(pmnt / "in", "tagged.txt").name)["job"] == "TAG7"
    with pytest.raises(PermissionError):  # the filesystem's own attributes stay its own
        os.setxattr(managed(pmnt / "in", "tagged.txt"), "user.seldon.reason", b"forged")


def test_grace_period_is_for_the_writers_user_only(pmnt: Path) -> None:
    with open(pmnt / "in" / "g.txt", "w") as f:
        f.write("some text\n")
    os.chmod(pmnt / "in" / "g.txt", 0o604)  # same process, by the old name
    assert managed(pmnt / "in", "g.txt").stat().st_mode & 0o777 == 0o604
    subprocess.run(["chmod", "600", pmnt / "in" / "g.txt"], check=True)  # another process of the same user
    assert managed(pmnt / "in", "g.txt").stat().st_mode & 0o777 == 0o600
    code = "import os, sys\ntry:\n    os.stat(sys.argv[1]); print('found')\nexcept OSError as e:\n    print(e.errno)"
    assert as_user(65534, 65534, code, str(pmnt / "in" / "g.txt")).stdout.strip() == str(errno.ENOENT)
    (pmnt / "in" / "g.txt").write_text("other text\n")  # a second `cp` to that name makes a new file
    assert len([n for n in names(pmnt / "in") if n.endswith("_g.txt")]) == 2


# ---------------------------------------------------------------- validation


def test_forbidden_name_or_place_fails_create(pmnt: Path) -> None:
    with pytest.raises(PermissionError):
        (pmnt / "temp" / "loose.txt").write_text("x")
    (pmnt / "temp" / "work" / "ok.txt").write_text("x")  # a subfolder is fine
    with pytest.raises(PermissionError):
        (pmnt / "typed" / "a.txt").write_text("x")
    with pytest.raises(PermissionError):
        (pmnt / "typed" / "tool.exe").write_text("x")
    (pmnt / "typed" / "a.json").write_text("{}")
    with pytest.raises(PermissionError):
        (pmnt / "q" / "sneak.json").write_text("{}")  # only the filesystem puts files there
    with pytest.raises(PermissionError):
        os.rename(pmnt / "typed" / "a.json", pmnt / "temp" / "a.json")
    assert "loose.txt" not in names(pmnt / "temp") and "a.json" not in names(pmnt / "temp")


def test_write_crossing_the_size_limit_fails_with_efbig(pmnt: Path) -> None:
    chunk = b"a" * 65536
    written = 0
    with pytest.raises(OSError) as e:
        with open(pmnt / "in" / "big.txt", "wb", buffering=0) as f:
            while True:
                written += f.write(chunk)
    assert e.value.errno == errno.EFBIG
    assert written == 1_000_000 // 65536 * 65536  # every write below the limit landed
    assert managed(pmnt / "in", "big.txt").stat().st_size == written


@pytest.mark.parametrize(
    "name, data, why",
    [
        ("broken.json", b'{"a": ', "not valid JSON"),
        ("ragged.csv", b"a,b\n1,2\n3\n", "not valid CSV"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested"),  # past json.loads's stack
        ("fake.json", bytes(range(256)) * 8, "not what .json promises"),
        ("ssn.txt", b"id 078-05-1120 on file", "social security number"),
        ("card.txt", b"card 4111 1111 1111 1111 exp 12/29", "payment card"),
        ("aws.txt", b"key=AKIAIOSFODNN7EXAMPLE", "AWS access key"),
        ("key.txt", b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "private key"),
    ],
)
def test_invalid_content_is_quarantined_at_close(pmnt: Path, store: Path, name: str, data: bytes, why: str) -> None:
    (pmnt / "in" / name).write_bytes(data)  # close succeeds: on_invalid = quarantine
    assert names(pmnt / "in") == []
    (q,) = list((pmnt / "q").iterdir())
    assert q.name.endswith("_" + name)
    assert why in reason(q)
    assert os.getxattr(q, "user.seldon.origin").decode() == f"in/{name}"
    assert q.read_bytes() == data  # nothing a writer wrote is dropped
    listing = seldonfs("quarantine", "list", pmnt, "--json", check=True).stdout
    (row,) = [json.loads(l) for l in listing.splitlines()]
    assert row["origin"] == f"in/{name}" and why in row["reason"]


def test_valid_look_alikes_pass(pmnt: Path) -> None:
    ok = {
        "nums.txt": b"order 4111 1111 1111 1112 total 078-05",  # fails Luhn; no SSN
        "data.csv": b"a,b\n1,2\n",
        "doc.json": b'{"akia": "AKIA-not-a-key"}',
        "ids.txt": b"row 1234567812345670 ok",  # passes Luhn, but no card issuer starts so
    }
    for n, d in ok.items():
        (pmnt / "in" / n).write_bytes(d)
    assert sorted(MANAGED.match(n)["name"] for n in names(pmnt / "in")) == sorted(ok)
    assert names(pmnt / "q") == []


def test_json_longer_than_what_libmagic_sees_is_json(pmnt: Path, tmp_path: Path) -> None:
    """libmagic is shown the first 8 KiB and calls a longer JSON text/plain;
    the structure check read all of it, so a folder that allows only
    application/json takes it (it was quarantined), and still quarantines
    what is not JSON."""
    src = tmp_path / "big.json"
    src.write_text(json.dumps([{"id": "%032x" % i, "sha256": "%064x" % i} for i in range(200)]))
    assert src.stat().st_size > 16384
    subprocess.run(["cp", src, pmnt / "jsononly" / "big.json"], check=True)
    assert managed(pmnt / "jsononly", "big.json").read_bytes() == src.read_bytes()
    (pmnt / "jsononly" / "cut.json").write_bytes(src.read_bytes()[:-1])
    (q,) = list((pmnt / "q").iterdir())
    assert q.name.endswith("_cut.json") and "not valid JSON" in reason(q)
    assert names(pmnt / "jsononly") == [managed(pmnt / "jsononly", "big.json").name]


def test_the_check_sees_every_change_to_the_content(pmnt: Path) -> None:
    """A new file's check reads what its writer wrote as it was kept in
    memory; every other way its bytes can change must show in the check."""
    ssn = b"id 078-05-1120"
    d = pmnt / "in"
    with open(d / "second.txt", "wb") as a:  # a second writer adds the number
        a.write(b"hello " + b"." * 20)
        a.flush()
        with open(d / "second.txt", "r+b") as b:
            b.seek(6)
            b.write(ssn)
    with open(d / "cut.txt", "wb") as f:  # cut off before close: clean
        f.write(b"x" * 5000 + ssn)
        f.flush()
        f.truncate(5000)
    with open(d / "hole.txt", "wb") as f:  # written past a hole
        f.write(b"abc")
        f.seek(10_000)
        f.write(ssn)
    assert [MANAGED.match(n)["name"] for n in names(d)] == ["cut.txt"]
    assert managed(d, "cut.txt").read_bytes() == b"x" * 5000
    q = {p.name.split("_", 2)[-1]: p for p in (pmnt / "q").iterdir()}
    assert sorted(q) == ["hole.txt", "second.txt"]
    assert all("social security number" in reason(p) for p in q.values())
    assert q["hole.txt"].read_bytes() == b"abc" + bytes(10_000 - 3) + ssn
    assert q["second.txt"].read_bytes() == b"hello " + ssn + b"." * (20 - len(ssn))


def test_a_truncate_by_path_commits_at_once(pmnt: Path) -> None:
    """truncate(2) changes a committed file with no close to follow: it
    is checked at once, not left cut in a checked folder."""
    d = pmnt / "in"
    (d / "cut.json").write_text('{"v": 12345}')
    (d / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    os.truncate(managed(d, "cut.json"), 5)
    kept = managed(d, "rows.csv")
    os.truncate(kept, 8)
    assert managed(d, "rows.csv") == kept and kept.read_text() == "a,b\n1,2\n"  # checked, name kept
    (q,) = (pmnt / "q").iterdir()
    assert q.name.endswith("_cut.json") and q.read_text() == '{"v":' and "not valid JSON" in reason(q)
    (d / "open.json").write_text("{}")
    with open(managed(d, "open.json"), "r+b"):  # a writer has it open: its close commits
        os.truncate(managed(d, "open.json"), 1)
        assert len(list((pmnt / "q").iterdir())) == 1
    assert len(list((pmnt / "q").iterdir())) == 2
    (pmnt / "strict" / "s.json").write_text("[1, 2]")
    with pytest.raises(PermissionError):  # on_invalid = "reject": the truncate is told
        os.truncate(managed(pmnt / "strict", "s.json"), 3)
    assert names(pmnt / "strict") == [] and len(list((pmnt / "q").iterdir())) == 3


def test_a_file_mknod_makes_commits_as_touch_would(pmnt: Path) -> None:
    """mknod(2) of a regular file makes one with no open or close."""
    os.mknod(pmnt / "in" / "empty.txt", stat.S_IFREG | 0o644)
    os.mknod(pmnt / "in" / "later.tmp", stat.S_IFREG | 0o644)  # a temporary name: not yet
    os.mknod(pmnt / "jsononly" / "empty.json", stat.S_IFREG | 0o644)
    assert managed(pmnt / "in", "empty.txt").stat().st_size == 0
    assert "later.tmp" in names(pmnt / "in") and names(pmnt / "jsononly") == []
    (q,) = (pmnt / "q").iterdir()
    assert q.name.endswith("_empty.json")


def test_a_folder_moved_into_a_checked_folder_is_copied_file_by_file(pmnt: Path) -> None:
    """A rename of a folder would bring its files in unchecked: EXDEV, and
    mv copies instead, so each file commits where it lands."""
    batch = pmnt / "plain" / "batch"
    (batch / "sub").mkdir(parents=True)
    (batch / "bad.txt").write_text("id 078-05-1120")
    (batch / "sub" / "ok.json").write_text("{}")
    with pytest.raises(OSError) as e:
        os.rename(batch, pmnt / "in" / "batch")
    assert e.value.errno == errno.EXDEV
    subprocess.run(["mv", batch, pmnt / "in" / "batch"], check=True)
    assert names(pmnt / "in" / "batch") == ["sub"] and not batch.exists()
    assert managed(pmnt / "in" / "batch" / "sub", "ok.json").read_text() == "{}"
    (q,) = (pmnt / "q").iterdir()
    assert q.name.endswith("_bad.txt") and "social security number" in reason(q)
    os.rename(pmnt / "in" / "batch", pmnt / "in" / "renamed")  # within the rule that checked them
    os.rename(pmnt / "in" / "renamed", pmnt / "plain" / "out")  # out of it


def test_a_file_renamed_in_while_open_commits_at_its_writers_close(pmnt: Path) -> None:
    """A handle opened in a folder without rules, its file then renamed
    or linked into a checked folder: what it writes after is checked too."""
    for name, late, kept in (("a.txt", "id 078-05-1120", False), ("b.txt", "fine", True)):
        with open(pmnt / "plain" / name, "w") as f:
            f.write("draft ")
            f.flush()
            os.rename(pmnt / "plain" / name, pmnt / "in" / name)
            assert name in names(pmnt / "in")  # not yet: its writer's close commits it
            f.write(late)
        assert (managed(pmnt / "in", name).read_text() == "draft " + late) if kept else name not in str(names(pmnt / "in"))
    with open(pmnt / "plain" / "c.txt", "w") as f:
        f.write("ok ")
        f.flush()
        os.link(pmnt / "plain" / "c.txt", pmnt / "in" / "c.txt")
        f.write("id 078-05-1120")
    assert sorted(p.name.split("_")[-1] for p in (pmnt / "q").iterdir()) == ["a.txt", "c.txt"]
    assert "social security number" in reason(next((pmnt / "q").glob("*_c.txt")))


def test_an_exchange_checks_what_it_brings_in_either_way(pmnt: Path) -> None:
    """RENAME_EXCHANGE moves its target too: into a checked folder, that
    one is checked (a file) or refused (a folder), as a rename would be."""
    (pmnt / "in" / "good.json").write_text("{}")
    (pmnt / "plain" / "bad.txt").write_text("id 078-05-1120")
    (pmnt / "plain" / "dir").mkdir()
    (pmnt / "in" / "sub").mkdir()
    ind, plain = os.open(pmnt / "in", os.O_PATH), os.open(pmnt / "plain", os.O_PATH)
    try:
        _libc.renameat2(ind, os.fsencode(managed(pmnt / "in", "good.json").name), plain, b"bad.txt",
                        _libc.RENAME_EXCHANGE)  # the checked file first: the other one arrives as the target
        with pytest.raises(OSError) as e:
            _libc.renameat2(ind, b"sub", plain, b"dir", _libc.RENAME_EXCHANGE)
        assert e.value.errno == errno.EXDEV
    finally:
        os.close(ind)
        os.close(plain)
    assert names(pmnt / "in") == ["sub"] and (pmnt / "plain" / "bad.txt").read_text() == "{}"
    (q,) = (pmnt / "q").iterdir()
    assert q.read_text() == "id 078-05-1120" and "social security number" in reason(q)


def test_reject_fails_close_and_still_keeps_the_file(pmnt: Path) -> None:
    f = open(pmnt / "strict" / "bad.json", "w")
    f.write("{nope")
    with pytest.raises(PermissionError):
        f.close()
    (q,) = list((pmnt / "q").iterdir())
    assert q.read_text() == "{nope" and "not valid JSON" in reason(q)
    r = subprocess.run(["cp", "/etc/hostname", pmnt / "strict" / "h.json"], capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


@needs_root
def test_release_revalidates_and_force_is_recorded(pmnt: Path) -> None:
    (pmnt / "in" / "fixme.json").write_text("{broken")
    (q,) = list((pmnt / "q").iterdir())
    r = seldonfs("quarantine", "release", q)
    assert r.returncode == 1 and "still invalid: not valid JSON" in r.stderr
    q.write_text('{"fixed": true}')  # root may repair it in place
    seldonfs("quarantine", "release", q, check=True)
    assert managed(pmnt / "in", "fixme.json").read_text() == '{"fixed": true}'
    (pmnt / "in" / "odd.json").write_text("{still broken")
    (q,) = list((pmnt / "q").iterdir())
    seldonfs("quarantine", "release", "--force", q, check=True)
    assert managed(pmnt / "in", "odd.json").read_text() == "{still broken"
    rows = [json.loads(l) for l in seldonfs("quarantine", "list", pmnt, "--all", "--json").stdout.splitlines()]
    assert [(r["forced"], r["released_to"] is not None) for r in rows] == [(0, True), (1, True)]
    r = seldonfs("quarantine", "release", managed(pmnt / "in", "odd.json"))
    assert r.returncode == 2 and "not a quarantined file" in r.stderr


@needs_root
def test_only_root_releases(pmnt: Path) -> None:
    (pmnt / "in" / "x.json").write_text("{")
    (q,) = list((pmnt / "q").iterdir())
    (pmnt / "q").chmod(0o755)
    q.chmod(0o666)
    r = as_user(
        65534, 65534,
        "import os,sys\ntry:\n os.setxattr(sys.argv[1], 'user.seldon.release', b'force')\n"
        "except OSError as e: print(e.errno)",
        str(q),
    )
    assert r.stdout.strip() == str(errno.EPERM)


def test_large_files_are_checked_in_a_worker_thread(pmnt: Path) -> None:
    # past policy.INLINE_CHECK_BYTES the check runs off the request loop
    data = b'{"rows": [' + b",".join(b"%d" % i for i in range(500_000)) + b"]}"
    assert len(data) > 3 << 20
    (pmnt / "strict" / "big.json").write_bytes(data)
    assert managed(pmnt / "strict", "big.json").read_bytes() == data
    with pytest.raises(PermissionError):
        (pmnt / "strict" / "cut.json").write_bytes(data[:-1])
    (q,) = list((pmnt / "q").iterdir())
    assert q.read_bytes() == data[:-1] and "not valid JSON" in reason(q)
    # where invalid files are only quarantined, close returns at once and
    # the file commits when its check in the background is done
    (pmnt / "bulk" / "big.json").write_bytes(data)
    (pmnt / "bulk" / "cut.json").write_bytes(data[:-1])
    # both checks done: the two may end in either order, so wait for the
    # managed name itself, not for one name of any kind in bulk/
    committed = lambda: [m["name"] for n in names(pmnt / "bulk") if (m := MANAGED.match(n))] == ["big.json"]
    wait_for(lambda: committed() and len(names(pmnt / "bulk")) == 1 and len(names(pmnt / "q")) == 2,
             what="background checks")
    assert managed(pmnt / "bulk", "big.json").read_bytes() == data
    (q,) = [p for p in (pmnt / "q").iterdir() if os.getxattr(p, "user.seldon.origin") == b"bulk/cut.json"]
    assert q.read_bytes() == data[:-1] and "not valid JSON" in reason(q)


def test_many_writers_at_once_past_the_copies_budget(pmnt: Path) -> None:
    # 24 files of 900 KB, all open, each synced so its bytes reach the
    # daemon before any close: past checks.SHADOW_BYTES (16 MiB) the later
    # files keep no written copy, and their checks read the store instead
    line = b"lorem ipsum dolor sit amet\n"
    body = line * (900_000 // len(line))
    card = b"paid with 4111 1111 1111 1111\n"
    datas = {f"f{i:02d}.txt": body + (card if i in (2, 22) else b"") for i in range(24)}
    files = {}
    try:
        for n, data in datas.items():
            f = files[n] = open(pmnt / "in" / n, "wb")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    for n, data in datas.items():
        if n not in ("f02.txt", "f22.txt"):
            assert managed(pmnt / "in", n).read_bytes() == data
    qs = {os.getxattr(p, "user.seldon.origin"): p for p in (pmnt / "q").iterdir()}
    assert sorted(qs) == [b"in/f02.txt", b"in/f22.txt"]
    for n, p in qs.items():
        assert "card" in reason(p) and p.read_bytes() == datas[n.decode()[3:]]


# ---------------------------------------------------------------- routing


def test_routing_by_date_in_the_name(pmnt: Path) -> None:
    (pmnt / "inbox" / "2024-12-06_report.csv").write_text("a\n1\n")
    assert (pmnt / "sorted" / "2024" / "12" / "06" / "report.csv").read_text() == "a\n1\n"
    (pmnt / "inbox" / "2024-12-06_report.csv").write_text("a\n2\n")  # same target: kept apart
    assert (pmnt / "sorted" / "2024" / "12" / "06" / "report-1.csv").read_text() == "a\n2\n"
    (pmnt / "inbox" / "undated.csv").write_text("a\n")
    (q,) = list((pmnt / "q").iterdir())
    assert "routing pattern" in reason(q)
    assert names(pmnt / "inbox") == []


# ---------------------------------------------------------------- versions


def test_versions_are_kept_listed_and_restored(pmnt: Path, store: Path) -> None:
    r = pmnt / "reports" / "r.txt"
    r.write_text("one\n")
    r.write_text("two\n")  # O_TRUNC: keeps "one"
    with open(r, "a") as f:
        f.write("three\n")  # first write to an existing file: keeps "two"
    tmp = pmnt / "reports" / "r.new"
    tmp.write_text("four\n")
    os.rename(tmp, r)  # replace: keeps "two\nthree\n"
    os.truncate(r, 2)  # keeps "four\n"
    listing = json.loads(seldonfs("versions", r, "--json", check=True).stdout)
    assert [(v["n"], v["cause"], v["size"]) for v in listing] == [
        (1, "truncate", 5), (2, "replace", 10), (3, "overwrite", 4),  # count limit 3
    ]
    seldonfs("versions", r, "--restore", "2", check=True)
    assert r.read_text() == "two\nthree\n"
    listing = json.loads(seldonfs("versions", r, "--json", check=True).stdout)
    assert (listing[0]["cause"], listing[0]["size"]) == ("restore", 2)  # the restore is undoable
    assert ".seldon" not in names(pmnt)
    assert (store / "data" / ".seldon" / "versions").is_dir()  # kept outside the visible tree
    with pytest.raises(PermissionError):
        os.mkdir(pmnt / ".seldon")
    r2 = seldonfs("versions", r, "--restore", "9")
    assert r2.returncode == 2 and "no version 9" in r2.stderr


# ---------------------------------------------------------------- space floor


def test_space_floor(store: Path, tmp_path: Path) -> None:
    v = os.statvfs(store)
    free = 100 * v.f_bavail / v.f_blocks
    if free >= 99:
        pytest.skip("the test disk is almost empty; the floor cannot be reached")
    write_rules(store, "min_free = 99")
    m = tmp_path / "mnt"
    (store / "data" / "plain" / "grow.txt").write_bytes(b"")
    with mounted(store, m):
        with pytest.raises(OSError) as e:
            (m / "plain" / "new.txt").write_text("x")
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            with open(m / "plain" / "grow.txt", "wb", buffering=0) as f:
                f.write(b"more")
        assert e.value.errno == errno.ENOSPC
        (m / "temp" / "work" / "scratch.txt").write_text("temp/ is exempt")
        assert not (m / "plain" / "new.txt").exists()


def test_policy_free_folder_behaves_like_a_disk(pmnt: Path) -> None:
    p = pmnt / "plain"
    (p / "a.tmp").write_text("x")
    (p / "b").write_text("y")
    os.rename(p / "a.tmp", p / "c")
    assert names(p) == ["b", "c"]


def test_paths_beyond_path_max_work_without_rules(pmnt: Path) -> None:
    # the kernel cannot name an inode whose path is over 4096 bytes; no
    # folder rule can apply there, and every operation still works
    fd = os.open(pmnt / "in", os.O_RDONLY)
    try:
        for _ in range(17):
            os.mkdir("d" * 250, dir_fd=fd)
            nfd = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open("plain.bin", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=fd)
        try:
            os.write(f, b"abcdef")
            os.ftruncate(f, 2)
            assert os.pread(f, 10, 0) == b"ab"
        finally:
            os.close(f)
        os.rename("plain.bin", "still.bin", src_dir_fd=fd, dst_dir_fd=fd)
        assert os.listdir(fd) == ["still.bin"]  # not renamed: out of the rules' reach
    finally:
        os.close(fd)
