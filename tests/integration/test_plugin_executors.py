"""A plug-in executor that raises: the job goes on with a readable reason, on real Redis and PostgreSQL.

The built-in executors never get here (each of their failures has a named reason); this is the last
resort for code the operator does not own.
"""

from __future__ import annotations

import pytest

from controller.model.jobs import AttemptContext, ExecutionResult
from controller.model.phases import Phase
from controller.runtime.app import App
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration


class Broken:
    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        raise RuntimeError("the vendor SDK\nwas not configured: " + "x" * 1000)

    async def close(self) -> None:
        return None


async def test_an_exception_from_a_plugin_names_the_executor_and_its_words(
    app: App, cluster: RecordingCluster
) -> None:
    app.executors["vendor"] = Broken()
    ref = new_ref("plugin")
    spec = {"target": {"vendor": {}}, "maxAttempts": 1}
    async with running(app):
        await app.admissions.observe(cluster.body(ref, spec))

        async def dead() -> bool:
            row = await app.ledger.get(ref.uid)
            return row is not None and row.phase is Phase.DEAD_LETTERED

        await eventually(dead)
    row = await app.ledger.get(ref.uid)
    assert row is not None and row.last_error is not None
    assert row.last_error.startswith(
        "ExecutorError: executor 'vendor' raised RuntimeError: the vendor SDK was not configured: xxx"
    )
    assert "\n" not in row.last_error and len(row.last_error) < 400
