"""The /skew page in a real headless browser: Debian's chromium loads it from the sidecar
served by uvicorn on loopback, dumps the DOM it built and takes a screenshot, whose
pixels must show the histograms' bars in both colours."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson

from sidecar import Baseline, EvidenceOptions
from sidecar.page import BASELINE_COLOUR, SERVING_COLOUR
from sidecar.serve import Sidecar
from tests.browser import chromium, headless, read_png
from tests.servers import eventually, serve

INJECTED = "<script>document.title='injected'</script>"
ROWS = 300
# Legend swatches are 10x10 pixels per feature: far fewer than this many.
MIN_BAR_PIXELS = 2000


def test_chromium_renders_the_histograms_and_escaped_evidence(tmp_path: Path) -> None:
    chromium()  # skip (or fail under CI) before starting anything
    training = [{"x": float(i % 100), "c": "abc"[i % 3], "h": i % 24} for i in range(3000)]
    app = Sidecar(
        {"churn": Baseline.from_records(training)},
        window_seconds=3600,
        evidence=EvidenceOptions(),
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        for i in range(ROWS):
            row = {"x": float(i % 100) * 100, "c": INJECTED if i % 5 == 0 else "ab"[i % 2]}
            row["h"] = i % 24
            headers = {"x-request-id": f"req-{i}"}
            assert client.post("/predict", content=orjson.dumps(row), headers=headers).is_success
        monitor = app.monitors["churn"]
        assert eventually(lambda: monitor.snapshot().totals[0].rows == ROWS, 10.0)
        monitor.close_window()
        dom = headless(f"{url}/skew", tmp_path / "dom-profile", "--dump-dom")
        shot = tmp_path / "skew.png"
        headless(
            f"{url}/skew",
            tmp_path / "shot-profile",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
        )
    features = app.monitors["churn"].snapshot().last_window[0].features
    bins = sum(len(r.bin_labels) for r in features.values())
    assert len(re.findall(r'<rect class="bar baseline"', dom)) == bins
    assert len(re.findall(r'<rect class="bar serving"', dom)) == bins
    assert len(re.findall(r"<svg class=\"histogram\"", dom)) == 3
    # The injected category is text in an evidence cell, not an element that ran.
    assert "<script" not in dom
    assert "<title>skew-sidecar: serving skew</title>" in dom
    assert "&lt;script&gt;document.title='injected'&lt;/script&gt;" in dom
    assert "req-295" in dom and "unit_change" in dom
    image = read_png(shot)
    assert image.pixels.shape[:2] == (1600, 1200)
    assert image.count(BASELINE_COLOUR) > MIN_BAR_PIXELS
    assert image.count(SERVING_COLOUR) > MIN_BAR_PIXELS
