"""Distribution tracking (issue 19, seed 000 §5.3) through a real mount of
the seldon profile: recipients set with user.seldon.recipient, downloads
counted at open, the records read and changed with `seldonfs
distributions`, expiry carried out by the janitor."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from seldonfs.config import parse
from seldonfs.errors import ConfigError

from .conftest import as_user, init_store, key_args, mounted, needs_fuse, profile_rule, seldonfs

pytestmark = needs_fuse

RECIPIENT = "user.seldon.recipient"
ANN = b"Ann Example <ann@example.org>"
BOB = b"bob@example.org"


def records(target: Path) -> list[dict]:
    r = seldonfs("distributions", target, "list", "--json", *key_args(target))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def audit_of(store: Path, op: str) -> list[dict]:
    out = seldonfs("audit", store, "--json", "--op", op, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def seldon_store(tmp_path: Path, encrypted: bool = False, **rule: str) -> Path:
    """A seldon store whose output/distributed table has `rule`'s keys changed."""
    store = init_store(tmp_path / "store", "--profile", "seldon", encrypted=encrypted)
    cfg = store / "seldonfs.toml"
    text = cfg.read_text()
    for key, value in rule.items():
        old = next(line for line in text.splitlines() if line.startswith(f"{key} ") and "§5.3" in line)
        text = text.replace(old, f'{key} = "{value}"')
    cfg.write_text(text)
    return store


def read_by_another_process(path: Path) -> int:
    """`cat` in a process of its own; returns its pid."""
    p = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    out, _ = p.communicate()
    assert p.returncode == 0 and out
    return p.pid


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_done_means(tmp_path: Path, encrypted: bool) -> None:
    """A recipient set on a file, two reads by two processes: download_count
    2 and the first-opened time; then expiry (2 s in the folder rule) by a
    janitor run through the mount archives the file and marks the record."""
    store = seldon_store(tmp_path, encrypted, distribution_expiry="2s")
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "q4-report.pdf"
        f.write_bytes(b"%PDF-1.4 the report\n")
        t0 = time.time_ns()
        os.setxattr(f, RECIPIENT, ANN)
        pids = [read_by_another_process(f), read_by_another_process(f)]
        assert pids[0] != pids[1]
        (rec,) = records(mnt)
        assert rec["download_count"] == 2
        assert rec["recipient_name"] == "Ann Example" and rec["recipient_address"] == "ann@example.org"
        assert rec["status"] == "sent" and rec["path"] == "output/distributed/q4-report.pdf"
        assert t0 <= rec["sent_ns"] <= rec["first_opened_ns"] <= time.time_ns()
        assert rec["expires_ns"] == rec["sent_ns"] + 2 * 10**9
        if not encrypted:
            import hashlib

            assert rec["checksum"] == hashlib.sha256(b"%PDF-1.4 the report\n").hexdigest()
        # the two downloads are audit records of the two readers
        downloads = audit_of(mnt, "download")
        assert sorted(d["pid"] for d in downloads) == sorted(pids)
        assert all(d["path"] == "output/distributed/q4-report.pdf" and d["uid"] == 0 for d in downloads)

        # expiry: wait until the record's own expiry has passed, then a janitor run
        while time.time_ns() <= rec["expires_ns"]:
            time.sleep(0.2)
        r = seldonfs("janitor", mnt)
        assert r.returncode == 0, r.stderr
        assert "1 archive" in r.stdout + r.stderr
        (rec,) = records(mnt)
        assert rec["status"] == "expired" and rec["outcome"] == "archived"
        assert rec["expired_ns"] >= rec["expires_ns"]
        assert not f.exists()
        archived = mnt / "archive" / "output_archive" / "output" / "distributed"
        assert sorted(os.listdir(archived)) == ["q4-report.pdf.gz", "q4-report.pdf.gz.meta.json"]
        # an expired record counts no more; the status stays
        assert seldonfs("distributions", mnt, "status", str(rec["id"]), "delivered").returncode == 2
        assert records(mnt)[0]["download_count"] == 2


