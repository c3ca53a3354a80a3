from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from sidecar.baseline import Baseline
from sidecar.cli import main
from sidecar.diff import diff_baselines
from sidecar.numeric import NumericStats
from sidecar.profile import profile_columns, profile_records
from sidecar.report import DriftRule

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def _psi(r: FloatArray, c: FloatArray) -> float:
    """PSI written out independently, with evidently's floor for empty bins."""
    r, c = r / r.sum(), c / c.sum()
    for v in (r, c):
        floor = v[v > 0].min()
        v[v == 0] = floor / 1e6 if floor <= 1e-4 else 1e-4
    return float(((r - c) * np.log(r / c)).sum())


def _edges(baseline: Baseline, name: str) -> FloatArray:
    stats = baseline.features[name].stats
    assert isinstance(stats, NumericStats) and stats.bins is not None
    return np.array(stats.bins.edges)


def _in_bins(values: FloatArray, edges: FloatArray) -> FloatArray:
    """Counts per bin (x <= edges[0] -> bin 0, ..., x > edges[-1] -> last bin)."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


def test_numeric_measures_equal_numpy_and_scipy_on_the_old_bins() -> None:
    rng = np.random.default_rng(1)
    # Under 400 values the new baseline's KLL sketch holds every value: exact.
    old_x, new_x = rng.normal(0, 1, 390), rng.normal(0.4, 1.3, 350)
    old, new = profile_columns({"x": old_x}), profile_columns({"x": new_x})
    d = diff_baselines(old, new).features["x"]

    edges = _edges(old, "x")
    ref, cur = _in_bins(old_x, edges).astype(float), _in_bins(new_x, edges).astype(float)
    assert d.psi == pytest.approx(_psi(ref, cur), rel=1e-9)
    assert d.js_distance == pytest.approx(jensenshannon(ref, cur, base=2), rel=1e-9)
    assert d.linf == pytest.approx(np.abs(ref / ref.sum() - cur / cur.sum()).max(), rel=1e-9)
    assert d.mean_shift == pytest.approx((new_x.mean() - old_x.mean()) / old_x.std(), rel=1e-9)
    assert d.scale_ratio == pytest.approx(new_x.std() / old_x.std(), rel=1e-9)
    # KS is read on the union of both percentile grids: a lower bound within ~1%.
    exact_ks = sps.ks_2samp(old_x, new_x).statistic
    assert exact_ks - 0.02 <= d.ks <= exact_ks + 1e-9
    p_value = sps.chi2_contingency(
        np.vstack([ref, cur]), correction=False, lambda_="log-likelihood"
    ).pvalue
    assert d.p_value == pytest.approx(p_value, rel=1e-6)
    assert d.changed and d.reasons == ("distribution",)


def test_numeric_measures_from_sketches_stay_close_to_the_exact_ones() -> None:
    rng = np.random.default_rng(2)
    old_x, new_x = rng.lognormal(0, 1, 40_000), rng.lognormal(0.2, 1, 40_000)
    old, new = profile_columns({"x": old_x}), profile_columns({"x": new_x})
    d = diff_baselines(old, new).features["x"]
    edges = _edges(old, "x")
    ref, cur = _in_bins(old_x, edges).astype(float), _in_bins(new_x, edges).astype(float)
    # KLL k=400 keeps each rank within ~0.7%: the bins' fractions move by as much.
    assert d.linf == pytest.approx(np.abs(ref / ref.sum() - cur / cur.sum()).max(), abs=0.015)
    assert d.psi == pytest.approx(_psi(ref, cur), abs=0.01)


def test_discrete_numeric_features_compare_value_by_value() -> None:
    old_x = np.repeat([0.0, 1.0, 2.0, 3.0], [400, 300, 200, 100])
    new_x = np.repeat([0.0, 1.0, 2.0, 3.0, 7.0], [250, 250, 250, 150, 100])
    d = diff_baselines(profile_columns({"x": old_x}), profile_columns({"x": new_x})).features["x"]
    # One bin per training value, and a last bin for values never seen in training.
    ref = np.array([400, 300, 200, 100, 0], dtype=float)
    cur = np.array([250, 250, 250, 150, 100], dtype=float)
    assert d.psi == pytest.approx(_psi(ref, cur), rel=1e-9)
    assert d.js_distance == pytest.approx(jensenshannon(ref, cur, base=2), rel=1e-9)
    assert d.ks == pytest.approx(sps.ks_2samp(old_x, new_x).statistic, rel=1e-9)


def test_categorical_measures_use_the_old_top_values_and_the_whole_vocabulary() -> None:
    rng = np.random.default_rng(3)
    letters = np.array(list("abcdefghij"))
    old_c = rng.choice(letters, 2000, p=np.linspace(2, 0.2, 10) / np.linspace(2, 0.2, 10).sum())
    new_c = np.concatenate([rng.choice(letters[:8], 1800), np.repeat(["zz", "yy"], 100)])
    old = profile_columns({"c": old_c.tolist()})
    new = profile_columns({"c": new_c.tolist()})
    d = diff_baselines(old, new).features["c"]

    # Top-K bins (K = 20 keeps all ten letters) plus __other__, as for serving.
    keys = [str(k) for k in letters]
    ref = np.array([*(np.sum(old_c == k) for k in keys), 0], dtype=float)
    cur = np.array([*(np.sum(new_c == k) for k in keys), 200], dtype=float)
    assert d.psi == pytest.approx(_psi(ref, cur), rel=1e-9)
    assert d.js_distance == pytest.approx(jensenshannon(ref, cur, base=2), rel=1e-9)
    union = [*keys, "zz", "yy"]
    old_full = np.array([np.sum(old_c == k) for k in union], dtype=float)
    new_full = np.array([np.sum(new_c == k) for k in union], dtype=float)
    assert d.linf == pytest.approx(np.abs(old_full / 2000 - new_full / 2000).max(), rel=1e-9)
    assert d.new_categories == pytest.approx(200 / 2000)


def test_new_categories_are_not_counted_when_a_vocabulary_is_incomplete() -> None:
    from sidecar.baseline import ProfileSettings
    from sidecar.profile import ProfileOptions

    options = ProfileOptions(settings=ProfileSettings(vocabulary_cap=5))
    old = profile_columns({"c": [f"v{i % 20}" for i in range(1000)]}, options)
    new = profile_columns({"c": [f"v{i % 20}" for i in range(1000)]}, options)
    d = diff_baselines(old, new).features["c"]
    assert d.new_categories is None
    assert d.notes == ("old vocabulary incomplete: new categories not counted",)


def test_timestamps_compare_hour_of_day_counts() -> None:
    old = profile_records([{"t": f"2024-01-01T{h % 24:02d}:00:00Z"} for h in range(2400)])
    new = profile_records([{"t": f"2024-01-02T{h % 12:02d}:00:00Z"} for h in range(2400)])
    d = diff_baselines(old, new).features["t"]
    ref = np.full(24, 100.0)
    cur = np.array([200.0] * 12 + [0.0] * 12)
    assert d.psi == pytest.approx(_psi(ref, cur), rel=1e-9)
    assert d.linf == pytest.approx(1 / 12 - 1 / 24)
    assert d.reasons == ("distribution",)


def test_schema_changes_count_as_changed_and_come_first() -> None:
    old = profile_records([{"a": i % 7, "b": "x", "gone": 1.5 * i} for i in range(500)])
    new = profile_records([{"a": i % 7, "b": i % 3 + 0.5, "fresh": "y"} for i in range(500)])
    diff = diff_baselines(old, new)
    assert {d.name: d.reasons for d in diff.by_severity()} == {
        "b": ("kind",),
        "gone": ("removed",),
        "fresh": ("added",),
        "a": (),
    }
    assert [d.name for d in diff.by_severity()][-1] == "a"
    assert diff.features["b"].old_kind == "categorical(string)"
    assert diff.features["b"].new_kind == "numeric"
    assert diff.changed


def test_a_missing_rate_change_beyond_the_threshold_counts_as_changed() -> None:
    old = profile_records([{"x": float(i % 50) if i % 10 else None} for i in range(2000)])
    new = profile_records([{"x": float(i % 50) if i % 4 else None} for i in range(2000)])
    d = diff_baselines(old, new).features["x"]
    assert d.old_missing_rate == pytest.approx(0.1)
    assert d.new_missing_rate == pytest.approx(0.25)
    assert d.reasons == ("missing_rate",)
    loose = diff_baselines(old, new, rate_change=0.2).features["x"]
    assert not loose.changed


def test_a_fresh_sample_of_the_same_distribution_is_not_a_change() -> None:
    rng = np.random.default_rng(4)
    columns = {"x": rng.normal(5, 2, 5000), "c": rng.choice(list("abc"), 5000).tolist()}
    again = {"x": rng.normal(5, 2, 5000), "c": rng.choice(list("abc"), 5000).tolist()}
    diff = diff_baselines(profile_columns(columns), profile_columns(again))
    assert not diff.changed
    assert all(d.psi is not None and d.psi < 0.02 for d in diff.features.values())


def test_features_with_too_few_values_get_no_verdict() -> None:
    old = profile_columns({"x": np.arange(50.0)})
    new = profile_columns({"x": np.arange(50.0) + 100})
    d = diff_baselines(old, new, DriftRule(min_rows=100)).features["x"]
    assert d.psi is not None and d.psi > 1
    assert not d.changed


def _save(tmp_path: Path, name: str, baseline: Baseline) -> str:
    path = tmp_path / name
    baseline.save(path)
    return str(path)


def test_cli_exits_0_when_nothing_changed_and_1_when_something_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(5)
    old = _save(tmp_path, "old.json", profile_columns({"x": rng.normal(0, 1, 3000)}))
    same = _save(tmp_path, "same.json", profile_columns({"x": rng.normal(0, 1, 3000)}))
    moved = _save(tmp_path, "moved.json", profile_columns({"x": rng.normal(1, 1, 3000)}))
    assert main(["diff", old, same]) == 0
    assert "0 of 1 features changed" in capsys.readouterr().out
    assert main(["diff", old, moved]) == 1
    out = capsys.readouterr().out
    assert "CHANGED: distribution" in out
    assert main(["diff", old, moved, "--psi-floor", "100"]) == 0


def test_cli_json_lists_every_feature_worst_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _save(tmp_path, "old.json", profile_records([{"a": i % 5, "b": "x"} for i in range(300)]))
    new = _save(tmp_path, "new.json", profile_records([{"a": i % 5, "c": "y"} for i in range(300)]))
    assert main(["diff", old, new, "--json"]) == 1
    data = orjson.loads(capsys.readouterr().out)
    assert data["changed"] is True
    assert data["old"]["rows"] == data["new"]["rows"] == 300
    assert list(data["features"])[-1] == "a"
    assert data["features"]["b"]["reasons"] == ["removed"]
    assert data["features"]["c"]["reasons"] == ["added"]
    assert data["features"]["a"]["psi"] == pytest.approx(0.0, abs=1e-12)


def test_cli_exits_2_naming_a_bad_baseline_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _save(tmp_path, "good.json", profile_columns({"x": [1.0, 2.0]}))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["diff", good, str(broken)]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err
    assert main(["diff", good, good, "--rate-change", "3"]) == 2
    assert "rate_change must be between 0 and 1" in capsys.readouterr().err
