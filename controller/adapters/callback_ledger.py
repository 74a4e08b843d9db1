"""The ledger's record of callbacks (migration 0007, table `callbacks`): which finished jobs have
had their callback RelayJob created, and which are still owed one.

The outcome is recorded first and the callback created after, by another API server: a process
can stop between the two. The job then stays owed (`owed`) until a replica records the callback
(`recorded`), so maintenance finds and creates what a stopped process left undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import asyncpg

from controller.adapters.ledger import to_row
from controller.core.callbacks import CallbackKind, owed_in
from controller.model.jobs import JobRow


def _statement(name: str) -> str:
    return (resources.files("controller.adapters") / "sql" / f"{name}.sql").read_text()


SQL = {name: _statement(name) for name in ("callbacks_owed", "callback_recorded")}


@dataclass(frozen=True)
class CallbackRecord:
    """A callback that exists (`refusal` None) or that the API server refused for good."""

    row: JobRow
    kind: CallbackKind
    name: str
    refusal: str | None = None


class CallbackLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def owed(self, older_than: float, namespaces: Sequence[str], limit: int = 100) -> list[JobRow]:
        """At most `limit` live finished jobs of `namespaces` (all when empty) owed a callback for
        their current run, that finished at least `older_than` seconds ago."""
        completed, failed = CallbackKind.ON_COMPLETION, CallbackKind.ON_FAILURE
        records = await self.pool.fetch(
            SQL["callbacks_owed"],
            owed_in(completed).value,
            completed.value,
            owed_in(failed).value,
            failed.value,
            older_than,
            limit,
            list(namespaces),
        )
        return [to_row(r) for r in records]

    async def recorded(self, record: CallbackRecord) -> None:
        """`record.row`'s callback is owed no more; recording it again changes nothing."""
        await self.pool.execute(
            SQL["callback_recorded"],
            record.row.ref.uid,
            record.row.run,
            record.kind.value,
            record.name,
            record.refusal,
        )
