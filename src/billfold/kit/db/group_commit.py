"""Group commit: the small writes of many concurrent requests in one transaction.

A provider delivering hundreds of webhook events a second asks for hundreds of one-row inserts,
each with its own commit. A commit waits for the disk (PostgreSQL's WAL flush) and costs a round
trip or two, so one commit per event caps the rate near what the database can flush, whatever
the rest of the code does. Here the requests of one process hand their rows to a writer in the
event loop instead, and wait. The writer takes every row waiting, writes them together in one
transaction on a thread of the pool (one multi-row statement, one commit), and answers each
request with its own result. While it writes, the next rows gather. A lone request is written
at once, alone: nothing waits for a batch to fill, so at low load the latency is a single insert's.

Each request is answered only after the commit that holds its row, so a 2xx still means stored.
A batch that fails for one item's sake (a constraint) is written again item by item, so one bad
row fails its own request and no other; a failure of the database itself fails the whole batch,
and each request answers it as it would have alone (503, retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit.db import DATABASE_FAILURES

Item = TypeVar("Item")
Result = TypeVar("Result")



class GroupCommit(Generic[Item, Result]):
    """Writes items handed to ``submit`` by concurrent requests of one event loop in batches:
    ``write(session, items)`` returns one result per item, in their order, and the batch is
    committed here (services never commit; the kit does) before any request learns its result."""

    def __init__(
        self, sessions: sessionmaker[Session], write: Callable[[Session, Sequence[Item]], Sequence[Result]],
        *, max_batch: int = 500,
    ) -> None:
        self._sessions = sessions
        self._write = write
        self.max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writing = False
        self.batches = 0  # how many transactions it has committed, for benches and tests
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """``item`` written and committed (with others' items), and its result; or the exception
        writing it raised."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._writing:
            self._writing = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                outcomes = await anyio.to_thread.run_sync(self._write_batch, [item for item, _ in batch])
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # the request was cancelled (client gone): its row is stored all the same
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except BaseException as error:  # the thread itself failed (cancelled at shutdown): nobody waits forever
            for _, future in batch + self._waiting:
                if not future.done():
                    future.set_exception(error)
            self._waiting = []
            raise
        finally:
            self._writing = False

    def _write_batch(self, items: list[Item]) -> list[Result | BaseException]:
        try:
            results = self._commit(items)
        except DATABASE_FAILURES as error:  # every item would fail alike: none is retried alone
            return [error] * len(items)
        except Exception as error:
            if len(items) == 1:
                return [error]
            return [self._write_one(item) for item in items]  # find the one that failed; the rest go in
        self.batches += 1
        self.items += len(items)
        return list(results)

    def _write_one(self, item: Item) -> Result | BaseException:
        try:
            (result,) = self._commit([item])
        except Exception as error:
            return error
        self.batches += 1
        self.items += 1
        return result

    def _commit(self, items: Sequence[Item]) -> Sequence[Result]:
        with self._sessions() as session:
            try:
                results = self._write(session, items)
                if len(results) != len(items):
                    raise RuntimeError(f"a group write answered {len(results)} results for {len(items)} items")
            except BaseException:
                session.rollback()
                raise
            session.commit()
        return results
