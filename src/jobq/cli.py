"""`jobq ...`: a thin typer adapter over migrate/db/embedded."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from jobq import db, embedded, migrate, schedule

app = typer.Typer(help="jobq: a PostgreSQL-native job queue.", no_args_is_help=True)
embedded_app = typer.Typer(help="Manage the embedded PostgreSQL 18 server.", no_args_is_help=True)
app.add_typer(embedded_app, name="embedded")
schedule_app = typer.Typer(
    help="Maintenance schedules: pg_cron when present, else the workers' leader.",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")

out = Console()
err = Console(stderr=True)


def main() -> None:
    app()


def _connect() -> psycopg.Connection[Any]:
    conn = db.connect(autocommit=True)
    # Migrations report through RAISE NOTICE (complete.sql): show it to the user.
    conn.add_notice_handler(
        lambda diag: out.print(f"[dim]{diag.severity}:[/] {diag.message_primary}")
    )
    return conn


def _print_status(conn: psycopg.Connection[Any]) -> None:
    table = Table("version", "name", "state", "applied at")
    for s in migrate.status(conn):
        if not s.shipped:
            state = "[red]applied, not shipped[/]"
        elif not s.applied:
            state = "[yellow]pending[/]"
        elif s.checksum_ok:
            state = "[green]applied[/]"
        else:
            state = "[red]applied, checksum differs[/]"
        applied_at = s.applied_at.isoformat(timespec="seconds") if s.applied_at else ""
        table.add_row(f"{s.version:04d}", s.name, state, applied_at)
    out.print(table)


@app.command("migrate")
def migrate_cmd(
    show_status: Annotated[
        bool, typer.Option("--status", help="List applied and pending migrations only.")
    ] = False,
) -> None:
    """Apply pending migrations (safe to run concurrently and repeatedly)."""
    with _connect() as conn:
        if show_status:
            _print_status(conn)
            return
        try:
            applied = migrate.migrate(conn)
        except migrate.MigrationError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    if applied:
        for m in applied:
            out.print(f"applied {m.filename}")
    else:
        out.print("schema is up to date: nothing to apply")


@app.command("status")
def status_cmd() -> None:
    """List applied and pending migrations."""
    with _connect() as conn:
        _print_status(conn)


@app.command("verify")
def verify_cmd() -> None:
    """Check that every index, function, trigger and policy is installed (exit 1 if not)."""
    with _connect() as conn:
        report = migrate.verify(conn)
    table = Table("kind", "expected", "found", "missing")
    for c in report.checks:
        style = "green" if c.ok else "red"
        table.add_row(c.kind, str(c.expected), f"[{style}]{c.found}[/]", ", ".join(c.missing))
    out.print(table)
    if not report.ok:
        err.print("[red]schema incomplete[/]: run `jobq migrate`")
        raise typer.Exit(1)
    out.print("[green]schema OK[/]")


@app.command("sql")
def sql_cmd() -> None:
    """Print the whole schema as one SQL script (Supabase SQL editor, psql -f)."""
    typer.echo(migrate.render_sql(), nl=False)


@app.command("db-url")
def db_url_cmd() -> None:
    """Print the database URL in use (DATABASE_URL, else the embedded server)."""
    typer.echo(db.database_url())


@embedded_app.command("start")
def embedded_start() -> None:
    """Start the embedded server (no-op when running) and print its URL."""
    typer.echo(embedded.embedded_url())


@embedded_app.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server."""
    out.print("stopped" if embedded.stop() else "not running")


@embedded_app.command("restart")
def embedded_restart() -> None:
    """Restart the embedded server in place."""
    typer.echo(embedded.restart())


@embedded_app.command("status")
def embedded_status() -> None:
    """Show whether the embedded server runs, and where."""
    s = embedded.status()
    out.print(f"data dir: {s.pgdata}")
    if s.running:
        out.print(f"running (pid {s.pid}): {s.uri}")
    else:
        out.print("not running")
        raise typer.Exit(3)


