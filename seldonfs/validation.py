"""Validation verdicts: pure functions of a rule, a name and the contents.

Each check runs as early as its fact is knowable: the name and place at
create (`check_create`), the size at the write that crosses the limit
(`too_big`), everything that needs the contents at commit
(`check_content`, fed the plaintext by a reader). Reasons are short
phrases stored in `user.seldon.reason` and the catalog.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import magic

from . import structure
from .config import FolderRule

CHUNK = 1 << 20
HEAD = 8 << 10  # what libmagic is shown
_OVERLAP = 128  # bytes carried between chunks so no pattern is cut in two

# Content a name's extension promises (extension check); unknown extensions pass.
EXTENSION_MIME = {
    ".json": ("application/json", "text/plain"),
    ".csv": ("text/csv", "text/plain", "application/csv"),
    ".tsv": ("text/plain", "text/tab-separated-values"),
    ".txt": ("text/*",),
    ".md": ("text/*",),
    ".log": ("text/*",),
    ".xml": ("text/xml", "application/xml", "text/plain"),  # libmagic: text/plain without <?xml
    ".html": ("text/html",),
    ".pdf": ("application/pdf",),
    ".png": ("image/png",),
    ".jpg": ("image/jpeg",),
    ".jpeg": ("image/jpeg",),
    ".gif": ("image/gif",),
    ".zip": ("application/zip",),
    ".gz": ("application/gzip", "application/x-gzip"),
    ".xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "application/zip"),
    ".parquet": ("application/octet-stream", "application/vnd.apache.parquet"),
}

# Sensitive-data checks. Each is a cheap C-speed prefilter over the whole
# text and an exact test of what it finds: a scan with the full patterns
# costs about 2 ms per 25 KB of source text, the prefilters a tenth of that.
# SSNs and card numbers are looked for in a copy where every digit is "0",
# a space or dash is "-" (the separators a card may have; one kind, so one
# search finds both), everything else is "." (one bytes.translate): there a
# literal search and a regex that starts with a literal run at C speed.
_DIGITS_MAP = bytes(48 if chr(b).isdigit() and b < 128 else 45 if b in (32, 45) else 46 for b in range(256))
_DIGIT_OR_DASH = frozenset(b"0123456789-")
_SSN_SHAPE = b"000-00-0000"
_SSN = re.compile(rb"(?!000|666|9[0-9][0-9])[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}")
# 13 digits or more, the first four together (every card format groups
# them so); a literal start lets the regex engine skip ahead at C speed.
_CARD_SHAPE = re.compile(rb"0000(?:-?0){9,}")
# Issuer prefixes and lengths (Visa, Mastercard, Amex, Diners, Discover,
# JCB): with the Luhn check they keep long digit runs in source code and
# data (a tenth of which pass Luhn by chance) from counting as cards.
_CARD_ISSUER = re.compile(
    rb"4(?:[0-9]{12}|[0-9]{15}|[0-9]{18})|5[1-5][0-9]{14}|2(?:22[1-9]|2[3-9][0-9]|[3-6][0-9]{2}|7[01][0-9]|720)[0-9]{12}"
    rb"|3[47][0-9]{13}|3(?:0[0-5]|[689][0-9])[0-9]{11}|6(?:011|5[0-9]{2})[0-9]{12,15}|35(?:2[89]|[3-8][0-9])[0-9]{12,15}"
)
_ISSUER_FIRST = frozenset(b"23456")
# The key's literal start comes first, so the regex engine skips to each
# "A" at C speed; put first, the look-behind made it try every byte
# (21-26 ms for a 1.2 MB shared library, against 0.5 ms).
_AWS = re.compile(rb"A[KS]IA(?<![A-Z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Z0-9])")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_last_shape: tuple[bytes | None, bytes] = (None, b"")


def _shape(data: bytes) -> bytes:
    """`data` with digits as "0" (the SSN and card tests share it)."""
    global _last_shape
    last = _last_shape  # one read: another thread may replace it
    if last[0] is data:
        return last[1]
    shape = data.translate(_DIGITS_MAP)
    _last_shape = (data, shape)
    return shape


def _has_ssn(data: bytes) -> bool:
    shape = _shape(data)
    i = shape.find(_SSN_SHAPE)
    while i != -1:
        before = data[i - 1] if i else 46
        after = data[i + 11] if i + 11 < len(data) else 46
        if before not in _DIGIT_OR_DASH and after not in _DIGIT_OR_DASH and _SSN.match(data, i):
            return True
        i = shape.find(_SSN_SHAPE, i + 1)
    return False


# Where a card number can be: 13 digits in a row, or four digits, a space
# or dash, and four more (every way cards are written has that: 4-4-4-4,
# 4-6-5, 4-6-4; a number split only into groups of three or fewer, such as
# 10-3, is not looked at). bytes.find skips to these at memchr speed; the
# regex alone stops at every four digits, which hex ids, hashes and dates
# have every few bytes (4 KiB of JSON records: 44 -> 15 us, of CSV rows with
# dates: 102 -> 19 us).
_CARD_ROW, _CARD_GROUPED = b"0" * 13, b"0000-0000"
_CARD_RUN = b"0-"
_RUN_END = re.compile(rb"[0-]*")


def _card_runs(shape: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of digits and separators in `shape` that
    holds 13 digits in a row or four, a separator and four more, in order.
    The run's ends are found at C speed (a strip of the bytes before the
    hint, a regex after it): number tables and binary data have tens of
    thousands of runs, many of them long."""
    pos = 0
    row, grouped = shape.find(_CARD_ROW), shape.find(_CARD_GROUPED)
    while row != -1 or grouped != -1:
        hit = row if grouped == -1 or -1 < row < grouped else grouped
        start = pos + len(shape[pos:hit].rstrip(_CARD_RUN))
        pos = _RUN_END.match(shape, hit).end()
        yield start, pos
        if -1 < row < pos:
            row = shape.find(_CARD_ROW, pos)
        if -1 < grouped < pos:
            grouped = shape.find(_CARD_GROUPED, pos)


