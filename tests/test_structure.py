"""The structure checks (structure.py, _structure.c): the C checkers accept
what json.loads and csv.reader accept, fed in any chunks, and hostile files
get a verdict, not an exception or the daemon's memory."""

from __future__ import annotations

import json
import mmap
import shutil
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seldonfs import structure, validation
from seldonfs.checks import Checks
from seldonfs.config import FolderRule

needs_c = pytest.mark.skipif(structure._structure is None, reason="the C checks are not built here (no compiler)")


def native(ext: str, data: bytes, cuts: list[int] | tuple[int, ...] = ()) -> str | None:
    """The C checker's verdict on `data`, fed in pieces cut at `cuts`."""
    c = structure._Native(ext, len(data))
    at = 0
    for cut in sorted(set(cuts)):
        c.feed(data[at:cut])
        at = cut
    c.feed(data[at:])
    return c.end()


# JSON documents, then bytes put in, taken out or swapped: the edges where
# the two could disagree (escapes, numbers, literals, UTF-8, nesting).
_JSON_PIECES = (
    b'"', b"\\", b"u", b"{", b"}", b"[", b"]", b",", b":", b" ", b"\n", b"\r", b"0", b"1", b"-", b"+", b".", b"e",
    b"E", b"n", b"t", b"N", b"I", b"\x00", b"\x1f", b"\x7f", b"\xc3", b"\xa9", b"\xed\xa0\x80", b"\xf0\x9f",
    b"\xff", b"\xef\xbb\xbf", b"null", b"true", b"NaN", b"Infinity", b"\\u00e9", b"\\ud83d", b"\\ude00",
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
_edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.sampled_from(_JSON_PIECES)), max_size=3)


