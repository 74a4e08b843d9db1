"""Our own small Kubernetes API client for the hot path: status patches, Events, Secrets, deletes.

kopf's `patch` exists only inside handlers, while status is written from the worker loop; and the
official client is heavy and synchronous. One aiohttp session, built from the credentials kopf
logged in with, serves every write this process makes.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from controller.adapters import json_guard
from controller.adapters.executors.retry_after import parse_retry_after
from controller.model.jobs import JobRef, SecretForbidden, SecretNotFound, SecretUnavailable
from controller.model.schedules import KIND as SCHEDULE_KIND
from controller.model.schedules import PLURAL as SCHEDULE_PLURAL
from controller.model.schedules import SCHEDULE_LABEL

GROUP, VERSION, PLURAL, KIND = "relay.dev", "v1alpha1", "relayjobs", "RelayJob"
QUEUE_PLURAL, QUEUE_KIND = "relayqueues", "RelayQueue"
API_VERSION = f"{GROUP}/{VERSION}"
# Named on every status patch, so that a status written by anyone else can be told apart in
# `managedFields` (the API server would otherwise take the manager from the User-Agent).
FIELD_MANAGER = "relayjob-operator"


class KubeError(Exception):
    """An API call that failed: `status` is the HTTP status (0: no answer), `body` what the API
    server said; `retry_after` the seconds it asked the client to wait before trying the same call
    again, when it asked (see `RETRY_AFTER_TRIES`)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = message
        self.retry_after = retry_after


# A call the API server answers 429 with a Retry-After (API Priority and Fairness shedding load, or
# a resource whose storage is still initialising) was not carried out: it is sent again after the
# wait asked for, as client-go does (k8s.io/client-go/rest: checkWait, at most 10 tries); so is a
# read answered 5xx with a Retry-After. A write answered 5xx may have been carried out, and is left
# to its caller. Each wait is capped, so that a server asking for long ones hands over to the
# caller's own backoff instead of holding the call.
RETRY_AFTER_TRIES = 10
RETRY_AFTER_MAX_SECONDS = 10.0


def _retry_after(method: str, response: aiohttp.ClientResponse) -> float | None:
    if response.status != 429 and not (method == "GET" and 500 <= response.status <= 599):
        return None
    return parse_retry_after(response.headers.get("Retry-After"))


def _failed_test(error: KubeError) -> bool:
    """A JSON patch `test` that failed: 422 Invalid with no field causes (a schema violation, also
    422, always lists its causes)."""
    return '"causes"' not in error.body and '"Invalid"' in error.body


