"""How far each upstream batch file got: one row per file digest (models.records.BatchIngestion).

Written after every message of a batch, so a stopped ingestion resumes at the next one;
the receipts (sending facility + MSH-10) stay the guard against applying a message twice
when the process stopped between committing a message and recording it here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.records import BatchIngestion, BatchStatus


class BatchLedger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, digest: str) -> BatchIngestion | None:
        with Session(self._engine) as session:
            return session.get(BatchIngestion, digest)

    def hold(self, digest: str, *, file_name: str, steps: int, order_digest: str) -> BatchIngestion:
        """Record a file held for an operator (nothing applied); an existing row is kept."""
        return self._upsert(
            digest,
            file_name=file_name,
            steps=steps,
            order_digest=order_digest,
            status=BatchStatus.HELD,
        )

    def start(
        self,
        digest: str,
        *,
        file_name: str,
        steps: int,
        order_digest: str,
        accepted_by: str | None,
    ) -> BatchIngestion:
        """Mark the file as being applied (from step 0 when new or held, else where it was)."""
        return self._upsert(
            digest,
            file_name=file_name,
            steps=steps,
            order_digest=order_digest,
            status=BatchStatus.APPLYING,
            accepted_by=accepted_by,
        )

    def _upsert(
        self,
        digest: str,
        *,
        file_name: str,
        steps: int,
        order_digest: str,
        status: BatchStatus,
        accepted_by: str | None = None,
    ) -> BatchIngestion:
        now = datetime.now(UTC)
        with Session(self._engine) as session:
            row = session.get(BatchIngestion, digest)
            if row is None:
                row = BatchIngestion(
                    digest=digest,
                    file_name=file_name,
                    status=status.value,
                    steps=steps,
                    order_digest=order_digest,
                    first_seen_at=now,
                    updated_at=now,
                )
            if status is BatchStatus.APPLYING and row.status == BatchStatus.HELD.value:
                row.status = status.value
            if status is BatchStatus.APPLYING and row.applying_since is None:
                row.applying_since = now
            if row.order_digest != order_digest and row.status != BatchStatus.DONE.value:
                # Ordered differently now: the count applied no longer names the same
                # messages, so it restarts and the receipts answer for what was applied.
                row.order_digest, row.steps, row.applied = order_digest, steps, 0
            if accepted_by and not row.trailer_mismatch_accepted_by:
                row.trailer_mismatch_accepted_by = accepted_by
            row.file_name = file_name
            row.updated_at = now
            session.add(row)
            session.commit()
            session.refresh(row)
            return row

    def advance(self, digest: str, applied: int) -> None:
        """``applied`` steps are done; the last step done marks the file done."""
        with Session(self._engine) as session:
            row = session.get(BatchIngestion, digest)
            if row is None:
                raise KeyError(digest)
            row.applied = applied
            if applied >= row.steps:
                row.status = BatchStatus.DONE.value
            row.updated_at = datetime.now(UTC)
            session.add(row)
            session.commit()
