"""Key primitives: key derivation, key wrapping and labelled subkeys.

The key hierarchy (the byte formats are in docs/file-format.md)::

    passphrase --Argon2id(KdfParams)--> KEK ┐
    key file   --HKDF-SHA256------------> KEK ┴--AES-256-GCM wrap--> master key
    master key --HKDF-SHA256("content", file id)--> per-file content key
    master key --HKDF-SHA256("audit")-------------> audit-chain key
    master key --HKDF-SHA256("key-id")------------> 32-bit key id (public)

- The master key is 32 random bytes; it never changes when the passphrase
  does (``passwd`` rewraps it), only ``rekey`` makes a new one.
- The key-encryption key (KEK) only wraps master keys; nothing else is
  encrypted with it.
- Every other key is a subkey of the master key, separated by an HKDF label
  (pattern: gocryptfs internal/cryptocore/hkdf.go), so no two purposes ever
  share a key.

Everything here is a pure function of its arguments (plus `secrets` for
fresh randomness) and safe to call from any thread. Only `cryptography` and
`secrets` are used: no home-made modes (SPEC §8).
"""

from __future__ import annotations

import functools
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12  # AES-GCM standard nonce
TAG_SIZE = 16
SALT_SIZE = 16
MIN_KEYFILE_SIZE = 32
KEYFILE_LABEL = b"seldonfs keyfile v1"
SUBKEY_PREFIX = b"seldonfs "


class WrongKey(Exception):
    """A wrapped key did not authenticate: wrong KEK, wrong label or damaged."""


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters, stored beside the wrapped key (memory_cost in KiB)."""

    salt: bytes
    iterations: int
    lanes: int
    memory_cost: int

    def to_json(self) -> dict[str, Any]:
        return {
            "salt": self.salt.hex(),
            "iterations": self.iterations,
            "lanes": self.lanes,
            "memory_cost": self.memory_cost,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KdfParams:
        """Parse what `to_json` wrote; ValueError names the bad field."""
        try:
            salt = bytes.fromhex(d["salt"])
            ints = {k: d[k] for k in ("iterations", "lanes", "memory_cost")}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"kdf params: bad or missing field: {e}") from None
        for k, v in ints.items():
            if type(v) is not int or v < 1:
                raise ValueError(f"kdf params: {k}: want a positive integer, have {v!r}")
        return cls(salt=salt, **ints)


# Measured on the development machine (2 CPUs, cryptography 50, Python 3.11),
# three runs each:  memory 256 MiB, lanes 4:  t=2: 0.38-0.42 s,  t=3: 0.50 s,
# t=4: 0.60-0.73 s;  (128 MiB, t=3, p=4): 0.22 s.  We take 256 MiB, t=4, p=4
# (~0.65 s): inside the 0.5-1 s budget for an unlock, and above RFC 9106's
# second recommended option (64 MiB, t=3, p=4). The unlocking machine needs
# 256 MiB free once per mount.
DEFAULT_ITERATIONS = 4
DEFAULT_LANES = 4
DEFAULT_MEMORY_COST = 256 * 1024  # KiB


def default_kdf_params() -> KdfParams:
    """Fresh parameters for a new passphrase: a random salt, tuned costs."""
    return KdfParams(
        salt=secrets.token_bytes(SALT_SIZE),
        iterations=DEFAULT_ITERATIONS,
        lanes=DEFAULT_LANES,
        memory_cost=DEFAULT_MEMORY_COST,
    )


def derive_kek_from_passphrase(passphrase: bytes, params: KdfParams) -> bytes:
    """The 32-byte key-encryption key for a passphrase (Argon2id)."""
    kdf = Argon2id(
        salt=params.salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_cost,
    )
    return kdf.derive(passphrase)


def derive_kek_from_keyfile(data: bytes) -> bytes:
    """The 32-byte key-encryption key for a key file's bytes (HKDF-SHA256).

    A key file already holds >= 32 random bytes, so no slow KDF is needed;
    shorter files are refused (ValueError) rather than weakly stretched.
    """
    if len(data) < MIN_KEYFILE_SIZE:
        raise ValueError(f"key file too short: want >= {MIN_KEYFILE_SIZE} bytes, have {len(data)}")
    return _hkdf(data, KEYFILE_LABEL)


def wrap_key(kek: bytes, key: bytes, label: bytes) -> bytes:
    """nonce(12) || AES-256-GCM(kek, key, ad=label) || tag(16)."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, key, label)


def unwrap_key(kek: bytes, wrapped: bytes, label: bytes) -> bytes:
    """The key `wrap_key` wrapped; WrongKey if it does not authenticate."""
    if len(wrapped) < NONCE_SIZE + TAG_SIZE:
        want = NONCE_SIZE + TAG_SIZE
        raise WrongKey(f"wrapped key too short: want >= {want} bytes, have {len(wrapped)}")
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], label)
    except InvalidTag:
        raise WrongKey("wrapped key did not authenticate") from None


def subkey(master: bytes, label: bytes, context: bytes = b"") -> bytes:
    """A 32-byte key for one purpose: HKDF-SHA256 with
    info = b"seldonfs " + label + b"\\0" + context.

    The NUL keeps (label, context) pairs unambiguous, so a label may not
    contain one. Uses: (b"content", file id), (b"audit"), (b"key-id").
    """
    if b"\0" in label:
        raise ValueError("subkey label must not contain NUL")
    return _subkey_fast(master, SUBKEY_PREFIX + label + b"\0" + context)


def new_master_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def key_id(master: bytes) -> int:
    """A public 32-bit name for a master key (headers and store.json say
    which key a file needs); reveals nothing about the key."""
    return int.from_bytes(subkey(master, b"key-id")[:4], "big")


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(ikm)


@functools.lru_cache(maxsize=8)
def _prk(master: bytes) -> bytes:
    """HKDF-Extract(salt = 32 zero bytes, master): fixed per master key."""
    return hmac.digest(bytes(32), master, "sha256")


def _subkey_fast(master: bytes, info: bytes) -> bytes:
    """The same bytes as _hkdf(master, info) (RFC 5869; a 32-byte output is
    one Expand block), with the Extract step cached: every new file derives
    its key, and this takes ~1 us where cryptography's HKDF takes ~6 us."""
    return hmac.digest(_prk(master), info + b"\x01", "sha256")
