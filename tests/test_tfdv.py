from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import statistics_pb2 as sp

from sidecar.baseline import Baseline, BaselineError
from sidecar.categorical import CategoricalStats
from sidecar.cli import main
from sidecar.diff import diff_baselines
from sidecar.engine import Engine
from sidecar.numeric import NumericStats
from sidecar.profile import ProfileOptions, profile_columns
from sidecar.readers import ReaderError
from sidecar.render import format_report
from sidecar.report import build_report
from sidecar.tfdv import crc32c, masked_crc32c, profile_tfdv, tfrecords

ROWS = 1000
AMOUNT = np.random.default_rng(0).lognormal(3, 0.5, 950)


def _numeric(
    ds: Any, name: str, data: np.ndarray[Any, Any], missing: int, int_type: bool = False
) -> None:
    feature = ds.features.add()
    feature.path.step.extend(name.split("."))
    feature.type = sp.FeatureNameStatistics.INT if int_type else sp.FeatureNameStatistics.FLOAT
    s = feature.num_stats
    s.common_stats.num_non_missing = len(data)
    s.common_stats.num_missing = missing
    s.common_stats.min_num_values = s.common_stats.max_num_values = 1
    s.common_stats.tot_num_values = len(data)
    s.min, s.max, s.mean, s.std_dev = data.min(), data.max(), data.mean(), data.std()
    # What TFDV writes: 10 quantile buckets of equal count.
    bounds = np.quantile(data, np.linspace(0, 1, 11))
    histogram = s.histograms.add()
    histogram.type = sp.Histogram.QUANTILES
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        bucket = histogram.buckets.add()
        bucket.low_value, bucket.high_value, bucket.sample_count = low, high, len(data) / 10


def _strings(ds: Any, name: str, counts: dict[str, int], unique: int, total: int) -> None:
    feature = ds.features.add()
    feature.path.step.append(name)
    feature.type = sp.FeatureNameStatistics.STRING
    s = feature.string_stats
    s.common_stats.num_non_missing = total
    s.common_stats.num_missing = ROWS - total
    s.common_stats.max_num_values = 1
    s.unique = unique
    for value, n in counts.items():
        top = s.top_values.add()
        top.value, top.frequency = value, n
    for rank, (value, n) in enumerate(counts.items()):
        bucket = s.rank_histogram.buckets.add()
        bucket.low_rank = bucket.high_rank = rank
        bucket.label, bucket.sample_count = value, n


def statistics() -> Any:
    stats = sp.DatasetFeatureStatisticsList()
    ds = stats.datasets.add()
    ds.name, ds.num_examples = "All Examples", ROWS
    _numeric(ds, "amount", AMOUNT, missing=50)
    _numeric(ds, "user.age", np.arange(18, 68).repeat(20).astype(float), 0, int_type=True)
    # TFDV kept 3 of 40 countries.
    _strings(ds, "country", {"us": 500, "de": 200, "fr": 100}, unique=40, total=1000)
    _strings(ds, "plan", {"free": 700, "pro": 250, "team": 50}, unique=3, total=1000)
    tokens = ds.features.add()
    tokens.name = "tokens"
    tokens.type = sp.FeatureNameStatistics.INT
    tokens.num_stats.common_stats.num_non_missing = ROWS
    tokens.num_stats.common_stats.max_num_values = 8
    image = ds.features.add()
    image.name = "image"
    image.type = sp.FeatureNameStatistics.BYTES
    image.bytes_stats.common_stats.num_non_missing = ROWS
    return stats


def _tfrecord(*payloads: bytes) -> bytes:
    out = b""
    for payload in payloads:
        length = struct.pack("<Q", len(payload))
        out += length + struct.pack("<I", masked_crc32c(length))
        out += payload + struct.pack("<I", masked_crc32c(payload))
    return out


@pytest.fixture
def stats_pb(tmp_path: Path) -> Path:
    path = tmp_path / "FeatureStats.pb"
    path.write_bytes(statistics().SerializeToString())
    return path


