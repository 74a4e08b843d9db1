"""The CRD's OpenAPI schema (manifests/crd.yaml) and the pydantic model (controller/model/spec.py)
describe the same spec: same field names, required fields, types, defaults and bounds.

The API server enforces the CRD; the operator re-validates with the model. If they drift, a
RelayJob accepted by `kubectl apply` could end `Rejected` (or the reverse), so every difference
is a bug in one of them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from controller.model.phases import Phase
from controller.model.spec import (
    DEFAULT_QUEUE,
    NULLIFIER_PATTERN,
    Backoff,
    CaptureResponse,
    HeaderFrom,
    HttpTarget,
    RelayJobSpec,
    SecretKeyRef,
    Signing,
    Target,
)

CRD_PATH = Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def crd() -> Schema:
    docs: list[Schema] = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1, "manifests/crd.yaml must hold exactly the RelayJob CRD"
    return docs[0]


@pytest.fixture(scope="module")
def version(crd: Schema) -> Schema:
    versions: list[Schema] = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    return versions[0]


@pytest.fixture(scope="module")
def spec_schema(version: Schema) -> Schema:
    spec: Schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _model_schema(model: type[BaseModel]) -> tuple[Schema, Schema]:
    schema = model.model_json_schema(by_alias=True)
    return schema, schema.get("$defs", {})


def _resolve(node: Schema, defs: Schema) -> Schema:
    """Follow `$ref` and drop the `null` branch pydantic adds for optional fields."""
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        assert len(branches) == 1, f"unexpected union in model schema: {node}"
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        merged.update(_resolve(branches[0], defs))
        return merged
    return node


# (CRD object schema path, pydantic model) pairs whose properties must match one to one.
OBJECTS: list[tuple[tuple[str, ...], type[BaseModel]]] = [
    ((), RelayJobSpec),
    (("backoff",), Backoff),
    (("target", "http"), HttpTarget),
    (("target", "http", "headersFrom", "[]"), HeaderFrom),
    (("target", "http", "headersFrom", "[]", "secretKeyRef"), SecretKeyRef),
    (("target", "http", "signing"), Signing),
    (("target", "http", "signing", "secretKeyRef"), SecretKeyRef),
    (("target", "http", "captureResponse"), CaptureResponse),
]


# Fields the CRD leaves without a default so that the operator can tell "set none" and fill in the
# job's RelayQueue `defaults`; the model's own defaults (DESIGN.md's) apply when the queue has none.
QUEUE_DEFAULTED = {"maxAttempts", "backoff", "timeoutSeconds"}


def _crd_at(spec_schema: Schema, path: tuple[str, ...]) -> Schema:
    node = spec_schema
    for step in path:
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


def _aliases(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


@pytest.mark.parametrize(("path", "model"), OBJECTS, ids=lambda v: getattr(v, "__name__", None))
def test_same_properties(spec_schema: Schema, path: tuple[str, ...], model: type[BaseModel]) -> None:
    crd_props = set(_crd_at(spec_schema, path)["properties"])
    model_props = _aliases(model)
    assert crd_props - model_props == set(), f"in the CRD but not in {model.__name__}"
    assert model_props - crd_props == set(), f"in {model.__name__} but not in the CRD"


@pytest.mark.parametrize(("path", "model"), OBJECTS, ids=lambda v: getattr(v, "__name__", None))
def test_same_required(spec_schema: Schema, path: tuple[str, ...], model: type[BaseModel]) -> None:
    required = {info.alias or name for name, info in model.model_fields.items() if info.is_required()}
    assert set(_crd_at(spec_schema, path).get("required", [])) == required


def test_target_executors(spec_schema: Schema) -> None:
    target = spec_schema["properties"]["target"]
    assert "target" in spec_schema["required"]
    assert set(target["properties"]) == {"http", "noop"}
    # Plug-in executors add their own keys: the CRD must keep them, the model must allow them.
    assert target["x-kubernetes-preserve-unknown-fields"] is True
    assert Target.model_config.get("extra") == "allow"
    assert target.get("minProperties") == 1
    assert target.get("maxProperties") == 1


def _bounds_crd(node: Schema) -> Schema:
    out: Schema = {}
    if "minimum" in node:
        key = "exclusiveMinimum" if node.get("exclusiveMinimum") else "minimum"
        out[key] = node["minimum"]
    if "maximum" in node:
        key = "exclusiveMaximum" if node.get("exclusiveMaximum") else "maximum"
        out[key] = node["maximum"]
    for key in ("minLength", "maxLength", "enum"):
        if key in node:
            out[key] = node[key]
    return out


def _bounds_model(node: Schema) -> Schema:
    keys = (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "enum",
    )
    return {k: node[k] for k in keys if k in node}


def _scalar_props() -> list[tuple[tuple[str, ...], type[BaseModel], str]]:
    out = []
    for path, model in OBJECTS:
        for name, info in model.model_fields.items():
            out.append((path, model, info.alias or name))
    return out


@pytest.mark.parametrize(
    ("path", "model", "prop"),
    _scalar_props(),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_same_type_and_bounds(
    spec_schema: Schema, path: tuple[str, ...], model: type[BaseModel], prop: str
) -> None:
    crd_node = _crd_at(spec_schema, path)["properties"][prop]
    schema, defs = _model_schema(model)
    model_node = _resolve(schema["properties"][prop], defs)
    if prop == "target":
        return  # covered by test_target_executors (union of executors)
    if "type" in model_node:
        assert crd_node["type"] == model_node["type"], prop
    if model_node.get("format") == "date-time":
        assert crd_node.get("format") == "date-time", prop
    # The model may carry a length bound in its pattern (nullifier); compare explicit ones.
    crd_bounds = _bounds_crd(crd_node)
    model_bounds = _bounds_model(model_node)
    if "pattern" in model_node:
        crd_bounds = {k: v for k, v in crd_bounds.items() if k not in ("minLength", "maxLength")}
    assert crd_bounds == model_bounds, prop


@pytest.mark.parametrize(
    ("path", "model", "prop"),
    _scalar_props(),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_same_default(spec_schema: Schema, path: tuple[str, ...], model: type[BaseModel], prop: str) -> None:
    crd_node = _crd_at(spec_schema, path)["properties"][prop]
    info = next(i for n, i in model.model_fields.items() if (i.alias or n) == prop)
    if info.is_required():
        assert "default" not in crd_node, prop
        return
    model_default = info.get_default(call_default_factory=True)
    if path == () and prop in QUEUE_DEFAULTED:
        assert "default" not in crd_node, f"{prop}: a CRD default would hide the queue's defaults"
        return
    if path == () and prop == "queue":
        # Omitted means the namespace's implicit queue, which the API server need not spell out.
        assert "default" not in crd_node and model_default == DEFAULT_QUEUE
        return
    if "default" not in crd_node:
        # No CRD default: the model must not invent a value the API server never stores.
        assert model_default in (None, {}, []), f"{prop}: model default {model_default!r}"
        return
    crd_default = crd_node["default"]
    if isinstance(model_default, BaseModel):
        # `default: {}` on an object: the nested defaults fill it in, as the model's do.
        assert type(model_default).model_validate(crd_default) == model_default, prop
    else:
        assert crd_default == model_default, prop
        assert type(crd_default) is type(model_default) or isinstance(model_default, float), prop


@pytest.mark.parametrize(
    ("prop", "default", "low", "high"),
    [
        ("priority", 0, -100, 100),
        ("maxAttempts", 5, 1, 100),
        ("delaySeconds", None, 0, 31_536_000),
        ("timeoutSeconds", 30, None, 3600),
    ],
)
def test_spec_numbers_per_design(spec_schema: Schema, prop: str, default: Any, low: Any, high: Any) -> None:
    """DESIGN.md's numbers, checked against both sides explicitly."""
    node = spec_schema["properties"][prop]
    assert node.get("default") == (None if prop in QUEUE_DEFAULTED else default)
    assert node["maximum"] == high
    if low is None:
        assert node["minimum"] == 0 and node["exclusiveMinimum"] is True
    else:
        assert node["minimum"] == low and not node.get("exclusiveMinimum")
    info = next(i for n, i in RelayJobSpec.model_fields.items() if (i.alias or n) == prop)
    assert info.get_default(call_default_factory=True) == default


