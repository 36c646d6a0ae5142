"""Stored responses (``store: true``): in memory for lookups without a wait, bounded by
``responses.ttl_s`` and ``responses.max_responses`` (oldest first), and written through to
an embedded SQLite file (``responses.store``, through aiosqlite) so they outlive a
restart. Each entry keeps the Responses object clients read back (``GET``) and the chat
messages of the conversation up to and including it (what ``previous_response_id``
continues from)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger("router.responses")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    response TEXT NOT NULL,
    messages TEXT NOT NULL
)
"""


class Stored:
    __slots__ = ("created", "response", "messages")

    def __init__(self, created: float, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        self.created = created
        self.response = response
        self.messages = messages


class ResponseStore:
    def __init__(self, path: str | None, ttl_s: float, max_responses: int) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.max_responses = max_responses
        self.entries: OrderedDict[str, Stored] = OrderedDict()
        self._db: Any = None
        self._writes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self.path is None:
            return
        import aiosqlite

        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(SCHEMA)
        await self._db.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.ttl_s,))
        await self._db.commit()
        async with self._db.execute("SELECT id, created, response, messages FROM responses ORDER BY created") as cur:
            for rid, created, response, messages in await cur.fetchall():
                self.entries[rid] = Stored(created, json.loads(response), json.loads(messages))
        self._trim()

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None

    def get(self, response_id: str) -> Stored | None:
        entry = self.entries.get(response_id)
        if entry is not None and entry.created < time.time() - self.ttl_s:
            self.delete(response_id)
            return None
        return entry

    def put(self, response_id: str, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        entry = Stored(time.time(), response, messages)
        self.entries[response_id] = entry
        self.entries.move_to_end(response_id)
        dropped = self._trim()
        self._write(self._insert(response_id, entry, dropped))

    def delete(self, response_id: str) -> bool:
        found = self.entries.pop(response_id, None) is not None
        if found:
            self._write(self._remove([response_id]))
        return found

    def _trim(self) -> list[str]:
        dropped = []
        limit = time.time() - self.ttl_s
        while self.entries:
            rid, oldest = next(iter(self.entries.items()))
            if len(self.entries) <= self.max_responses and oldest.created >= limit:
                break
            del self.entries[rid]
            dropped.append(rid)
        return dropped

    def _write(self, work: Any) -> None:
        if self._db is None:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not write the response store: %s", task.exception())

    async def _insert(self, rid: str, entry: Stored, dropped: list[str]) -> None:
        await self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                               (rid, entry.created, json.dumps(entry.response), json.dumps(entry.messages)))
        if dropped:
            await self._db.executemany("DELETE FROM responses WHERE id = ?", [(d,) for d in dropped])
        await self._db.commit()

    async def _remove(self, ids: list[str]) -> None:
        await self._db.executemany("DELETE FROM responses WHERE id = ?", [(d,) for d in ids])
        await self._db.commit()
