"""Find executors: the built-ins plus whatever the `relayjob.executors` entry-point group names."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib.metadata import entry_points

from controller.adapters.executors.http import HttpConfig, HttpExecutor
from controller.adapters.executors.noop import NoopExecutor
from controller.model.jobs import Executor, SecretReader

ENTRY_POINT_GROUP = "relayjob.executors"
Factory = Callable[[SecretReader], Executor]


def load_executors(secrets: SecretReader, http: HttpConfig | None = None) -> dict[str, Executor]:
    factories: dict[str, Factory] = {"http": partial(HttpExecutor, config=http), "noop": NoopExecutor}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        factories.setdefault(entry.name, entry.load())
    return {name: factory(secrets) for name, factory in factories.items()}
