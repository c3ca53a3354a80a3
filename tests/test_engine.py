from __future__ import annotations

import functools
import math
import sys
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import engine as engine_module
from sidecar.baseline import Baseline
from sidecar.engine import BLOCK_ROWS, Engine, FeatureWindow
from sidecar.profile import ProfileOptions, profile_records
from tests.gil import other_thread_ran_during


def _baseline(rows: list[dict[str, Any]], **overrides: Any) -> Baseline:
    options = ProfileOptions(**{k: frozenset(v) for k, v in overrides.items()})
    return profile_records(rows, options)


def _window(baseline: Baseline, rows: list[Any], name: str) -> FeatureWindow:
    engine = Engine(baseline)
    engine.check(rows)
    return engine.window.features[name]


@pytest.fixture(scope="module")
def numeric_baseline() -> Baseline:
    rng = np.random.default_rng(0)
    return _baseline([{"x": float(v)} for v in rng.normal(10, 2, 5000)])


def test_numeric_check_counts_each_kind_of_problem(numeric_baseline: Baseline) -> None:
    stats: Any = numeric_baseline.features["x"].stats
    rows: list[Any] = [
        {"x": 10.0},
        {"x": 11},
        {"x": None},
        {},
        {"x": math.nan},
        {"x": math.inf},
        {"x": "10.5"},
        {"x": True},
        {"x": [1.0]},
        {"x": stats.min - 1},
        {"x": stats.max + 5},
        {"x": 10**400},
    ]
    w = _window(numeric_baseline, rows, "x")
    assert w.values == 7  # 10.0, 11, nan, inf, below, above, huge int
    assert w.missing == 2
    assert w.absent == 1
    assert w.nonfinite == 3  # nan, inf, 10**400 saturates to inf
    assert w.type_mismatch == 3  # string, bool, list
    assert w.low == 1
    assert w.high == 1
    assert w.below_sum == pytest.approx(1.0)
    assert w.above_sum == pytest.approx(5.0)


def test_numeric_grid_counts_match_a_numpy_histogram(numeric_baseline: Baseline) -> None:
    stats: Any = numeric_baseline.features["x"].stats
    values = np.random.default_rng(1).normal(11, 3, 3000)
    w = _window(numeric_baseline, [{"x": float(v)} for v in values], "x")
    grid = np.array(stats.grid)
    # bucket i holds grid[i-1] < x <= grid[i]
    expected = np.bincount(np.searchsorted(grid, values, side="left"), minlength=len(grid) + 1)
    np.testing.assert_array_equal(w.grid_counts, expected)
    bins = np.bincount(stats.bucket_bins(), weights=w.grid_counts, minlength=10)
    edges = np.array(stats.bins.edges)
    np.testing.assert_array_equal(
        bins, np.bincount(np.searchsorted(edges, values, side="left"), minlength=10)
    )
    assert w.sum_dev == pytest.approx(float((values - stats.mean).sum()))
    assert w.sumsq_dev == pytest.approx(float(((values - stats.mean) ** 2).sum()))


def test_discrete_numeric_puts_values_never_seen_in_training_in_the_last_bin() -> None:
    baseline = _baseline([{"n": v % 4} for v in range(400)])
    w = _window(baseline, [{"n": 0}, {"n": 3}, {"n": 3}, {"n": 2.5}, {"n": 9}], "n")
    np.testing.assert_array_equal(w.bin_counts, [1, 0, 0, 2, 2])
    assert w.high == 1


def test_categorical_check_counts_unseen_and_type_mismatches() -> None:
    baseline = _baseline([{"c": v} for v in ["a", "b", "c"] * 100])
    w = _window(baseline, [{"c": "a"}, {"c": "a"}, {"c": "zzz"}, {"c": 1}, {"c": None}, {}], "c")
    assert (w.values, w.unseen, w.type_mismatch, w.missing, w.absent) == (3, 1, 1, 2, 1)
    vocabulary = list(baseline.features["c"].stats.vocabulary)  # type: ignore[union-attr]
    assert w.vocabulary_counts[vocabulary.index("a")] == 2
    assert w.vocabulary_counts[-1] == 1


