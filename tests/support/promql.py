"""What the dashboard's PromQL names, and what a /metrics scrape offers, as sets of series names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric

DASHBOARD = (
    Path(__file__).resolve().parents[2]
    / "helm"
    / "relayjob-operator"
    / "dashboards"
    / "relayjob-operator.json"
)

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Numbers and durations (`0.99`, `1e3`, `offset 1h`): digits first, so never a name.
_NUMBERS = re.compile(r"(?<![\w:])[0-9][0-9a-zA-Z_.]*")
_NAMES = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
# The sample names each kind of family exposes beside (or instead of) its own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard's panels, in panel order."""
    dashboard = json.loads(path.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The series names `expr` selects: strings, label matchers, ranges, groupings and numbers removed,
    and of the identifiers left, those not called as functions nor PromQL keywords."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _NAMES.finditer(text):
        after = text[match.end() :].lstrip()
        if after.startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def exported(families: Iterable[Metric]) -> set[str]:
    """Every series name the families expose: a histogram `x` is `x_bucket`, `x_count`, `x_sum`."""
    return {f.name + suffix for f in families for suffix in _SUFFIXES.get(f.type, ("",))}
