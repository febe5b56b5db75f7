"""Key management: where a passphrase or key file comes from, the
"encryption" block of STORE/store.json, unlocking it, and rewrapping.

The block (written at init, 0600 like the whole store.json)::

    "encryption": {
      "cipher": "AES-256-GCM",
      "block_size": 4096,
      "current_key_id": 2857193621,
      "keys": [{"key_id": 2857193621, "wrapped": "<hex>"}],
      "unlock": {"method": "argon2id", "params": {...}}    or {"method": "keyfile"},
      "key_created": "2026-01-31T12:00:00Z",
      "secret_changed": "2026-01-31T12:00:00Z"
    }

Every master key in "keys" is wrapped by the same key-encryption key (KEK),
derived from the passphrase (Argon2id, parameters beside it) or the key file.
More than one key is listed only while `seldonfs rekey` moves files to a new
one. A plain store has "encryption": null. The format itself is in
docs/file-format.md; the primitives in crypto.py.

"key_created" (init, rekey) and "secret_changed" (init, passwd) are when
the current master key was made and when its passphrase or key file last
changed; `[encryption] rotate_after` raises the key-age alert on the first.
They are plain, not sealed: validated when read (a date that does not parse,
or lies in the future, counts as missing), and a store written before them
gets them at its first mount. Someone who can rewrite store.json can make a
key look younger, which hides the alert and nothing else: the same person
can already delete the wrapped keys (docs/design.md, "Key age").
"""

from __future__ import annotations

import calendar
import getpass
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import crypto
from .errors import UsageError, WrongKeyError

CIPHER = "AES-256-GCM"
KEY_CREATED = "key_created"
SECRET_CHANGED = "secret_changed"
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def stamp(t: float | None = None) -> str:
    return time.strftime(_STAMP, time.gmtime(time.time() if t is None else t))


def when(block: dict[str, Any], field: str, now: float | None = None) -> float | None:
    """The time `field` of the block records, None when it is missing,
    does not parse, or lies in the future (more than a day: clock skew)."""
    v = block.get(field)
    try:
        t = float(calendar.timegm(time.strptime(v, _STAMP))) if isinstance(v, str) else None
    except ValueError:
        return None
    if t is None or t > (time.time() if now is None else now) + 86400:
        return None
    return t


def dated(block: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """The block with the dates it lacks set to `now` (a store made before
    they were kept), None when it has both."""
    missing = [f for f in (KEY_CREATED, SECRET_CHANGED) if when(block, f, now) is None]
    return dict(block, **{f: stamp(now) for f in missing}) if missing else None


@dataclass(frozen=True)
class KeySource:
    """How the user gives the secret: a key file, or a passphrase (SPEC §6:
    --keyfile or --passphrase-file, then $SELDONFS_KEYFILE, then
    $SELDONFS_PASSPHRASE_FILE, then $SELDONFS_PASSPHRASE, then a prompt on
    the terminal). `mount_options`: given as mount(8) -o options, which the
    hints then name."""

    keyfile: Path | None = None
    passphrase_file: Path | None = None
    mount_options: bool = False

    def _keyfile(self) -> Path | None:
        if self.keyfile is None and self.passphrase_file is None and (env := os.environ.get("SELDONFS_KEYFILE")):
            return Path(env)
        return self.keyfile

    def is_keyfile(self) -> bool:
        return self._keyfile() is not None

    def secret(self, confirm: bool = False) -> bytes:
        if (keyfile := self._keyfile()) is not None:
            return _read_secret(keyfile, "key file")
        if self.passphrase_file is not None:
            return _read_secret(self.passphrase_file, "passphrase file").rstrip(b"\r\n")
        if env_file := os.environ.get("SELDONFS_PASSPHRASE_FILE"):
            return _read_secret(Path(env_file), "passphrase file").rstrip(b"\r\n")
        if (env := os.environ.get("SELDONFS_PASSPHRASE")) is not None:
            if not env:
                raise UsageError("SELDONFS_PASSPHRASE is empty: an empty passphrase protects nothing")
            return env.encode()
        return _prompt(confirm, self.mount_options)


def _read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror}") from None
    if not data.strip():
        raise UsageError(f"{path}: {what} is empty")
    return data


