import asyncio

import pytest
import uvloop
from pydantic import ValidationError

from controller.runtime.loop import run
from controller.settings import Settings


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_operator_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_EVENT_LOOP", raising=False)
    assert run(_loop_type(), Settings().event_loop) is uvloop.Loop


def test_the_standard_library_loop_is_one_setting_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_EVENT_LOOP", "asyncio")
    loop_type = run(_loop_type(), Settings().event_loop)
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        Settings()
