"""`target.noop`: succeeds at once. For demos, smoke tests and measuring the queue itself."""

from __future__ import annotations

from controller.model.jobs import AttemptContext, ExecutionResult, Outcome, SecretReader


class NoopExecutor:
    def __init__(self, secrets: SecretReader) -> None:
        del secrets  # the noop target needs nothing

    async def execute(self, ctx: AttemptContext) -> ExecutionResult:
        return ExecutionResult(outcome=Outcome.SUCCEEDED, reason="Noop", message="noop target")

    async def close(self) -> None:
        return None