class Credentials:
    """The subset of kopf's ConnectionInfo we need, turned into an SSL context and headers."""

    def __init__(
        self,
        server: str,
        *,
        ca_path: str | None = None,
        ca_data: bytes | None = None,
        insecure: bool = False,
        token: str | None = None,
        certificate_path: str | None = None,
        certificate_data: bytes | None = None,
        private_key_path: str | None = None,
        private_key_data: bytes | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.headers: dict[str, str] = {}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif username and password:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"
        self.ssl: ssl.SSLContext | bool = True
        if server.startswith("https"):
            context = ssl.create_default_context()
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if ca_path:
                context.load_verify_locations(cafile=ca_path)
            if ca_data:
                context.load_verify_locations(cadata=_pem(ca_data))
            if certificate_path or certificate_data:
                with tempfile.TemporaryDirectory() as tmp:
                    cert = certificate_path or _spill(Path(tmp) / "c", certificate_data)
                    key = private_key_path or _spill(Path(tmp) / "k", private_key_data)
                    context.load_cert_chain(cert, key)
            self.ssl = context

    @classmethod
    def from_kopf(cls, info: Any) -> Credentials:
        return cls(
            info.server,
            ca_path=info.ca_path,
            ca_data=info.ca_data,
            insecure=bool(info.insecure),
            token=info.token,
            certificate_path=info.certificate_path,
            certificate_data=info.certificate_data,
            private_key_path=info.private_key_path,
            private_key_data=info.private_key_data,
            username=info.username,
            password=info.password,
        )


def _env_proxy(server: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy HTTPS_PROXY / NO_PROXY name for the API server, read once. aiohttp's `trust_env`
    reads them, and ~/.netrc, in a thread on every request: two trips to the default executor per
    status patch, and a netrc login for the API server's host clashed with the token (ValueError
    on every call)."""
    try:
        return get_env_proxy_for_url(URL(server))
    except LookupError:
        return None, None


def _pem(data: bytes | str) -> str:
    text = data.decode() if isinstance(data, bytes) else data
    return text if "BEGIN" in text else base64.b64decode(text).decode()


def _spill(path: Path, data: bytes | None) -> str:
    if data is None:
        raise ValueError("client certificate given without its key")
    path.write_text(_pem(data))
    path.chmod(0o600)
    return str(path)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeClient:
    def __init__(
        self,
        credentials: Credentials,
        component: str,
        instance: str,
        secret_cache_seconds: float,
        max_connections: int = 64,
        refresh: Callable[[], Credentials] | None = None,
    ) -> None:
        """`refresh` re-reads credentials after a 401: in a pod the projected ServiceAccount token
        is rotated by the kubelet, and a token read at start-up eventually expires."""
        self.credentials = credentials
        self.component = component
        self.instance = instance
        self._refresh = refresh
        self._session = aiohttp.ClientSession(
            base_url=credentials.server,
            connector=aiohttp.TCPConnector(ssl=credentials.ssl, limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=30, connect=5),
        )
        # HTTPS_PROXY / NO_PROXY as users set them for egress; kopf's session does the same
        # (networking.trust_env).
        self._proxy, self._proxy_auth = _env_proxy(credentials.server)
        self._secret_ttl = secret_cache_seconds
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._secret_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, method: str, path: str, answer: bool = False, tries: int = RETRY_AFTER_TRIES, **kwargs: Any
    ) -> Any:
        """One API call, returning the decoded answer when `answer` is true; transport failures
        surface as KubeError with status 0. Sent again after a 401 with refreshed credentials,
        and after each answer asking to retry, `tries` times in all (`RETRY_AFTER_TRIES`)."""
        tried = 0
        while True:
            tried += 1
            try:
                return await self._send_authenticated(method, path, answer, **kwargs)
            except KubeError as error:
                if error.retry_after is None or tried >= tries:
                    raise
                await asyncio.sleep(min(error.retry_after, RETRY_AFTER_MAX_SECONDS))

    async def _send_authenticated(self, method: str, path: str, answer: bool, **kwargs: Any) -> Any:
        try:
            return await self._send(method, path, answer, **kwargs)
        except KubeError as error:
            if error.status != 401 or self._refresh is None:
                raise
            self.credentials = self._refresh()
            return await self._send(method, path, answer, **kwargs)

    async def _send(self, method: str, path: str, answer: bool, **kwargs: Any) -> Any:
        headers = {**self.credentials.headers, **kwargs.pop("headers", {})}
        try:
            async with self._session.request(
                method, path, headers=headers, proxy=self._proxy, proxy_auth=self._proxy_auth, **kwargs
            ) as response:
                if response.status >= 300:
                    body = await response.text()
                    raise KubeError(response.status, body[:2000], _retry_after(method, response))
                if answer and response.content_type == "application/json":
                    # A list of RelayJobs holds their managedFields, as deep as any payload.
                    return await response.json(loads=json_guard.loads)
                # Read, not decoded: a write's answer is the whole object, which nobody needs
                # (decoding it was most of the JSON work of a status write), and an unread body
                # would cost the connection its keep-alive.
                await response.read()
                return None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, f"{method} {path}: {type(error).__name__}: {error}") from None

    def _job_path(self, ref: JobRef) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{ref.namespace}/{PLURAL}/{ref.name}"

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        """Replace `.status` with `status`; False when no RelayJob with this uid exists any more.

        A JSON patch whose first operation tests `metadata.uid` keeps a status meant for a deleted
        job off a new object that reuses its name (a merge patch on the status subresource ignores
        metadata, so it cannot carry that precondition). A conflict (409) is transient: the API
        server ran out of its own retries under contention, and the caller must try again.
        """
        kept = {k: v for k, v in status.items() if v is not None}
        return await self._replace_status(self._job_path(ref), ref.uid, kept)

    async def _replace_status(self, path: str, uid: UUID, status: dict[str, Any]) -> bool:
        """The JSON patch of `patch_status` for the object at `path`, guarded by its uid."""
        body = [
            {"op": "test", "path": "/metadata/uid", "value": str(uid)},
            {"op": "add", "path": "/status", "value": status},
        ]
        try:
            await self._request(
                "PATCH",
                path + "/status",
                params={"fieldManager": FIELD_MANAGER},
                json=body,
                headers={"Content-Type": "application/json-patch+json"},
            )
        except KubeError as error:
            if error.status == 404 or (error.status == 422 and _failed_test(error)):
                return False
            raise
        return True

    async def ping(self) -> None:
        """Raise KubeError unless the API server answers its readiness endpoint, now: a readiness
        check reports what it finds rather than wait out a Retry-After."""
        await self._request("GET", "/readyz", tries=1, timeout=aiohttp.ClientTimeout(total=2))

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other API call, by path, with aiohttp's request arguments (`json`, `params`,
        `timeout`...): the answer decoded when it is JSON, else None; KubeError as for the calls
        above. The operator makes none; the bench makes its own calls through it, so that it
        measures the API server with the operator's client."""
        return await self._request(method, path, answer=True, **kwargs)

    async def get_admission_object(self, plural: str, name: str) -> dict[str, Any] | None:
        """A cluster-scoped admissionregistration.k8s.io/v1 object (e.g. plural
        `validatingadmissionpolicies`), or None when there is none of that name; an API server that
        does not serve the kind (older than 1.30) answers 404 as well."""
        return await self._get_or_none(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when the API server answers 404."""
        try:
            found: dict[str, Any] = await self._request("GET", path, answer=True)
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def delete_job(self, ref: JobRef) -> bool:
        body = {"preconditions": {"uid": str(ref.uid)}, "propagationPolicy": "Background"}
        try:
            await self._request("DELETE", self._job_path(ref), json=body)
        except KubeError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a RelayJob (`body` is the whole object, with its `metadata.name`); False when
        one of that name already exists. The deterministic names of callback jobs and schedule
        runs make this the exactly-once step: whichever replica or restart creates second gets
        409 AlreadyExists and does nothing."""
        try:
            await self._request(
                "POST",
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                params={"fieldManager": FIELD_MANAGER},
                json={"apiVersion": API_VERSION, "kind": KIND, **body},
            )
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    def _queues_path(self, namespace: str | None) -> str:
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}{scope}/{QUEUE_PLURAL}"

    async def list_queues(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        """Every RelayQueue, across the watched namespaces (all when empty). Queues are few (one
        per tenant and purpose), so whole objects in one page each are cheap."""
        paths = [self._queues_path(ns) for ns in namespaces] or [self._queues_path(None)]
        found: list[dict[str, Any]] = []
        for path in paths:
            page = await self._request("GET", path, answer=True)
            found.extend(page.get("items") or [])
        return found

    async def get_queue(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One RelayQueue, or None when there is none of that name."""
        return await self._get_or_none(f"{self._queues_path(namespace)}/{name}")

    async def patch_queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge `status` into a RelayQueue's status; False when the queue is gone. Only the
        replica handling resources writes it, so a merge patch has no other writer to race."""
        try:
            await self._request(
                "PATCH",
                f"{self._queues_path(namespace)}/{name}/status",
                params={"fieldManager": FIELD_MANAGER},
                json={"status": status},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    def _schedule_path(self, namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{SCHEDULE_PLURAL}/{name}"

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One RelaySchedule, or None when there is none of that name."""
        return await self._get_or_none(self._schedule_path(namespace, name))

    async def list_runs(self, namespace: str, schedule: str) -> list[dict[str, Any]]:
        """The RelayJobs labelled as runs of `schedule`: a schedule keeps a few (its history limits)."""
        page = await self._request(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
            answer=True,
            params={"labelSelector": f"{SCHEDULE_LABEL}={schedule}"},
        )
        return list(page.get("items") or [])

    async def patch_schedule_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        """Replace a RelaySchedule's `.status`; False when no schedule with this uid exists any more
        (the uid test keeps it off a new schedule of the same name, as `patch_status` does)."""
        return await self._replace_status(self._schedule_path(ref.namespace, ref.name), ref.uid, status)

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]:
        """Every RelayJob uid that exists, across the watched namespaces (all when empty)."""
        paths = [f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}" for ns in namespaces] or [
            f"/apis/{GROUP}/{VERSION}/{PLURAL}"
        ]
        found: set[UUID] = set()
        for path in paths:
            token: str | None = None
            while True:
                params = {"limit": "500", "continue": token} if token else {"limit": "500"}
                page = await self._request(
                    "GET",
                    path,
                    answer=True,
                    params=params,
                    headers={
                        "Accept": "application/json;as=PartialObjectMetadataList;"
                        "g=meta.k8s.io;v=v1,application/json"
                    },
                )
                # An empty list comes back as `"items": null`, not `[]`.
                found.update(UUID(item["metadata"]["uid"]) for item in page.get("items") or [])
                token = page.get("metadata", {}).get("continue")
                if not token:
                    break
        return found

    async def post_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on the RelayJob, as `kubectl describe` lists them."""
        await self._post_event(KIND, ref, kind, reason, message)

    async def post_queue_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on a RelayQueue (`ref` names it: uid, namespace, name)."""
        await self._post_event(QUEUE_KIND, ref, kind, reason, message)

    async def post_schedule_event(self, ref: JobRef, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on a RelaySchedule (`ref` names it: uid, namespace, name)."""
        await self._post_event(SCHEDULE_KIND, ref, kind, reason, message)

    async def _post_event(self, involved: str, ref: JobRef, kind: str, reason: str, message: str) -> None:
        stamp = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name[:200]}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": involved,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": str(ref.uid),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp[:19] + "Z",
            "lastTimestamp": stamp[:19] + "Z",
            "count": 1,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        await self._request("POST", f"/api/v1/namespaces/{ref.namespace}/events", json=body)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """A Secret's value, cached briefly so a burst of jobs does not read it per attempt."""
        ident = (namespace, name)
        lock = self._secret_locks.setdefault(ident, asyncio.Lock())
        async with lock:
            cached = self._secrets.get(ident)
            if cached is None or cached[0] < time.monotonic():
                try:
                    secret = await self._request(
                        "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", answer=True
                    )
                except KubeError as error:
                    if error.status == 404:
                        raise SecretNotFound(f"Secret {namespace}/{name} not found") from None
                    if error.status == 403:
                        raise SecretForbidden(
                            f"Secret {namespace}/{name} is not readable by the operator (forbidden)"
                        ) from None
                    raise SecretUnavailable(
                        f"Secret {namespace}/{name} could not be read: {str(error)[:200]}"
                    ) from None
                # Bytes that are not UTF-8 stay as surrogates: the key this job reads may be text even
                # if another one is binary, and the executor names the key that is not.
                data = {
                    k: base64.b64decode(v).decode(errors="surrogateescape")
                    for k, v in (secret.get("data") or {}).items()
                }
                data.update(secret.get("stringData") or {})
                cached = (time.monotonic() + self._secret_ttl, data)
                self._secrets[ident] = cached
        if key not in cached[1]:
            raise SecretNotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return cached[1][key]