def _edit(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    b = bytearray(data)
    for op, at, piece in edits:
        at %= len(b) + 1
        if op == 0:
            del b[at:at + 1]
        elif op == 1:
            b[at:at] = piece
        else:
            b[at:at + 1] = piece
    return bytes(b)


@needs_c
@settings(max_examples=3000)
@given(_json_values, st.booleans(), _edits, st.lists(st.integers(0, 400), max_size=4))
def test_the_c_json_check_accepts_what_json_loads_accepts(value, ascii_only, edits, cuts) -> None:
    data = _edit(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"), edits)
    assert (native(".json", data, cuts) is None) == (structure.python_check(".json", data) is None), data


_CSV_PIECES = (b'"', b",", b"\n", b"\r", b"\r\n", b"a", b"1.5", b"\x00", b"\xc3\xa9", b"\xed\xa0\x80", b"\xff", b" ",
               b"\xef\xbb\xbf", b'""', b'"x,y"')


@needs_c
@settings(max_examples=3000)
@given(st.lists(st.sampled_from(_CSV_PIECES), max_size=40).map(b"".join), st.lists(st.integers(0, 100), max_size=4))
def test_the_c_csv_check_accepts_what_csv_reader_accepts(data: bytes, cuts: list[int]) -> None:
    assert (native(".csv", data, cuts) is None) == (structure.python_check(".csv", data) is None), data


@needs_c
@settings(max_examples=1000)
@given(_json_values, _edits, st.sampled_from(list(_CSV_PIECES)))
def test_the_c_checks_read_nothing_outside_their_data(guarded: memoryview, value, edits, tail) -> None:
    page = mmap.PAGESIZE
    doc = _edit(json.dumps(value).encode(), edits)
    for kind, data in (("json", doc[:page]), ("csv", (doc + tail)[:page])):
        want = structure._structure.feed(structure._structure.new(kind), data)
        for at in (page, 2 * page - len(data)):  # against the guard before it, and the one after
            guarded[at:at + len(data)] = data
            assert structure._structure.feed(structure._structure.new(kind), guarded[at:at + len(data)]) == want


@needs_c
@pytest.mark.parametrize(
    "data, why",
    [
        (b'{"a": 1,}', "Expecting property name enclosed in double quotes: line 1 column 9 (byte 8)"),
        (b'[1,\n 2 3]', "Expecting ',' delimiter: line 2 column 4 (byte 7)"),
        (b'"\xff"', "not UTF-8: line 1 column 2 (byte 1)"),
        (b"[" * 100_000, "nested deeper than 1000 levels: line 1 column 1001 (byte 1000)"),
    ],
)
def test_a_json_problem_says_what_and_where(data: bytes, why: str) -> None:
    assert native(".json", data) == "not valid JSON: " + why


@needs_c
def test_csv_problems_read_as_csv_reader_words_them() -> None:
    for data, why in (
        (b"a,b\n1\n", "rows have 1 to 2 columns"),
        (b"a\rb\n", "new-line character seen in unquoted field - do you need to open the file with newline=''?"),
        (b"x" * 131_073, "field larger than field limit (131072)"),
        (b"a,b\n\xe9\n", "not UTF-8 (line 2)"),
    ):
        assert native(".csv", data) == "not valid CSV: " + why


def test_json_nested_past_pythons_stack_gets_a_verdict() -> None:
    """json.loads raises RecursionError there, which no ValueError handler
    catches: the commit failed and left the file under its written name."""
    deep = b"[" * 100_000 + b"]" * 100_000
    rule = FolderRule("x", check_structure=True)
    reasons = validation.check_content(rule, "deep.json", len(deep), lambda off, n: deep[off:off + n]).reasons
    assert len(reasons) == 1 and reasons[0].startswith("not valid JSON: nested")
    assert structure.python_check(".json", deep) == "not valid JSON: nested too deeply"


@needs_c
def test_the_c_checks_keep_nothing_of_the_file() -> None:
    """A large file is checked in chunks; the checker holds none of them (the
    Python checks would hold the file and build every object in it)."""
    row = b'{"id": "0123456789abcdef", "amount": 12.5, "ok": true},'
    chunk = row * (1 << 20 // len(row))
    c = structure.checker(".json", 0)
    assert c is not None
    c.feed(b"[")
    tracemalloc.start()
    try:
        for _ in range(32):  # 32 MiB
            c.feed(chunk)
        c.feed(b"null]")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c.end() is None
    assert peak < 64 << 10


@needs_c
def test_utf16_json_goes_to_json_loads() -> None:
    doc = '{"a": [1, "\u00e9"]}'
    for enc in ("utf-16", "utf-16-le", "utf-32-be"):
        assert native(".json", doc.encode(enc)) is None
        assert native(".json", doc[:-1].encode(enc)) is not None


def test_pdf_needs_its_header_and_trailer_whatever_the_chunks() -> None:
    body = b"%PDF-1.7\n" + b"x" * 5000 + b"\n%%EOF\n"
    for pieces in ([body], [body[:3], body[3:2000], body[2000:]], [body[i:i + 7] for i in range(0, len(body), 7)]):
        c = structure.checker(".pdf", len(body))
        assert c is not None
        for p in pieces:
            c.feed(p)
        assert c.end() is None
    c = structure.checker(".pdf", 0)
    assert c is not None
    c.feed(body[:-8] + b"\n" + b"y" * 1100)
    assert c.end() == "not a complete PDF (header or %%EOF trailer missing)"


def test_the_c_checks_are_built_where_there_is_a_compiler() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert structure._structure is not None


def test_a_check_that_fails_in_itself_is_a_verdict_not_an_exception() -> None:
    """Whatever goes wrong inside the checks (here a reader that raises what
    no reader should), the file gets a verdict that sends it to quarantine:
    an exception would fail the commit and leave it unchecked where names
    are managed."""

    class Broken:
        def read(self, off: int, size: int) -> bytes:
            raise RuntimeError("boom\nsecond line")

    checks = Checks(None, {})  # type: ignore[arg-type]  # the layer is not read: the content is given
    v = checks.run(-1, "in/x\n.json", FolderRule("in", check_structure=True), (0, 10), Broken())  # type: ignore[arg-type]
    assert v.reasons == ["could not be checked: RuntimeError: boom"] and not v.ok


def test_without_the_c_checks_the_python_ones_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where setup.py found no compiler: the same verdicts from the Python
    checks, which look only at files up to PYTHON_LIMIT."""
    monkeypatch.setattr(structure, "_structure", None)
    for ext, good, bad in ((".json", b'{"a": [1, 2.5e3, null]}', b'{"a": }'), (".csv", b"a,b\n1,2\n", b"a,b\n1\n")):
        for data, ok in ((good, True), (bad, False)):
            c = structure.checker(ext, len(data))
            assert isinstance(c, structure._Whole)
            c.feed(data[:3])
            c.feed(data[3:])
            assert (c.end() is None) == ok
    assert structure.checker(".json", structure.PYTHON_LIMIT + 1) is None
