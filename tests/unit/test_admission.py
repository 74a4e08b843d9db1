from controller.core.admission import Admitted, Refused, admit
from controller.model.phases import Reason

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
