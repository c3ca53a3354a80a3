"""docs/runbook.md against deploy/prometheus/alert_rules.yml.

Every alert's runbook_url lands on the entry for that alert (anchors computed as GitHub
renders them), every entry belongs to an alert, and every entry says what the alert
means (with the rule's metrics, thresholds and duration), what to check and how to
silence it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alert_rules.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL_PREFIX = "docs/runbook.md#"
# Alert entries are the level-3 headings; levels 1 and 2 are the index and shared sections.
ENTRY_LEVEL = 3
# The parts of every entry, as bold labels at the start of a line, in this order.
PARTS = ("What it means", "Check first", "Silence")


@dataclass(frozen=True)
class Section:
    level: int
    title: str
    anchor: str
    body: str  # up to the next heading


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading (github-slugger), before de-duplication: the
    rendered text lowercased, everything but letters, digits, `_`, `-` and spaces
    dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # links and images: their text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def sections(markdown: str) -> list[Section]:
    """ATX headings outside fenced code, with GitHub's anchors (`-1`, `-2` on repeats)."""
    found: list[tuple[int, str, list[str]]] = []
    fence: str | None = None
    for line in markdown.splitlines():
        marker = re.match(r" {0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif marker.group(1).startswith(fence):
                fence = None
        heading = re.match(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", line)
        if fence is None and not marker and heading:
            found.append((len(heading.group(1)), heading.group(2), []))
        elif found:
            found[-1][2].append(line)
    occurrences: dict[str, int] = {}
    out = []
    for level, title, body in found:
        base = anchor = github_anchor(title)
        while anchor in occurrences:
            occurrences[base] += 1
            anchor = f"{base}-{occurrences[base]}"
        occurrences[anchor] = 0
        out.append(Section(level, title, anchor, "\n".join(body)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERTS = {rule["alert"]: rule for rule in alert_rules()}
SECTIONS = sections(RUNBOOK.read_text(encoding="utf-8"))
ENTRIES = {s.title: s for s in SECTIONS if s.level == ENTRY_LEVEL}


def entry(alert: str) -> Section:
    assert alert in ENTRIES, f"{RUNBOOK.name} has no entry `### {alert}`"
    return ENTRIES[alert]


def parts(section: Section) -> dict[str, str]:
    """The text of each bold-labelled part of an entry (`**What it means.** ...`)."""
    labels = "|".join(re.escape(p) for p in PARTS)
    pieces = re.split(rf"(?m)^\*\*({labels})\.?\*\*", section.body)
    return dict(zip(pieces[1::2], pieces[2::2], strict=True))


def silence_commands(text: str) -> list[list[str]]:
    """The arguments of every `amtool silence add` in a text, quotes removed."""
    return [
        [arg.strip("'\"") for arg in line.split()[3:]]
        for line in text.splitlines()
        if line.startswith("amtool silence add ")
    ]


def test_the_rule_file_defines_alerts_with_distinct_names() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_the_runbook_url_of_every_alert_lands_on_that_alerts_entry(alert: str) -> None:
    url = ALERTS[alert]["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL_PREFIX), url
    anchor = url.removeprefix(RUNBOOK_URL_PREFIX)
    by_anchor = {s.anchor: s for s in SECTIONS}
    assert anchor in by_anchor, f"{alert}: no heading in {RUNBOOK.name} has anchor #{anchor}"
    section = by_anchor[anchor]
    assert (section.level, section.title) == (ENTRY_LEVEL, alert)


def test_every_runbook_entry_belongs_to_an_alert() -> None:
    titles = [s.title for s in SECTIONS if s.level == ENTRY_LEVEL]
    assert len(titles) == len(set(titles)), "an alert has two entries"
    stale = sorted(set(titles) - set(ALERTS))
    assert not stale, f"entries without an alert in {ALERT_RULES.name}: {stale}"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_entry_says_what_it_means_what_to_check_and_how_to_silence(alert: str) -> None:
    found = parts(entry(alert))
    assert list(found) == list(PARTS), f"{alert}: parts {list(found)}, expected {PARTS}"
    for label, text in found.items():
        assert text.strip(), f"{alert}: {label} is empty"
    checks = re.findall(r"(?m)^\d+\. ", found["Check first"])
    assert len(checks) == 3, f"{alert}: Check first lists {len(checks)} things, not 3"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_entry_names_the_metrics_thresholds_and_duration_of_its_rule(alert: str) -> None:
    rule = ALERTS[alert]
    meaning = " ".join(parts(entry(alert))["What it means"].split())
    for metric in sorted(set(re.findall(r"\bskew_\w+", rule["expr"]))):
        assert metric in meaning, f"{alert}: the rule reads {metric}"
    for number in sorted(set(re.findall(r"(?:[<>=!]=|[<>])\s*(\d[\d.]*)", rule["expr"]))):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?!\.?\d)", meaning), (
            f"{alert}: the rule compares with {number}"
        )
    if "for" in rule:
        minutes = re.fullmatch(r"(\d+)m", rule["for"])
        assert minutes, f"{alert}: for: {rule['for']} (only minutes are handled here)"
        assert f"{minutes.group(1)} minutes" in meaning, f"{alert}: for: {rule['for']}"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_silence_example_matches_its_alert_by_labels_the_alert_carries(alert: str) -> None:
    rule = ALERTS[alert]
    commands = silence_commands(parts(entry(alert))["Silence"])
    assert commands, f"{alert}: no `amtool silence add` example"
    # Labels the alert's own annotations render exist on it for sure; a matcher on a
    # label the alert lacks (model= on a sidecar-wide alert) would silence nothing.
    annotations = " ".join(rule["annotations"].values())
    carried = set(re.findall(r"\$labels\.(\w+)", annotations))
    for args in commands:
        matchers = dict(re.split(r"=~?", arg, maxsplit=1) for arg in args if "=" in arg)
        matchers = {k: v for k, v in matchers.items() if not k.startswith("-")}
        assert "alertname" in matchers, f"{alert}: {args}"
        assert re.fullmatch(matchers.pop("alertname"), alert), f"{alert}: {args}"
        assert matchers, f"{alert}: silences every {alert}, not one model's: {args}"
        assert set(matchers) <= carried, f"{alert}: {sorted(set(matchers) - carried)}"


def test_the_index_links_every_alert_once() -> None:
    index = next(s for s in SECTIONS if s.title == "Index")
    links = re.findall(r"\]\(#([^)]+)\)", index.body)
    expected = [
        ALERTS[a]["annotations"]["runbook_url"].removeprefix(RUNBOOK_URL_PREFIX) for a in ALERTS
    ]
    assert sorted(links) == sorted(expected)


def test_every_link_within_the_runbook_resolves() -> None:
    anchors = {s.anchor for s in SECTIONS}
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links
    assert sorted(set(links) - anchors) == []


@pytest.mark.parametrize(
    ("title", "anchor"),
    [
        ("SkewFeatureOutOfRange", "skewfeatureoutofrange"),
        ("Serving-skew causes and how they show", "serving-skew-causes-and-how-they-show"),
        ("`skew_feature_psi`: what it is", "skew_feature_psi-what-it-is"),
        ("See [the checks](../README.md#the-checks)", "see-the-checks"),
        ("Ünïcode, too!", "ünïcode-too"),
    ],
)
def test_anchors_follow_githubs_rule(title: str, anchor: str) -> None:
    assert github_anchor(title) == anchor


def test_repeated_headings_get_numbered_anchors_and_code_blocks_hold_no_headings() -> None:
    markdown = "# A\n## Notes\n```sh\n# not a heading\n```\n## Notes\n### Notes\n"
    found = [(s.level, s.anchor) for s in sections(markdown)]
    assert found == [(1, "a"), (2, "notes"), (2, "notes-1"), (3, "notes-2")]
