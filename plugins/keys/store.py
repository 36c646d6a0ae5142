"""The key store: an embedded SQLite file (``auth.store``) through aiosqlite.

Only a key's SHA-256 digest is stored (keys are 256-bit random strings, so a plain digest
cannot be reversed or guessed); the key itself is shown once, when it is created. All
keys are read into memory at start-up, so authenticating a request is a dict lookup;
creating and revoking write at once, while ``last_used`` and ``requests`` are written in
batches (``flush``: every few seconds and at shutdown), never once per request. Without
``auth.store`` the keys made through the admin API live in memory until the router stops.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    models TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    created REAL NOT NULL,
    last_used REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
)
"""

COLUMNS = ("id", "name", "prefix", "digest", "models", "rpm", "tpm", "created", "last_used", "requests", "tokens")


class KeyStore:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._db: Any = None

    async def open(self) -> list[dict[str, Any]]:
        """Open (creating the file and table if needed) and return every stored key."""
        if self.path is None:
            return []
        try:
            import aiosqlite
        except ImportError as exc:  # pragma: no cover - aiosqlite is a core dependency
            raise RuntimeError("auth.store needs aiosqlite: pip install aiosqlite") from exc
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(SCHEMA)
        await self._db.commit()
        async with self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM client_keys") as cursor:
            rows = await cursor.fetchall()
        out = []
        for row in rows:
            record = dict(zip(COLUMNS, row))
            record["models"] = json.loads(record["models"])
            out.append(record)
        return out

    async def add(self, record: dict[str, Any]) -> None:
        if self._db is None:
            return
        values = [json.dumps(record[c]) if c == "models" else record[c] for c in COLUMNS]
        await self._db.execute(
            f"INSERT INTO client_keys ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
        )
        await self._db.commit()

    async def delete(self, key_id: str) -> None:
        if self._db is None:
            return
        await self._db.execute("DELETE FROM client_keys WHERE id = ?", (key_id,))
        await self._db.commit()

    async def save_usage(self, usage: Iterable[tuple[str, float | None, int, int]]) -> None:
        """(id, last_used, requests, tokens) for keys that were used since the last save."""
        rows = [(last_used, requests, tokens, key_id) for key_id, last_used, requests, tokens in usage]
        if self._db is None or not rows:
            return
        await self._db.executemany(
            "UPDATE client_keys SET last_used = ?, requests = ?, tokens = ? WHERE id = ?", rows
        )
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