def test_boolean_feature_treats_the_string_true_as_a_type_mismatch() -> None:
    baseline = _baseline([{"b": i % 3 == 0} for i in range(300)])
    w = _window(baseline, [{"b": True}, {"b": False}, {"b": "true"}, {"b": 1}], "b")
    assert (w.values, w.type_mismatch, w.unseen) == (2, 2, 0)


def test_categorical_from_csv_text_accepts_integer_spellings() -> None:
    baseline = _baseline([{"zip": str(94100 + i % 5)} for i in range(100)])
    baseline.features["zip"].stats.value_type = "text"  # type: ignore[union-attr]
    w = _window(baseline, [{"zip": 94101}, {"zip": "94102"}, {"zip": 1.5}], "zip")
    assert (w.values, w.unseen, w.type_mismatch) == (2, 0, 1)


def test_timestamp_check_bins_the_written_hour_and_counts_unparseable_values() -> None:
    train = [{"t": f"2026-03-0{1 + i % 7}T{i % 24:02d}:15:00Z"} for i in range(240)]
    baseline = _baseline(train)
    rows = [
        {"t": "2026-05-01T03:00:00Z"},
        {"t": "2026-05-01T03:30:00+05:00"},
        {"t": "2026-05-01T04:00:00"},
        {"t": "not a time"},
        {"t": 1767225600},
    ]
    w = _window(baseline, rows, "t")
    assert w.values == 3
    assert w.type_mismatch == 2
    assert w.bin_counts[3] == 2 and w.bin_counts[4] == 1
    assert w.offsets == {"+00:00": 1, "other": 2}


def test_list_check_flags_token_ids_beyond_the_training_vocabulary() -> None:
    rng = np.random.default_rng(3)
    baseline = _baseline([{"ids": rng.integers(0, 100, 8).tolist()} for _ in range(200)])
    rows = [
        {"ids": [1, 2, 3, 4, 5, 6, 7, 8]},
        {"ids": [1, 2, 3, 4, 5, 6, 7, 500]},
        {"ids": [1, 2, 3]},
        {"ids": 7},
        {"ids": [1, 2, 3, 4, 5, 6, 7, math.nan]},
    ]
    w = _window(baseline, rows, "ids")
    assert (w.values, w.high, w.shape_mismatch, w.type_mismatch, w.nonfinite) == (4, 1, 1, 1, 1)


def test_nested_list_shapes_never_seen_in_training_are_shape_mismatches() -> None:
    image = [[[0.5] * 4 for _ in range(4)] for _ in range(3)]
    baseline = _baseline([{"img": image} for _ in range(20)])
    other = [[[0.5] * 5 for _ in range(5)] for _ in range(3)]
    w = _window(baseline, [{"img": image}, {"img": other}, {"img": [[1.0, "x"]]}], "img")
    assert w.shape_mismatch == 2
    assert w.type_mismatch == 1


def test_unknown_features_are_counted_without_keeping_their_names() -> None:
    baseline = _baseline([{"a": float(i), "b": "x"} for i in range(50)])
    engine = Engine(baseline)
    rows = [{"a": 1.0, "b": "x", f"junk_{i}": i, f"more_{i}": None} for i in range(1000)]
    engine.check(rows)
    assert engine.window.unknown_features == 2000
    assert set(engine.window.features) == {"a", "b"}


def test_items_that_are_not_objects_are_rejected_and_counted() -> None:
    baseline = _baseline([{"a": float(i)} for i in range(50)])
    engine = Engine(baseline)
    engine.check([{"a": 1.0}, [1, 2], "row", None, 5])
    assert engine.window.rows == 1
    assert engine.window.rejected_rows == 4