def test_backoff_defaults_per_design(spec_schema: Schema) -> None:
    backoff = spec_schema["properties"]["backoff"]
    assert "default" not in backoff
    crd_defaults = {k: v["default"] for k, v in backoff["properties"].items()}
    expected = {"initialSeconds": 1, "maxSeconds": 300, "multiplier": 2, "jitter": True}
    assert crd_defaults == expected
    assert Backoff().model_dump(by_alias=True) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "order-1234:notify",
        "A.b_c-d:e",
        "x" * 128,
        "x" * 129,
        "",
        "has space",
        "ü",
        "slash/no",
        "semi;colon",
        "tab\t",
        "new\nline",
    ],
)
def test_nullifier_rule_agrees(spec_schema: Schema, value: str) -> None:
    node = spec_schema["properties"]["nullifier"]
    crd_ok = (
        node["minLength"] <= len(value) <= node["maxLength"] and re.search(node["pattern"], value) is not None
    )
    model_ok = re.fullmatch(NULLIFIER_PATTERN, value) is not None
    assert crd_ok == model_ok


def _apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting as the API server does it (defaults of absent object properties)."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(schema["items"], v) for v in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        {"target": {"noop": {}}},
        {"target": {"http": {"url": "https://example.invalid/hook"}}, "backoff": {"jitter": False}},
        {
            "target": {
                "http": {
                    "url": "http://x",
                    "headersFrom": [{"name": "Authorization", "secretKeyRef": {"name": "s", "key": "k"}}],
                }
            },
            "payload": {"a": 1},
            "priority": -3,
            "delaySeconds": 10,
        },
    ],
)
def test_defaulted_object_reads_the_same(spec_schema: Schema, spec: Schema) -> None:
    """What the API server stores after defaulting is what the model fills in by itself."""
    stored = _apply_defaults(spec_schema, copy.deepcopy(spec))
    from_server = RelayJobSpec.model_validate(stored)
    from_model = RelayJobSpec.model_validate(spec)
    assert from_server == from_model
    dumped = from_model.model_dump(by_alias=True, exclude_none=True, mode="json")
    # Every key the API server fills in is one the model knows (no silent extra defaults).
    assert set(stored) <= set(dumped)


