"""Find executors: the built-ins plus whatever the `relayjob.executors` entry-point group names."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from controller.adapters.executors.http import HttpExecutor
from controller.adapters.executors.noop import NoopExecutor
from controller.model.jobs import Executor, SecretReader

ENTRY_POINT_GROUP = "relayjob.executors"
Factory = Callable[[SecretReader], Executor]

BUILTIN: dict[str, Factory] = {"http": HttpExecutor, "noop": NoopExecutor}


def load_executors(secrets: SecretReader) -> dict[str, Executor]:
    factories: dict[str, Factory] = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        factories.setdefault(entry.name, entry.load())
    return {name: factory(secrets) for name, factory in factories.items()}
