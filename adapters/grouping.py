"""Group commit: callers await one item each, a batch of them runs as one call.

While a batch is running, new items queue up and go together in the next one, so an
idle system adds no waiting and a busy one pays one database round trip per burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupRunner(Generic[Item, Result]):
    """Run ``run_batch`` (blocking; it goes to a thread) over items submitted concurrently.

    ``run_batch`` returns one result per item, in order. If it raises, every item of
    that batch gets the exception.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch: int = 512,
        inline: bool = False,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._inline = inline
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        if self._inline:
            return self._run_batch([item])[0]
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await asyncio.to_thread(self._run_batch, [item for item, _ in batch])
            except Exception as err:  # every waiter of the batch learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