def test_nested_serving_objects_are_flattened_like_training_records() -> None:
    baseline = _baseline([{"user": {"age": 20 + i % 50}} for i in range(200)])
    w = _window(baseline, [{"user": {"age": 30}}, {"user": {"age": 500}}, {"user": {}}], "user.age")
    assert (w.values, w.high, w.missing) == (2, 1, 1)


def test_prediction_features_are_left_out_when_only_inputs_are_checked() -> None:
    baseline = _baseline(
        [{"x": float(i), "score": i / 100} for i in range(100)], prediction={"score"}
    )
    assert set(Engine(baseline, roles=("input",)).checkers) == {"x"}
    assert set(Engine(baseline).checkers) == {"x", "score"}


def test_closing_a_window_starts_an_empty_one() -> None:
    baseline = _baseline([{"a": float(i)} for i in range(50)])
    engine = Engine(baseline)
    engine.check([{"a": 1.0}] * 10)
    finished = engine.close_window()
    assert finished.rows == 10
    assert engine.window.rows == 0
    assert engine.window.features["a"].values == 0


def _snapshot(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": engine.window.rows, "unknown": engine.window.unknown_features}
    for name, w in engine.window.features.items():
        out[name] = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in vars(w).items()
            if k not in ("lengths", "sum_dev", "sumsq_dev", "below_sum", "above_sum")
        }
    return out


_mixed_value = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.sampled_from(["a", "b", "new", "2026-01-01T10:00:00Z"]),
    st.booleans(),
    st.lists(st.integers(0, 300), max_size=6),
)
_mixed_row = st.dictionaries(st.sampled_from(["num", "cat", "ids", "ts", "extra"]), _mixed_value)


@pytest.fixture(scope="module")
def mixed_baseline() -> Baseline:
    rng = np.random.default_rng(5)
    return _baseline(
        [
            {
                "num": float(rng.normal()),
                "cat": str(rng.choice(["a", "b", "c"])),
                "ids": rng.integers(0, 200, int(rng.integers(1, 6))).tolist(),
                "ts": f"2026-01-0{1 + i % 9}T{i % 24:02d}:00:00Z",
            }
            for i in range(500)
        ]
    )


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_mixed_row, max_size=40), split=st.integers(0, 40))
def test_results_do_not_depend_on_how_rows_are_batched(
    mixed_baseline: Baseline, rows: list[dict[str, Any]], split: int
) -> None:
    whole = Engine(mixed_baseline)
    whole.check(rows)
    parts = Engine(mixed_baseline)
    parts.check(rows[:split])
    parts.check(rows[split:])
    one_by_one = Engine(mixed_baseline)
    for row in rows:
        one_by_one.check([row])
    assert _snapshot(whole) == _snapshot(parts) == _snapshot(one_by_one)
    # Float sums depend on the order of additions: equal to rounding only.
    for name, w in whole.window.features.items():
        for other in (parts, one_by_one):
            v = other.window.features[name]
            assert [v.sum_dev, v.sumsq_dev] == pytest.approx(
                [w.sum_dev, w.sumsq_dev], rel=1e-9, nan_ok=True
            )


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_mixed_row, max_size=40))
def test_every_present_value_lands_in_exactly_one_count(
    mixed_baseline: Baseline, rows: list[dict[str, Any]]
) -> None:
    engine = Engine(mixed_baseline)
    engine.check(rows)
    for name, w in engine.window.features.items():
        assert w.values + w.missing + w.type_mismatch == len(rows), name
    assert engine.window.unknown_features == sum("extra" in r for r in rows)


