"""The watched inbox: a file is taken only once it stopped changing, then moved aside into
the folder its verdict names, never over another file and never deleted."""

from __future__ import annotations

from pathlib import Path

from workers.batch_inbox import BatchInbox, InboxVerdict, move_aside


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_file_is_taken_once_stable_and_moved_by_verdict(tmp_path: Path) -> None:
    verdicts = {
        "good.hl7": InboxVerdict.PROCESSED,
        "short.hl7": InboxVerdict.HELD,
        "busy.hl7": InboxVerdict.RETRY,
    }
    taken: list[str] = []

    async def ingest(path: Path) -> InboxVerdict:
        taken.append(path.name)
        return verdicts[path.name]

    clock = Clock()
    inbox = BatchInbox(tmp_path, ingest, poll_seconds=1, settle_seconds=2, clock=clock)
    (tmp_path / "good.hl7").write_bytes(b"MSH|part")
    (tmp_path / ".copying.hl7").write_bytes(b"MSH|")
    assert await inbox.scan() == []  # first sight
    clock.now = 1.0
    (tmp_path / "good.hl7").write_bytes(b"MSH|part and the rest")  # still being written
    (tmp_path / "short.hl7").write_bytes(b"BHS|")
    (tmp_path / "busy.hl7").write_bytes(b"MSH|")
    assert await inbox.scan() == []
    clock.now = 2.5
    assert await inbox.scan() == []  # good.hl7 changed at 1.0: not stable for 2 s yet
    clock.now = 3.0
    done = await inbox.scan()
    assert sorted((p.name, v) for p, v, _ in done) == [
        ("busy.hl7", InboxVerdict.RETRY),
        ("good.hl7", InboxVerdict.PROCESSED),
        ("short.hl7", InboxVerdict.HELD),
    ]
    assert (tmp_path / "processed" / "good.hl7").read_bytes() == b"MSH|part and the rest"
    assert (tmp_path / "held" / "short.hl7").exists()
    assert (tmp_path / "busy.hl7").exists()  # left to be tried again
    assert (tmp_path / ".copying.hl7").exists()
    clock.now = 4.0
    await inbox.scan()
    assert taken.count("busy.hl7") == 2 and taken.count("good.hl7") == 1


def test_move_aside_never_overwrites(tmp_path: Path) -> None:
    for content in (b"first", b"second", b"third"):
        (tmp_path / "ward.hl7").write_bytes(content)
        move_aside(tmp_path / "ward.hl7", InboxVerdict.PROCESSED)
    kept = sorted(p.read_bytes() for p in (tmp_path / "processed").iterdir())
    assert kept == [b"first", b"second", b"third"]
