"""The RelayQueue CRD (manifests/crd-relayqueues.yaml) and its model (controller/model/queues.py)
describe the same spec, and its defaults take the same bounds as a RelayJob's own fields.

The API server enforces the CRD and the operator reads queues through the model: a queue accepted
by `kubectl apply` that the model refused would leave its jobs without limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from controller.model.queues import QueueDefaults, RateLimit, RelayQueueSpec
from controller.model.spec import QUEUE_NAME_PATTERN, Backoff, RelayJobSpec

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

Schema = dict[str, Any]

OBJECTS: list[tuple[tuple[str, ...], type[BaseModel]]] = [
    ((), RelayQueueSpec),
    (("rateLimit",), RateLimit),
    (("defaults",), QueueDefaults),
    (("defaults", "backoff"), Backoff),
]


def _load(name: str) -> list[Schema]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


@pytest.fixture(scope="module")
def crd() -> Schema:
    (doc,) = _load("crd-relayqueues.yaml")
    return doc


@pytest.fixture(scope="module")
def version(crd: Schema) -> Schema:
    (only,) = crd["spec"]["versions"]
    assert only["name"] == "v1alpha1"
    return only


@pytest.fixture(scope="module")
def spec_schema(version: Schema) -> Schema:
    spec: Schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _at(schema: Schema, path: tuple[str, ...]) -> Schema:
    for step in path:
        schema = schema["properties"][step]
    return schema


def _aliases(model: type[BaseModel]) -> dict[str, Any]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _bounds(node: Schema) -> Schema:
    out: Schema = {}
    for key in ("minimum", "maximum"):
        if key in node:
            exclusive = node.get(f"exclusive{key.capitalize()}") is True
            out[f"exclusive{key.capitalize()}" if exclusive else key] = node[key]
    return out


def _model_node(model: type[BaseModel], prop: str) -> Schema:
    schema = model.model_json_schema(by_alias=True)
    node: Schema = schema["properties"][prop]
    branches = [b for b in node.get("anyOf", [node]) if b.get("type") != "null"]
    return {**node, **branches[0]}


@pytest.mark.parametrize(("path", "model"), OBJECTS, ids=lambda v: getattr(v, "__name__", None))
def test_same_properties_types_bounds_and_defaults(
    spec_schema: Schema, path: tuple[str, ...], model: type[BaseModel]
) -> None:
    crd_node = _at(spec_schema, path)
    fields = _aliases(model)
    assert set(crd_node["properties"]) == set(fields)
    required = {alias for alias, info in fields.items() if info.is_required()}
    assert set(crd_node.get("required", [])) == required
    for prop, info in fields.items():
        node = crd_node["properties"][prop]
        model_node = _model_node(model, prop)
        if "type" in model_node:
            assert node["type"] == model_node["type"], prop
        assert _bounds(node) == {
            k: model_node[k]
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
            if k in model_node
        }, prop
        if info.is_required():
            assert "default" not in node, prop
            continue
        if path == ("defaults", "backoff"):
            # A queue's backoff leaves fields out to take RelayJob's defaults: no defaulting here.
            assert "default" not in node, prop
            continue
        default = info.get_default(call_default_factory=True)
        if "default" in node:
            assert node["default"] == default, prop
        elif isinstance(default, BaseModel):
            # An object the API server leaves out reads as the model's empty one.
            assert default == type(default).model_validate({}), prop
        else:
            assert default is None, f"{prop}: model default {default!r} the API server never stores"


def test_queue_defaults_take_relayjob_bounds(spec_schema: Schema) -> None:
    job: Schema = yaml.safe_load((MANIFESTS / "crd.yaml").read_text())
    job_spec = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = spec_schema["properties"]["defaults"]["properties"]
    assert set(defaults) == {"maxAttempts", "backoff", "timeoutSeconds", "ttlSecondsAfterFinished"}
    for prop in ("maxAttempts", "timeoutSeconds", "ttlSecondsAfterFinished"):
        assert _bounds(defaults[prop]) == _bounds(job_spec["properties"][prop]), prop
    for prop, node in defaults["backoff"]["properties"].items():
        assert _bounds(node) == _bounds(job_spec["properties"]["backoff"]["properties"][prop]), prop


def test_names_columns_and_status(crd: Schema, version: Schema) -> None:
    assert crd["metadata"]["name"] == "relayqueues.relay.dev"
    assert (crd["spec"]["group"], crd["spec"]["scope"]) == ("relay.dev", "Namespaced")
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("RelayQueue", "relayqueues", ["rq"])
    assert version["subresources"] == {"status": {}}
    columns = [
        (c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == [
        ("PAUSED", ".spec.paused"),
        ("READY", ".status.ready"),
        ("RUNNING", ".status.running"),
        ("DEAD", ".status.deadLettered"),
        ("RATE", ".status.dispatchedPerSecond"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(status["properties"]) == {
        "ready",
        "delayed",
        "running",
        "deadLettered",
        "dispatchedPerSecond",
        "observedGeneration",
        "conditions",
    }


def _described(node: Schema, path: str) -> list[str]:
    missing = [] if node.get("description") else [path]
    for name, sub in node.get("properties", {}).items():
        missing += _described(sub, f"{path}.{name}")
    return missing


def test_every_spec_and_status_field_is_explained(version: Schema) -> None:
    """`kubectl explain rq.spec.rateLimit.burst` shows these."""
    root = version["schema"]["openAPIV3Schema"]
    missing = _described(root["properties"]["spec"], "spec") + _described(
        root["properties"]["status"], "status"
    )
    conditions = "status.conditions."
    assert [m for m in missing if not m.startswith(conditions)] == []


def test_relayjob_queue_is_a_queue_name() -> None:
    job: Schema = yaml.safe_load((MANIFESTS / "crd.yaml").read_text())
    node = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "queue"
    ]
    assert node["type"] == "string" and node["maxLength"] == 63 and "default" not in node
    for name in ("default", "partner-api", "a", "x" * 63):
        assert RelayJobSpec.model_validate({"target": {"noop": {}}, "queue": name}).queue == name
    for name in ("", "Api", "a.b", "-a", "a-", "x" * 64):
        with pytest.raises(ValueError):
            RelayJobSpec.model_validate({"target": {"noop": {}}, "queue": name})
    assert QUEUE_NAME_PATTERN.startswith("^") and QUEUE_NAME_PATTERN.endswith("$")


def test_the_queue_sample_reads_as_the_models_do() -> None:
    docs = _load("samples/queue.yaml")
    (queue,) = [d for d in docs if d["kind"] == "RelayQueue"]
    spec = RelayQueueSpec.model_validate(queue["spec"])
    assert spec.rate_limit == RateLimit(perSecond=5, burst=5) and spec.max_concurrency == 2
    jobs = [d for d in docs if d["kind"] == "RelayJob"]
    assert len(jobs) == 2
    for job in jobs:
        assert job["spec"]["queue"] == queue["metadata"]["name"]
        RelayJobSpec.model_validate(spec.defaults.fill(job["spec"]))