# ---------------------------------------------------------------------------
# worker and maintenance schedules
# ---------------------------------------------------------------------------


def _load_registry(target: str) -> Any:
    """``package.module:attribute`` -> the Registry it names."""
    import importlib
    import sys

    from jobq.handlers import Registry

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise typer.BadParameter("expected module:attribute, e.g. myapp.jobs:registry")
    sys.path.insert(0, ".")
    try:
        registry = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot load {target}: {exc}") from exc
    if not isinstance(registry, Registry):
        raise typer.BadParameter(f"{target} is a {type(registry).__name__}, not a jobq Registry")
    return registry


@app.command("worker")
def worker_cmd(
    registry: Annotated[str, typer.Argument(help="Handlers to run, as module:attribute.")],
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once.")] = 10,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Jobs claimed per query.")] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
    heartbeat_interval: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 5.0,
    shutdown_grace: Annotated[
        float, typer.Option(help="Seconds running jobs get to finish on SIGTERM.")
    ] = 30.0,
    listen: Annotated[
        bool, typer.Option(help="LISTEN for new jobs (off behind a transaction pooler).")
    ] = True,
    job_type: Annotated[
        list[str] | None, typer.Option(help="Only claim these job types (repeatable).")
    ] = None,
    maintenance: Annotated[
        bool, typer.Option(help="Run maintenance when no pg_cron schedule does.")
    ] = True,
    maintenance_every: Annotated[
        str | None, typer.Option(help="Run every maintenance task on this schedule instead.")
    ] = None,
    stuck_timeout: Annotated[
        float, typer.Option(help="Seconds without heartbeat before a job counts as stuck.")
    ] = 1800.0,
    worker_id: Annotated[str | None, typer.Option(help="Name of this worker.")] = None,
    burst: Annotated[
        bool, typer.Option(help="Stop once no job is runnable and none is running.")
    ] = False,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C (running jobs finish or are released)."""
    import logging
    from datetime import timedelta

    from rich.logging import RichHandler

    from jobq.worker import Worker

    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err)]
    )
    tasks = schedule.maintenance_tasks(stuck_timeout=timedelta(seconds=stuck_timeout))
    if maintenance_every:
        try:
            tasks = schedule.every(tasks, maintenance_every)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    Worker(
        _load_registry(registry),
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=poll_interval,
        heartbeat_interval=heartbeat_interval,
        shutdown_grace=shutdown_grace,
        listen=listen,
        job_types=job_type,
        worker_id=worker_id,
        maintenance=tasks,
        run_maintenance=maintenance,
        burst=burst,
    ).run_forever()


@schedule_app.command("install")
def schedule_install() -> None:
    """Register the spec's five maintenance schedules with pg_cron (idempotent)."""
    with _connect() as conn:
        try:
            names = schedule.install_pg_cron(conn, schedule.maintenance_tasks())
        except schedule.PgCronUnavailable as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    for name in names:
        out.print(f"scheduled {name}")


@schedule_app.command("remove")
def schedule_remove() -> None:
    """Unschedule jobq's pg_cron jobs (workers take maintenance back)."""
    with _connect() as conn:
        try:
            names = schedule.remove_pg_cron(conn)
        except schedule.PgCronUnavailable as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from exc
    out.print("\n".join(f"unscheduled {n}" for n in names) or "no jobq schedules were installed")


@schedule_app.command("status")
def schedule_status() -> None:
    """Say which mode runs maintenance (pg_cron or in-process) and show the schedules."""
    with _connect() as conn:
        st = schedule.status(conn)
    out.print(f"mode: [bold]{st.mode}[/]")
    out.print(f"pg_cron loaded: {'yes' if st.pg_cron_loaded else 'no'}")
    if st.mode == "pg_cron":
        table = Table("job", "schedule", "active", "last run", "last status")
        for j in st.jobs:
            last = j["last_run"].isoformat(timespec="seconds") if j["last_run"] else ""
            table.add_row(
                j["jobname"], j["schedule"], str(j["active"]), last, j["last_status"] or ""
            )
        out.print(table)
    else:
        out.print(f"leader: {st.leader or 'no worker holds the leader lock'}")
        table = Table("task", "schedule")
        for t in schedule.maintenance_tasks():
            table.add_row(t.name, t.schedule)
        out.print(table)


