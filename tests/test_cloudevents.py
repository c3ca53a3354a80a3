"""Payload-logger CloudEvents: header validation, and the request/response join (pure,
on a fake clock). tests/test_serve.py runs the same join behind real HTTP."""

from __future__ import annotations

import pytest

from sidecar.cloudevents import (
    MAX_ATTRIBUTE_LENGTH,
    CloudEventError,
    EventHeaders,
    Exchange,
    Joiner,
    is_cloudevent,
    is_structured,
    read_headers,
)
from tests.clock import Clock

KSERVE_REQUEST = "org.kubeflow.serving.inference.request"
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"
SELDON_REQUEST = "io.seldon.serving.inference.request"


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs; ce_type="x" becomes (b"ce-type", b"x")."""
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def kserve(**overrides: str) -> dict[str, str]:
    """The headers KServe's logger sends (pkg/logger/worker.go), minus the body's."""
    values = {
        "ce_specversion": "1.0",
        "ce_id": "0009174a-24a8-4603-b098-09c8799950e9",
        "ce_type": KSERVE_REQUEST,
        "ce_source": "http://localhost:9081/",
        "ce_inferenceservicename": "sklearn-iris",
        "ce_namespace": "default",
        "ce_component": "predictor",
        "ce_endpoint": "",
        "content_type": "application/json",
    }
    values.update(overrides)
    return values


# -- headers --------------------------------------------------------------------------


def test_kserve_events_are_joined_by_ce_id_and_name_their_inference_service() -> None:
    event = read_headers(headers(**kserve()))
    assert event == EventHeaders(
        id="0009174a-24a8-4603-b098-09c8799950e9",
        type=KSERVE_REQUEST,
        source="http://localhost:9081/",
        kind="request",
        key="0009174a-24a8-4603-b098-09c8799950e9",
        model="sklearn-iris",
    )
    assert read_headers(headers(**kserve(ce_type=KSERVE_RESPONSE))).kind == "response"


def test_seldon_events_are_joined_by_ce_requestid_not_by_their_own_ce_id() -> None:
    seldon = headers(
        ce_specversion="1.0",
        ce_id="e5f0a6c2-fresh-per-event",
        ce_type="io.seldon.serving.inference.response",
        ce_source="http://seldon-model-example:8000/",
        ce_requestid="puid-42",
        ce_modelid="classifier",
        ce_inferenceservicename="seldon-model",
        ce_namespace="seldon",
        ce_endpoint="example",
    )
    event = read_headers(seldon)
    assert (event.kind, event.key, event.model) == ("response", "puid-42", "seldon-model")


def test_seldon_feedback_is_a_known_type_with_nothing_to_check() -> None:
    event = read_headers(headers(**kserve(ce_type="io.seldon.serving.feedback", ce_requestid="p")))
    assert event.kind is None


def test_header_values_are_percent_decoded_and_header_names_case_insensitive() -> None:
    pairs = [(k.upper(), v) for k, v in headers(**kserve(ce_id="a%20b%25"))]
    assert read_headers(pairs).key == "a b%"


def test_an_event_without_inference_service_name_has_no_model() -> None:
    values = kserve()
    del values["ce_inferenceservicename"]
    assert read_headers(headers(**values)).model is None
    assert read_headers(headers(**kserve(ce_inferenceservicename=""))).model is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ce_id": None}, "ce-id: missing (a binary-mode CloudEvent needs it)"),
        ({"ce_source": None}, "ce-source: missing"),
        ({"ce_specversion": None}, "ce-specversion: missing"),
        ({"ce_id": ""}, "ce-id: empty"),
        ({"ce_specversion": "0.2"}, "ce-specversion: '0.2' is not supported (expected 1.0)"),
        ({"ce_type": "com.example.order"}, "ce-type: 'com.example.order' is not a KServe"),
        ({"ce_type": SELDON_REQUEST}, "ce-requestid: missing"),
        ({"ce_requestid": ""}, "ce-requestid: empty"),
        ({"ce_id": "x" * (MAX_ATTRIBUTE_LENGTH + 1)}, "ce-id: longer than 1024 characters"),
        (
            {"ce_inferenceservicename": "m" * (MAX_ATTRIBUTE_LENGTH + 1)},
            "ce-inferenceservicename: longer than",
        ),
    ],
)
def test_malformed_headers_are_rejected_naming_the_header(
    change: dict[str, str | None], message: str
) -> None:
    values = kserve()
    for key, value in change.items():
        if value is None:
            del values[key]
        else:
            values[key] = value
    with pytest.raises(CloudEventError) as info:
        read_headers(headers(**values))
    assert str(info.value).startswith(message)


def test_a_repeated_header_is_rejected() -> None:
    pairs = [*headers(**kserve()), (b"ce-id", b"another")]
    with pytest.raises(CloudEventError, match="^ce-id: given more than once$"):
        read_headers(pairs)


def test_binary_mode_is_recognised_by_specversion_or_type_not_by_ce_id_alone() -> None:
    assert is_cloudevent(headers(ce_specversion="1.0"))
    assert is_cloudevent(headers(ce_type=KSERVE_REQUEST))
    # KServe takes a client's Ce-Id as the request id: a plain inference request may
    # carry one.
    assert not is_cloudevent(headers(ce_id="abc", content_type="application/json"))
    assert is_structured("application/cloudevents+json; charset=utf-8")
    assert is_structured("application/cloudevents-batch+json")
    assert not is_structured("application/json")


# -- the join -------------------------------------------------------------------------


def joiner(**options: float) -> tuple[Joiner[str], Clock]:
    clock = Clock(1000.0)
    return Joiner(clock=clock, **options), clock  # type: ignore[arg-type]


@pytest.mark.parametrize("first", ["request", "response"])
def test_a_request_and_its_response_are_joined_in_either_order(first: str) -> None:
    join, clock = joiner(wait_seconds=5)
    second = "response" if first == "request" else "request"
    assert join.add("id-1", first, f"{first} body") == []  # type: ignore[arg-type]
    assert len(join) == 1
    clock.now += 4.9
    assert join.add("id-1", second, f"{second} body") == [  # type: ignore[arg-type]
        Exchange("id-1", "request body", "response body", "joined")
    ]
    assert len(join) == 0
    clock.now += 100
    assert join.expire() == []


def test_a_duplicate_is_ignored_while_waiting_and_after_the_join() -> None:
    join, clock = joiner(wait_seconds=5, remember_seconds=60)
    assert join.add("id-1", "request", "first") == []
    assert join.seen("id-1", "request")
    assert not join.seen("id-1", "response")
    assert join.add("id-1", "request", "again") is None
    [exchange] = join.add("id-1", "response", "answer") or []
    assert exchange == Exchange("id-1", "first", "answer", "joined")
    clock.now += 59
    assert join.add("id-1", "request", "late copy") is None
    assert join.add("id-1", "response", "late copy") is None
    assert len(join) == 0


def test_a_duplicate_is_forgotten_after_remember_seconds() -> None:
    join, clock = joiner(wait_seconds=5, remember_seconds=60)
    join.add("id-1", "request", "a")
    join.add("id-1", "response", "b")
    clock.now += 60
    assert join.expire() == []
    assert not join.seen("id-1", "request")
    assert join.add("id-1", "request", "new") == []  # a new exchange that reuses the id


def test_the_same_id_of_two_types_is_no_duplicate() -> None:
    join, _ = joiner()
    assert join.add("id-1", "request", "a") == []
    assert join.add("id-1", "response", "b") is not None


def test_a_request_whose_response_never_comes_is_handed_over_alone_after_the_wait() -> None:
    join, clock = joiner(wait_seconds=5)
    join.add("id-1", "request", "a")
    clock.now += 2
    join.add("id-2", "response", "b")
    clock.now += 2.9
    assert join.expire() == []
    clock.now += 0.1  # id-1 has waited exactly 5 s
    assert join.expire() == [Exchange("id-1", "a", None, "timed_out")]
    clock.now += 2
    assert join.expire() == [Exchange("id-2", None, "b", "timed_out")]
    assert len(join) == 0
    # Its late response is a new exchange, not a duplicate; it too is handed over alone.
    assert join.add("id-1", "response", "late") == []


def test_the_pending_table_is_bounded_and_the_oldest_is_handed_over_alone() -> None:
    join, clock = joiner(wait_seconds=5, max_pending=2)
    assert join.add("a", "request", "1") == []
    clock.now += 1
    assert join.add("b", "response", "2") == []
    assert join.add("c", "request", "3") == [Exchange("a", "1", None, "evicted")]
    assert len(join) == 2
    assert join.add("a", "request", "again") is None  # remembered, not re-admitted
    assert join.add("b", "request", "4") == [Exchange("b", "4", "2", "joined")]
    assert len(join) == 1


def test_the_bytes_held_by_waiting_halves_are_bounded_too() -> None:
    clock = Clock(1000.0)
    join: Joiner[bytes] = Joiner(max_bytes=10, size=len, wait_seconds=5, clock=clock)
    assert join.add("a", "request", b"aaaa") == []
    assert join.add("b", "request", b"bbbb") == []
    assert join.pending_bytes == 8
    assert join.add("c", "response", b"cccc") == [Exchange("a", b"aaaa", None, "evicted")]
    assert join.pending_bytes == 8
    # One half larger than the whole budget leaves at once, with everything before it.
    assert join.add("d", "request", b"d" * 11) == [
        Exchange("b", b"bbbb", None, "evicted"),
        Exchange("c", None, b"cccc", "evicted"),
        Exchange("d", b"d" * 11, None, "evicted"),
    ]
    assert (len(join), join.pending_bytes) == (0, 0)
    join.add("e", "request", b"ee")
    assert join.add("e", "response", b"e" * 9) == [Exchange("e", b"ee", b"e" * 9, "joined")]
    join.add("f", "request", b"ff")
    assert join.pending_bytes == 2
    clock.now += 5
    assert join.expire() == [Exchange("f", b"ff", None, "timed_out")]
    assert join.pending_bytes == 0


def test_flush_hands_over_everything_still_waiting() -> None:
    join, _ = joiner()
    join.add("a", "request", "1")
    join.add("b", "response", "2")
    assert join.flush() == [
        Exchange("a", "1", None, "flushed"),
        Exchange("b", None, "2", "flushed"),
    ]
    assert len(join) == 0
    assert join.flush() == []
    assert join.seen("a", "request")


def test_remembered_halves_are_bounded() -> None:
    join, _ = joiner(max_remembered=2)
    for key in ("a", "b", "c"):
        join.add(key, "request", key)
        join.add(key, "response", key)
    # Six halves handed over, two remembered: the last exchange's.
    assert [join.seen(k, "request") for k in "abc"] == [False, False, True]
    assert join.seen("c", "response")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_seconds": 0}, "wait_seconds must be positive, got 0"),
        ({"max_pending": 0}, "max_pending must be at least 1, got 0"),
        ({"max_remembered": 0}, "max_remembered must be at least 1, got 0"),
    ],
)
def test_joiner_options_are_validated(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        Joiner(**options)  # type: ignore[arg-type]