def test_flat_list_batch_path_agrees_with_the_per_row_path(mixed_baseline: Baseline) -> None:
    rng = np.random.default_rng(9)
    rows = [{"ids": rng.integers(-5, 260, int(rng.integers(0, 8))).tolist()} for _ in range(500)]
    rows += [{"ids": [1.5, math.inf]}, {"ids": [math.nan]}]
    fast = Engine(mixed_baseline)
    fast.check(rows)
    slow = Engine(mixed_baseline)
    slow.checkers["ids"].flat = False  # type: ignore[union-attr]
    slow.check(rows)
    a, b = fast.window.features["ids"], slow.window.features["ids"]
    assert (a.values, a.low, a.high, a.nonfinite, a.shape_mismatch) == (
        b.values,
        b.low,
        b.high,
        b.nonfinite,
        b.shape_mismatch,
    )
    assert a.high > 0 and a.low > 0 and a.nonfinite == 2


@pytest.fixture(scope="module")
def wide_baseline() -> Baseline:
    rng = np.random.default_rng(11)
    return _baseline(
        [
            {
                "a": float(rng.normal(50, 10)),
                "b": int(rng.integers(0, 1000)),
                "level": int(rng.integers(1, 4)),  # discrete: one bin per value
                "c": str(rng.choice(["x", "y"])),
            }
            for _ in range(2000)
        ]
    )


_clean_number = st.one_of(st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6))
_wide_row = st.fixed_dictionaries(
    {"a": _clean_number, "b": _clean_number, "level": st.integers(0, 5), "c": st.just("x")}
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(_wide_row, min_size=1, max_size=100),  # several of the block's chunks
    odd=st.sampled_from([None, "7", math.inf, True, 10**400, "absent"]),
    where=st.integers(0, 99),
)
def test_the_numeric_block_counts_exactly_what_the_per_feature_path_counts(
    wide_baseline: Baseline, rows: list[dict[str, Any]], odd: Any, where: int
) -> None:
    """The block applies to clean batches; one odd value sends the batch down the
    per-feature path. Both must give the same window."""
    batches = [rows, [dict(r) for r in rows]]
    row = batches[1][where % len(rows)]
    if odd == "absent":
        del row["a"]
    else:
        row["a"] = odd
    for batch in batches:
        block = Engine(wide_baseline)
        assert block.block is not None
        pauses: list[None] = []
        block.check(batch, functools.partial(pauses.append, None))  # as the worker paces
        if batch is rows:  # clean: the block pauses after each chunk it gathers
            assert len(pauses) >= -(-len(batch) // BLOCK_ROWS)
        per_feature = Engine(wide_baseline)
        per_feature.block = None
        per_feature.check(batch)
        assert _snapshot(block) == _snapshot(per_feature)
        for name, w in block.window.features.items():
            v = per_feature.window.features[name]
            assert [w.sum_dev, w.sumsq_dev, w.below_sum, w.above_sum] == pytest.approx(
                [v.sum_dev, v.sumsq_dev, v.below_sum, v.above_sum], rel=1e-9, nan_ok=True
            )


def test_keys_of_features_left_out_by_role_are_not_unknown_features() -> None:
    baseline = _baseline(
        [{"x": float(i), "y": float(i % 7), "score": i / 100} for i in range(100)],
        prediction={"score"},
    )
    inputs = Engine(baseline, roles=("input",))
    inputs.check([{"x": 1.0, "y": 2.0, "score": 0.5, "junk": 1}, {"x": 1.0, "y": 2.0}])
    assert inputs.window.unknown_features == 1
    outputs = Engine(baseline, roles=("prediction",))
    outputs.check([{"score": 0.5}, {"x": 1.0}, {"junk": 2}])
    assert outputs.window.unknown_features == 1


def test_mismatched_values_are_counted_by_type_and_windows_add_them() -> None:
    from sidecar.engine import MISMATCH_TYPES

    baseline = _baseline([{"x": float(i), "c": "a", "ids": [1, 2]} for i in range(50)])
    engine = Engine(baseline)
    engine.check([{"x": "1.5"}, {"x": "abc"}, {"x": True}, {"x": [1]}, {"c": 3}, {"ids": 7}])
    w = engine.close_window()
    engine.check([{"x": "2"}])
    w.add(engine.close_window())
    counts = {
        n: dict(zip(MISMATCH_TYPES, f.mismatch_types.tolist(), strict=True))
        for n, f in w.features.items()
    }
    assert counts["x"]["number_string"] == 2
    assert counts["x"]["string"] == counts["x"]["bool"] == counts["x"]["list"] == 1
    assert w.features["x"].type_mismatch == sum(counts["x"].values()) == 5
    assert counts["c"]["int"] == 1
    assert counts["ids"]["int"] == 1


@pytest.mark.skipif(engine_module._count_block is None, reason="sidecar/_block.c not built")
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_wide_row, min_size=1, max_size=300))
def test_the_compiled_block_counts_what_numpy_counts(
    wide_baseline: Baseline, rows: list[dict[str, Any]]
) -> None:
    """sidecar/_block.c against the numpy calls it replaces (kept where it is not
    built): the same counts and buckets, sums to rounding."""
    windows = []
    for count in (engine_module._count_block, None):
        engine = Engine(wide_baseline)
        assert engine.block is not None
        with mock.patch.object(engine_module, "_count_block", count):
            engine.check(rows)
        windows.append(engine)
    assert _snapshot(windows[0]) == _snapshot(windows[1])
    for name, w in windows[0].window.features.items():
        v = windows[1].window.features[name]
        assert [w.sum_dev, w.sumsq_dev, w.below_sum, w.above_sum] == pytest.approx(
            [v.sum_dev, v.sumsq_dev, v.below_sum, v.above_sum], rel=1e-9, nan_ok=True
        )