# ---------------------------------------------------------------------------
# jobs: enqueue, list, show, cancel, stats (as service_role, like an admin)
# ---------------------------------------------------------------------------


def _client() -> Any:
    from jobq.client import Client

    return Client(min_size=1, max_size=1)


def _json_default(value: Any) -> Any:
    import dataclasses
    from datetime import datetime
    from uuid import UUID

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _print_json(value: Any) -> None:
    import json

    typer.echo(json.dumps(value, default=_json_default, indent=2))


def _fail(exc: Exception) -> None:
    from jobq.errors import JobqError

    if isinstance(exc, JobqError):
        err.print(f"[red]{type(exc).__name__}[/] ({exc.sqlstate or '-'}): {exc.message}")
        raise typer.Exit(2) from exc
    raise exc


_STATUS_STYLE = {
    "pending": "yellow",
    "processing": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "expired": "dim",
}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("enqueue")
def enqueue_cmd(
    job_type: Annotated[str, typer.Argument(help="The job type (its handler's name).")],
    params: Annotated[str, typer.Argument(help="Params as a JSON object.")] = "{}",
    user: Annotated[str | None, typer.Option(help="Owner's user id (default: system).")] = None,
    priority: Annotated[int, typer.Option(help="-100..100, higher runs first.")] = 0,
    max_retries: Annotated[int, typer.Option(help="Retries after the first attempt.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue one job."""
    import json

    from jobq.handlers import SYSTEM_USER_ID

    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"params is not JSON: {exc}") from exc
    with _client() as client:
        try:
            job_id = client.create_job(
                job_type,
                parsed,
                user_id=user or SYSTEM_USER_ID,
                priority=priority,
                max_retries=max_retries,
            )
        except Exception as exc:
            _fail(exc)
    if as_json:
        _print_json({"job_id": job_id})
    else:
        out.print(f"enqueued {job_id}")


@app.command("jobs")
def jobs_cmd(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only this job type.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's jobs.")] = None,
    limit: Annotated[int, typer.Option(help="Rows per page (1-1000).")] = 20,
    offset: Annotated[int, typer.Option(help="Rows to skip.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with _client() as client:
        try:
            page = client.list_jobs(
                user_id=user, status=status, job_type=job_type, limit=limit, offset=offset
            )
        except Exception as exc:
            _fail(exc)
    if as_json:
        _print_json(page)
        return
    table = Table("id", "type", "status", "progress", "attempts", "created", "user")
    for j in page.jobs:
        style = _STATUS_STYLE.get(j.status, "")
        table.add_row(
            str(j.id),
            j.job_type,
            f"[{style}]{j.status}[/]",
            f"{j.progress_percent}%",
            f"{j.attempts}/{j.max_retries + 1}",
            j.created_at.isoformat(timespec="seconds"),
            str(j.user_id),
        )
    out.print(table)
    out.print(f"{len(page.jobs)} of {page.total_count} jobs")


@app.command("job")
def job_cmd(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    logs: Annotated[int, typer.Option(help="How many log lines to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show one job with its latest logs."""
    with _client() as client:
        try:
            job = client.get_job(job_id)
            log_page = client.get_logs(job_id, limit=logs)
        except Exception as exc:
            _fail(exc)
    if as_json:
        _print_json({"job": job, "logs": log_page.logs, "log_count": log_page.total_count})
        return
    table = Table(show_header=False)
    for name, value in vars(job).items():
        table.add_row(name, "" if value is None else str(value))
    out.print(table)
    for line in reversed(log_page.logs):
        out.print(f"{line.created_at.isoformat(timespec='seconds')} {line.level:7} {line.message}")


@app.command("cancel")
def cancel_cmd(
    job_id: Annotated[str, typer.Argument(help="The job's id.")], as_json: JsonOpt = False
) -> None:
    """Cancel a pending or running job."""
    with _client() as client:
        try:
            status = client.cancel_job(job_id)
        except Exception as exc:
            _fail(exc)
    if as_json:
        _print_json({"job_id": job_id, "status": status})
    else:
        out.print(f"{job_id}: {status}")


@app.command("stats")
def stats_cmd(
    user: Annotated[str | None, typer.Option(help="Only this user's jobs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Job counts and durations by type and status."""
    with _client() as client:
        try:
            rows = client.stats(user_id=user)
        except Exception as exc:
            _fail(exc)
    if as_json:
        _print_json(rows)
        return
    table = Table("type", "status", "jobs", "avg ms", "p50 ms", "p95 ms")

    def ms(v: float | None) -> str:
        return "" if v is None else f"{v:.0f}"

    for r in rows:
        style = _STATUS_STYLE.get(r.status, "")
        table.add_row(
            r.job_type,
            f"[{style}]{r.status}[/]",
            str(r.job_count),
            ms(r.avg_duration_ms),
            ms(r.p50_duration_ms),
            ms(r.p95_duration_ms),
        )
    out.print(table)


# ---------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    access_log: Annotated[bool, typer.Option(help="Log every request on stdout.")] = True,
) -> None:
    """Serve the HTTP API (settings from DATABASE_URL and JOBQ_* variables)."""
    from jobq.api.server import serve
    from jobq.api.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
        serve(host, port, settings, access_log=access_log)
    except SettingsError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command("token")
def token_cmd(
    user: Annotated[
        str | None, typer.Option(help="The user's uuid (sub); required for authenticated.")
    ] = None,
    role: Annotated[
        str, typer.Option(help="authenticated, service_role or anon.")
    ] = "authenticated",
    ttl: Annotated[int, typer.Option(min=1, help="Seconds until it expires.")] = 3600,
) -> None:
    """Mint a development HS256 token signed with JOBQ_JWT_SECRET."""
    import os

    from jobq.api.auth import mint_token

    secret = os.environ.get("JOBQ_JWT_SECRET", "").strip()
    if not secret:
        err.print("[red]error:[/] JOBQ_JWT_SECRET is not set: there is no key to sign with")
        raise typer.Exit(2)
    audience = os.environ.get("JOBQ_JWT_AUDIENCE", "").strip() or "authenticated"
    try:
        token = mint_token(secret, role=role, user_id=user, ttl=ttl, audience=audience)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(token)


# ---------------------------------------------------------------------------
# jobq up: everything in one process
# ---------------------------------------------------------------------------


@app.command("up")
def up_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs the worker runs at once.")] = 4,
    examples: Annotated[
        bool, typer.Option(help="Run the example handlers (jobq.examples) and a periodic job.")
    ] = True,
    seed: Annotated[
        int, typer.Option(min=0, help="Demo jobs to enqueue at start (with the examples).")
    ] = 6,
) -> None:
    """Run the API, the dashboard and a worker in one process (DATABASE_URL or embedded).

    Applies the migrations, prints the dashboard URL with a development token, and
    keeps jobs flowing with the example handlers. Ctrl-C stops everything cleanly.
    """
    import logging
    import sys

    from rich.logging import RichHandler

    from jobq.api.settings import SettingsError
    from jobq.up import UpError, UpOptions, up

    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=err)]
    )
    try:
        up(
            UpOptions(host=host, port=port, concurrency=concurrency, examples=examples, seed=seed),
            sys.stdout,
        )
    except SettingsError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    except UpError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