def _has_card(data: bytes) -> bool:
    shape = _shape(data)
    for run_start, run_end in _card_runs(shape):
        for m in _CARD_SHAPE.finditer(shape, run_start, run_end):
            start, end = m.span()
            if data[start] not in _ISSUER_FIRST:
                continue  # most digit runs in data and code: no issuer starts so
            if data[start - 1:start].isalnum() or data[end:end + 1].isalnum():
                continue  # part of a word: a hex id or hash, not a number written alone
            digits = data[start:end].replace(b" ", b"").replace(b"-", b"")
            if _CARD_ISSUER.fullmatch(digits) and luhn(digits):
                return True
    return False


def _has_aws_key(data: bytes) -> bool:
    return _AWS.search(data) is not None


def _has_private_key(data: bytes) -> bool:
    return b"PRIVATE KEY-----" in data and _PRIVATE_KEY.search(data) is not None


PYTHON_SCANS: dict[str, Callable[[bytes], bool]] = {
    "ssn": _has_ssn,
    "card": _has_card,
    "aws_key": _has_aws_key,
    "private_key": _has_private_key,
}

# The same tests in C (_scan.c, built by setup.py where there is a
# compiler; `check_content` falls back to PYTHON_SCANS without it): 10 us a
# file of the fsbench tarball against 67 us, and without the GIL. They find
# what the Python ones find (tests compare the two).
try:
    from . import _scan
except ImportError:
    _scan = None
_SCAN_BITS = {"ssn": 1, "card": 2, "aws_key": 4, "private_key": 8}

_SENSITIVE_LABEL = {
    "ssn": "a US social security number",
    "card": "a payment card number",
    "aws_key": "an AWS access key",
    "private_key": "a private key",
}


@dataclass
class Verdict:
    reasons: list[str] = field(default_factory=list)
    mime: str = ""
    sha256: str = ""
    size: int = 0

    @property
    def ok(self) -> bool:
        return not self.reasons


