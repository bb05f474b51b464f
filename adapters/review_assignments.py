"""Who has taken which pending review, in Careweave's database (append-only rows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models.records import ReviewAssignment


class ReviewAssignments:
    """Synchronous, like the other stores: async callers use asyncio.to_thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def assign(self, exchange: str, review_id: str, assignee: str) -> ReviewAssignment:
        row = ReviewAssignment(
            exchange=exchange,
            review_id=review_id,
            assignee=assignee,
            assigned_at=datetime.now(UTC),
        )
        with Session(self._engine) as session:
            session.add(row)
            session.commit()
            session.refresh(row)
        return row

    def assignees(self, reviews: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """For each (exchange, review id) that someone took: who has it now."""
        wanted = set(reviews)
        exchanges = {exchange for exchange, _ in wanted}
        if not exchanges:
            return {}
        found: dict[tuple[str, str], str] = {}
        with Session(self._engine) as session:
            rows = session.exec(
                select(ReviewAssignment)
                .where(col(ReviewAssignment.exchange).in_(exchanges))
                .order_by(col(ReviewAssignment.id))
            )
            for row in rows:
                key = (row.exchange, row.review_id)
                if key in wanted:
                    found[key] = row.assignee  # later rows replace earlier ones
        return found
