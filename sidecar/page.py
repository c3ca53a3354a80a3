"""The /skew page: one self-contained HTML document from the /skew.json data.

No scripts and no external assets: inline CSS, one inline SVG histogram per feature,
and a Content-Security-Policy that forbids anything else. Every string that came from
a baseline or a request (feature names, bin labels, evidence values, request ids) goes
through `html.escape`.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BASELINE_COLOUR", "CSP", "SERVING_COLOUR", "histogram_svg", "render_page"]

BASELINE_COLOUR = "#4c78a8"
SERVING_COLOUR = "#f58518"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
# The histogram's box (SVG user units) and plot area.
_WIDTH, _HEIGHT = 560, 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 10, 34
_LABEL_CHARS = 28

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9cfdb}
main{padding:8px 24px 40px;max-width:1100px}
section.model{margin-top:20px}
h2{font-size:18px;margin:16px 0 4px}
h3{font-size:16px;margin:0 0 6px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
article.feature{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 16px;
margin:12px 0}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;
margin-left:6px;vertical-align:middle}
.drift{background:#c62828;color:#fff}.ok{background:#2e7d32;color:#fff}
.none{background:#9aa3b2;color:#fff}
ul.diagnosis{margin:4px 0 8px;padding-left:20px}
.legend{font-size:12px;color:#4a5262}
.swatch{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
.muted{color:#6b7385}
td.value{max-width:520px;overflow-wrap:anywhere}
"""


def render_page(data: Mapping[str, Any], json_href: str = "skew.json") -> str:
    """The HTML page for `debug.page_data(...)`'s result; `json_href` links the JSON."""
    parts = [
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        "<title>skew-sidecar: serving skew</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<header><h1>Serving skew</h1>",
        f"<p>skew-sidecar {_e(data.get('version', ''))} · generated "
        f'{_e(_when(data.get("generated_at")))} · also as <a href="{_e(json_href)}" '
        'style="color:#fff">JSON</a></p></header><main>',
    ]
    models = data.get("models", [])
    if not models:
        parts.append("<p>No model is monitored here.</p>")
    for m, model in enumerate(models):
        parts.append(_model(model, f"m{m}"))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _model(model: Mapping[str, Any], anchor: str) -> str:
    features = model["features"]
    evidence = model["evidence"]
    source = (
        f"last window ({model['window_rows']} rows, closed {_when(model['window_end'])})"
        if model["histograms_from"] == "last_window"
        else "rows since start (no window closed yet)"
    )
    head = [
        f"<section class=model><h2>Model <code>{_e(model['model'])}</code></h2>",
        f"<p>baseline <code>{_e(model['baseline_hash'])}</code> · "
        f"{model['rows_checked']} rows checked · {model['windows']} windows · "
        f"features ranked by severity over the {_e(source)}</p>",
        "<p class=muted>"
        + (
            f"Evidence: the last {evidence['per_feature']} offending values per feature "
            f"(at most {evidence['max_total']} in all); redacted fields are never kept."
            if evidence["enabled"]
            else "Evidence is off (SkewMiddleware(evidence=EvidenceOptions()) or "
            "skew-sidecar serve --evidence N)."
        )
        + "</p>",
    ]
    rows = [
        "<table class=summary><tr><th>#</th><th>feature</th><th>kind</th><th>verdict</th>"
        "<th>PSI</th><th>problem values</th><th>diagnosis</th></tr>"
    ]
    for i, f in enumerate(features):
        top = f["diagnosis"][0]["kind"] if f["diagnosis"] else "-"
        rows.append(
            f'<tr><td class=num>{i + 1}</td><td><a href="#{anchor}-f{i}">{_e(f["name"])}</a>'
            f"</td><td>{_e(f['kind'])}</td><td>{_verdict(f['drifted'])}</td>"
            f"<td class=num>{_num(f['psi'])}</td><td class=num>{_problems(f)}</td>"
            f"<td>{_e(top)}</td></tr>"
        )
    rows.append("</table>")
    cards = [_feature(f, f"{anchor}-f{i}", evidence["enabled"]) for i, f in enumerate(features)]
    return "".join(head + rows + cards) + "</section>"