def test_the_compiled_block_refuses_arrays_of_the_wrong_shape(wide_baseline: Baseline) -> None:
    block = Engine(wide_baseline).block
    assert block is not None
    if engine_module._count_block is None:
        pytest.skip("sidecar/_block.c not built")
    k = len(block.names)
    x = np.zeros((4, k))
    counts = [np.zeros(len(c.grid) + 1, np.int64) for c in block.checkers]
    args = (block.grid, block.starts, block.min, block.max, block.mean)
    count = engine_module._count_block
    count(x, *args, np.empty((k, 4), np.int64), counts, np.zeros((6, k)))
    assert sum(c.sum() for c in counts) == 4 * k
    with pytest.raises(ValueError, match="x must be a 2-d float64"):
        count(x.astype(np.float32), *args, np.empty((k, 4), np.int64), counts, np.zeros((6, k)))
    with pytest.raises(ValueError, match="buckets must hold"):
        count(x, *args, np.empty((k, 3), np.int64), counts, np.zeros((6, k)))
    with pytest.raises(ValueError, match="each of counts must hold"):
        short = [*counts[:-1], np.zeros(2, np.int64)]
        count(x, *args, np.empty((k, 4), np.int64), short, np.zeros((6, k)))
    with pytest.raises(ValueError, match="grid is out of bounds"):
        count(x, block.grid[:3], *args[1:], np.empty((k, 4), np.int64), counts, np.zeros((6, k)))


@pytest.mark.skipif(engine_module._count_slots is None, reason="sidecar/_block.c not built")
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_compiled_slot_counts_are_add_slots_counts(data: st.DataObject) -> None:
    rows = [{"c": "abcde"[i % 5], "d": "xy"[i % 2], "x": float(i)} for i in range(300)]
    baseline = _baseline(rows)
    engines = [Engine(baseline), Engine(baseline)]
    sizes = engines[0]._category_sizes.tolist()
    n = data.draw(st.integers(0, 40))
    slots = np.array(
        [[data.draw(st.integers(0, size + 2)) for size in sizes] for _ in range(n)],
        dtype=np.int64,
    ).reshape(n, len(sizes))
    numbers = np.zeros((n, len(engines[0].numbers)))
    for engine, count in zip(engines, (engine_module._count_slots, None), strict=True):
        with mock.patch.object(engine_module, "_count_slots", count):
            engine.check_columns(numbers, slots)
    assert _snapshot(engines[0]) == _snapshot(engines[1])


