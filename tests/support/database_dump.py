"""What a database holds, as someone who can read it would see it: for tests that prove
nothing is kept in clear, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine


def stored_bytes(engine: Engine) -> bytes:
    """Every value of every table as the database hands it out, and for SQLite the file
    itself (its indexes and free pages too)."""
    tables = MetaData()
    tables.reflect(engine)
    stored = bytearray()
    with engine.connect() as connection:
        for table in tables.sorted_tables:
            for row in connection.execute(table.select()):
                for value in row:
                    stored += value if isinstance(value, bytes) else str(value).encode()
    if engine.dialect.name == "sqlite" and engine.url.database:
        for suffix in ("", "-wal"):
            path = Path(f"{engine.url.database}{suffix}")
            if path.exists():
                stored += path.read_bytes()
    return bytes(stored)
