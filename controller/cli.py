"""`relayjob-operator run`, and the dev tools' `dev` and `sandbox` where a clone installed them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from controller.adapters.kube import Credentials
from controller.settings import Settings, describe_error

if TYPE_CHECKING:
    from controller.runtime.app import App

log = logging.getLogger("relayjob")
KOPF_STOP_SECONDS = 15
# After RELAY_SHUTDOWN_GRACE_SECONDS: recording the attempts cut off and writing their statuses.
# The chart sets the pod's terminationGracePeriodSeconds to the grace plus 15 s, which leaves the
# last of kopf's stop and closing the pools room too (templates/deployment.yaml).
AFTER_GRACE_SECONDS = 5
# Subcommands that live beside the product, in `devtools/` of a clone. pyproject.toml registers them
# in this entry-point group, so that the operator never imports them (an import-linter contract).
COMMANDS_GROUP = "relayjob.commands"
DEV_COMMANDS = ("dev", "sandbox")


def _login() -> Credentials:
    """The same identity kopf logs in with (kubeconfig or in-cluster), for our own API client."""
    info = kopf.login_via_client(logger=log, settings=kopf.OperatorSettings())
    if info is None:
        raise RuntimeError("no Kubernetes credentials: set KUBECONFIG or run in a cluster")
    return Credentials.from_kopf(info)


async def _run(settings: Settings) -> int:
    from controller.handlers import EphemeralMemories, WatchHealth, build_registry
    from controller.runtime import probes
    from controller.runtime.app import App, StartupError
    from controller.runtime.heap import keep_startup_objects

    try:
        _login()
    except Exception as error:  # kubeconfig problems come in many exception types
        log.error("cannot log in to Kubernetes: %s", error, extra={"setting": "KUBECONFIG"})
        return 1
    try:
        app = await App.start(settings, _login)
    except StartupError as error:
        log.error("%s", error)
        return 1
    stop = asyncio.Event()  # kopf's stop flag: set once our own work has drained
    shutdown = asyncio.Event()  # SIGTERM / SIGINT
    _on_signals(shutdown.set)
    health = WatchHealth()
    try:
        runner = await probes.serve(probes.build(app, health.problem), settings.http_port)
    except OSError as error:
        log.error("RELAY_HTTP_PORT: cannot listen on port %d: %s", settings.http_port, error.strerror)
        await app.close()
        return 1
    # Before kopf starts, so that its start-up list can stand in for the first sweep's.
    first_list = await app.maintenance.expect_first_list(scopes=len(set(settings.namespaces)) or 1)
    kopf_task = asyncio.create_task(
        run_kopf(
            shutdown.set,
            registry=build_registry(app, first_list),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=settings.standalone,
            priority=settings.peering_priority,
            peering_name=settings.peering_name,
            stop_flag=stop,
            memories=EphemeralMemories(),
        )
    )
    health.task = kopf_task
    try:
        await app.maintenance.rebuild()
    except Exception as error:  # the periodic pass retries; start-up must not die of it
        log.warning("initial reconciliation failed; will retry: %s", error)
    keep_startup_objects()
    work = asyncio.create_task(app.run())
    log.info("operator started", extra={"identity": app.identity, "concurrency": settings.concurrency})
    await asyncio.wait(
        [kopf_task, work, asyncio.create_task(shutdown.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    return await _shut_down(app, work, kopf_task, stop, runner.cleanup)


def _on_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


async def run_kopf(on_signal: Callable[[], None], **operator: Any) -> None:
    """`kopf.operator(**operator)`, but with SIGTERM and SIGINT calling `on_signal`, not kopf.

    kopf installs handlers of its own as it spawns its tasks; on a signal it waits a fixed 5 s for
    every task and cancels them, our attempts in flight among them. Ours start our drain and stop
    kopf after it (`_shut_down`), so that shutdown takes as long as the attempts need, up to
    RELAY_SHUTDOWN_GRACE_SECONDS. They go back as soon as kopf's are in: taken back only once kopf
    was ready, a SIGTERM in between (a rollout during start-up) stopped kopf midway, and the
    process exited 1 after 5 s. `kopf.operator` is this same pair of calls."""
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(**operator)
    _on_signals(on_signal)
    await kopf.run_tasks(tasks, ignored=existing)


async def _shut_down(
    app: App,
    work: asyncio.Task[None],
    kopf_task: asyncio.Task[None],
    stop: asyncio.Event,
    close_probes: Callable[[], Awaitable[None]],
) -> int:
    """Drain our work, stop kopf, close every pool, and say with the exit code whether it was clean.

    kopf stops only after the drain: once its stop flag is set, it gives every task created after
    it started 5 s and then cancels them, our attempts in flight among them (it cannot tell its
    tasks from ours). Meanwhile it goes on handling events, which only admits and places jobs."""
    code = 0
    began = time.monotonic()
    if not work.done():
        grace = app.settings.shutdown_grace_seconds
        log.info("shutting down: attempts in flight may finish within %gs", grace)
        draining = asyncio.create_task(app.drain(began + grace, began + grace + AFTER_GRACE_SECONDS))
        # A background loop that fails meanwhile ends the wait: the drain may be waiting for it.
        await asyncio.wait([draining, work], return_when=asyncio.FIRST_COMPLETED)
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining
    if work.done() and not work.cancelled() and (failure := work.exception()) is not None:
        # Exit non-zero so that the kubelet restarts the pod; going on without a worker would
        # leave jobs leased and unrenewed with nobody to say why.
        log.critical("background work stopped: %r", failure, exc_info=failure)
        code = 1
    # kopf stops through its stop flag; letting an exception reach asyncio.run instead (which
    # cancels every task, kopf's helpers included) can leave kopf's scheduler waiting forever.
    stop.set()
    stopping = time.monotonic()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    # kopf's handlers use the pools until kopf has stopped them, so the pools close after kopf.
    await asyncio.wait([kopf_task], timeout=max(stopping + KOPF_STOP_SECONDS - time.monotonic(), 1.0))
    if not kopf_task.done():
        log.warning("kopf did not stop within %ds; cancelling it", KOPF_STOP_SECONDS)
        kopf_task.cancel()
        await asyncio.wait([kopf_task], timeout=5)
    if not kopf_task.done():
        # Returning would hand kopf to asyncio.run, which waits for it without bound.
        log.error("kopf ignored its cancellation; exiting without it")
        logging.shutdown()
        os._exit(code or 1)
    if not kopf_task.cancelled() and (failure := kopf_task.exception()) is not None:
        log.critical("kopf stopped: %r", failure, exc_info=failure)
        code = 1
    await close_probes()
    await app.close()
    log.info("shut down in %.1fs", time.monotonic() - began)
    return code


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="relayjob-operator run",
        description="Run the operator against the current kube context.",
    )
    parser.add_argument("--standalone", action="store_true", help="skip kopf peering")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        print(describe_error(error), file=sys.stderr)
        return 2
    if args.standalone:
        settings = settings.model_copy(update={"standalone": True})
    from controller.runtime.logs import configure
    from controller.runtime.loop import run as run_loop

    configure(settings.log_level, settings.log_format)
    return run_loop(_run(settings), settings.event_loop)


def extra_command(name: str) -> Callable[[list[str]], int] | None:
    """The subcommand `name` another package registers in COMMANDS_GROUP, or None when none is
    installed."""
    for entry in entry_points(group=COMMANDS_GROUP, name=name):
        return load_command(entry)
    return None


def load_command(entry: EntryPoint) -> Callable[[list[str]], int] | None:
    """The command an entry point names, or None when its package is absent: the image is built from
    a wheel whose metadata registers the dev tools but which carries no `devtools` package."""
    try:
        command: Callable[[list[str]], int] = entry.load()
    except ModuleNotFoundError as error:
        # Only the entry's own package missing means "not installed"; a module missing inside it
        # is a broken dev install, and says so with its traceback.
        if error.name is None or not f"{entry.module}.".startswith(f"{error.name}."):
            raise
        return None
    return command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: relayjob-operator {run,dev,sandbox} ...\n"
            "  run      run the operator against the current kube context\n"
            "  dev      run it with a sample RelayJob, in a sandbox when no context answers\n"
            "  sandbox  start/stop local etcd, kube-apiserver, redis-server and PostgreSQL\n"
            "dev and sandbox are development tools: `pip install -e '.[dev]'` in a clone installs them",
            file=sys.stderr,
        )
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    found = extra_command(command)
    if found is not None:
        return found(rest)
    if command in DEV_COMMANDS:
        print(
            f"relayjob-operator {command}: a development tool, not installed here; it runs from a "
            "clone of the repository after `pip install -e '.[dev]'` (`make run` does that)",
            file=sys.stderr,
        )
        return 2
    print(f"unknown command {command!r}; use run, dev or sandbox", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
