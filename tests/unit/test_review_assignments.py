"""Who has a review: append-only rows in Careweave's database (SQLite and PostgreSQL), the
newest one counts."""

from __future__ import annotations

from sqlmodel import Session, select

from adapters.database import open_engine
from adapters.review_assignments import ReviewAssignments
from models.records import ReviewAssignment


def test_the_newest_assignment_of_a_review_counts_and_older_rows_stay(database_url: str) -> None:
    engine = open_engine(database_url)
    assignments = ReviewAssignments(engine)
    assignments.assign("order-to-result/GENHOSP/abc", "r1", "rev-a")
    assignments.assign("order-to-result/GENHOSP/abc", "r1", "rev-b")
    assignments.assign("order-to-result/GENHOSP/abc", "r2", "rev-c")
    assignments.assign("ordered-delivery/billing/xyz", "r1", "rev-a")

    found = assignments.assignees(
        [
            ("order-to-result/GENHOSP/abc", "r1"),
            ("ordered-delivery/billing/xyz", "r1"),
            ("ordered-delivery/billing/xyz", "r9"),
        ]
    )
    assert found == {
        ("order-to-result/GENHOSP/abc", "r1"): "rev-b",
        ("ordered-delivery/billing/xyz", "r1"): "rev-a",
    }
    assert assignments.assignees([]) == {}
    with Session(engine) as session:
        rows = session.exec(select(ReviewAssignment).order_by(ReviewAssignment.id)).all()
    assert [row.assignee for row in rows] == ["rev-a", "rev-b", "rev-c", "rev-a"]
