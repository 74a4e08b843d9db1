from controller.adapters import json_guard
from controller.core.admission import MAX_PAYLOAD_DEPTH, Admitted, Refused, admit
from controller.model.phases import Reason
from tests.unit.fakes import recursion_budget

EXECUTORS = {"noop", "http"}


def test_valid_spec_is_admitted() -> None:
    verdict = admit({"target": {"noop": {}}}, 65536, EXECUTORS)
    assert isinstance(verdict, Admitted)


def test_invalid_spec_names_the_field() -> None:
    verdict = admit({"target": {"noop": {}}, "priority": 500}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and verdict.reason is Reason.INVALID_SPEC
    assert "spec.priority" in verdict.message


def test_payload_cap() -> None:
    verdict = admit({"target": {"noop": {}}, "payload": {"x": "a" * 70000}}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and verdict.reason is Reason.PAYLOAD_TOO_LARGE
    assert "RELAY_PAYLOAD_LIMIT_BYTES" in verdict.message


def test_unknown_executor() -> None:
    verdict = admit({"target": {"sqs": {}}}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and verdict.reason is Reason.UNKNOWN_EXECUTOR


def test_nul_characters_are_refused_before_the_ledger_sees_them() -> None:
    verdict = admit({"target": {"noop": {}}, "payload": {"a": ["ok", "bad\x00"]}}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and "NUL" in verdict.message and "spec.payload" in verdict.message


def test_lone_surrogates_are_refused_not_raised() -> None:
    # json.loads("\"\\ud800\"") gives one; measuring the payload's size raised UnicodeEncodeError,
    # and the handler retried the same admission for ever.
    for payload in ({"a": "x\ud800"}, {"k\udfff": 1}, {"ok": "żółw ✓"}):
        verdict = admit({"target": {"noop": {}}, "payload": payload}, 65536, EXECUTORS)
        if "ok" in payload:
            assert not isinstance(verdict, Refused)
        else:
            assert isinstance(verdict, Refused) and verdict.reason is Reason.INVALID_SPEC
            assert "surrogate" in verdict.message


def test_deep_nesting_is_refused() -> None:
    payload: dict[str, object] = {}
    node = payload
    for _ in range(150):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    verdict = admit({"target": {"noop": {}}, "payload": payload}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and "deeper" in verdict.message


def chain(levels: int, leaf: object = "leaf") -> dict[str, object]:
    """A payload whose leaf is `levels` containers below it: {"k": {"k": ... leaf}}."""
    node: object = leaf
    for _ in range(levels):
        node = {"k": node}
    assert isinstance(node, dict)
    return node


def test_a_deep_payload_is_refused_as_too_deep_at_any_depth() -> None:
    assert isinstance(
        admit({"target": {"noop": {}}, "payload": chain(MAX_PAYLOAD_DEPTH)}, 65536, EXECUTORS), Admitted
    )
    for levels in (MAX_PAYLOAD_DEPTH + 1, 985, 100_000):
        verdict = admit({"target": {"noop": {}}, "payload": chain(levels)}, 65536, EXECUTORS)
        assert verdict == Refused(Reason.PAYLOAD_TOO_DEEP, "spec.payload nests deeper than 100 levels")


def test_admission_walks_the_spec_without_recursion() -> None:
    # The walk of a user's document keeps its own stack; Python's would run out on some input.
    deep = {"target": {"noop": {}}, "payload": chain(100_000)}
    nul_at_the_bottom = {"target": {"noop": {}}, "payload": chain(MAX_PAYLOAD_DEPTH - 1, "a\x00")}
    with recursion_budget(40):
        verdicts = [admit(deep, 65536, EXECUTORS), admit(nul_at_the_bottom, 65536, EXECUTORS)]
    assert [v.reason for v in verdicts if isinstance(v, Refused)] == [
        Reason.PAYLOAD_TOO_DEEP,
        Reason.INVALID_SPEC,
    ]


def test_deep_or_unstorable_values_anywhere_in_the_spec_are_refused() -> None:
    # Plug-in configurations and header maps are kept as given, and stored with the spec.
    cases = {
        "spec.target nests deeper than 100 levels": {"target": {"mystery": chain(500)}},
        "spec.target contains a NUL": {"target": {"http": {"url": "http://h/", "headers": {"X": "a\x00"}}}},
        "spec.target contains a lone UTF-16 surrogate": {"target": {"mystery": {"k\udc00": 1}}},
    }
    for message, spec in cases.items():
        verdict = admit(spec, 65536, {*EXECUTORS, "mystery"})
        assert isinstance(verdict, Refused) and verdict.reason is Reason.INVALID_SPEC, (message, verdict)
        assert verdict.message.startswith(message), verdict


def test_a_payload_the_watch_decoder_truncated_is_always_refused() -> None:
    """The watch decoder cuts whatever nests deeper than json_guard.MAX_DEPTH; admission's own
    bound is far lower, so the job carrying a cut payload is refused, never run as cut."""
    payload = '{"k":' * (json_guard.MAX_DEPTH + 50) + "1" + "}" * (json_guard.MAX_DEPTH + 50)
    spec = '{"target":{"noop":{}},"payload":' + payload + "}"
    event = json_guard.loads('{"type":"ADDED","object":{"metadata":{"name":"x"},"spec":' + spec + "}}")
    listed = json_guard.loads('{"items":[{"metadata":{"name":"x"},"spec":' + spec + "}]}")
    for decoded in (event["object"]["spec"], listed["items"][0]["spec"]):
        verdict = admit(decoded, 65536, EXECUTORS)
        assert isinstance(verdict, Refused) and verdict.reason is Reason.PAYLOAD_TOO_DEEP


def test_a_start_after_the_last_instant_in_utc_is_refused_and_one_before_year_one_is_past() -> None:
    # RFC 3339 writes both; in UTC the first is in year 10000, which no datetime holds.
    verdict = admit({"target": {"noop": {}}, "notBefore": "9999-12-31T23:59:59-23:59"}, 65536, EXECUTORS)
    assert isinstance(verdict, Refused) and verdict.reason is Reason.INVALID_SPEC
    assert verdict.message.startswith(
        "spec.notBefore 9999-12-31T23:59:59-23:59 is after 9999-12-31T23:59:59Z"
    )
    for past in ("0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00Z"):
        assert isinstance(admit({"target": {"noop": {}}, "notBefore": past}, 65536, EXECUTORS), Admitted)
    assert isinstance(
        admit({"target": {"noop": {}}, "notBefore": "9999-12-31T23:59:59Z"}, 65536, EXECUTORS), Admitted
    )