def _feature(f: Mapping[str, Any], anchor: str, evidence_on: bool) -> str:
    out = [
        f'<article class=feature id="{anchor}"><h3><code>{_e(f["name"])}</code> '
        f"<span class=muted>{_e(f['kind'])}, {_e(f['role'])}</span>"
        f"{_verdict(f['drifted'])}</h3>"
    ]
    if f["diagnosis"]:
        out.append("<ul class=diagnosis>")
        for d in f["diagnosis"]:
            out.append(
                f"<li><b>{_e(d['kind'])}</b> ({d['confidence']:.0%}): {_e(d['explanation'])}</li>"
            )
        out.append("</ul>")
    out.append(f"<p class=muted>{_e(_counts(f))}</p>")
    hist = f["histogram"]
    if hist["bins"]:
        out.append(
            f'<div class=legend><span class=swatch style="background:{BASELINE_COLOUR}">'
            f'</span>baseline<span class=swatch style="background:{SERVING_COLOUR}"></span>'
            f"serving ({sum(hist['serving_counts'])} values)</div>"
        )
        out.append(histogram_svg(hist["bins"], hist["baseline"], hist["serving"]))
    if evidence_on:
        out.append(_evidence(f["evidence"]))
    out.append("</article>")
    return "".join(out)


def histogram_svg(
    labels: Sequence[str], baseline: Sequence[float], serving: Sequence[float]
) -> str:
    """Baseline and serving fractions per bin as paired bars, with a tooltip per bin."""
    n = len(labels)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    peak = max([*baseline, *serving, 0.0]) or 1.0
    slot = plot_w / max(n, 1)
    bar = slot * 0.4
    base_y = _TOP + plot_h
    out = [
        f'<svg class=histogram xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img">',
        f'<line x1="{_LEFT}" y1="{base_y}" x2="{_WIDTH - _RIGHT}" y2="{base_y}" stroke="#9aa3b2"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 10}" font-size="11" text-anchor="end" '
        f'fill="#4a5262">{peak:.0%}</text>',
        f'<text x="{_LEFT - 4}" y="{base_y}" font-size="11" text-anchor="end" '
        'fill="#4a5262">0%</text>',
    ]
    for i, (label, b, s) in enumerate(zip(labels, baseline, serving, strict=True)):
        x = _LEFT + i * slot + slot * 0.1
        hb, hs = b / peak * plot_h, s / peak * plot_h
        out.append(
            f"<g><title>{_e(label)}: baseline {b:.1%}, serving {s:.1%}</title>"
            f'<rect class="bar baseline" x="{x:.1f}" y="{base_y - hb:.1f}" width="{bar:.1f}" '
            f'height="{hb:.1f}" fill="{BASELINE_COLOUR}"/>'
            f'<rect class="bar serving" x="{x + bar:.1f}" y="{base_y - hs:.1f}" '
            f'width="{bar:.1f}" height="{hs:.1f}" fill="{SERVING_COLOUR}"/></g>'
        )
    if n:
        for anchor, x, label in (
            ("start", _LEFT, labels[0]),
            ("end", _WIDTH - _RIGHT, labels[-1]),
        ):
            out.append(
                f'<text x="{x}" y="{base_y + 16}" font-size="11" text-anchor="{anchor}" '
                f'fill="#4a5262">{_e(_short(label))}</text>'
            )
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.0f}" y="{base_y + 30}" font-size="11" '
            f'text-anchor="middle" fill="#6b7385">{n} bins (hover for each)</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _evidence(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "<p class=muted>No offending values kept.</p>"
    rows = [
        "<table class=evidence><tr><th>time (UTC)</th><th>reason</th><th>value</th>"
        "<th>request id</th></tr>"
    ]
    for e in entries:
        rid = e["request_id"]
        rows.append(
            f"<tr><td>{_e(_when(e['time']))}</td><td>{_e(e['reason'])}</td>"
            f"<td class=value><code>{_e(e['value'])}</code></td>"
            f"<td>{'<code>' + _e(rid) + '</code>' if rid else '-'}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _counts(f: Mapping[str, Any]) -> str:
    parts = [f"{f['values']} values", f"{f['missing']} missing"]
    for key, label in (
        ("type_mismatch", "type mismatches"),
        ("out_of_range_low", "below range"),
        ("out_of_range_high", "above range"),
        ("nonfinite", "non-finite"),
        ("unseen_category", "unseen categories"),
        ("shape_mismatch", "shape mismatches"),
    ):
        if f.get(key):
            parts.append(f"{f[key]} {label}")
    for key, label in (("psi", "PSI"), ("js_distance", "JS"), ("ks", "KS"), ("linf", "L∞")):
        if f.get(key) is not None:
            parts.append(f"{label} {_num(f[key])}")
    return " · ".join(parts)


def _problems(f: Mapping[str, Any]) -> str:
    n = sum(
        f.get(key) or 0
        for key in (
            "type_mismatch",
            "out_of_range_low",
            "out_of_range_high",
            "nonfinite",
            "unseen_category",
            "shape_mismatch",
        )
    )
    return str(n)


def _verdict(drifted: bool | None) -> str:
    if drifted is None:
        return "<span class='badge none'>no verdict</span>"
    return (
        "<span class='badge drift'>DRIFT</span>" if drifted else "<span class='badge ok'>ok</span>"
    )


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _when(unix: float | None) -> str:
    if not unix:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
