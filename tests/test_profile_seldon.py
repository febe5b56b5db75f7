"""Profile "seldon" (seed 000, Project Seldon's data area): its rules through a real mount."""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import init_store, mount_profile, mounted, needs_fuse, profile_rule, seldonfs

pytestmark = needs_fuse


def test_seldon_input_rules(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "seldon")
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"
        (raw / "prospect_data.json").write_text('{"prospect": 1}')
        (name,) = os.listdir(raw)
        assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-INP001-\d{3,}_prospect_data\.json", name)
        (raw / "people.csv").write_text("name,ssn\nann,078-05-1120\n")
        q = tmp_path / "mnt" / "input" / "quarantine"
        assert "social security" in os.getxattr(q / os.listdir(q)[0], "user.seldon.reason").decode()
        with pytest.raises(PermissionError):
            (raw / "notes.txt").write_text("not an allowed type")  # allow_extensions
        with pytest.raises(OSError) as e:
            with open(raw / "huge.csv", "wb") as f:
                f.seek(100 * 2**20)
                f.write(b"x")  # crosses 100 MiB
        assert e.value.errno == errno.EFBIG
        with pytest.raises(PermissionError):
            (tmp_path / "mnt" / "temp" / "loose.tmp").write_text("x")  # no files at temp/ root
        (tmp_path / "mnt" / "temp" / "processing" / "job.tmp").write_text("x")
        assert (q.stat().st_mode & 0o777) == 0o700


def test_seldon_reports_keep_versions(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "seldon")
    with m:
        r = tmp_path / "mnt" / "output" / "reports" / "q4.csv"
        for i in range(12):
            r.write_text(f"v{i}\n")
        out = seldonfs("versions", r, "--json", check=True).stdout
        assert out.count('"n"') == profile_rule("seldon", "output/reports").versions == 10


def test_seldon_retention_values() -> None:
    assert profile_rule("seldon", "input/raw").max_age == 30 * 86400
    assert profile_rule("seldon", "input/raw").action == "archive"
    assert profile_rule("seldon", "temp/processing").max_total == 100 * 2**30
    assert profile_rule("seldon", "temp/cache").evict == "lru"
    assert dict(profile_rule("seldon", "temp").patterns) == {"*.tmp": 43200, "*.log": 168 * 3600, "*.cache": 72 * 3600}


# ------------------------------------------------------------ protected data (issue 18)


def _seldon_store(tmp_path: Path, where: Path | None = None, edit=None, encrypted: bool = False) -> Path:
    from .conftest import init_store

    store = init_store((where or tmp_path) / "store", "--profile", "seldon", encrypted=encrypted)
    if edit is not None:
        conf = store / "seldonfs.toml"
        text = conf.read_text()
        conf.write_text(edit(text))
        assert conf.read_text() != text
    return store