@pytest.mark.skipif(engine_module._count_slots is None, reason="sidecar/_block.c not built")
def test_the_compiled_slot_count_refuses_a_slot_out_of_range_before_counting() -> None:
    rows = [{"c": "abcde"[i % 5], "d": "xy"[i % 2], "x": float(i)} for i in range(300)]
    engine = Engine(_baseline(rows))
    before = _snapshot(engine)
    sizes = engine._category_sizes.tolist()
    for bad in (-1, sizes[-1] + 3):
        slots = np.array([[0] * len(sizes), [*([0] * (len(sizes) - 1)), bad]], dtype=np.int64)
        with pytest.raises(ValueError, match="out of range"):
            engine._add_slots_compiled(slots, engine.window.features)
        assert _snapshot(engine) == before


@pytest.mark.skipif(engine_module._count_block is None, reason="sidecar/_block.c not built")
def test_the_compiled_block_checks_bounds_on_what_no_buffer_can_change() -> None:
    """The bounds are checked on a copy of `starts` once every buffer is held: a counts
    array that is `starts` itself, or (from Python 3.12) a buffer whose __buffer__
    rewrites `starts` or empties the list, cannot move them."""
    count = engine_module._count_block
    x = np.full((3, 1), 0.5)
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    alias = np.zeros(5, np.int64)
    alias[1] = 4  # feature 0's grid: all four values; its counts: alias (five slots)
    args = (x, grid, alias[:2], np.zeros(1), np.ones(1), np.zeros(1), np.empty((1, 3), np.int64))
    count(*args, [alias], np.zeros((6, 1)))
    assert alias.tolist() == [0, 7, 0, 0, 0]  # three values in bucket 1, written in place
    with pytest.raises(ValueError, match="out of bounds"):
        count(*args, [alias], np.zeros((6, 1)))  # starts now says 7 > the grid's 4
    if sys.version_info < (3, 12):
        return
    starts = np.array([0, 4], np.int64)
    counts: list[Any] = []

    class Rewrites:
        def __buffer__(self, flags: int) -> memoryview:
            starts[1] = 5_000_000
            counts.clear()
            return memoryview(np.zeros(5, np.int64))

    counts.append(Rewrites())
    with pytest.raises(ValueError, match="out of bounds"):
        count(x, grid, starts, *args[3:], counts, np.zeros((6, 1)))


def test_an_empty_batch_counts_nothing_on_either_path(wide_baseline: Baseline) -> None:
    """The worker checks an empty batch when the reader fails (its `empty()` arrays)."""
    snapshots = []
    for count in (engine_module._count_block, None):
        engine = Engine(wide_baseline)
        block = engine.block
        assert block is not None
        with mock.patch.object(engine_module, "_count_block", count):
            block.add(np.empty((0, len(block.names))), engine.window.features)
        snapshots.append(_snapshot(engine))
    assert snapshots[0] == snapshots[1] == _snapshot(Engine(wide_baseline))


@pytest.mark.skipif(engine_module._count_block is None, reason="sidecar/_block.c not built")
def test_the_compiled_block_lets_other_threads_run_while_it_counts(
    wide_baseline: Baseline,
) -> None:
    """The serving thread is not kept waiting on a batch's counts: it runs meanwhile."""
    engine = Engine(wide_baseline)
    block = engine.block
    assert block is not None
    x = np.random.default_rng(3).normal(50, 10, size=(1_500_000, len(block.names)))
    features = [engine.window.features[name] for name in block.names]
    counted: list[Any] = []
    assert other_thread_ran_during(lambda: counted.append(block._count_compiled(x, features)))
    buckets, _ = counted[0]
    assert int(features[0].grid_counts.sum()) == len(x)  # every row counted
    assert buckets.shape == (len(block.names), len(x))
