"""Policy decisions as pure functions: which rule, which name, which verdict.
No FUSE here."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tomllib
from datetime import datetime, timezone
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seldonfs import config, validation
from seldonfs.config import FolderRule
from seldonfs.errors import ConfigError
from seldonfs.naming import NAME_MAX, Template, TemplateError, clean_job, is_temporary, split_ext
from seldonfs.rules import Rules

NOW = datetime(2024, 12, 6, 14, 30, 45, 123456, tzinfo=timezone.utc)


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads(text), "test.toml")


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "text, message",
    [
        ('[folders."a"]\nmax_age = "3 days"', "folders.'a'.max_age: want a duration"),
        ('[folders."a"]\nmax_size = "big"', "folders.'a'.max_size: want a size"),
        ('[folders."a"]\nsensitive = ["ssn", "dna"]', "unknown check 'dna'"),
        ('[folders."a"]\non_invalid = "drop"', "folders.'a'.on_invalid: want one of quarantine, reject"),
        ('[folders."a"]\nnaming = "{ts}-{nope}"', "folders.'a'.naming: unknown field {nope}"),
        ('[folders."a"]\nnaming = "{ts}-{job}"', "names would repeat"),
        ('[folders."a"]\nroute = "(?P<y>\\\\d+)_(?P<n>.*)"\nroute_to = "b/{y}/{x}"', "{x} is not a named group"),
        ('[folders."a"]\nroute = "("\nroute_to = "b"', "not a valid regular expression"),
        ('[folders."a"]\nschedule = "0 99 * * *"', "cron expression"),
        ('[folders."a"]\nquarantine = "../out"', "relative path"),
        ('[folders."a"]\nallow_extensions = ["json"]', "must start with '.'"),
        ('[policy]\nmin_free = 100', "policy.min_free: must be 0..99"),
        ('[janitor]\nwarning = 90\nemergency = 80', "janitor.emergency: must not be below"),
        ('[folders."a"]\nversions = -1', "folders.'a'.versions: must be 0..10000"),
    ],
)
def test_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert message in str(e.value) and str(e.value).startswith("test.toml: ")


def test_config_units() -> None:
    cfg = parse(
        '[policy]\nmin_free = 10\n[policy.patterns]\nticket = "TCK-[0-9]+"\n'
        '[folders."t"]\nmax_age = "12h"\nmax_total = "100GB"\nmax_size = "1MiB"\n'
        'patterns = { "*.tmp" = "12h", "*.log" = "7d" }\nschedule = "0 2 * * *"\nsensitive = ["ticket"]\n'
    )
    (t,) = cfg.folders
    assert (t.max_age, t.max_total, t.max_size) == (43200, 100 * 10**9, 2**20)
    assert t.patterns == (("*.tmp", 43200), ("*.log", 7 * 86400))
    assert cfg.policy.min_free == 10 and t.schedule == "0 2 * * *"


def test_every_shipped_profile_loads() -> None:
    for name in config.profile_names():
        cfg = config.parse(tomllib.loads(config.profile_text(name)), name)
        assert cfg.profile == name


# ---------------------------------------------------------------- rules


def test_deepest_folder_wins_and_literal_beats_glob() -> None:
    rules = Rules(parse(
        '[folders."temp"]\nfiles_at_root = false\n[folders."temp/*"]\nmax_age = "1h"\n'
        '[folders."temp/cache"]\nmax_age = "7d"\n[folders."input/raw"]\nversions = 1\n'
    ))
    assert rules.for_dir("temp").path == "temp"
    assert rules.for_dir("temp/work").path == "temp/*"
    assert rules.for_dir("temp/work/deep/er").path == "temp/*"  # a table covers its subtree
    assert rules.for_dir("temp/cache").path == "temp/cache"
    assert rules.for_dir("input/raw/x").path == "input/raw"
    assert rules.for_dir("input") is None and rules.for_dir("") is None


# ---------------------------------------------------------------- naming


def test_seed_000_name() -> None:
    t = Template("{ts}-{job}-{seq:03d}_{name}")
    name = t.render(NOW, "INP001", 1, "prospect_data.json")
    assert name == "2024-12-06-14-30-45-123-INP001-001_prospect_data.json"
    assert t.is_managed(name) and not t.is_managed("prospect_data.json")
    assert not t.is_managed("2024-12-06-14-30-45-123-INP001_prospect_data.json")


def test_seed_001_names() -> None:
    proc = Template("{job}_{stamp}_{uuid}{ext}").render(NOW, "model_training", 1, "x.tmp")
    assert proc.startswith("model_training_20241206_143045_") and proc.endswith(".tmp")
    assert len(proc) == len("model_training_20241206_143045_a1b2c3d4.tmp")
    t = Template("{job}_{stem}_{stamp}{ext}")
    assert t.render(NOW, "huggingface", 1, "model.tar.gz") == "huggingface_model_20241206_143045.tar.gz"
    assert t.render(NOW, "github", 1, "report.v2.final.pdf") == "github_report.v2.final_20241206_143045.pdf"
    assert t.is_managed("huggingface_model_20250104_143022.tar.gz")  # the seed's example: kept as written
    assert not t.is_managed("model_20250104_143022.tar.gz")


@given(st.binary(min_size=1, max_size=255).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")),
       st.sampled_from(["{job}_{stem}_{stamp}{ext}", "{ts}-{job}-{seq:03d}_{name}", "{job}_{stamp}_{uuid}{ext}"]))
def test_managed_names_fit_name_max_and_keep_their_time_and_extension(raw: bytes, text: str) -> None:
    name = os.fsdecode(raw)
    t = Template(text)
    made, cut = t.render_fitted(NOW, "huggingface", 7, name)
    assert len(os.fsencode(made)) <= NAME_MAX and t.is_managed(made)
    assert cut == (len(os.fsencode(t.render(NOW, "huggingface", 7, name, limit=10_000))) > NAME_MAX)
    assert "20241206" in made.replace("-", "") and made.endswith(split_ext(name)[1] if len(os.fsencode(split_ext(name)[1])) <= 16 else "")


@given(st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=40), st.integers(0, 10**6))
def test_managed_names_are_recognised(name: str, seq: int) -> None:
    t = Template("{ts}-{job}-{seq:03d}_{name}")
    assert t.is_managed(t.render(NOW, "J1", seq, name))


def test_temporary_names_and_job_ids() -> None:
    pats = config.DEFAULT_TEMP_PATTERNS
    for n in (".data.json.Xy12", "a.tmp", "a.part", ".a.swp", "a~"):
        assert is_temporary(n, pats)
    assert not is_temporary("data.json", pats)
    assert clean_job("ETL-7", "D") == "ETL-7"
    assert clean_job("../etc", "D") == "D" and clean_job("", "D") == "D" and clean_job(None, "D") == "D"
    with pytest.raises(TemplateError):
        Template("{name}/x")


# ---------------------------------------------------------------- validation


def test_check_create() -> None:
    rule = FolderRule("temp", files_at_root=False, deny_names=("*.exe",), allow_extensions=(".json",))
    assert "no files directly" in validation.check_create(rule, True, "a.json")
    assert "forbidden pattern" in validation.check_create(rule, False, "x.exe")
    assert "extension .txt" in validation.check_create(rule, False, "a.txt")
    assert "(none)" in validation.check_create(rule, False, "Makefile")
    assert validation.check_create(rule, False, "a.JSON") is None
    assert validation.check_create(None, True, "anything") is None


def check(rule: FolderRule, name: str, data: bytes) -> validation.Verdict:
    return validation.check_content(rule, name, len(data), lambda off, n: data[off:off + n])


def scanned(kind: str, text: bytes) -> list[str]:
    """What the checks with the one sensitive-data scan `kind` say of `text`."""
    return check(FolderRule("x", sensitive=(kind,)), "x.txt", text).reasons


needs_c_scans = pytest.mark.skipif(
    validation._scan is None, reason="the C scans are not built here (setup.py: no compiler)"
)

# Digits, separators and the starts of keys, with pieces of what each scan
# looks for: data where the C and the Python scans could disagree.
_SCAN_PIECES = (
    b"4111 1111 1111 1111", b"4111-1111-1111-1111", b"378282246310005", b"5555555555554444", b"6011111111111117",
    b"2221000000000009", b"30569309025904", b"3530111333300000", b"123-45-6789", b"AKIA", b"ASIA",
    b"-----BEGIN ", b"RSA ", b"PRIVATE KEY-----",
)
_scan_data = st.lists(
    st.one_of(
        st.sampled_from(_SCAN_PIECES),
        st.lists(st.sampled_from(b"0123456789  --AKSIZx.\n"), max_size=30).map(bytes),
    ),
    max_size=10,
).map(b"".join)


@needs_c_scans
@settings(max_examples=3000)
@given(_scan_data)
def test_the_c_scans_find_what_the_python_ones_find(data: bytes) -> None:
    for name, python in validation.PYTHON_SCANS.items():
        assert (validation._scan.scan(data, validation._SCAN_BITS[name]) != 0) == python(data), name


@needs_c_scans
@settings(max_examples=1000)
@given(_scan_data)
def test_the_checks_report_what_each_scan_finds(data: bytes) -> None:
    """The commit's checks report what they would with the Python scans,
    and a pattern of [policy.patterns] under a built-in's name replaces it."""
    rule = FolderRule("x", sensitive=("ssn", "card", "aws_key", "private_key"))
    native = check(rule, "x.txt", data).reasons
    with mock.patch.object(validation, "_scan", None):
        assert check(rule, "x.txt", data).reasons == native
    mine = validation.compile_patterns((("card", "AKIA"),))
    got = validation.check_content(rule, "x.txt", len(data), lambda off, n: data[off:off + n], mine).reasons
    card = "contains a payment card number"
    assert (card in got) == (b"AKIA" in data)
    assert [r for r in got if r != card] == [r for r in native if r != card]


