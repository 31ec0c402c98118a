"""The PostgreSQL server under the soak: scratch databases, and how to restart it.

A restart is only attempted on a server this machine runs: jobq's embedded
PostgreSQL (its data directory is ``jobq.embedded.data_dir()``) or a Debian
cluster listed by ``pg_lsclusters`` (restarted with ``pg_ctlcluster``, as the
worker tests do). Anything else - a remote server, Supabase - gets no restart
fault, and the report says so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobq import embedded, migrate

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Restarter:
    how: str  # "embedded ..." or "pg_ctlcluster 15 main ..."
    restart: Callable[[], None]
    stop: Callable[[], None]
    start: Callable[[], None]


def url_for(admin_url: str, dbname: str) -> str:
    return make_conninfo(admin_url, dbname=dbname)


def create_scratch(admin_url: str) -> tuple[str, str]:
    """A new database with jobq migrated: (name, url)."""
    name = f"jobq_soak_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_for(admin_url, name)
    with psycopg.connect(url) as c:
        migrate.migrate(c)
    return name, url


def drop_scratch(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_facts(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as c:
        facts: dict[str, str] = {}
        for name in ("server_version", "data_directory", "port", "fsync", "synchronous_commit"):
            try:
                row = c.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                facts[name] = str(row[0]) if row else "?"
            except psycopg.Error:
                facts[name] = "?"
        return facts


def _is_local(info: dict[str, Any]) -> bool:
    host = str(info.get("host") or "")
    return host in LOCAL_HOSTS or host.startswith("/")


def _debian_cluster(data_directory: str, port: str) -> tuple[str, str] | None:
    if not shutil.which("pg_lsclusters") or not shutil.which("pg_ctlcluster"):
        return None
    out = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[2] == port and Path(cols[5]) == Path(data_directory):
            return cols[0], cols[1]
    return None


def find_restarter(url: str) -> tuple[Restarter | None, str]:
    """How to restart the server behind ``url`` from here, or None and why not."""
    facts = server_facts(url)
    datadir = facts.get("data_directory", "?")
    if datadir == "?":
        return None, "the server does not tell its data directory (not a superuser?)"
    if (embedded.data_dir() / "PG_VERSION").exists() and Path(datadir) == embedded.data_dir():
        return Restarter(
            "embedded (pg_ctl restart -m fast)",
            _restart_embedded,
            _stop_embedded,
            _start_embedded,
        ), ""
    if not _is_local(conninfo_to_dict(url)):
        return None, "the server is not on this machine"
    cluster = _debian_cluster(datadir, facts.get("port", "?"))
    if cluster is None:
        return None, f"no pg_ctlcluster cluster owns {datadir} on this machine"
    version, name = cluster

    def ctl(action: str) -> Callable[[], None]:
        def run() -> None:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
                check=True,
                capture_output=True,
            )

        return run

    return Restarter(
        f"pg_ctlcluster {version} {name} restart", ctl("restart"), ctl("stop"), ctl("start")
    ), ""


def _restart_embedded() -> None:
    embedded.restart()


def _stop_embedded() -> None:
    embedded.stop()


def _start_embedded() -> None:
    embedded.embedded_url()


def soak_embedded_dir() -> Path:
    """The soak's own embedded cluster (never the user's: the soak restarts it)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("jobq")) / "soak-pg18"


def use_embedded(pgdir: Path) -> tuple[str, bool]:
    """Point jobq.embedded at ``pgdir``, start it if needed: (admin url, started here)."""
    os.environ[embedded.ENV_DIR] = str(pgdir)
    was_running = embedded.status().running
    return embedded.embedded_url("postgres"), not was_running