def _audit(store: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in seldonfs("audit", store, "--json", check=True).stdout.splitlines()]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_seldon_emergency_on_a_disk_filled_from_outside_spares_archive_and_output(tmp_path: Path) -> None:
    """Issue 18: the store's disk is filled past the emergency level (90 %)
    by something outside the store. The emergency run deletes the temp
    folders that opt in with a priority, and nothing under archive/ or
    output/, old or new; with nothing more to delete it alerts
    emergency-stuck. A dry run says the same beforehand."""
    import json
    import time

    from seldonfs.host import disk_usage

    from .conftest import log_problems, mounted, small_disk, wait_for

    with small_disk(tmp_path / "small", 32) as small:
        store = _seldon_store(tmp_path, small, lambda t: t.replace('check_every = "5m"', 'check_every = "1s"', 1))
        m = tmp_path / "mnt"
        kept = ["archive/input_archive/2024/01/02/a.json.gz", "archive/output_archive/2024/01/02/r.pdf.gz",
                "archive/compliance/ledger.csv", "archive/historical/h.bin", "output/reports/summary.pdf",
                "output/deliverables/d.pdf", "output/exports/e.csv"]
        chunk = os.urandom(1 << 20)
        with mounted(store, m):
            for rel in kept:
                (m / rel).parent.mkdir(parents=True, exist_ok=True)
                (m / rel).write_bytes(chunk)
            old = time.time() - 3 * 86400  # old enough for anything but their own max_age
            for rel in kept[1:2] + kept[4:]:
                os.utime(m / rel, (old, old))
            (m / "temp" / "cache" / "c.bin").write_bytes(chunk)  # priority 10: emergency may take it
        _, used, total = disk_usage(small)
        (small / "other").write_bytes(os.urandom(total * 93 // 100 - used))  # filled from outside the store
        dry = seldonfs("janitor", store, "--emergency", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        planned = [(a["kind"], a["rel"]) for a in map(json.loads, dry.stdout.splitlines())]
        assert planned == [("delete", "temp/cache/c.bin")], dry.stdout
        assert "bytes stay over the warning level" in dry.stderr, dry.stderr
        with mounted(store, m, expect_log_problems=True):  # its disk check runs at once
            wait_for(lambda: any("emergency-stuck" in line for line in log_problems(store)), what="emergency-stuck")
            assert not (m / "temp" / "cache" / "c.bin").exists()  # the run happened
            for rel in kept:
                assert (m / rel).read_bytes() == chunk, rel
            assert disk_usage(small)[0] > 80  # still full: nothing else was taken
        deleted = {r["path"] for r in _audit(store) if r["op"] == "janitor-delete"}
        assert deleted == {"temp/cache/c.bin"}, deleted


def test_seldon_emergency_plan_never_names_archive_or_output() -> None:
    """Pure plan over the shipped profile: only folders with a priority."""
    from seldonfs.janitor import Entry, emergency_plan

    from .conftest import profile_config

    cfg = profile_config("seldon")
    rels = ["archive/input_archive/2024/01/02/a.json.gz", "archive/compliance/x.pdf", "output/reports/summary.pdf",
            "output/notifications/n.json", "input/processed/p.csv", "temp/working/w", "temp/cache/c"]
    entries = [Entry(rel, 10, 0.0, 0.0) for rel in rels]
    assert sorted(a.rel for a in emergency_plan(cfg, entries, 10**12)) == ["temp/cache/c", "temp/working/w"]
    assert {r.path for r in cfg.folders if r.priority is not None} == {
        "temp/processing", "temp/cache", "temp/working", "temp/sessions", "temp/cleanup"}


@pytest.mark.parametrize("kind", ["plain", "encrypted"])  # encrypted: the kernel's writeback cache is on
def test_seldon_compliance_is_write_once(kind: str, tmp_path: Path) -> None:
    """archive/compliance: a record, once closed under its final name, is
    not deleted, renamed away or over, opened for writing, truncated,
    linked, re-moded, re-timed or re-attributed through the mount, not
    even by root: EPERM, each in the audit chain. A temporary name is not
    a record yet; renamed to its final name, it is. A mount's janitor
    asked to plan 8 years ahead still keeps it; offline, the operator's
    `janitor STORE --as-of +8y` removes it, saying why."""
    from .conftest import key_args, mounted

    store = _seldon_store(tmp_path, encrypted=kind == "encrypted")
    m = tmp_path / "mnt"
    with mounted(store, m):
        c = m / "archive" / "compliance"
        rec = c / "ledger.csv"
        with open(rec, "wb") as f:  # the writer may finish it (and set its times) while it is open
            f.write(b"a,b\n1,2\n")
            f.flush()
            os.utime(rec, (1e9, 1e9))  # an old mtime: its retention still runs from its arrival (ctime)
        (m / "output" / "exports" / "other.csv").write_text("x\n")
        held = [
            ("unlink", lambda: os.unlink(rec)),
            ("rename", lambda: os.rename(rec, m / "output" / "exports" / "moved.csv")),
            ("rename", lambda: os.rename(rec, c / "renamed.csv")),
            ("rename", lambda: os.rename(m / "output" / "exports" / "other.csv", rec)),  # over it
            ("open", lambda: open(rec, "r+b")),
            ("open", lambda: open(rec, "wb")),
            ("open", lambda: open(rec, "ab")),
            ("setattr", lambda: os.truncate(rec, 0)),
            ("link", lambda: os.link(rec, m / "output" / "exports" / "second-name.csv")),
            ("setattr", lambda: os.chmod(rec, 0o666)),
            ("setattr", lambda: os.chown(rec, 1234, 1234)),
            ("setattr", lambda: os.utime(rec, (0, 0))),
            ("setxattr", lambda: os.setxattr(rec, "user.note", b"x")),
            ("setxattr", lambda: os.setxattr(rec, "user.seldon.job", b"J")),
            ("removexattr", lambda: os.removexattr(rec, "user.note")),
            ("rename", lambda: os.rename(c, m / "archive" / "gone")),  # the folder, and one around it
            ("rename", lambda: os.rename(m / "archive", m / "archive2")),
            ("link", lambda: os.link(m / "output" / "exports" / "other.csv", c / "linked.csv")),
        ]
        for op, call in held:
            with pytest.raises(PermissionError) as e:
                call()
            assert e.value.errno == errno.EPERM, op
        assert rec.read_bytes() == b"a,b\n1,2\n" and rec.stat().st_mtime == 1e9  # reading is fine
        with open(m / "output" / "exports" / "open.csv", "wb"):  # a handle that could write it later
            with pytest.raises(PermissionError):
                os.rename(m / "output" / "exports" / "open.csv", c / "open.csv")
        tmp = c / ".upload.csv.tmp"  # rsync's way: a temporary name, then the final one
        tmp.write_text("1\n")
        tmp.write_text("2\n")
        os.rename(tmp, c / "upload.csv")
        with pytest.raises(PermissionError):
            (c / "upload.csv").write_text("3\n")
        os.mkdir(c / "2024")  # folders may be made and removed
        os.rmdir(c / "2024")
        for ahead in (["--as-of", "+8y"], ["--older-than", "1s"]):  # the mount keeps to the real clock
            time.sleep(1.1)
            r = seldonfs("janitor", m, *ahead, "--folder", "archive/compliance")
            assert r.returncode == 0, r.stderr
            assert sorted(os.listdir(c)) == ["ledger.csv", "upload.csv"], ahead
    refused = [(r["op"], r["path"]) for r in _audit(store) if r["result"] == "EPERM"]
    for op, _ in held:
        assert (op, "archive/compliance/ledger.csv") in refused or op in ("rename", "link"), (op, refused)
    assert sum(1 for op, path in refused if path == "archive/compliance/ledger.csv") >= 14, refused
    assert ("open", "archive/compliance/upload.csv") in refused
    dry = seldonfs("janitor", store, "--as-of", "+8y", "--folder", "archive/compliance", "--dry-run")
    assert dry.stdout.count("write-once, planned with --as-of +8y") == 2, dry.stdout
    r = seldonfs("janitor", store, "--as-of", "+8y", "--folder", "archive/compliance", *key_args(store))
    assert r.returncode == 0 and "2 delete" in r.stdout, r.stdout + r.stderr
    assert not (store / "data" / "archive" / "compliance" / "ledger.csv").exists()
    gone = [r for r in _audit(store) if r["op"] == "janitor-delete" and r["path"] == "archive/compliance/ledger.csv"]
    assert len(gone) == 1 and "--as-of +8y" in gone[0]["detail"], gone
    assert seldonfs("audit", "verify", store, *key_args(store)).returncode == 0


def test_seldon_write_once_ends_with_its_retention(tmp_path: Path) -> None:
    """With a 2 s retention: held at first, then deletable by anyone who
    may, and the janitor removes what is left."""
    import time

    from .conftest import mounted, wait_for

    store = _seldon_store(tmp_path, edit=lambda t: t.replace(
        'max_age = "7y"\nwrite_once = true', 'max_age = "2s"\nwrite_once = true', 1).replace(
        'segments_to = "archive/compliance/audit"', 'segments_to = "archive/audit"'))  # kept 7 y
    m = tmp_path / "mnt"
    with mounted(store, m):
        c = m / "archive" / "compliance"
        (c / "a.csv").write_text("1\n")
        (c / "b.csv").write_text("2\n")
        with pytest.raises(PermissionError):
            os.unlink(c / "a.csv")
        t0 = time.time()
        wait_for(lambda: time.time() > t0 + 2.5, what="the retention")
        os.unlink(c / "a.csv")
        r = seldonfs("janitor", m)
        assert r.returncode == 0 and "1 delete" in r.stdout, r.stdout + r.stderr
        assert os.listdir(c) == []


def test_seldon_archives_by_date_with_metadata_and_unique_names(tmp_path: Path) -> None:
    """Seed 000 §3.2: archive/<kind>/YYYY/MM/DD/<name>.gz with a record of
    the original path, sizes, ratio, checksum, rule and times. A second
    summary.pdf archived the same day gets a name of its own (it used to
    be skipped with "File exists" on every run)."""
    import gzip
    import hashlib
    import json
    import time

    from .conftest import archive_day, mounted

    store = _seldon_store(tmp_path)
    m = tmp_path / "mnt"
    bodies = [b"%PDF-1.4 first " * 300, b"%PDF-1.4 second " * 200]
    with mounted(store, m):
        rep = m / "output" / "reports" / "summary.pdf"
        for body in bodies:
            rep.write_bytes(body)
            old = time.time() - 100 * 86400  # reports are archived after 90 days
            os.utime(rep, (old, old))
            r = seldonfs("janitor", m)
            assert r.returncode == 0 and "1 archive" in r.stdout and "0 skipped" in r.stdout, r.stdout + r.stderr
        day = archive_day(m / "archive" / "output_archive")
        assert sorted(os.listdir(day)) == ["summary-1.pdf.gz", "summary-1.pdf.gz.meta.json",
                                           "summary.pdf.gz", "summary.pdf.gz.meta.json"]
        for gz, body in (("summary.pdf.gz", bodies[0]), ("summary-1.pdf.gz", bodies[1])):
            packed = (day / gz).read_bytes()
            assert gzip.decompress(packed) == body
            meta = json.loads((day / (gz + ".meta.json")).read_text())
            assert meta["original"] == "output/reports/summary.pdf" and meta["rule"] == "output/reports"
            assert (meta["size"], meta["compressed_size"]) == (len(body), len(packed))
            assert meta["compression_ratio"] == round(len(packed) / len(body), 4)
            assert meta["sha256"] == hashlib.sha256(body).hexdigest() and meta["codec"] == "gzip"
            assert abs(meta["mtime"] - old) < 5
            assert meta["archive_date"].replace("-", "/").startswith(str(day.relative_to(m / "archive/output_archive")))
        assert not rep.exists()


# ---------------------------------------------------------------- names writers can live with (issue 18)

STAT_ERRNO = "import os, sys\ntry:\n    os.stat(sys.argv[1]); print('found')\nexcept OSError as e:\n    print(e.errno)"
SEQ = re.compile(r"^\d{4}(-\d\d){5}-\d{3}-INP001-(?P<seq>\d+)_(?P<name>.+)$")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory other users can traverse. Not below pytest's
    tmp_path: a pytest session starting meanwhile (another checkout's)
    makes /tmp/pytest-of-USER 0700 again."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="seldonfs-test-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _audit_in_mount(mnt: Path, op: str) -> list[dict]:
    import json

    lines = (mnt / "system" / "logs" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["op"] == op]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_seldon_the_old_name_is_the_writers_users_for_the_grace_only(open_tmp: Path, encrypted: bool) -> None:
    import subprocess

    from .conftest import as_user

    tmp_path = open_tmp
    src = tmp_path / "x.json"
    src.write_text('{"x": 1}')
    store, m = mount_profile(tmp_path, "seldon", encrypted=encrypted)
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"
        # two processes of the same user: cp commits at close, chmod finds the old name
        subprocess.run(["sh", "-c", 'cp "$1" "$2"/ && chmod 600 "$2"/x.json', "sh", src, raw], check=True)
        (name,) = os.listdir(raw)  # readdir shows the real name only
        assert SEQ.match(name)["name"] == "x.json" and (raw / name).stat().st_mode & 0o777 == 0o600
        assert os.stat(raw / "x.json").st_ino == os.stat(raw / name).st_ino
        # another user neither reaches the file by its old name nor learns where it went
        assert as_user(65534, 65534, STAT_ERRNO, str(raw / "x.json")).stdout.strip() == str(errno.ENOENT)
        # and the name is free for it: a real entry made now is what everyone sees by that name
        os.chmod(raw, 0o1777)
        made = as_user(65534, 65534, "import os, sys\nos.mkdir(sys.argv[1])", str(raw / "x.json"))
        assert made.returncode == 0, made.stderr
        assert (raw / "x.json").is_dir()  # the writer's grace does not shadow it


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_seldon_rsync_twice_keeps_one_copy(open_tmp: Path, encrypted: bool) -> None:
    import subprocess
    import time

    from .conftest import as_user

    tmp_path = open_tmp
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.json").write_text(f'{{"n": {i}}}')
    (src / "t.csv").write_text("a,b\n1,2\n")
    store = tmp_path / "store"
    _, m = mount_profile(tmp_path, "seldon", encrypted=encrypted)
    cfg = store / "seldonfs.toml"
    cfg.write_text(cfg.read_text().replace('grace = "10s"', 'grace = "1s"'))
    with m:
        raw = tmp_path / "mnt" / "input" / "raw"

        def rsync() -> list[str]:
            r = subprocess.run(["rsync", "-a", f"{src}/", f"{raw}/"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            return sorted(os.listdir(raw))

        first = rsync()
        assert len(first) == 6 and {SEQ.match(n)["name"] for n in first} == {p.name for p in src.iterdir()}
        assert rsync() == first  # at once: rsync finds its names (the grace), nothing is sent
        time.sleep(1.5)  # past the grace: rsync sends every file again
        assert rsync() == first
        dups = _audit_in_mount(tmp_path / "mnt", "duplicate")
        assert len(dups) == 6
        assert {d["path2"] for d in dups} == {f"input/raw/{n}" for n in first}
        assert all(d["detail"].startswith(f"duplicate of {d['path2']}") for d in dups)
        # the same name with other content is a new file
        (src / "f0.json").write_text('{"n": 100}')
        assert len(rsync()) == 7
        # a hard link under the original name is the same file again
        f1 = next(n for n in first if n.endswith("_f1.json"))
        time.sleep(1.5)  # until then the name is still taken for this user (EEXIST)
        os.link(raw / f1, raw / "f1.json")
        assert len(os.listdir(raw)) == 7 and (raw / f1).read_text() == '{"n": 1}'
        # another owner's identical file is not taken for a copy of this one
        os.chmod(raw, 0o1777)
        code = "import sys\nopen(sys.argv[1], 'w').write(sys.argv[2])"
        assert as_user(65534, 65534, code, str(raw / "f2.json"), '{"n": 2}').returncode == 0
        assert len(os.listdir(raw)) == 8


def _seqs(raw: Path) -> list[int]:
    return sorted(int(SEQ.match(n)["seq"]) for n in os.listdir(raw))


def test_seldon_sequence_numbers_go_on_across_remounts_and_wrap_at_999(tmp_path: Path) -> None:
    import sqlite3

    from seldonfs.commit import SEQ_BLOCK

    from .conftest import init_store, mounted

    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    mnt = tmp_path / "mnt"
    raw = mnt / "input" / "raw"
    for i in range(3):  # clean remounts: one number after another
        with mounted(store, mnt):
            (raw / f"r{i}.json").write_text(f'{{"r": {i}}}')
            assert _seqs(raw) == list(range(1, i + 2))
    # kill -9: the rest of the reserved block is lost, no more
    with mounted(store, mnt, expect_log_problems=True) as proc:
        (raw / "k.json").write_text('{"k": 1}')
        proc.kill()
        proc.wait()
    with mounted(store, mnt, expect_log_problems=True):
        (raw / "after.json").write_text('{"after": 1}')
        seqs = _seqs(raw)
    assert seqs[:4] == [1, 2, 3, 4] and seqs[4] == 4 + SEQ_BLOCK
    # the end of the range: {seq:03d} shows 999 at most, then 001 again
    with sqlite3.connect(store / "catalog.sqlite") as conn:
        conn.execute("UPDATE sequences SET next = 998 WHERE job = 'INP001'")
    with mounted(store, mnt):
        for i in range(3):
            (raw / f"w{i}.json").write_text(f'{{"w": {i}}}')
        wrapped = {SEQ.match(n)["name"]: SEQ.match(n)["seq"] for n in os.listdir(raw) if n.endswith(("_w0.json", "_w1.json", "_w2.json"))}
        assert wrapped == {"w0.json": "998", "w1.json": "999", "w2.json": "001"}
        assert len(os.listdir(raw)) == 5 + 3  # every name its own file


def _ts(name: str) -> float:
    """The seconds since the epoch a seed-000 name's time says, read as UTC."""
    from datetime import datetime, timezone

    m = re.match(r"(\d{4})-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d{3})-", name)
    assert m, name
    y, mo, d, h, mi, s, ms = map(int, m.groups())
    return datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=timezone.utc).timestamp()


def test_seldon_names_in_utc_or_local_time(tmp_path: Path) -> None:
    """Issue 18: names show UTC unless the folder says naming_time =
    "local" (the mount's TZ); seed 000 §2.3. The mount runs at UTC+14 here,
    so the two names' times are 14 hours apart."""
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    assert '[folders."input/uploads"]\n' in text
    cfg.write_text(text.replace('[folders."input/uploads"]\n', '[folders."input/uploads"]\nnaming_time = "local"\n'))
    with mounted(store, tmp_path / "mnt", env={"TZ": "XYZ-14"}):  # POSIX TZ: 14 hours east of UTC
        t0 = time.time()
        (tmp_path / "mnt" / "input" / "raw" / "a.json").write_text("{}")
        (tmp_path / "mnt" / "input" / "uploads" / "b.json").write_text("{}")
        t1 = time.time()
        (utc,) = os.listdir(tmp_path / "mnt" / "input" / "raw")
        (local,) = os.listdir(tmp_path / "mnt" / "input" / "uploads")
    assert t0 - 1 <= _ts(utc) <= t1 + 1, (utc, t0)
    assert t0 - 1 <= _ts(local) - 14 * 3600 <= t1 + 1, (local, t0)
    assert profile_rule("seldon", "input/raw").naming_time == "utc"


def test_seldon_report_and_temp_names_as_seed_000(tmp_path: Path) -> None:
    """Issue 18: where a store asks for them (the shipped profile does not:
    reports keep versions, temp files keep their names), reports and temp
    files get seed 000's names: 2024-12-06-14-35-12-456-RPT001-001_executive_summary.pdf
    and 2024-12-06-14-30-45-789-TMP001-001_processing_cache.tmp."""
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=False)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    naming = 'naming = "{ts}-{job}-{seq:03d}_{name}"\n'
    for folder, job in (("output/exports", "RPT001"), ("temp/working", "TMP001")):
        table = f'[folders."{folder}"]\n'
        assert table in text
        text = text.replace(table, f'{table}{naming}job = "{job}"\n')
    text = text.replace('temp_patterns = [".*", "*.tmp", ', 'temp_patterns = [".*", ')  # .tmp is a real name here
    cfg.write_text(text)
    with mounted(store, tmp_path / "mnt"):
        (tmp_path / "mnt" / "output" / "exports" / "executive_summary.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
        (tmp_path / "mnt" / "temp" / "working" / "processing_cache.tmp").write_text("cache")
        (report,) = os.listdir(tmp_path / "mnt" / "output" / "exports")
        (temp,) = os.listdir(tmp_path / "mnt" / "temp" / "working")
    assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-RPT001-001_executive_summary\.pdf", report), report
    assert re.fullmatch(r"\d{4}(-\d\d){5}-\d{3}-TMP001-001_processing_cache\.tmp", temp), temp