def extension(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return "." + ext.lower() if dot and stem else ""


def check_create(rule: FolderRule | None, at_rule_root: bool, name: str, place_only: bool = False) -> str | None:
    """Why a file `name` may not be created here, or None. `place_only`
    skips the name checks (for temporary names)."""
    if rule is None:
        return None
    if at_rule_root and not rule.files_at_root:
        return f"no files directly in {rule.path}/, only in its subfolders"
    if place_only:
        return None
    for pattern in rule.deny_names:
        if fnmatch.fnmatchcase(name, pattern):
            return f"name matches the forbidden pattern {pattern}"
    if rule.allow_extensions and extension(name) not in rule.allow_extensions:
        return f"extension {extension(name) or '(none)'} not allowed here ({' '.join(rule.allow_extensions)})"
    return None


def too_big(rule: FolderRule | None, size: int) -> bool:
    return rule is not None and rule.max_size is not None and size > rule.max_size


def luhn(digits: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _magic(flags: int) -> magic.Magic:
    m = magic.Magic(mime=True)
    magic.magic_setflags(m.cookie, flags)
    return m


_FAST_MAGIC = _magic(magic.MAGIC_MIME_TYPE | magic.MAGIC_NO_CHECK_SOFT)
_NO_TEXT_MAGIC = _magic(magic.MAGIC_MIME_TYPE | magic.MAGIC_NO_CHECK_SOFT | magic.MAGIC_NO_CHECK_TEXT)
_FULL_MAGIC = magic.Magic(mime=True)
#: The bytes libmagic's looks_ascii takes for text (encoding.c's text_chars):
#: BEL, BS, HT, LF, VT, FF, CR, ESC and the printable ASCII.
_ASCII_TEXT = b"\a\b\t\n\v\f\r\x1b" + bytes(range(0x20, 0x7F))


def builtin_mime(head: bytes) -> str:
    """libmagic's built-in answer (no "soft" database) for `head`.

    Its text test, the last it tries, is most of its time (14 of 20 us for
    8 KiB of source code) and for ASCII says only text/plain. So for an
    ASCII head the other tests run first without it, and a head they leave
    untyped that is all ASCII text (and longer than one byte: libmagic
    types a single byte as data) is text/plain without it; anything else
    asks libmagic whole, at once where a byte is past ASCII (binary data,
    UTF-8). tests/test_rules.py holds this to libmagic's own answer."""
    if not head.isascii():
        return _FAST_MAGIC.from_buffer(head)
    mime = _NO_TEXT_MAGIC.from_buffer(head)
    if mime != "application/octet-stream":
        return mime  # a test before the text test typed it
    if len(head) > 1 and not head.translate(None, _ASCII_TEXT):
        return "text/plain"
    return _FAST_MAGIC.from_buffer(head)


def detect_mime(head: bytes, rule: FolderRule, ext: str) -> str:
    """libmagic's MIME type of a file's first bytes.

    libmagic's built-in tests (text, JSON, CSV, ELF, ...) take 10 us; its
    full database ("soft" magic) 400 us, mostly telling apart kinds of text.
    The full database decides only when the built-in answer would fail a
    check (it may know better, e.g. PNG or XML), so a passing file is typed
    coarsely (a Python script is text/plain, a PNG in a folder that allows
    anything application/octet-stream) and a failing one exactly."""
    if not head:
        return "inode/x-empty"
    mime = builtin_mime(head)
    fails = (rule.allow_mime and not _mime_ok(mime, rule.allow_mime)) or (
        rule.check_extension and ext in EXTENSION_MIME and not _mime_ok(mime, EXTENSION_MIME[ext])
    )
    return _FULL_MAGIC.from_buffer(head) if fails else mime


@functools.lru_cache(maxsize=1024)  # a few kinds of files, checked at every commit
def _mime_ok(mime: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(mime, a) for a in allowed)


def check_content(
    rule: FolderRule,
    name: str,
    size: int,
    read: Callable[[int, int], bytes],
    extra_patterns: dict[str, Callable[[bytes], bool]] | None = None,
    checksum: Callable[[], Any] = hashlib.sha256,
) -> Verdict:
    """Read the plaintext once through `read(offset, length)`: checksum,
    MIME type, extension match, structure and sensitive data."""
    v = Verdict(size=size)
    digest = checksum()
    # The built-in scans in one C call a chunk (a pattern of [policy.patterns]
    # under a built-in's name replaces it); any other test on its own.
    extra = extra_patterns or {}
    bits, wanted = 0, []
    for n in rule.sensitive:
        if _scan is not None and n in _SCAN_BITS and n not in extra:
            bits |= _SCAN_BITS[n]
        else:
            wanted.append((n, extra[n] if n in extra else PYTHON_SCANS[n]))
    found: set[str] = set()
    ext = extension(name)
    shape = structure.checker(ext, size) if rule.check_structure else None
    head = b""
    carry = b""
    off = 0
    while off < size:
        chunk = read(off, min(CHUNK, size - off))
        if not chunk:
            break
        if off == 0:
            head = chunk[:HEAD]
        digest.update(chunk)
        if shape is not None:
            shape.feed(chunk)
        if bits or wanted:
            window = carry + chunk
            if bits and (got := _scan.scan(window, bits)):  # type: ignore[union-attr]
                bits &= ~got
                found.update(n for n, b in _SCAN_BITS.items() if got & b)
            for n, test in wanted:
                if n not in found and test(window):
                    found.add(n)
            carry = window[-_OVERLAP:]
        off += len(chunk)
    v.sha256 = digest.hexdigest()
    problem = shape.end() if shape is not None else None
    proven = shape.proves if shape is not None and problem is None and head else None
    if proven in structure.LOOSE and rule.allow_mime:
        proven = None  # libmagic tells a script from a table
    if proven and (not rule.allow_mime or _mime_ok(proven, rule.allow_mime)):
        v.mime = proven  # libmagic: 20-30 us of the daemon's time, and text/plain for a JSON over 8 KiB
    else:
        v.mime = detect_mime(head, rule, ext)
    if rule.allow_mime and not _mime_ok(v.mime, rule.allow_mime):
        v.reasons.append(f"type {v.mime} not allowed here")
    if rule.check_extension and head and ext in EXTENSION_MIME and not _mime_ok(v.mime, EXTENSION_MIME[ext]):
        v.reasons.append(f"content is {v.mime}, not what {ext} promises")
    if problem:
        v.reasons.append(problem)
    for n in rule.sensitive:
        if n in found:
            v.reasons.append(f"contains {_SENSITIVE_LABEL.get(n, n)}")
    return v


def compile_patterns(patterns: tuple[tuple[str, str], ...]) -> dict[str, Callable[[bytes], bool]]:
    """Tests for the configured extra patterns ([policy.patterns])."""
    return {n: (lambda data, rx=re.compile(rx.encode()): rx.search(data) is not None) for n, rx in patterns}


def checksum_of(key: bytes | None) -> Callable[[], Any]:
    """What a file's recorded checksum is: SHA-256 of the plaintext in a
    plain store (`key` None); in an encrypted store HMAC-SHA256 under the
    store's checksum key (audit.checksum_key), so the catalog confirms no
    guessed content to whoever reads it without the key."""
    if key is None:
        return hashlib.sha256
    return hmac.new(key, digestmod="sha256").copy  # a copy skips setting up the key (docs/design.md)