def _prompt(confirm: bool, mount_options: bool) -> bytes:
    if not sys.stdin.isatty():
        given = "-o passphrase_file=FILE, -o keyfile=FILE" if mount_options else "--passphrase-file, --keyfile"
        raise UsageError(
            f"no passphrase: use {given}, SELDONFS_KEYFILE, SELDONFS_PASSPHRASE_FILE "
            "or SELDONFS_PASSPHRASE (no terminal to ask on)"
        )
    first = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise UsageError("the passphrases do not match")
    if not first:
        raise UsageError("empty passphrase")
    return first.encode()


def _label(key_id: int) -> bytes:
    return b"seldonfs master key " + key_id.to_bytes(4, "big")


def _kek(block: dict[str, Any], secret: bytes) -> bytes:
    unlock = block["unlock"]
    if unlock["method"] == "keyfile":
        try:
            return crypto.derive_kek_from_keyfile(secret)
        except ValueError as e:
            raise WrongKeyError(f"key file unusable: {e}") from None
    if unlock["method"] == "argon2id":
        return crypto.derive_kek_from_passphrase(secret, crypto.KdfParams.from_json(unlock["params"]))
    raise WrongKeyError(f"unknown unlock method {unlock['method']!r}")


def new_block(source: KeySource, block_size: int) -> dict[str, Any]:
    """A fresh encryption block with a new master key, wrapped for `source`."""
    if source.is_keyfile():
        unlock: dict[str, Any] = {"method": "keyfile"}
    else:
        unlock = {"method": "argon2id", "params": crypto.default_kdf_params().to_json()}
    block: dict[str, Any] = {"cipher": CIPHER, "block_size": block_size, "unlock": unlock}
    kek = _kek(block, source.secret(confirm=True))
    master = crypto.new_master_key()
    kid = crypto.key_id(master)
    block["current_key_id"] = kid
    block["keys"] = [{"key_id": kid, "wrapped": crypto.wrap_key(kek, master, _label(kid)).hex()}]
    block[KEY_CREATED] = block[SECRET_CHANGED] = stamp()
    return block


def unlock(block: dict[str, Any], source: KeySource) -> dict[int, bytes]:
    """Every master key of the store by key id; WrongKeyError (exit 12) if
    the secret does not open them."""
    return unlock_kek(block, source)[0]


def unlock_kek(block: dict[str, Any], source: KeySource) -> tuple[dict[int, bytes], bytes]:
    """The master keys and the key-encryption key that wraps them."""
    kind = block["unlock"]["method"]
    if kind == "keyfile" and not source.is_keyfile():
        use = "-o keyfile=FILE" if source.mount_options else "--keyfile FILE or SELDONFS_KEYFILE=FILE"
        raise WrongKeyError(f"this store is unlocked with a key file: use {use}")
    if kind != "keyfile" and source.is_keyfile():
        why = " ($SELDONFS_KEYFILE is set: unset it, or give --passphrase-file)" if source.keyfile is None else ""
        raise WrongKeyError(f"this store is unlocked with a passphrase, not a key file{why}")
    kek = _kek(block, source.secret())
    keys = {}
    for entry in block["keys"]:
        kid = int(entry["key_id"])
        try:
            keys[kid] = crypto.unwrap_key(kek, bytes.fromhex(entry["wrapped"]), _label(kid))
        except crypto.WrongKey:
            what = "key file" if kind == "keyfile" else "passphrase"
            raise WrongKeyError(f"wrong {what}") from None
    return keys, kek


def with_keys(block: dict[str, Any], keys: dict[int, bytes], kek: bytes) -> dict[str, Any]:
    """The block listing exactly `keys`, each wrapped by `kek`."""
    wrapped = [
        {"key_id": kid, "wrapped": crypto.wrap_key(kek, key, _label(kid)).hex()}
        for kid, key in sorted(keys.items())
    ]
    return dict(block, keys=wrapped)


def rewrap(block: dict[str, Any], keys: dict[int, bytes], source: KeySource) -> dict[str, Any]:
    """The block with every key wrapped anew for `source` (passwd): the data
    is not touched, the master keys stay the same."""
    if source.is_keyfile():
        unlock_: dict[str, Any] = {"method": "keyfile"}
    else:
        unlock_ = {"method": "argon2id", "params": crypto.default_kdf_params().to_json()}
    out = dict(block, unlock=unlock_, **{SECRET_CHANGED: stamp()})
    return with_keys(out, keys, _kek(out, source.secret(confirm=True)))


def generate_keyfile(path: Path) -> None:
    """32 random bytes, mode 0600; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