@needs_c_scans
@settings(max_examples=1000)
@given(_scan_data)
def test_the_c_scans_read_nothing_outside_their_data(guarded: memoryview, data: bytes) -> None:
    page = mmap.PAGESIZE
    data = data[:page]
    want = validation._scan.scan(data, 15)
    for at in (page, 2 * page - len(data)):  # against the guard before it, and the one after
        guarded[at:at + len(data)] = data
        assert validation._scan.scan(guarded[at:at + len(data)], 15) == want


def test_the_c_scans_are_built_where_there_is_a_compiler() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert validation._scan is not None


def test_patterns_are_found_across_chunk_borders() -> None:
    rule = FolderRule("x", sensitive=("aws_key",))
    data = b"a" * (validation.CHUNK - 10) + b" AKIAIOSFODNN7EXAMPLE " + b"b" * 100
    assert check(rule, "x.txt", data).reasons == ["contains an AWS access key"]


def test_a_passed_structure_check_types_the_file_without_libmagic() -> None:
    """A file that passed its structure check is the type it proves;
    libmagic, shown only the first 8 KiB, calls a longer JSON text/plain.
    Where the folder's allow_mime would refuse that type, or the check
    failed, libmagic decides as before."""
    big = json.dumps([{"id": "%032x" % i, "n": i} for i in range(400)]).encode()
    assert len(big) > validation.HEAD
    checked = FolderRule("x", check_extension=True, check_structure=True)
    assert check(FolderRule("x", check_extension=True), "a.json", big).mime == "text/plain"
    v = check(checked, "a.json", big)
    assert (v.mime, v.reasons) == ("application/json", [])
    assert check(FolderRule("x", allow_mime=("application/json",), check_structure=True), "a.json", big).ok
    rows = b"".join(b"%d,x%d\n" % (i, i) for i in range(10))
    assert check(checked, "a.csv", rows).mime == "text/csv"
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
    assert check(checked, "a.pdf", pdf).mime == "application/pdf"
    assert check(checked, "a.csv", b"").mime == "inode/x-empty"
    bad = check(checked, "a.json", big[:-1])
    assert bad.mime == "text/plain" and bad.reasons[0].startswith("not valid JSON")
    plain_only = FolderRule("x", check_structure=True, allow_mime=("text/plain",))
    one_column = b"a\nb\nc\n"
    assert check(plain_only, "a.csv", one_column).mime == "text/plain"
    # Any text passes as a CSV of one column: a folder that allows only CSV
    # still has libmagic tell a script from a table.
    csv_only = FolderRule("x", check_structure=True, allow_mime=("text/csv",))
    assert check(csv_only, "a.csv", b"#!/bin/sh\necho hi\nls\n").reasons == ["type text/x-shellscript not allowed here"]
    assert check(csv_only, "a.csv", rows).ok


