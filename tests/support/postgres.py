"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package (`make test`
installs it), a cluster made by initdb in a temporary folder, listening on a free loopback
port with its unix socket in that folder, stopped and deleted at the end.

PostgreSQL refuses to run as root, so when the tests run as root (CI here does) initdb and
the server run as the unprivileged `postgres` user that the Debian package creates, the
way Debian's own pg_ctlcluster does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.fhir_server import free_port

SUPERUSER = "careweave"
DRIVER = "postgresql+psycopg"
START_SECONDS = 60


def postgres_bin_dir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not installed:
        raise RuntimeError(
            "PostgreSQL's initdb was not found: install Debian's postgresql package "
            "(`make test` does)"
        )
    return installed[-1].parent


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as err:
        raise RuntimeError(
            "running as root, PostgreSQL needs an unprivileged user to run as: the "
            "`postgres` user from Debian's postgresql package is missing"
        ) from err


@dataclass(frozen=True)
class PostgresServer:
    port: int
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL over TCP on loopback (as the production shape connects)."""
        return f"{DRIVER}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "careweave") -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    user = _server_user()
    home = Path(tempfile.mkdtemp(prefix="careweave-pg-"))
    data_dir = home / "data"
    if user is not None:
        os.chown(home, user.pw_uid, user.pw_gid)

    def run(*command: str) -> None:
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            # Run as the unprivileged user (root only); cwd must be readable by them.
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            cwd=home,
        )

    port = free_port()
    try:
        run(
            str(bin_dir / "initdb"),
            "--pgdata",
            str(data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {home} "
            # A test server: durability across an OS crash is not what is tested.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            # Each test's engines keep pooled connections until they are collected.
            "-c max_connections=300"
        )
        run(
            str(bin_dir / "pg_ctl"),
            "--pgdata",
            str(data_dir),
            "--log",
            str(home / "server.log"),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(START_SECONDS),
            "start",
        )
    except subprocess.CalledProcessError as err:
        log = home / "server.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start: {err.stderr.decode(errors='replace')}\n{detail}"
        ) from err
    try:
        yield PostgresServer(port=port, socket_dir=home)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run(str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir), "--mode", "fast", "stop")
        shutil.rmtree(home, ignore_errors=True)
