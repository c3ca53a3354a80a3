from __future__ import annotations

from sidecar.demo import LIVE_BUGS
from sidecar.detections import Tracker, format_event, format_summary
from sidecar.diagnosis import Diagnosis
from sidecar.report import FeatureReport, WindowReport

UNITS, TOKENS = LIVE_BUGS[1], LIVE_BUGS[3]  # monthly_charges unit_change, query_tokens


def report(diagnosed: dict[str, list[str]], role: str = "input") -> WindowReport:
    """A window whose features carry these diagnosis kinds."""
    features = {
        name: FeatureReport(
            name, "numeric", role, 300, 0, 0, 0, 0, 0, None, 0,
            diagnosis=tuple(Diagnosis(k, 0.9, f"{name} looks like {k}") for k in kinds),
        )
        for name, kinds in diagnosed.items()
    }  # fmt: skip
    return WindowReport(300, 0, 0, "hash", 100, features)


def test_a_bug_is_named_by_the_first_window_after_injection_giving_its_feature_its_kind() -> None:
    tracker = Tracker()
    entry = tracker.inject(UNITS, at=100.0)
    assert tracker.observe([report({"monthly_charges": []})], 100.5) == []
    events = tracker.observe([report({"monthly_charges": ["unit_change"]})], 101.25)
    assert [(e.feature, e.kind, e.injected) for e in events] == [
        ("monthly_charges", "unit_change", entry)
    ]
    assert entry.seconds == 1.25
    assert entry.explanation == "monthly_charges looks like unit_change"
    # Later windows that name it again are not news.
    assert tracker.observe([report({"monthly_charges": ["unit_change"]})], 102.0) == []
    assert entry.seconds == 1.25 and tracker.missed == []


def test_a_window_closed_before_the_injection_does_not_name_the_bug() -> None:
    tracker = Tracker()
    entry = tracker.inject(UNITS, at=100.0)
    events = tracker.observe([report({"monthly_charges": ["unit_change"]})], 99.9)
    assert [e.injected for e in events] == [None]  # reported as not injected, not as named
    assert entry.named_at is None and tracker.missed == [entry]


def test_another_kind_on_a_bugs_feature_is_kept_for_the_summary_and_does_not_name_it() -> None:
    tracker = Tracker()
    entry = tracker.inject(UNITS, at=100.0)
    assert tracker.observe([report({"monthly_charges": ["distribution_shift"]})], 101.0) == []
    assert entry.other_kinds == {"distribution_shift"}
    assert tracker.missed == [entry]
    assert "NOT NAMED (diagnosed: distribution_shift)" in "\n".join(
        format_summary(tracker, LIVE_BUGS)
    )


def test_diagnoses_where_no_bug_was_injected_are_reported_once_with_their_role() -> None:
    tracker = Tracker()
    responses = report({"churn_score": ["default_value_flood"]}, role="prediction")
    first = tracker.observe([report({"age": ["distribution_shift"]}), responses], 5.0)
    again = tracker.observe([report({"age": ["distribution_shift"]}), responses], 6.0)
    assert [(e.feature, e.kind, e.role) for e in first] == [
        ("age", "distribution_shift", "input"),
        ("churn_score", "default_value_flood", "prediction"),
    ]
    assert again == []
    assert "model's output" in format_event(first[1], 5.0)[0]
    assert "no bug injected here" in format_event(first[0], 5.0)[0]


def test_the_summary_has_a_row_per_bug_named_missed_or_not_injected() -> None:
    tracker = Tracker()
    tracker.inject(UNITS, at=10.0)
    tracker.inject(TOKENS, at=20.0)
    tracker.observe([report({"monthly_charges": ["unit_change"]})], 11.5)
    lines = format_summary(tracker, LIVE_BUGS)
    rows = {line.split("  ")[0]: line for line in lines[1 : len(LIVE_BUGS) + 1]}
    assert rows["unit change"].endswith("unit_change          1.5 s")
    assert rows["tokenizer vocabulary"].endswith("NOT NAMED (diagnosed: nothing)")
    assert rows["time zone"].endswith("not injected")
    assert lines[-1] == "1 of 2 injected bugs not named: tokenizer vocabulary"


def test_the_summary_verdict_counts_the_bugs_injected_before_an_interruption() -> None:
    tracker = Tracker()
    assert format_summary(tracker, LIVE_BUGS)[-1] == "no bug was injected"
    tracker.inject(UNITS, at=10.0)
    tracker.observe([report({"monthly_charges": ["unit_change"]})], 10.5)
    assert format_summary(tracker, LIVE_BUGS)[-1] == (
        f"1 of {len(LIVE_BUGS)} bugs injected before the end, all named, "
        "0.5 s after injection (mean 0.5 s)"
    )
