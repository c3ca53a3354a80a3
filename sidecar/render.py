"""Readable text tables for window reports and baselines."""

from __future__ import annotations

from collections.abc import Sequence

from .baseline import Baseline
from .categorical import CategoricalStats
from .diff import BaselineDiff, FeatureDiff
from .numeric import NumericStats
from .report import FeatureReport, WindowReport
from .sequences import ListStats
from .timestamps import TimestampStats, iso_from_epoch

_REPORT_COLUMNS = (
    "feature",
    "kind",
    "values",
    "missing",
    "issues",
    "psi",
    "js",
    "ks/linf",
    "shift",
    "scale",
    "verdict",
    "diagnosis",
)


def format_report(report: WindowReport) -> str:
    lines = [
        f"window: {report.rows} rows, baseline {report.baseline_hash}"
        + (f", {report.rejected_rows} rejected items" if report.rejected_rows else "")
        + (f", {report.unknown_features} unknown feature values" if report.unknown_features else "")
    ]
    if not report.sufficient:
        lines.append(
            f"note: fewer than {report.min_rows} rows, so no drift verdicts (measures are noisy)"
        )
    ranked = report.by_severity()
    lines.extend(_table(_REPORT_COLUMNS, [_report_row(r) for r in ranked]))
    explained = [r for r in ranked if r.diagnosis or r.notes]
    if explained:
        lines.append("")
    for r in explained:
        if r.diagnosis:
            lines.append(f"{r.name}: {r.diagnosis[0].kind}: {r.diagnosis[0].explanation}")
        lines.extend(f"{r.name}: note: {note}" for note in r.notes)
    return "\n".join(lines)


def _report_row(r: FeatureReport) -> tuple[str, ...]:
    total = r.values + r.missing + r.type_mismatch
    missing = f"{100 * r.missing / total:.1f}%" if total else "-"
    issues = []
    for label, n in (
        ("type", r.type_mismatch),
        ("low", r.out_of_range_low),
        ("high", r.out_of_range_high),
        ("nonfinite", r.nonfinite),
        ("unseen", r.unseen_category or 0),
        ("shape", r.shape_mismatch),
    ):
        if n:
            issues.append(f"{label}={n}")
    if r.kind == "categorical" and r.unseen_category is None:
        issues.append("unseen=?")
    spread = r.ks if r.ks is not None else r.linf
    verdict = {True: "DRIFT", False: "ok", None: "-"}[r.drifted]
    return (
        r.name,
        r.kind,
        str(r.values),
        missing,
        " ".join(issues) or "-",
        _num(r.psi),
        _num(r.js_distance),
        _num(spread),
        _num(r.mean_shift),
        _num(r.scale_ratio),
        verdict,
        r.diagnosis[0].kind if r.diagnosis else "-",
    )


_DIFF_COLUMNS = (
    "feature",
    "kind",
    "missing",
    "psi",
    "js",
    "ks/linf",
    "shift",
    "scale",
    "new cats",
    "verdict",
)


def format_diff(diff: BaselineDiff) -> str:
    changed = [d for d in diff.by_severity() if d.changed]
    lines = [
        f"old {diff.old_hash}: {diff.old_rows} rows -> new {diff.new_hash}: {diff.new_rows} rows; "
        f"{len(changed)} of {len(diff.features)} features changed"
    ]
    lines.extend(_table(_DIFF_COLUMNS, [_diff_row(d) for d in diff.by_severity()]))
    noted = [d for d in diff.by_severity() if d.notes]
    if noted:
        lines.append("")
    for d in noted:
        lines.extend(f"{d.name}: {note}" for note in d.notes)
    return "\n".join(lines)


def _diff_row(d: FeatureDiff) -> tuple[str, ...]:
    kind = d.old_kind or "-"
    if d.new_kind != d.old_kind:
        kind = f"{kind} -> {d.new_kind or '-'}"
    missing = f"{_pct(d.old_missing_rate)} -> {_pct(d.new_missing_rate)}"
    spread = d.ks if d.ks is not None else d.linf
    verdict = "CHANGED: " + ", ".join(d.reasons) if d.changed else "ok"
    return (
        d.name,
        kind,
        missing,
        _num(d.psi),
        _num(d.js_distance),
        _num(spread),
        _num(d.mean_shift),
        _num(d.scale_ratio),
        "-" if d.new_categories is None else f"{100 * d.new_categories:.1f}%",
        verdict,
    )


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def format_baseline(baseline: Baseline) -> str:
    lines = [
        f"baseline {baseline.baseline_hash}: {baseline.rows} rows, "
        f"{len(baseline.features)} features"
    ]
    rows = []
    for name, feat in baseline.features.items():
        stats = feat.stats
        total = stats.count + stats.missing + stats.type_mismatch
        missing = f"{100 * stats.missing / total:.1f}%" if total else "-"
        rows.append(
            (
                name,
                feat.kind + ("*" if feat.role == "prediction" else ""),
                str(stats.count),
                missing,
                _summary(stats),
            )
        )
    lines.extend(_table(("feature", "kind", "count", "missing", "summary"), rows))
    return "\n".join(lines)


def _summary(stats: object) -> str:
    if isinstance(stats, NumericStats):
        if not stats.count:
            return "no values"
        kind = (
            "discrete"
            if stats.discrete
            else f"{len(stats.bins.fractions) if stats.bins else 0} bins"
        )
        return (
            f"[{stats.min:.4g}, {stats.max:.4g}] mean {stats.mean:.4g} std {stats.std:.4g}"
            f" {'int ' if stats.integer else ''}{kind}"
        )
    if isinstance(stats, CategoricalStats):
        top = ", ".join(stats.top[:3])
        complete = "" if stats.vocabulary_complete else "+ (capped)"
        return f"{len(stats.vocabulary)}{complete} values ({stats.value_type}): {top}"
    if isinstance(stats, TimestampStats):
        if not stats.count:
            return "no values"
        offsets = ", ".join(list(stats.offsets)[:3])
        return f"{iso_from_epoch(stats.min)} .. {iso_from_epoch(stats.max)} offsets {offsets}"
    if isinstance(stats, ListStats):
        lengths = stats.lengths
        if not lengths.count:
            return "no values"
        elements = (
            f" elements [{stats.element_min:.4g}, {stats.element_max:.4g}]"
            if stats.element_count
            else ""
        )
        return f"length {lengths.min:.0f}..{lengths.max:.0f}{elements}"
    return ""


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return out
