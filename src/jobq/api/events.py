"""Live job events: ONE shared LISTEN connection per process, fanned out in memory.

The database sends every job change on ``job_status_changed`` (a small JSON
payload built by ``notify_job_status_change``: job_id, user_id, status,
progress, ...). :class:`EventHub` holds the only listening connection of the
process and hands each payload to the subscribers entitled to it: a user's
subscription gets the payloads whose ``user_id`` is theirs, a service_role
subscription gets all. The connection is opened on the first subscription,
pinged when quiet, and reopened with exponential backoff when it dies; after
a reconnection every subscriber gets a ``resync`` event (events may have been
missed: read the current state again).

Frames are Server-Sent Events::

    event: job
    id: 42
    data: {"event": "update", "job_id": "...", "user_id": "...", "status": "processing", ...}

A subscriber that stops reading (its queue fills up) is closed rather than
slowing everyone down; its client reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql

from jobq._aio import wait_event

log = logging.getLogger("jobq.api.events")

CHANNEL: Final = "job_status_changed"


class Closed:
    """Returned by :meth:`Subscription.next` once the subscription is over."""


CLOSED: Final = Closed()


class Subscription:
    """One client's queue of SSE frames."""

    def __init__(self, user_id: UUID | None, max_queue: int) -> None:
        self.user_id = None if user_id is None else str(user_id)
        self._frames: deque[str] = deque()
        self._max_queue = max_queue
        self._ready = asyncio.Event()
        self.closed = False

    def wants(self, owner: object) -> bool:
        return self.user_id is None or self.user_id == owner

    def push(self, frame: str) -> None:
        if self.closed:
            return
        if len(self._frames) >= self._max_queue:
            log.warning("closing a slow event subscriber (%d frames queued)", len(self._frames))
            self.close()
            return
        self._frames.append(frame)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self, timeout: float) -> str | Closed | None:
        """The next frame; None after ``timeout`` seconds without one; CLOSED at the end."""
        if not self._frames and not self.closed:
            await wait_event(self._ready, timeout)
        if self._frames:
            frame = self._frames.popleft()
            if not self._frames and not self.closed:
                self._ready.clear()
            return frame
        if self.closed:
            return CLOSED
        self._ready.clear()
        return None


def frame(event: str, data: str, event_id: int | None = None) -> str:
    """One SSE frame. ``data`` must be a single line (JSON is)."""
    head = f"event: {event}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    return f"{head}data: {data}\n\n"


class EventHub:
    """The process's single LISTEN connection and its subscribers."""

    def __init__(
        self,
        url: str,
        *,
        channel: str = CHANNEL,
        max_queue: int = 1000,
        ping_interval: float = 30.0,
        backoff_cap: float = 5.0,
    ) -> None:
        self._url = url
        self._channel = channel
        self._max_queue = max_queue
        self._ping_interval = ping_interval
        self._backoff_cap = backoff_cap
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.listening = asyncio.Event()
        self.connections = 0  # how many times the listener connected (tests, metrics)
        self._seq = 0
        self._closing = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def start(self) -> None:
        """Start the listener (idempotent; called on the first subscription)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="jobq-api-events")

    async def subscribe(self, user_id: UUID | None, *, timeout: float) -> Subscription | None:
        """A new subscription, once the listener is listening; None if it cannot be."""
        self.start()
        if not await wait_event(self.listening, timeout):
            return None
        sub = Subscription(user_id, self._max_queue)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._subs.discard(sub)

    def close_subscriptions(self) -> None:
        """End every stream (server shutdown): clients see the stream end and reconnect."""
        self._closing = True
        for sub in list(self._subs):
            self.unsubscribe(sub)

    async def close(self) -> None:
        self.close_subscriptions()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def kill_connection(self) -> None:
        """Close the listening connection under the hub (tests of reconnection)."""
        if self._conn is not None:
            await self._conn.close()

    # -- the listener ------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.1
        while True:
            before = self.connections
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning("event listener lost its connection: %s; reconnecting", exc)
            except Exception:
                # A bug must not silence /events for the life of the process.
                log.exception("event listener failed; restarting it")
            if self.connections != before:
                delay = 0.1  # it was up: start the backoff again
            await asyncio.sleep(delay)
            delay = min(self._backoff_cap, delay * 2)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name="jobq-api-events"
        )
        self._conn = conn
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.connections += 1
            if self.connections > 1:
                self._broadcast(frame("resync", "{}"))
            self.listening.set()
            log.info("event listener on %s (connection %d)", self._channel, self.connections)
            while True:
                async for note in conn.notifies(timeout=self._ping_interval):
                    self._dispatch(note.payload)
                await conn.execute("SELECT 1")  # quiet for a while: is it still alive?
        finally:
            self._conn = None
            self.listening.clear()
            await conn.close()

    def _broadcast(self, text: str) -> None:
        for sub in list(self._subs):
            sub.push(text)
            if sub.closed:  # it overflowed (or its stream ended unseen): forget it
                self._subs.discard(sub)

    def _dispatch(self, payload: str) -> None:
        try:
            event = json.loads(payload)
            owner = event["user_id"]
        except (ValueError, TypeError, KeyError):
            log.debug("ignoring a malformed notification: %.200s", payload)
            return
        if "\n" in payload or "\r" in payload:
            payload = json.dumps(event, separators=(",", ":"))
        self._seq += 1
        text = frame("job", payload, self._seq)
        for sub in list(self._subs):
            if sub.wants(owner):
                sub.push(text)
                if sub.closed:
                    self._subs.discard(sub)
