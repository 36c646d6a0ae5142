"""The router's own embedded store (``auth.store``, an SQLite file through aiosqlite):
settings changed live through ``PUT /admin/settings`` and backends registered through
``POST /admin/backends``, so both survive a restart. (Client keys live in the same file,
in ``plugins.keys``' own table.) Written when something changes, never per request.
"""

from __future__ import annotations

import json
import time
from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS backends (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated REAL NOT NULL)",
)


class Store:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._db: Any = None

    @property
    def persistent(self) -> bool:
        return self.path is not None

    async def open(self) -> None:
        if self.path is None:
            return
        import aiosqlite

        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            await self._db.execute(statement)
        await self._db.commit()

    async def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in await self._rows("SELECT key, value FROM settings ORDER BY key")}

    async def backends(self) -> dict[str, str]:
        return dict(await self._rows("SELECT name, spec FROM backends ORDER BY updated"))

    async def put_setting(self, key: str, value: Any) -> None:
        await self._write("INSERT OR REPLACE INTO settings VALUES (?, ?, ?)", (key, json.dumps(value), time.time()))

    async def put_backend(self, name: str, spec: str) -> None:
        await self._write("INSERT OR REPLACE INTO backends VALUES (?, ?, ?)", (name, spec, time.time()))

    async def delete_backend(self, name: str) -> None:
        await self._write("DELETE FROM backends WHERE name = ?", (name,))

    async def _rows(self, query: str) -> list[tuple[Any, Any]]:
        if self._db is None:
            return []
        async with self._db.execute(query) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def _write(self, query: str, params: tuple[Any, ...]) -> None:
        if self._db is not None:
            await self._db.execute(query, params)
            await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