def test_mutually_exclusive_start(spec_schema: Schema) -> None:
    rules = [r["rule"] for r in spec_schema.get("x-kubernetes-validations", [])]
    assert "!(has(self.notBefore) && has(self.delaySeconds))" in rules
    with pytest.raises(ValueError, match="at most one of notBefore and delaySeconds"):
        RelayJobSpec.model_validate(
            {"target": {"noop": {}}, "notBefore": "2030-01-01T00:00:00Z", "delaySeconds": 5}
        )


# DESIGN.md's user-visible phases. The model may hold more (ledger-only states such as
# Cancelled, for a RelayJob deleted before it finished) that are never written to status.
STATUS_PHASES = [
    "Pending",
    "Queued",
    "Processing",
    "Retrying",
    "Completed",
    "DeadLettered",
    "Rejected",
    "Suspended",
]


# Kept in the API for DESIGN.md's vocabulary: the phase of a RelayJob the operator has not
# admitted yet, which shows no status at all. No transition enters it (core.transitions).
NEVER_WRITTEN = {"Pending"}


def test_status_phases_match_model(version: Schema) -> None:
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    crd_phases = status["properties"]["phase"]["enum"]
    assert crd_phases == STATUS_PHASES
    model = {p.value for p in Phase}
    assert set(crd_phases) - NEVER_WRITTEN <= model, "a status phase the model does not know"
    assert not NEVER_WRITTEN & model


def test_names_and_columns(crd: Schema, version: Schema) -> None:
    assert crd["metadata"]["name"] == "relayjobs.relay.dev"
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], crd["spec"]["scope"]) == ("relay.dev", "Namespaced")
    assert (names["kind"], names["plural"], names["singular"]) == ("RelayJob", "relayjobs", "relayjob")
    assert names["shortNames"] == ["rj"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["jsonPath"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "PHASE": (".status.phase", 0),
        "ATTEMPTS": (".status.attempts", 0),
        "PRIORITY": (".spec.priority", 0),
        "AGE": (".metadata.creationTimestamp", 0),
        "NULLIFIER": (".spec.nullifier", 1),
        "NEXT-ATTEMPT": (".status.nextAttemptAt", 1),
        "LAST-ERROR": (".status.lastError", 1),
    }


def test_status_is_owned_whole(version: Schema) -> None:
    """The operator replaces the whole status in every patch; the API server need not track who
    owns each field of it (with per-field tracking, a status patch cost it about a third more)."""
    status: Schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-map-type"] == "atomic"
