"""Is a file the JSON, CSV or PDF its name says (`check_structure`)?

A `Checker` is fed the file's plaintext in order, chunk by chunk, as the
commit's checks read it, and says at the end what is wrong, if anything.

JSON and CSV are checked by the C checkers of `_structure.c` where setup.py
could build them: they stream, keep nothing of the file, and take 2-4 us
for a 4 KiB record where json.loads takes 17 us and csv.reader 30 us. They
accept what the Python checks below accept (tests/test_structure.py
compares them on generated data), with two differences:
JSON nested deeper than 1,000 levels is refused with its own message
(json.loads runs out of stack a little before that), and an integer longer
than 4,300 digits is taken (Python's int() refuses it; RFC 8259 does not).

The Python checks keep the whole file in memory, so they look only at files
up to PYTHON_LIMIT; they serve where the C ones are not built, and for JSON
in UTF-16 or UTF-32, which json.loads also reads.
"""

from __future__ import annotations

import codecs
import csv
import io
import json

try:
    from . import _structure
except ImportError:  # no compiler at install time
    _structure = None

PYTHON_LIMIT = 256 << 20
PDF_TAIL = 1024  # where %%EOF must be
_TYPE = {".json": "application/json", ".csv": "text/csv"}  # what a passed check proves
#: Types any text passes as (a CSV of one column): they settle a file's type
#: only where the folder does not limit types (`allow_mime`).
LOOSE = frozenset({"text/csv"})


class Checker:
    #: The MIME type a file that passed this check is known to be, or None
    #: where the check does not settle it (validation then asks libmagic).
    proves: str | None = None

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def end(self) -> str | None:
        """What is wrong (a one-line reason), or None."""
        raise NotImplementedError


def checker(ext: str, size: int) -> Checker | None:
    """The checker for a file named `*ext` of `size` bytes; None: no check."""
    if ext == ".pdf":
        return _Pdf()
    if ext not in (".json", ".csv"):
        return None
    if _structure is not None:
        return _Native(ext, size)
    return _Whole(ext) if size <= PYTHON_LIMIT else None


class _Pdf(Checker):
    proves = "application/pdf"

    def __init__(self) -> None:
        self.head = b""
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < 5:
            self.head += chunk[: 5 - len(self.head)]
        self.tail = chunk[-PDF_TAIL:] if len(chunk) >= PDF_TAIL else (self.tail + chunk)[-PDF_TAIL:]

    def end(self) -> str | None:
        if self.head != b"%PDF-" or b"%%EOF" not in self.tail:
            return "not a complete PDF (header or %%EOF trailer missing)"
        return None


class _Whole(Checker):
    """The Python checks, over the whole file."""

    def __init__(self, ext: str) -> None:
        self.ext = ext
        self.proves = _TYPE[ext]
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def end(self) -> str | None:
        return python_check(self.ext, bytes(self.data))


def python_check(ext: str, data: bytes) -> str | None:
    if ext == ".json":
        try:
            json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            return f"not valid JSON: {str(e).splitlines()[0]}"
        except RecursionError:
            return "not valid JSON: nested too deeply"
    else:
        try:
            text = data.decode("utf-8-sig")
            widths = {len(row) for row in csv.reader(io.StringIO(text)) if row}
        except (UnicodeDecodeError, csv.Error) as e:
            return f"not valid CSV: {e}"
        if len(widths) > 1:
            return f"not valid CSV: rows have {min(widths)} to {max(widths)} columns"
    return None


def _json_is_utf8(head: bytes) -> bool:
    """json.loads's own guess of a document's encoding (json.detect_encoding)
    says UTF-8 for this start of it."""
    if head.startswith((codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)):
        return False
    if len(head) >= 4 or len(head) == 2:
        return bool(head[0] and head[1])
    return True


class _Native(Checker):
    """The C checker, once the first four bytes tell the encoding."""

    def __init__(self, ext: str, size: int) -> None:
        self.ext = ext
        self.size = size
        self.label = "JSON" if ext == ".json" else "CSV"
        self.start = b""  # until there are four bytes (or the whole file)
        self.inner: object = None  # the C checker, or the Python one for UTF-16/32 JSON
        self.problem: str | None = None

    @property
    def proves(self) -> str | None:  # type: ignore[override]
        return None if self.inner is False else _TYPE[self.ext]  # False: not checked (too large)

    def _begin(self, head: bytes) -> bytes:
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8):]
        elif self.ext == ".json" and not _json_is_utf8(head):
            self.inner = _Whole(self.ext) if self.size <= PYTHON_LIMIT else False
            return head
        self.inner = _structure.new(self.ext[1:], csv.field_size_limit())  # type: ignore[union-attr]
        return head

    def feed(self, chunk: bytes) -> None:
        if self.problem is not None:
            return
        if self.inner is None:
            self.start += chunk
            if len(self.start) < 4:
                return
            chunk, self.start = self._begin(self.start), b""
        if isinstance(self.inner, _Whole):
            self.inner.feed(chunk)
        elif self.inner is not False:
            problem = _structure.feed(self.inner, chunk)  # type: ignore[union-attr]
            if problem is not None:
                self.problem = f"not valid {self.label}: {problem}"

    def end(self) -> str | None:
        if self.inner is None:
            chunk, self.start = self._begin(self.start), b""
            self.feed(chunk)
        if self.problem is not None or self.inner is False:
            return self.problem
        if isinstance(self.inner, _Whole):
            return self.inner.end()
        problem = _structure.end(self.inner)  # type: ignore[union-attr]
        return None if problem is None else f"not valid {self.label}: {problem}"
