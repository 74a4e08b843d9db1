"""The RelaySchedule CRD (manifests/crd-relayschedules.yaml) and the operator's reading of it agree:
the same fields, defaults and policies, the macros CEL lets through are those the operator knows,
and `kubectl explain` has a description for every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controller.core.schedule import MACROS
from controller.model.schedules import ConcurrencyPolicy, RelayScheduleSpec

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd-relayschedules.yaml"


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_spec_fields_and_defaults_are_the_models() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    fields = {f.alias or name: f for name, f in RelayScheduleSpec.model_fields.items()}
    assert set(spec) == set(fields)
    for name, prop in spec.items():
        if "default" in prop:
            assert prop["default"] == fields[name].default, name
    assert spec["concurrencyPolicy"]["enum"] == [p.value for p in ConcurrencyPolicy]


def test_the_macros_cel_admits_are_the_ones_the_operator_expands() -> None:
    rules = " ".join(
        r["rule"]
        for r in _schema()["properties"]["spec"]["properties"]["schedule"]["x-kubernetes-validations"]
    )
    listed = rules.split("@(", 1)[1].split(")", 1)[0].split("|")
    assert {f"@{m}" for m in listed} == set(MACROS)


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            if path == "" and name in ("apiVersion", "kind", "metadata"):
                continue
            if not child.get("description"):
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(_schema(), "")
    assert not missing, missing


def test_printer_columns_are_cronjobs() -> None:
    crd = yaml.safe_load(CRD.read_text())
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"]
    assert crd["spec"]["names"]["shortNames"] == ["rsch"]