def test_crc32c_matches_the_published_check_values() -> None:
    # RFC 3720 B.4 and the CRC catalogue's check value for CRC-32C.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_numeric_quantile_histograms_become_bins_and_the_quantile_grid(stats_pb: Path) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    stats = baseline.features["amount"].stats
    assert isinstance(stats, NumericStats) and stats.bins is not None
    bounds = np.quantile(AMOUNT, np.linspace(0, 1, 11))
    assert stats.bins.edges == pytest.approx(bounds[1:-1].tolist())
    assert stats.bins.fractions == pytest.approx([0.1] * 10)
    assert stats.grid == pytest.approx(bounds.tolist())
    assert stats.grid_cdf == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert (stats.count, stats.missing, stats.min, stats.max) == (
        950,
        50,
        AMOUNT.min(),
        AMOUNT.max(),
    )
    assert stats.mean == pytest.approx(AMOUNT.mean())
    assert stats.std == pytest.approx(AMOUNT.std())
    assert not stats.integer and not stats.sketched
    age = baseline.features["user.age"].stats
    assert isinstance(age, NumericStats) and age.integer
    assert baseline.rows == ROWS
    assert [s.format for s in baseline.sources] == ["tfdv"]


def test_top_values_become_the_vocabulary_and_what_was_dropped_is_recorded(
    stats_pb: Path,
) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    country = baseline.features["country"].stats
    assert isinstance(country, CategoricalStats)
    assert dict(country.vocabulary) == {"us": 500, "de": 200, "fr": 100}
    assert (country.vocabulary_complete, country.other_count) == (False, 200)
    assert country.top == ["us", "de", "fr"]
    assert country.fractions == pytest.approx([0.5, 0.2, 0.1, 0.2])
    plan = baseline.features["plan"].stats
    assert isinstance(plan, CategoricalStats)
    assert (plan.vocabulary_complete, plan.other_count) == (True, 0)


def test_list_and_bytes_features_are_skipped_with_the_reason(stats_pb: Path) -> None:
    imported = profile_tfdv(stats_pb)
    assert imported.skipped == {
        "tokens": "list-valued (up to 8 values per example): not imported",
        "image": "bytes_stats statistics: not imported",
    }
    assert set(imported.baseline.features) == {"amount", "user.age", "country", "plan"}


def test_an_imported_baseline_saves_without_a_sketch_and_loads_back(
    stats_pb: Path, tmp_path: Path
) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    baseline.save(tmp_path / "b.json")
    data = orjson.loads((tmp_path / "b.json").read_bytes())
    assert data["features"]["amount"]["sketch"] is None
    loaded = Baseline.load(tmp_path / "b.json")
    assert loaded.baseline_hash == baseline.baseline_hash
    assert loaded.features["amount"].stats.to_json() == baseline.features["amount"].stats.to_json()


def test_merging_an_imported_baseline_says_it_has_no_sketch(stats_pb: Path) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    other = profile_columns({"amount": AMOUNT})
    with pytest.raises(BaselineError, match="'amount': no quantile sketch .* TFDV"):
        other.merge(baseline)


def test_serving_checks_on_an_imported_baseline_report_unseen_categories_as_not_counted(
    stats_pb: Path,
) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    engine = Engine(baseline)
    rng = np.random.default_rng(1)
    rows = [
        {
            "amount": float(rng.lognormal(3, 0.5)),
            "user": {"age": int(rng.integers(18, 68))},
            "country": "zz",
            "plan": "enterprise" if i % 10 == 0 else "free",
        }
        for i in range(500)
    ]
    engine.check(rows)
    report = build_report(engine.close_window(), baseline)
    country, plan = report.features["country"], report.features["plan"]
    assert country.unseen_category is None
    assert country.notes and country.notes[0].startswith("vocabulary incomplete")
    assert plan.unseen_category == 50 and plan.notes == ()
    assert not report.features["amount"].drifted
    text = format_report(report)
    assert "unseen=?" in text
    assert "country: note: vocabulary incomplete" in text


def test_serving_drift_is_measured_on_the_imported_bins(stats_pb: Path) -> None:
    baseline = profile_tfdv(stats_pb).baseline
    engine = Engine(baseline)
    shifted = np.random.default_rng(2).lognormal(3.5, 0.5, 1000)
    engine.check([{"amount": float(v)} for v in shifted])
    amount = build_report(engine.close_window(), baseline).features["amount"]
    bounds = np.quantile(AMOUNT, np.linspace(0, 1, 11))[1:-1]
    counts = np.bincount(np.searchsorted(bounds, shifted, side="left"), minlength=10)
    assert amount.bin_counts == tuple(counts.tolist())
    assert amount.drifted


