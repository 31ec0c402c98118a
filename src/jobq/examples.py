"""Example handlers for ``jobq up``: real work on this machine, no network needed.

* ``checksum``: hashes generated data a megabyte at a time (sha256, blake2b, ...).
* ``compress``: compresses generated log text with zlib, bz2 and lzma, and compares.
* ``thumbnail``: renders a Mandelbrot image row by row (CPU bound) and returns an
  80x50 PNG thumbnail of it, which the dashboard shows.
* ``flaky``: fails now and then (``fail_rate``), so the SQL retry policy retries it.
* ``long_report``: runs for ``seconds`` (default 60) in small steps, checking
  ``ctx.cancelled`` between them: the one to cancel.
* ``system_snapshot``: load, disk and memory of this machine; enqueued every 30 s
  by ``registry.periodic``.

Each reports progress and writes logs. ``throttle_ms`` (where there is one)
pauses between steps so that a person can watch the progress bar move.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import lzma
import os
import platform
import random
import resource
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from jobq.handlers import JobContext, JobFailed, Registry
from jobq.models import LogLevel

# The user `jobq up` enqueues for and mints its user token for.
DEMO_USER_ID = UUID("5eed0000-0000-4000-8000-00000000d3e0")

MB = 1 << 20
registry = Registry()


def _int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobFailed(
            f"{name} must be an integer from {low} to {high}", code="BAD_INPUT", retryable=False
        )
    return value


def _float(params: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise JobFailed(
            f"{name} must be a number from {low} to {high}", code="BAD_INPUT", retryable=False
        )
    return float(value)


def _pause(ctx: JobContext, seconds: float) -> None:
    """Sleep a little, but wake up early once the job is cancelled."""
    deadline = time.monotonic() + seconds
    while not ctx.cancelled and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


@registry.handler(timeout=300)
def checksum(ctx: JobContext) -> dict[str, Any]:
    """Hash ``megabytes`` of generated data with ``algorithm``, a megabyte per step."""
    size = _int(ctx.params, "megabytes", 32, 1, 1024)
    algorithm = str(ctx.params.get("algorithm", "sha256"))
    if algorithm not in {"sha256", "sha512", "blake2b", "sha1", "md5"}:
        raise JobFailed(f"unknown algorithm {algorithm!r}", code="BAD_INPUT", retryable=False)
    throttle = _int(ctx.params, "throttle_ms", 60, 0, 5000) / 1000
    rng = random.Random(_int(ctx.params, "seed", 42, 0, 2**31))  # noqa: S311 - demo data
    digest = hashlib.new(algorithm)
    ctx.log("info", f"hashing {size} MB with {algorithm}", megabytes=size, algorithm=algorithm)
    started = time.perf_counter()
    for i in range(1, size + 1):
        if ctx.cancelled:
            return {"cancelled_at_mb": i - 1}
        digest.update(rng.randbytes(MB))
        percent = i * 100 // size
        ctx.progress(percent, f"{i}/{size} MB hashed")
        if i == size or i % max(1, size // 8) == 0:
            ctx.log("debug", f"hashed {i} MB", megabytes_done=i)
        _pause(ctx, throttle)
    elapsed = time.perf_counter() - started
    ctx.log("info", f"{algorithm} digest ready", digest=digest.hexdigest()[:16])
    return {
        "algorithm": algorithm,
        "digest": digest.hexdigest(),
        "bytes": size * MB,
        "seconds": round(elapsed, 3),
    }


_WORDS = tuple(
    [
        "worker",
        "claimed",
        "job",
        "heartbeat",
        "retry",
        "backoff",
        "queue",
        "pending",
        "processing",
        "completed",
        "failed",
        "cancelled",
        "expired",
        "partition",
        "index",
        "vacuum",
        "listen",
        "notify",
        "payload",
        "tenant",
        "priority",
    ]
)


def _log_text(rng: random.Random, size: int) -> bytes:
    lines: list[str] = []
    total = 0
    while total < size:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        stamp = f"2026-01-01T00:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        line = f"{stamp} {words} id={rng.getrandbits(32):08x}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


@registry.handler(timeout=300)
def compress(ctx: JobContext) -> dict[str, Any]:
    """Compress ``megabytes`` of generated log text with zlib, bz2 and lzma."""
    size = _int(ctx.params, "megabytes", 4, 1, 64)
    level = _int(ctx.params, "level", 6, 1, 9)
    throttle = _int(ctx.params, "throttle_ms", 200, 0, 5000) / 1000
    rng = random.Random(_int(ctx.params, "seed", 7, 0, 2**31))  # noqa: S311 - demo data
    ctx.progress(5, "generating text")
    data = _log_text(rng, size * MB)
    ctx.log("info", f"generated {len(data)} bytes of log text", bytes=len(data))
    codecs: Sequence[tuple[str, Callable[[bytes], bytes]]] = (
        ("zlib", lambda d: zlib.compress(d, level)),
        ("bz2", lambda d: bz2.compress(d, level)),
        ("lzma", lambda d: lzma.compress(d, preset=min(level, 6))),
    )
    results: dict[str, Any] = {"input_bytes": len(data), "level": level}
    for n, (name, fn) in enumerate(codecs, start=1):
        if ctx.cancelled:
            break
        started = time.perf_counter()
        out = fn(data)
        ms = (time.perf_counter() - started) * 1000
        ratio = round(len(data) / len(out), 2)
        results[name] = {"bytes": len(out), "ratio": ratio, "ms": round(ms, 1)}
        ctx.log("info", f"{name}: {len(out)} bytes, ratio {ratio}x in {ms:.0f} ms", codec=name)
        ctx.progress(5 + n * 95 // len(codecs), f"{name} done")
        _pause(ctx, throttle)
    best = min(
        (k for k in ("zlib", "bz2", "lzma") if k in results), key=lambda k: results[k]["bytes"]
    )
    results["best"] = best
    return results


def _png(width: int, height: int, rgb: bytes) -> bytes:
    """A minimal PNG (8-bit RGB, no interlace) of ``rgb`` rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _colour(i: int, max_iter: int) -> tuple[int, int, int]:
    if i >= max_iter:
        return (15, 23, 42)
    t = i / max_iter
    return (
        int(9 * (1 - t) * t**3 * 255),
        int(15 * (1 - t) ** 2 * t**2 * 255),
        int(8.5 * (1 - t) ** 3 * t * 255),
    )


