"""Validation verdicts: pure functions of a rule, a name and the contents.

Each check runs as early as its fact is knowable: the name and place at
create (`check_create`), the size at the write that crosses the limit
(`too_big`), everything that needs the contents at commit
(`check_content`, fed the plaintext by a reader). Reasons are short
phrases stored in `user.seldon.reason` and the catalog.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import magic

from .config import FolderRule

CHUNK = 1 << 20
HEAD = 64 << 10  # what libmagic is shown
STRUCTURE_LIMIT = 256 << 20  # larger files skip the JSON/CSV parse (noted in the verdict)
_OVERLAP = 128  # bytes carried between chunks so no pattern is cut in two

# Content a name's extension promises (extension check); unknown extensions pass.
EXTENSION_MIME = {
    ".json": ("application/json", "text/plain"),
    ".csv": ("text/csv", "text/plain", "application/csv"),
    ".tsv": ("text/plain", "text/tab-separated-values"),
    ".txt": ("text/*",),
    ".md": ("text/*",),
    ".log": ("text/*",),
    ".xml": ("text/xml", "application/xml"),
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

SENSITIVE = {
    "ssn": re.compile(rb"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
    "card": re.compile(rb"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    "aws_key": re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "private_key": re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
}
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


def check_create(rule: FolderRule | None, at_rule_root: bool, name: str) -> str | None:
    """Why a file `name` may not be created here, or None."""
    if rule is None:
        return None
    if at_rule_root and not rule.files_at_root:
        return f"no files directly in {rule.path}/, only in its subfolders"
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


def _mime_ok(mime: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(mime, a) for a in allowed)


def check_content(
    rule: FolderRule,
    name: str,
    size: int,
    read: Callable[[int, int], bytes],
    extra_patterns: dict[str, re.Pattern[bytes]] | None = None,
) -> Verdict:
    """Read the plaintext once through `read(offset, length)`: checksum,
    MIME type, extension match, structure and sensitive data."""
    v = Verdict(size=size)
    digest = hashlib.sha256()
    patterns = {**SENSITIVE, **(extra_patterns or {})}
    wanted = [(n, patterns[n]) for n in rule.sensitive]
    found: set[str] = set()
    keep_all = rule.check_structure and size <= STRUCTURE_LIMIT and extension(name) in (".json", ".csv", ".pdf")
    whole = bytearray() if keep_all else None
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
        if whole is not None:
            whole += chunk
        if wanted:
            window = carry + chunk
            for n, rx in wanted:
                if n not in found and _search(n, rx, window):
                    found.add(n)
            carry = window[-_OVERLAP:]
        off += len(chunk)
    v.sha256 = digest.hexdigest()
    v.mime = magic.from_buffer(head, mime=True) if head else "inode/x-empty"
    if rule.allow_mime and not _mime_ok(v.mime, rule.allow_mime):
        v.reasons.append(f"type {v.mime} not allowed here")
    ext = extension(name)
    if rule.check_extension and head and ext in EXTENSION_MIME and not _mime_ok(v.mime, EXTENSION_MIME[ext]):
        v.reasons.append(f"content is {v.mime}, not what {ext} promises")
    if whole is not None:
        problem = _structure(ext, bytes(whole))
        if problem:
            v.reasons.append(problem)
    for n in rule.sensitive:
        if n in found:
            v.reasons.append(f"contains {_SENSITIVE_LABEL.get(n, n)}")
    return v


def _search(name: str, rx: re.Pattern[bytes], data: bytes) -> bool:
    if name != "card":
        return rx.search(data) is not None
    return any(luhn(re.sub(rb"[ -]", b"", m.group())) for m in rx.finditer(data))


def _structure(ext: str, data: bytes) -> str | None:
    if ext == ".json":
        try:
            json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            return f"not valid JSON: {str(e).splitlines()[0]}"
    elif ext == ".csv":
        try:
            text = data.decode("utf-8-sig")
            widths = {len(row) for row in csv.reader(io.StringIO(text)) if row}
        except (UnicodeDecodeError, csv.Error) as e:
            return f"not valid CSV: {e}"
        if len(widths) > 1:
            return f"not valid CSV: rows have {min(widths)} to {max(widths)} columns"
    elif ext == ".pdf":
        if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
            return "not a complete PDF (header or %%EOF trailer missing)"
    return None


def compile_patterns(patterns: tuple[tuple[str, str], ...]) -> dict[str, re.Pattern[bytes]]:
    return {n: re.compile(rx.encode()) for n, rx in patterns}
