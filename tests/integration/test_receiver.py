"""The README's tour target: prints what a job sends and answers, failing the first tries on ask."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from devtools.receiver import application


async def test_the_receiver_prints_each_request_and_fails_the_first_tries_of_each_job() -> None:
    lines: list[str] = []
    headers = {"Idempotency-Key": "order-42", "Relay-Job-Name": "notify-42", "Relay-Attempt": "1"}
    statuses = []
    async with (
        TestServer(application(fail_first=1, out=lines), host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        for _ in range(2):
            async with session.post(server.make_url("/orders"), json={"order": 42}, headers=headers) as r:
                statuses.append(r.status)
    assert statuses == [503, 200]
    assert lines[0] == (
        'POST /orders Idempotency-Key=order-42 Relay-Job-Name=notify-42 Relay-Attempt=1 -> 503: {"order": 42}'
    )
    assert lines[1].endswith('-> 200: {"order": 42}')