def test_expiry_offline_with_older_than(tmp_path: Path) -> None:
    """The default 30 days, the clock moved with the janitor's --older-than
    on the unmounted store; a dry run first changes nothing."""
    store = seldon_store(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "export.csv"
        f.write_text("a,b\n1,2\n")
        os.setxattr(f, RECIPIENT, ANN)
        os.setxattr(f, RECIPIENT, BOB)
        (mnt / "output" / "distributed" / "other.csv").write_text("no recipient\n")
    assert profile_rule("seldon", "output/distributed").distribution_expiry == 30 * 86400
    r = seldonfs("janitor", store, "--older-than", "29d", "--json", "--dry-run")
    assert "export.csv" not in r.stdout
    r = seldonfs("janitor", store, "--older-than", "31d", "--json", "--dry-run")
    (planned,) = [json.loads(line) for line in r.stdout.splitlines() if "distributed" in line]
    assert planned["kind"] == "archive" and planned["rel"] == "output/distributed/export.csv"
    assert [x["status"] for x in records(store)] == ["sent", "sent"]  # a dry run
    r = seldonfs("janitor", store, "--older-than", "31d")
    assert r.returncode == 0, r.stderr
    recs = records(store)
    assert [(x["status"], x["outcome"]) for x in recs] == [("expired", "archived")] * 2
    data = store / "data" / "output" / "distributed"
    assert os.listdir(data) == ["other.csv"]  # a file without a record stays
    assert (store / "data" / "archive" / "output_archive" / "output" / "distributed" / "export.csv.gz").exists()


def test_list_show_status(tmp_path: Path) -> None:
    store = seldon_store(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "deck.pdf"
        f.write_bytes(b"%PDF-1.4 deck")
        os.setxattr(f, RECIPIENT, ANN)
        os.setxattr(f, RECIPIENT, BOB)
        os.setxattr(f, RECIPIENT, ANN)  # the same address, same content: no second record
        a, b = records(mnt)
        assert (a["recipient_address"], b["recipient_address"]) == ("ann@example.org", "bob@example.org")
        assert b["recipient_name"] == ""
        show = seldonfs("distributions", mnt, "show", str(b["id"]), "--json", check=True)
        assert json.loads(show.stdout) == b
        text = seldonfs("distributions", mnt, check=True).stdout  # list is the default
        assert "bob@example.org" in text and "2 record(s)" in text

        # revoked: counts no more; delivered: does
        r = seldonfs("distributions", mnt, "status", str(a["id"]), "revoked", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"id": a["id"], "status": "revoked"}
        seldonfs("distributions", mnt, "status", str(b["id"]), "delivered", check=True)
        f.read_bytes()
        a, b = records(mnt)
        assert (a["status"], a["download_count"]) == ("revoked", 0)
        assert (b["status"], b["download_count"]) == ("delivered", 1)
        assert a["status_ns"] > a["sent_ns"]
        assert [x["detail"] for x in audit_of(mnt, "distribution")] == [
            f"record {a['id']}: revoked", f"record {b['id']}: delivered"]
        seldonfs("distributions", mnt, "status", str(a["id"]), "sent", check=True)
        f.read_bytes()
        assert [x["download_count"] for x in records(mnt)] == [1, 2]

        # usage errors: exit 2, one line
        for args in (["show"], ["show", "99"], ["show", "x"], ["status", "1"], ["status", "1", "expired"],
                     ["status", "99", "sent"], ["list", "1"]):
            r = seldonfs("distributions", mnt, *args)
            assert r.returncode == 2, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # unmounted: status under the store lock, and still an audit record
    r = seldonfs("distributions", store, "status", str(a["id"]), "failed")
    assert r.returncode == 0, r.stderr
    assert records(store)[0]["status"] == "failed"
    assert audit_of(store, "distribution")[-1]["detail"] == f"record {a['id']}: failed"
    assert seldonfs("distributions", tmp_path, "list").returncode == 14  # not a store


HOSTILE = [
    b"Ann <ann@example.org>\nBcc: x@example.org",
    b"\x1b[31mAnn\x1b[0m <ann@example.org>",
    b"Ann <" + b"a" * 10_000 + b"@example.org>",
    b"Ann \xff\xfe <ann@example.org>",
    b"",
    b"Ann",
    b"Ann <not an address>",
    b"<ann@example.org> <bob@example.org>",
    b"Ann <ann@example.org>\x00",
    "Ann\u202e <ann@example.org>".encode(),
]


def test_hostile_recipients_fail_with_einval(tmp_path: Path) -> None:
    store = seldon_store(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "r.json"
        f.write_text("{}")
        for value in HOSTILE:
            with pytest.raises(OSError) as e:
                os.setxattr(f, RECIPIENT, value)
            assert e.value.errno == errno.EINVAL, value
        # outside a folder with a distribution rule; a directory
        other = mnt / "output" / "exports" / "r.json"
        other.write_text("{}")
        for target in (other, mnt / "output" / "distributed"):
            with pytest.raises(OSError) as e:
                os.setxattr(target, RECIPIENT, ANN)
            assert e.value.errno == errno.EINVAL, target
        # never readable, never stored on the file
        os.setxattr(f, RECIPIENT, ANN)
        with pytest.raises(OSError) as e:
            os.getxattr(f, RECIPIENT)
        assert e.value.errno == errno.ENODATA
        assert RECIPIENT not in os.listxattr(f)
        assert RECIPIENT not in os.listxattr(store / "data" / "output" / "distributed" / "r.json")
        assert len(records(mnt)) == 1
        refused = [x for x in audit_of(mnt, "setxattr") if x["result"] == "EINVAL"]
        assert len(refused) >= len(HOSTILE)


@pytest.fixture
def reachable() -> Path:
    """A directory another user can traverse to: not under pytest's
    /tmp/pytest-of-root, whose mode another pytest run may set back to 0700
    at any moment."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="seldonfs-dist-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_another_user(reachable: Path) -> None:
    """A second local user may read a tracked file (a download like any)
    and write it, but may not set a recipient, change a status or read
    the addresses."""
    store = seldon_store(reachable)
    mnt = reachable / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "shared.txt"
        f.write_text("for everyone\n")
        os.chmod(f, 0o666)
        os.setxattr(f, RECIPIENT, ANN)
        code = (
            "import errno, os, sys\n"
            "f, root = sys.argv[1], sys.argv[2]\n"
            "open(f).read()\n"
            "for target, name, value in ((f, 'user.seldon.recipient', b'Eve <eve@example.org>'),\n"
            "                            (root, 'user.seldon.distribution', b'1 revoked')):\n"
            "    try: os.setxattr(target, name, value); print('set')\n"
            "    except OSError as e: print(errno.errorcode[e.errno])\n"
            "for p in (f, root):\n"
            "    try: os.getxattr(p, 'user.seldon.recipient'); print('read')\n"
            "    except OSError as e: print(errno.errorcode[e.errno])\n"
            "for p in (sys.argv[3], os.path.join(root, 'system/monitoring/stats.json')):\n"
            "    try: open(p, 'rb'); print('read')\n"
            "    except OSError as e: print(errno.errorcode[e.errno])\n"
        )
        r = as_user(65534, 65534, code, str(f), str(mnt), str(store / "catalog.sqlite"))
        assert r.returncode == 0, r.stderr
        got = r.stdout.split()
        assert got[0] == "EPERM" and got[1] in ("EPERM", "EACCES"), got  # the kernel may refuse first (root is 0755)
        assert got[2:] == ["ENODATA", "ENODATA", "EACCES", "EACCES"], got
        assert "ann@" not in (mnt / "system" / "monitoring" / "stats.json").read_text()
        (rec,) = records(mnt)
        assert (rec["status"], rec["download_count"]) == ("sent", 1)  # nobody's read counted
        (d,) = audit_of(mnt, "download")
        assert d["uid"] == 65534
        # the address is nowhere but the catalog: not in the audit chain
        out = seldonfs("audit", mnt, "--json", check=True).stdout
        assert "ann@example.org" not in out
    assert os.stat(store / "catalog.sqlite").st_mode & 0o077 == 0


def test_changes_to_a_tracked_file(tmp_path: Path) -> None:
    """Overwritten: the record keeps what was sent and notes the change; a
    recipient set after it gets the new checksum. Renamed (also with its
    folder, also out of the tracked folder): the record follows. Removed:
    settled as gone. Writes are not downloads."""
    store = seldon_store(tmp_path)
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        d = mnt / "output" / "distributed"
        (d / "batch").mkdir()
        f = d / "batch" / "r.txt"
        f.write_text("first\n")
        os.setxattr(f, RECIPIENT, ANN)
        (first,) = records(mnt)
        assert first["modified_ns"] is None
        with open(f, "a") as w:  # O_WRONLY: a change, not a download
            w.write("second\n")
        (rec,) = records(mnt)
        assert rec["checksum"] == first["checksum"] and rec["download_count"] == 0
        assert rec["modified_ns"] >= rec["sent_ns"]
        os.setxattr(f, RECIPIENT, ANN)  # same address, new content: a new record
        a, b = records(mnt)
        assert b["checksum"] != a["checksum"] and b["size"] == len("first\nsecond\n")

        os.rename(d / "batch", d / "batch-2")
        assert {x["path"] for x in records(mnt)} == {"output/distributed/batch-2/r.txt"}
        os.rename(d / "batch-2" / "r.txt", mnt / "output" / "exports" / "r.txt")
        (mnt / "output" / "exports" / "r.txt").read_text()
        assert [(x["path"], x["download_count"]) for x in records(mnt)] == [("output/exports/r.txt", 1)] * 2

        # moved out of distribution: at expiry the records are settled, the file kept
        r = seldonfs("janitor", mnt, "--older-than", "31d")
        assert r.returncode == 0, r.stderr
        assert [(x["status"], x["outcome"]) for x in records(mnt)] == [("expired", "kept")] * 2
        assert (mnt / "output" / "exports" / "r.txt").exists()

        g = d / "gone.txt"
        g.write_text("x")
        os.setxattr(g, RECIPIENT, BOB)
        g.unlink()
        assert records(mnt)[-1]["outcome"] == "gone"
        h = d / "new.txt"  # a new file, perhaps on the old inode number: no record, no count
        h.write_text("y")
        h.read_text()
        assert records(mnt)[-1]["download_count"] == 0
        assert len(audit_of(mnt, "download")) == 1


def test_counts_in_report_and_metrics(tmp_path: Path) -> None:
    store = seldon_store(tmp_path, distribution_expiry="1s")
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        d = mnt / "output" / "distributed"
        (d / "a.txt").write_text("a")
        os.setxattr(d / "a.txt", RECIPIENT, ANN)
        (d / "a.txt").read_text()
        stats = json.loads((mnt / "system" / "monitoring" / "stats.json").read_text())
        assert stats["distributions"] == {"open": 1, "expired": 0, "closed": 0, "downloads": 1}
        time.sleep(1.1)
        (d / "b.txt").write_text("b")
        os.setxattr(d / "b.txt", RECIPIENT, BOB)
        while time.time_ns() <= records(mnt)[0]["expires_ns"]:
            time.sleep(0.1)
        seldonfs("janitor", mnt, "--folder", "output/distributed", check=True)
        rep = json.loads(seldonfs("report", mnt, "--json", check=True).stdout)
        assert rep["distributions"]["expired"] >= 1 and rep["distributions"]["downloads"] == 1
        text = seldonfs("report", mnt, check=True).stdout
        assert "Distributions" in text and "expired" in text
        stats = json.loads((mnt / "system" / "monitoring" / "stats.json").read_text())
        assert stats["distributions"]["expired"] == rep["distributions"]["expired"]


def test_an_old_catalog_gets_the_table_at_mount(tmp_path: Path) -> None:
    store = seldon_store(tmp_path)
    with mounted(store, tmp_path / "mnt"):
        pass
    conn = sqlite3.connect(store / "catalog.sqlite")
    conn.execute("DROP TABLE distributions")
    conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert records(store) == []  # read before the migration: nothing, no error
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "x.txt"
        f.write_text("x")
        os.setxattr(f, RECIPIENT, ANN)
        assert len(records(mnt)) == 1
    conn = sqlite3.connect(store / "catalog.sqlite")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("6",)
    conn.close()


def test_config_keys() -> None:
    rule = profile_rule("seldon", "output/distributed")
    assert (rule.distribution, rule.distribution_action, rule.archive_to) == (True, "archive", "archive/output_archive")
    base = {"store": {"profile": "t"}}
    with pytest.raises(ConfigError, match="archive_to: required"):
        parse({**base, "folders": {"out": {"distribution": True}}}, "t.toml")
    with pytest.raises(ConfigError, match="distribution_action"):
        parse({**base, "folders": {"out": {"distribution": True, "distribution_action": "mail"}}}, "t.toml")
    r = parse({**base, "folders": {"out": {"distribution": True, "distribution_action": "delete",
                                           "distribution_expiry": "2s"}}}, "t.toml").folders[0]
    assert (r.distribution_expiry, r.distribution_action) == (2.0, "delete")


@pytest.mark.parametrize("value, want", [
    (b"Ann Example <ann@example.org>", ("Ann Example", "ann@example.org")),
    (b'"Doe, Jane" <jane.doe+reports@mail.example.org>', ("Doe, Jane", "jane.doe+reports@mail.example.org")),
    ("Zoë Ñúñez <zoe@example.org>".encode(), ("Zoë Ñúñez", "zoe@example.org")),
    (b"  bob@example.org  ", ("", "bob@example.org")),
    (b"<carol@example.org>", ("", "carol@example.org")),
])
def test_parse_recipient(value: bytes, want: tuple[str, str]) -> None:
    from seldonfs.distributions import parse_recipient

    assert parse_recipient(value) == want


@pytest.mark.parametrize("value", HOSTILE)
def test_parse_recipient_refuses(value: bytes) -> None:
    from seldonfs.distributions import parse_recipient

    with pytest.raises(ValueError) as e:
        parse_recipient(value)
    assert "\n" not in str(e.value)


def test_emergency_cleanup_leaves_distributed_files() -> None:
    """A distribution folder is the janitor's for expiry only: emergency
    cleanup, which deletes from folders whose rules delete, passes it by."""
    from seldonfs import janitor

    from .conftest import profile_config

    cfg = profile_config("seldon")
    assert janitor.has_retention(cfg)
    entries = [janitor.Entry("output/distributed/big.bin", 10**9, 0.0, 0.0),
               janitor.Entry("temp/cleanup/junk.bin", 10, 0.0, 0.0)]
    assert [a.rel for a in janitor.emergency_plan(cfg, entries, 10**12)] == ["temp/cleanup/junk.bin"]


def test_an_open_file_is_archived_at_the_next_run(tmp_path: Path) -> None:
    store = seldon_store(tmp_path, distribution_expiry="1s")
    mnt = tmp_path / "mnt"
    with mounted(store, mnt):
        f = mnt / "output" / "distributed" / "held.txt"
        f.write_text("held open")
        os.setxattr(f, RECIPIENT, ANN)
        with open(f) as reader:
            while time.time_ns() <= records(mnt)[0]["expires_ns"]:
                time.sleep(0.1)
            r = seldonfs("janitor", mnt, check=True)
            assert "held.txt: open" in r.stdout + r.stderr
            (rec,) = records(mnt)
            assert (rec["status"], rec["outcome"], rec["download_count"]) == ("expired", "", 1)
            assert reader.read() == "held open"
        seldonfs("janitor", mnt, check=True)
        (rec,) = records(mnt)
        assert rec["outcome"] == "archived" and not f.exists()
