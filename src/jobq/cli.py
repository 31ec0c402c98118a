"""`jobq ...`: a thin typer adapter over migrate/db/embedded."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from jobq import db, embedded, migrate

app = typer.Typer(help="jobq: a PostgreSQL-native job queue.", no_args_is_help=True)
embedded_app = typer.Typer(help="Manage the embedded PostgreSQL 18 server.", no_args_is_help=True)
app.add_typer(embedded_app, name="embedded")

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