# Text as the checks see it: ASCII text with the control bytes libmagic's
# text test takes and those it does not, shapes its other tests look for
# (JSON, CSV, tar's and gzip's magic), and bytes past ASCII.
_HEAD_PIECES = (
    b"{", b"}", b"[", b"]", b'"k": ', b"1,2,3\n", b"a;b;c\r\n", b"#!/bin/sh\n", b"<?xml ", b"\x1f\x8b",
    b"ustar\x0000", b"\xc3\xa9", b"\xff\xfe", b"\x00", b"\x7f", b"\x1b[0m", b"\x0c", b"\x01",
)
_head_data = st.lists(
    st.one_of(st.sampled_from(_HEAD_PIECES), st.text(st.characters(max_codepoint=126), max_size=40).map(str.encode)),
    max_size=12,
).map(b"".join)


@settings(max_examples=2000)
@given(_head_data)
def test_the_mime_shortcut_says_what_libmagic_says(head: bytes) -> None:
    if head:
        assert validation.builtin_mime(head) == validation._FAST_MAGIC.from_buffer(head)


def test_the_mime_shortcut_agrees_on_short_heads_and_real_files() -> None:
    """Every head of one and two bytes, and the first 8 KiB of files of the
    interpreter's own library (source, shared libraries, data)."""
    heads = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    lib = os.path.dirname(os.__file__)
    for root, _, names in os.walk(lib):
        for path in [os.path.join(root, n) for n in sorted(names)[:20]]:
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    heads.append(f.read(validation.HEAD))
        if len(heads) > 70_000:
            break
    differ = [h[:20] for h in heads if h and validation.builtin_mime(h) != validation._FAST_MAGIC.from_buffer(h)]
    assert not differ