def test_tfrecord_files_are_read_record_by_record(stats_pb: Path, tmp_path: Path) -> None:
    path = tmp_path / "stats.tfrecord"
    path.write_bytes(_tfrecord(stats_pb.read_bytes()))
    baseline = profile_tfdv(path).baseline
    assert baseline.features.keys() == profile_tfdv(stats_pb).baseline.features.keys()
    assert list(tfrecords(_tfrecord(b"a", b"", b"bc"))) == [b"a", b"", b"bc"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        # Record 0 takes 12 + 1 + 4 bytes; record 1 starts at byte 17.
        (lambda b: b[:-1], "TFRecord 1 at byte 17: truncated"),
        (lambda b: b[:25] + b"\x00" + b[26:], "TFRecord 1 at byte 17: bad length CRC"),
        (lambda b: b[:-5] + b"?" + b[-4:], "TFRecord 1 at byte 17: bad data CRC"),
    ],
)
def test_damaged_tfrecords_raise_errors_naming_the_record(damage: Any, message: str) -> None:
    data = damage(_tfrecord(b"a", b"hello"))
    with pytest.raises(ReaderError, match=f"stats.tfrecord: {message}"):
        list(tfrecords(data, "stats.tfrecord"))


def test_text_format_statistics_are_read(tmp_path: Path) -> None:
    path = tmp_path / "stats.pbtxt"
    path.write_text(text_format.MessageToString(statistics()))
    assert "amount" in profile_tfdv(path).baseline.features


def test_a_file_that_is_not_statistics_raises_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "junk.pb"
    path.write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(ReaderError, match="junk.pb: not a TFDV DatasetFeatureStatisticsList"):
        profile_tfdv(path)


def test_sliced_statistics_default_to_all_examples_and_name_the_others(tmp_path: Path) -> None:
    stats = statistics()
    other = stats.datasets.add()
    other.CopyFrom(stats.datasets[0])
    other.name, other.num_examples = "country_us", 500
    stats.datasets[0].name = "train"
    path = tmp_path / "s.pb"
    path.write_bytes(stats.SerializeToString())
    with pytest.raises(ReaderError, match=r"2 datasets \('train', 'country_us'\); pick one"):
        profile_tfdv(path)
    assert profile_tfdv(path, dataset="country_us").baseline.rows == 500
    with pytest.raises(ReaderError, match="no dataset 'eval'"):
        profile_tfdv(path, dataset="eval")
    stats.datasets[0].name = "All Examples"
    path.write_bytes(stats.SerializeToString())
    assert profile_tfdv(path).baseline.rows == ROWS


def test_exclude_and_prediction_columns_apply_to_imported_features(stats_pb: Path) -> None:
    options = ProfileOptions(exclude=frozenset({"plan"}), prediction=frozenset({"amount"}))
    baseline = profile_tfdv(stats_pb, options).baseline
    assert "plan" not in baseline.features
    assert baseline.features["amount"].role == "prediction"


def test_diff_against_an_imported_baseline_notes_the_interpolated_bins(stats_pb: Path) -> None:
    profiled = profile_columns({"amount": AMOUNT})
    imported = profile_tfdv(stats_pb).baseline
    d = diff_baselines(profiled, imported).features["amount"]
    assert d.notes == ("new baseline has no sketch: its mass in the old bins is interpolated",)
    assert d.psi is not None and d.psi < 0.01


def test_diff_does_not_compare_per_value_bins_with_an_imported_baseline(
    stats_pb: Path,
) -> None:
    profiled = profile_columns({"user.age": np.arange(18, 68).repeat(20) % 5})
    d = diff_baselines(profiled, profile_tfdv(stats_pb).baseline).features["user.age"]
    assert d.psi is None and not d.changed
    assert d.notes == ("no value counts in the new baseline: per-value bins not compared",)


def test_cli_profile_from_tfdv_writes_a_baseline_and_warns_about_skipped_features(
    stats_pb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baseline.json"
    assert main(["profile", "--from-tfdv", str(stats_pb), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "feature 'tokens' skipped: list-valued" in captured.err
    assert "country" in captured.out and "(capped)" in captured.out
    assert set(Baseline.load(out).features) == {"amount", "user.age", "country", "plan"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.csv"], "--from-tfdv takes no training files"),
        (["--engine", "dask"], "--from-tfdv takes no training files and no --engine"),
        (["--categorical", "plan"], "do not apply to --from-tfdv"),
    ],
)
def test_cli_rejects_options_that_do_not_apply_to_tfdv(
    stats_pb: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    args = ["profile", "--from-tfdv", str(stats_pb), "-o", str(tmp_path / "b.json"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
