"""The catalog: STORE/catalog.sqlite (SQLite in WAL mode).

`create_tables()` is the canonical schema; every table and column carries a
comment on its meaning. Thread safety: a `Catalog` belongs to the thread that
opened it (the mount's trio thread).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlite_utils

from . import FORMAT_VERSION

CATALOG_NAME = "catalog.sqlite"

#: Schema version of the catalog; migrations move older catalogs forward.
SCHEMA_VERSION = 1


class NoSuchRowError(KeyError):
    pass


def create_tables(db: sqlite_utils.Database) -> None:
    # meta: one row per store-wide fact.
    #   key   - 'format_version' (the store layout, see seldonfs.FORMAT_VERSION),
    #           'schema_version' (this file's SCHEMA_VERSION), 'created_ns'
    #   value - text; numbers are stored as decimal strings
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self.conn)

    @classmethod
    def create(cls, path: Path) -> "Catalog":
        cat = cls(path)
        create_tables(cat.db)
        cat.db["meta"].insert_all(
            [
                {"key": "format_version", "value": str(FORMAT_VERSION)},
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                {"key": "created_ns", "value": str(time.time_ns())},
            ],
            replace=True,
        )
        return cat

    def meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NoSuchRowError(key)
        return row[0]

    def close(self) -> None:
        self.conn.close()
