"""GET /events: Server-Sent Events from one shared LISTEN connection per process.

A real worker runs the jobs; subscribers read a real server over loopback.
Every wait is on an event (an SSE frame, a worker's gate), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from tests.api._support import A, Api, B, Frame, SSEReader

from jobq.api.events import Closed, EventHub, Subscription
from jobq.handlers import JobContext, Registry
from jobq.worker import Worker

Conn = psycopg.Connection[Any]
OpenSSE = Callable[[Api, str], SSEReader]


class Gates:
    """Handlers wait here so the test sees each step before the next happens."""

    def __init__(self) -> None:
        self.release = threading.Event()


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def worker(database_url: str, gates: Gates) -> Iterator[Worker]:
    """A real jobq Worker, in this process, on its own thread and event loop."""
    registry = Registry()

    @registry.handler("sse.step")
    async def step(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(50, "half")
        await asyncio.to_thread(gates.release.wait, 60)
        return {"done": ctx.params.get("n")}

    w = Worker(
        registry,
        url=database_url,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        shutdown_grace=5,
        run_maintenance=False,
    )
    loop_ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        loop_ready.set()
        await w.run()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert loop_ready.wait(30)
    yield w
    gates.release.set()
    loops[0].call_soon_threadsafe(w.stop)
    thread.join(30)


def for_job(job_id: str, **fields: Any) -> Callable[[Frame], bool]:
    def match(frame: Frame) -> bool:
        return (
            frame.event == "job"
            and frame.data.get("job_id") == job_id
            and all(frame.data.get(k) == v for k, v in fields.items())
        )

    return match


def create(client: httpx.Client, **body: Any) -> str:
    r = client.post("/jobs", json={"job_type": "sse.step", **body})
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def test_subscriber_sees_its_job_through_to_completion_and_nothing_else(
    api: Api, sse: OpenSSE, worker: Worker, gates: Gates
) -> None:
    mine = sse(api, api.tokens.user(A))
    theirs = sse(api, api.tokens.user(B))
    everyone = sse(api, api.tokens.service())
    assert mine.headers is not None
    assert mine.headers["content-type"].startswith("text/event-stream")

    other_job = create(api.as_user(B), params={"n": "b"})
    job = create(api.as_user(A), params={"n": "a"})

    pending = mine.wait_for(for_job(job, status="pending"))
    assert pending.data["user_id"] == str(A)
    assert pending.data["event"] == "insert"
    assert pending.id is not None
    mine.wait_for(for_job(job, status="processing", progress_percent=0))
    half = mine.wait_for(for_job(job, status="processing", progress_percent=50))
    assert half.data["progress_message"] == "half"
    gates.release.set()  # both handlers may finish now
    done = mine.wait_for(for_job(job, status="completed"))
    assert done.data["progress_percent"] == 100
    assert done.data["result"] == {"done": "a"}

    # B's job ran too: its owner and the service saw it complete...
    theirs.wait_for(for_job(other_job, status="completed"))
    # the two jobs finish in either order: wait for whichever is not seen yet
    for finished in (other_job, job):
        if not any(for_job(finished, status="completed")(f) for f in everyone.seen):
            everyone.wait_for(for_job(finished, status="completed"))
    # ...and after a marker event of A's (frames reach a subscriber in order),
    # A's stream still holds nothing of B's.
    marker = create(api.as_user(A), params={"n": "marker"})
    mine.wait_for(for_job(marker, status="pending"))
    assert all(f.data.get("user_id") == str(A) for f in mine.seen if f.event == "job")
    assert other_job not in {f.data.get("job_id") for f in mine.seen}
    assert job not in {f.data.get("job_id") for f in theirs.seen}
    # the order A saw its job in
    steps = [
        (f.data["status"], f.data["progress_percent"])
        for f in mine.seen
        if f.data.get("job_id") == job
    ]
    assert steps == [("pending", 0), ("processing", 0), ("processing", 50), ("completed", 100)]
    ids = [int(f.id) for f in mine.seen if f.id is not None]
    assert ids == sorted(ids)


def test_one_shared_listen_connection_for_all_subscribers(
    api: Api, sse: OpenSSE, conn: Conn
) -> None:
    readers = [sse(api, api.tokens.user(A)) for _ in range(3)]
    readers.append(sse(api, api.tokens.service()))
    listeners = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'jobq-api-events'"
    ).fetchone()
    assert listeners == (1,)
    assert api.runtime.hub is not None
    assert api.runtime.hub.subscribers == 4
    job = create(api.as_user(A))
    for reader in readers:
        reader.wait_for(for_job(job, status="pending"))


def test_listener_reconnects_after_its_connection_dies(api: Api, sse: OpenSSE, conn: Conn) -> None:
    reader = sse(api, api.tokens.user(A))
    first = create(api.as_user(A))
    reader.wait_for(for_job(first, status="pending"))
    killed = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'jobq-api-events'"
    ).fetchone()
    assert killed == (1,)
    reader.wait_for(lambda f: f.event == "resync")  # sent once listening again
    second = create(api.as_user(A))
    reader.wait_for(for_job(second, status="pending"))
    assert api.runtime.hub is not None
    assert api.runtime.hub.connections == 2


def test_keep_alive_comments(api: Api, sse: OpenSSE) -> None:
    reader = sse(api, api.tokens.user(A))  # the test server sends one every 0.5 s
    assert reader.kept_alive.wait(10)
    assert reader.comments[0] == "connected"
    # the stream is still alive and delivering after the keep-alives
    job = create(api.as_user(A))
    reader.wait_for(for_job(job, status="pending"))


def test_the_stream_ends_when_the_token_expires(api: Api, sse: OpenSSE) -> None:
    short = api.tokens.user(A, exp=int(time.time()) + 2)
    reader = sse(api, short)
    last = reader.wait_for(lambda f: f.event == "token_expired", timeout=15)
    assert last.data == {"code": "token_expired"}
    assert reader.ended.wait(10)


def test_events_need_a_signed_in_identity(api: Api) -> None:
    for token in (None, api.tokens.anon(), api.tokens.bad()["expired"]):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        with api.client().stream("GET", "/events", headers=headers) as r:
            r.read()
            assert r.status_code == 401


def test_server_shutdown_ends_open_streams(start_api: Callable[..., Api], sse: OpenSSE) -> None:
    api = start_api()
    reader = sse(api, api.tokens.user(A))
    api.server.stop(timeout=20)
    assert reader.ended.wait(20)
    assert not api.server._thread.is_alive()


def test_hub_filters_by_user_and_drops_subscribers_that_stop_reading() -> None:
    async def main() -> None:
        hub = EventHub("postgresql://unused", max_queue=2)
        mine, theirs, service = Subscription(A, 2), Subscription(B, 2), Subscription(None, 10)
        hub._subs.update({mine, theirs, service})
        for i in range(3):
            hub._dispatch(json.dumps({"user_id": str(A), "job_id": f"a{i}", "status": "pending"}))
        hub._dispatch(json.dumps({"user_id": str(B), "job_id": "b0", "status": "pending"}))
        hub._dispatch("not json")
        hub._dispatch(json.dumps(["no", "user"]))
        # A's subscriber overflowed on the third frame: closed and forgotten
        assert mine.closed
        assert hub.subscribers == 2
        got = [await mine.next(0) for _ in range(3)]
        assert [json.loads(f.split("data: ")[1])["job_id"] for f in got[:2]] == ["a0", "a1"]
        assert isinstance(got[2], Closed)
        only_b = await theirs.next(0)
        assert isinstance(only_b, str)
        assert '"job_id": "b0"' in only_b
        assert await theirs.next(0) is None  # nothing else: a timeout, not a frame
        frames = [await service.next(0) for _ in range(4)]
        assert all(isinstance(f, str) and f.startswith("event: job\nid: ") for f in frames)

    asyncio.run(main())
