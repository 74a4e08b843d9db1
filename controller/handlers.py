"""kopf wiring only: watch events in, calls into runtime.admission out.

Handlers use `on.event`, not `on.create`/`on.update`: kopf writes nothing back to the object for
event handlers (no last-handled-configuration annotation, no progress), so a job costs no extra
API write, and admission is idempotent by uid in the ledger anyway.

kopf reads RelayJobs through a decoder that cannot overflow (`json_guard`), in its lists and its
watch streams alike: the API server stores objects far deeper than Python's json can decode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from uuid import UUID

import aiohttp
import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.structs.ephemera import AnyMemo
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory

from controller.adapters import json_guard
from controller.adapters.kube import GROUP, KIND, PLURAL, QUEUE_PLURAL, VERSION
from controller.model.schedules import PLURAL as SCHEDULE_PLURAL
from controller.runtime.app import App
from controller.runtime.first_list import FirstList
from controller.runtime.retry import OUTAGE, until_done
from controller.settings import Settings

log = logging.getLogger("relayjob.handlers")
LIST_KIND = f"{KIND}List"


class WatchHealth:
    """Whether the kopf side is alive, for the liveness probe.

    Frozen watch streams are kopf's most reported failure; `configure` bounds every stream with
    server/client/inactivity timeouts so kopf re-lists on its own. What is left for the probe is
    the operator task itself: if kopf stopped, the process must be restarted.
    """

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def problem(self) -> str | None:
        if self.task is not None and self.task.done():
            return "the kopf operator task has stopped"
        return None


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base at all. kopf builds one from every event it receives (a deep copy of the
    object) and parses the stored one, to detect changes for `on.create`/`on.update` handlers.
    We have none: event handlers neither use it nor store it. In a burst of creates that copy
    was a fifth of kopf's time per event, on the operator's one busy event loop."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class EphemeralMemories(ResourceMemories):
    """kopf keeps a memory of every object it has seen for as long as the object exists: for resume
    handlers, daemons and indexes, none of which we have, and to throttle a handler's errors, which
    ours retries itself (`until_done`). With 100,000 finished RelayJobs in a cluster those memories
    held 80 MB; here each lasts for the event that needed it."""

    async def recall(
        self,
        raw_body: kopf.RawBody,
        *,
        memobase: AnyMemo | None = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


class BoundedJsonResponse(aiohttp.ClientResponse):
    """A response whose JSON is decoded with its nesting bounded (see `json_guard`): kopf decodes
    every list of RelayJobs with `response.json()`, and a deep one stopped it on every start."""

    async def json(
        self,
        *,
        encoding: str | None = None,
        loads: aiohttp.typedefs.JSONDecoder = json_guard.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        return await super().json(encoding=encoding, loads=loads, content_type=content_type)


ListPage = Callable[[list[Any]], Awaitable[list[Any]]]
ListAnswer = Callable[[str, Mapping[str, Any]], None]


def bounded_session(
    info: kopf.ConnectionInfo, relayjob_page: ListPage | None = None, listed: ListAnswer | None = None
) -> kopf.AiohttpSession:
    """The session kopf would open for `info`, but with `BoundedJsonResponse` for every answer.

    `relayjob_page`, when given, sees the items of every page of kopf's lists of RelayJobs before
    kopf does, and returns those kopf should still deliver one by one. kopf reads the next page
    only once that returns: the one place its list can be made to wait for the handling.
    `listed`, when given, is told each such page first, whole, with the URL it answers."""
    response_class = BoundedJsonResponse
    if relayjob_page is not None or listed is not None:
        on_page, on_answer = relayjob_page, listed

        class RelayJobListResponse(BoundedJsonResponse):
            async def json(self, **kwargs: Any) -> Any:
                answer = await super().json(**kwargs)
                if isinstance(answer, dict) and answer.get("kind") == LIST_KIND:
                    if on_answer is not None:
                        on_answer(str(self.url), answer)
                    if on_page is not None:
                        answer["items"] = await on_page(answer.get("items") or [])
                return answer

        response_class = RelayJobListResponse
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        response_class=response_class,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )


class WatchDecoder:
    """What kopf decodes each line of its watch streams with: `json_guard.loads`, and then, for a
    RelayJob MODIFIED event that `unchanged` says needs no handling, a BOOKMARK at the object's
    resource version instead of the event.

    Why: the watch delivers every status patch the operator makes back to it. Each such event cost
    kopf a worker, its processing and its `idle_timeout`, on the event loop the worker shares, for
    a handler that then returned at once. A BOOKMARK still moves kopf's resource version on (a
    reconnecting watch resumes after it), and kopf hands no BOOKMARK to a handler."""

    def __init__(self, unchanged: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
        self.unchanged = unchanged

    def loads(self, text: str | bytes | bytearray) -> Any:
        event = json_guard.loads(text)
        if self.unchanged is None or not isinstance(event, dict) or event.get("type") != "MODIFIED":
            return event
        body = event.get("object")
        if not isinstance(body, dict) or body.get("kind") != KIND or not self.unchanged(body):
            return event
        meta = {"resourceVersion": (body.get("metadata") or {}).get("resourceVersion")}
        mark = {"apiVersion": body.get("apiVersion"), "kind": KIND, "metadata": meta}
        return {"type": "BOOKMARK", "object": mark}


def bound_watch_decoding(unchanged: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
    """Make kopf decode watch events with a `WatchDecoder`. kopf splits the stream into lines
    itself and decodes each with the `json` module it imported, which no setting or session can
    replace; its `json` is therefore swapped for an object that offers the same `loads`.
    `tests/integration/test_kopf_decoding.py` fails if kopf stops decoding the stream that way."""
    kopf_api.json = WatchDecoder(unchanged)  # type: ignore[attr-defined,assignment]


def configure(settings: kopf.OperatorSettings, ours: Settings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="relay.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = False  # our own rate-limited Events say what matters
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 600
    # kopf lists in one request by default: with 100,000 RelayJobs (1.6 KB of JSON each), one answer
    # of 160 MB decoded at once. In pages, each is reconciled (`observe_page`) before the next is read.
    settings.watching.chunk_size = 500
    settings.peering.name = ours.peering_name
    settings.peering.priority = ours.peering_priority
    settings.peering.standalone = ours.standalone
    # Auto-detect peering: use it when the KopfPeering CRDs are installed, run without it when not.
    # Handlers are idempotent in the ledger, so two active replicas cost duplicate reads, never
    # duplicate jobs; a mandatory peering would instead stall every stream until the CRD exists.
    settings.peering.mandatory = False
    # Watching listed namespaces needs no cluster-wide discovery; without this kopf lists
    # Namespaces and CRDs cluster-wide, which a namespaced RBAC refuses, and retries for a minute.
    settings.scanning.disabled = bool(ours.namespaces)
    # kopf keeps one worker per object, alive until no event has come for `idle_timeout`. With
    # the default 5 s, a burst of new RelayJobs filled all 1000 workers in about 3 s, and
    # admission stopped until the first ones went idle. Our handler's work for an object is
    # done in one event, and the next (our own status patch) needs no long-lived worker.
    settings.queueing.worker_limit = 1000
    settings.queueing.idle_timeout = 0.5
    settings.networking.request_timeout = 60
    # kopf's login copies this into its session: HTTPS_PROXY / NO_PROXY apply to its watches too.
    settings.networking.trust_env = True
    # kopf's default (1, 1, 2, 3, ...) left a just-started operator blind for ~7 s while the API
    # server's watch cache answered 429 "storage is (re)initializing" for a second or two.
    settings.networking.error_backoffs = (0.2, 0.5, 1, 2, 3, 5, 8, 13, 21)


def build_registry(app: App, first_list: FirstList | None = None) -> kopf.OperatorRegistry:
    """kopf's handlers for `app`; `first_list`, when given, is shown kopf's lists of RelayJobs."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def _startup(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, app.settings)
        # kopf opens its watches only after the startup handlers have run.
        bound_watch_decoding(app.admissions.unchanged)

    async def relayjob_page(items: list[Any]) -> list[Any]:
        try:
            return await app.admissions.observe_page(items)
        except OUTAGE as error:
            # Nothing is lost: each item then takes the one-by-one path, which waits outages out.
            log.warning("reading a listed page of %d RelayJobs failed (%s): one by one", len(items), error)
            return items

    @kopf.on.login(registry=registry)
    async def _login(**kwargs: Any) -> kopf.AiohttpSession | None:
        info = kopf.login_via_client(**kwargs)
        listed = first_list.page if first_list is not None else None
        return None if info is None else bounded_session(info, relayjob_page, listed)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def _event(*, type: str | None, event: kopf.RawEvent, **_: Any) -> None:
        # The event's object as it arrived: plain dicts, where kopf's `body` view resolves
        # every key through its own mapping layers (a sixth of kopf's time per event).
        body = event["object"]
        meta = body["metadata"]
        where = {
            "job": {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid")}
        }
        if type == "DELETED":
            uid = UUID(meta["uid"])
            await until_done(lambda: app.admissions.forget(uid), "forget", app.metrics, extra=where)
        else:
            # kopf delivers the objects of its lists with no type: those `observe_page` left, mostly new.
            listed = type is None
            await until_done(
                lambda: app.admissions.observe(body, listed=listed), "admission", app.metrics, extra=where
            )

    @kopf.on.event(GROUP, VERSION, QUEUE_PLURAL, registry=registry)
    async def _queue_event(*, type: str, event: kopf.RawEvent, **_: Any) -> None:
        body = event["object"]
        meta = body["metadata"]
        where = {"queue": {"namespace": meta.get("namespace"), "name": meta.get("name")}}
        if type == "DELETED":
            namespace, name = str(meta["namespace"]), str(meta["name"])
            await until_done(lambda: app.queues.forget(namespace, name), "queue", app.metrics, extra=where)
        else:
            await until_done(lambda: app.queues.observe(body), "queue", app.metrics, extra=where)

    @kopf.on.event(GROUP, VERSION, SCHEDULE_PLURAL, registry=registry)
    async def _schedule(*, type: str, event: kopf.RawEvent, **_: Any) -> None:
        # Which schedules exist, nothing more: the schedules loop reads each one afresh as it acts.
        meta = event["object"]["metadata"]
        if app.schedules is None:
            return
        if type == "DELETED":
            app.schedules.forget(meta["namespace"], meta["name"])
        else:
            app.schedules.observe(meta["namespace"], meta["name"])

    return registry