def test_checksum_and_mime() -> None:
    v = check(FolderRule("x", allow_mime=("text/*",)), "a.txt", b"hello world\n")
    assert v.ok and v.mime == "text/plain"
    assert v.sha256 == "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"


@given(st.lists(st.integers(0, 9), min_size=12, max_size=18))
def test_luhn_check_digit(digits: list[int]) -> None:
    body = bytes(48 + d for d in digits)
    hits = [c for c in range(10) if validation.luhn(body + bytes([48 + c]))]
    assert len(hits) == 1  # exactly one check digit completes any number


@pytest.mark.parametrize(
    "text, card",
    [
        (b"visa 4111 1111 1111 1111", True),
        (b"visa 4111-1111-1111-1111.", True),
        (b"visa 4111 1111-1111 1111", True),  # separators mixed
        (b"ref-4111111111111111", True),
        (b"visa 4111  1111 1111 1111", False),  # two separators: 4 and 12 digits
        (b"amex 3782 822463 10005", True),
        (b"mc 5555555555554444", True),
        (b"mc 2223003122003222", True),
        (b"discover 6011111111111117", True),
        (b"diners 30569309025904", True),
        (b"jcb 3530111333300000", True),
        (b"visa13 4222222222222", True),
        (b"no issuer 1234567812345670", False),  # passes Luhn
        (b"visa, fails luhn 4111111111111112", False),
        (b"visa, 17 digits 41111111111111113", False),  # passes Luhn
        (b"timestamp 20241206143045128", False),  # passes Luhn
        (b"card=4111111111111111;", True),
        (b"sha256 9f3e4111111111111111ab07", False),  # a digit run inside a hex hash
        (b"id 4111111111111111c", False),
    ],
)
def test_card_numbers_need_an_issuer_and_luhn(text: bytes, card: bool) -> None:
    assert (scanned("card", text) == ["contains a payment card number"]) is card


@pytest.mark.parametrize(
    "text, ssn",
    [
        (b"ssn 123-45-6789", True),
        (b"123-45-6789", True),
        (b"ssn: 123-45-6789.", True),
        (b"phone 1123-45-6789", False),  # part of a longer number
        (b"part 123-45-67890", False),
        (b"range 9-123-45-6789", False),
        (b"spaced 123 45 6789", False),
        (b"area 000-12-3456 666-12-3456 912-12-3456", False),
        (b"group 123-00-4567 serial 123-45-0000", False),
    ],
)
def test_ssns_are_found_only_written_alone(text: bytes, ssn: bool) -> None:
    assert (scanned("ssn", text) == ["contains a US social security number"]) is ssn


@pytest.mark.parametrize(
    "text, key",
    [
        (b"AKIAIOSFODNN7EXAMPLE", True),
        (b"a-ASIAIOSFODNN7EXAMPLE-b", True),
        (b"XAKIAIOSFODNN7EXAMPLE", False),  # part of a longer word
        (b"9AKIAIOSFODNN7EXAMPLE", False),
        (b"AKIAIOSFODNN7EXAMPLE1", False),
        (b"AKIAAKIAIOSFODNN7EXAMPLE", False),
        (b"AKIAIOSFODNN7EXAMPL", False),
    ],
)
def test_aws_keys_are_found_only_written_alone(text: bytes, key: bool) -> None:
    assert (scanned("aws_key", text) == ["contains an AWS access key"]) is key


def test_template_reads_its_names_back() -> None:
    t = Template("{ts}-{job}-{seq:03d}_{name}")
    assert t.parts("2024-12-06-14-30-45-123-INP001-007_prospect_data.json") == {
        "ts": "2024-12-06-14-30-45-123", "job": "INP001", "seq": "007", "name": "prospect_data.json",
    }
    assert t.parts("prospect_data.json") is None


def test_a_sequence_number_keeps_the_width_of_its_field() -> None:
    from seldonfs.commit import wrap

    assert Template("{ts}-{job}-{seq:03d}_{name}").seq_max == 999
    assert Template("{seq:1d}_{name}").seq_max == 9 and Template("{seq}_{name}").seq_max is None
    assert [wrap(n, 999) for n in (1, 998, 999, 1000, 1001, 1998, 1999)] == [1, 998, 999, 1, 2, 999, 1]
    assert wrap(10**6, None) == 10**6
    t = Template("{ts}-{job}-{seq:03d}_{name}")
    assert all(len(t.parts(t.render(NOW, "J", wrap(n, 999), "x"))["seq"]) == 3 for n in range(990, 2010))