@registry.handler(timeout=300)
def thumbnail(ctx: JobContext) -> dict[str, Any]:
    """Render a Mandelbrot image (CPU bound) and return an 80x50 PNG thumbnail of it."""
    width = _int(ctx.params, "width", 320, 16, 1600)
    height = _int(ctx.params, "height", 200, 10, 1000)
    max_iter = _int(ctx.params, "max_iter", 60, 8, 1000)
    zoom = _float(ctx.params, "zoom", 1.0, 0.1, 1e6)
    cx = _float(ctx.params, "x", -0.6, -3, 3)
    cy = _float(ctx.params, "y", 0.0, -3, 3)
    throttle = _int(ctx.params, "throttle_ms", 40, 0, 5000) / 1000
    span = 3.0 / zoom
    ctx.log(
        "info", f"rendering {width}x{height}, {max_iter} iterations", width=width, height=height
    )
    pixels = bytearray(width * height * 3)
    for y in range(height):
        if ctx.cancelled:
            return {"cancelled_at_row": y}
        ci = cy + (y / height - 0.5) * span * height / width
        for x in range(width):
            c = complex(cx + (x / width - 0.5) * span, ci)
            z = 0j
            i = 0
            while i < max_iter and abs(z) <= 2.0:
                z = z * z + c
                i += 1
            o = (y * width + x) * 3
            pixels[o : o + 3] = bytes(_colour(i, max_iter))
        if (y + 1) % max(1, height // 20) == 0:
            ctx.progress((y + 1) * 95 // height, f"row {y + 1}/{height}")
            _pause(ctx, throttle)
    tw, th = 80, 50
    thumb = bytearray(tw * th * 3)
    for ty in range(th):  # box filter: average the source pixels each thumbnail pixel covers
        y0, y1 = ty * height // th, max(ty * height // th + 1, (ty + 1) * height // th)
        for tx in range(tw):
            x0, x1 = tx * width // tw, max(tx * width // tw + 1, (tx + 1) * width // tw)
            sums = [0, 0, 0]
            for sy in range(y0, y1):
                row = sy * width
                for sx in range(x0, x1):
                    o = (row + sx) * 3
                    sums[0] += pixels[o]
                    sums[1] += pixels[o + 1]
                    sums[2] += pixels[o + 2]
            n = (y1 - y0) * (x1 - x0)
            thumb[(ty * tw + tx) * 3 : (ty * tw + tx) * 3 + 3] = bytes(s // n for s in sums)
    png = _png(tw, th, bytes(thumb))
    full = _png(width, height, bytes(pixels))
    ctx.log("info", f"thumbnail {tw}x{th}: {len(png)} bytes (full image {len(full)} bytes)")
    return {
        "width": width,
        "height": height,
        "full_png_bytes": len(full),
        "thumbnail": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
    }


@registry.handler()
def flaky(ctx: JobContext) -> dict[str, Any]:
    """Fails with probability ``fail_rate`` (default 0.5); the retry policy retries it."""
    fail_rate = _float(ctx.params, "fail_rate", 0.5, 0.0, 1.0)
    steps = _int(ctx.params, "steps", 5, 1, 100)
    throttle = _int(ctx.params, "throttle_ms", 150, 0, 5000) / 1000
    ctx.log("info", f"attempt {ctx.attempt} of {ctx.job.max_retries + 1}", attempt=ctx.attempt)
    rng = random.Random()  # noqa: S311 - demo data
    # this attempt fails with probability fail_rate, at a step chosen at random
    fail_at = rng.randint(1, steps) if rng.random() < fail_rate else None
    for i in range(1, steps + 1):
        ctx.progress(i * 100 // steps - (1 if i == steps else 0), f"step {i}/{steps}")
        _pause(ctx, throttle)
        if i == fail_at:
            ctx.log("error", f"upstream hiccup at step {i}", step=i, attempt=ctx.attempt)
            raise ConnectionError(f"simulated upstream hiccup at step {i} (attempt {ctx.attempt})")
    ctx.log("info", "all steps succeeded")
    return {"attempt": ctx.attempt, "steps": steps}


@registry.handler()
def long_report(ctx: JobContext) -> dict[str, Any]:
    """Run for ``seconds`` in small steps, checking ``ctx.cancelled`` between them."""
    seconds = _float(ctx.params, "seconds", 60.0, 1.0, 3600.0)
    step = 0.25
    steps = max(1, round(seconds / step))
    rng = random.Random(_int(ctx.params, "seed", 1, 0, 2**31))  # noqa: S311 - demo data
    total = 0.0
    ctx.log("info", f"report over {steps} samples, about {seconds:.0f} s", steps=steps)
    for i in range(1, steps + 1):
        if ctx.cancelled:
            ctx.log("warning", f"cancelled after {i - 1} of {steps} samples", done=i - 1)
            return {"cancelled_after": i - 1}
        total += sum(rng.random() for _ in range(2000))
        if i % 4 == 0 or i == steps:
            ctx.progress(i * 100 // steps, f"sample {i}/{steps}")
        if i % 40 == 0:
            ctx.log("info", f"{i} samples, running mean {total / (i * 2000):.4f}", samples=i)
        _pause(ctx, step)
    return {"samples": steps * 2000, "mean": round(total / (steps * 2000), 6)}


@registry.handler()
def system_snapshot(ctx: JobContext) -> dict[str, Any]:
    """Load, disk and memory of this machine (enqueued every 30 s by `jobq up`)."""
    ctx.progress(30, "reading load")
    load1, load5, load15 = os.getloadavg()
    ctx.progress(60, "reading disk")
    disk = shutil.disk_usage("/")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    snapshot = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "disk_free_gb": round(disk.free / 1e9, 1),
        "disk_used_percent": round(100 * disk.used / disk.total, 1),
        "max_rss_mb": round(rss_mb, 1),
        "python": platform.python_version(),
    }
    level: LogLevel = "warning" if load1 > (os.cpu_count() or 1) else "info"
    ctx.log(level, f"load {load1:.2f}, disk {snapshot['disk_used_percent']}% used", **snapshot)
    return snapshot


registry.periodic("@every 30s", "system_snapshot", user_id=DEMO_USER_ID)

# What `jobq up --seed N` enqueues, in turn.
DEMO_JOBS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("checksum", {"megabytes": 48, "algorithm": "sha256"}),
    ("thumbnail", {"zoom": 1.0}),
    ("compress", {"megabytes": 4, "level": 6}),
    ("flaky", {"fail_rate": 0.6}),
    ("long_report", {"seconds": 60}),
    ("thumbnail", {"zoom": 40.0, "x": -0.7436, "y": 0.1318}),
    ("checksum", {"megabytes": 96, "algorithm": "blake2b"}),
    ("compress", {"megabytes": 8, "level": 9}),
)


def demo_jobs(n: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``n`` demo jobs, cycling through DEMO_JOBS."""
    return [(t, dict(p)) for t, p in (DEMO_JOBS[i % len(DEMO_JOBS)] for i in range(n))]
