"""TFDV statistics (what TFX's StatisticsGen writes) -> a baseline, without TensorFlow.

A `DatasetFeatureStatisticsList` is read from a binary proto (`FeatureStats.pb`), a
TFRecord file of them (`stats_tfrecord`, framing and CRCs checked here) or text
format (`.pbtxt`). Numeric quantile histograms become bins and the quantile grid;
string top values and rank histograms become the vocabulary; counts, min, max, mean
and std carry over. What TFDV did not keep is stated in the baseline, not guessed:
numeric features have no KLL sketch (`"sketch": null`, so the baseline cannot be
merged) and a vocabulary that lost values is `vocabulary_complete: false`, so
serving checks report unseen categories as not counted.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .baseline import Baseline, Feature, Source, now_iso
from .categorical import CategoricalStats
from .numeric import NumericBins, NumericStats
from .profile import ProfileOptions
from .readers import ReaderError

__all__ = ["TfdvImport", "masked_crc32c", "profile_tfdv", "read_statistics", "tfrecords"]

# The slice TFDV computes over the whole data set when slicing is on.
DEFAULT_SLICE = "All Examples"


@dataclass(frozen=True)
class TfdvImport:
    baseline: Baseline
    # Features left out, and why (e.g. "list-valued: up to 8 values per example").
    skipped: dict[str, str] = field(default_factory=dict)


def profile_tfdv(
    path: str | os.PathLike[str],
    options: ProfileOptions | None = None,
    dataset: str | None = None,
) -> TfdvImport:
    """A baseline from the TFDV statistics in `path` (one dataset of the list)."""
    options = options or ProfileOptions()
    name = os.fspath(path)
    statistics = _pick_dataset(read_statistics(path), name, dataset)
    rows = int(statistics.num_examples)
    features: dict[str, Feature] = {}
    skipped: dict[str, str] = {}
    buckets: Counter[int] = Counter()
    for proto in statistics.features:
        feature_name = ".".join(proto.path.step) if proto.path.step else proto.name
        if feature_name in options.exclude:
            continue
        where = f"{name}: feature {feature_name!r}"
        kind = proto.WhichOneof("stats")
        common = getattr(proto, kind).common_stats if kind else None
        if kind not in ("num_stats", "string_stats") or common is None:
            skipped[feature_name] = f"{kind or 'no'} statistics: not imported"
            continue
        if common.max_num_values > 1:
            skipped[feature_name] = (
                f"list-valued (up to {common.max_num_values} values per example): not imported"
            )
            continue
        role = "prediction" if feature_name in options.prediction else "input"
        values, missing = _counts(common)
        if kind == "num_stats":
            stats, n_buckets = _numeric(proto, values, missing, options, where)
            buckets[n_buckets] += 1
            feature = Feature(feature_name, "numeric", stats, role, {"number": values})
        else:
            # Bins come from the vocabulary; numeric bins are set from the histogram
            # above (derive would re-read a sketch TFDV does not have).
            categorical = _categorical(proto, values, missing, options, where)
            categorical.derive()
            type_key = "string" if categorical.value_type == "string" else "number"
            feature = Feature(feature_name, "categorical", categorical, role, {type_key: values})
        features[feature_name] = feature
    settings = options.settings
    if buckets:
        settings = dataclasses.replace(settings, bins=max(2, buckets.most_common(1)[0][0]))
    baseline = Baseline(
        features=features,
        rows=rows,
        settings=settings,
        sources=[Source(name, "tfdv", rows)],
        created_at=now_iso(),
    )
    return TfdvImport(baseline, skipped)


# -- reading -----------------------------------------------------------------------------


def read_statistics(path: str | os.PathLike[str]) -> Any:
    """A `DatasetFeatureStatisticsList` from a binary proto, TFRecord or text file.

    A TFRecord file may hold several lists (one per record); their datasets are joined.
    """
    statistics_pb2, text_format, decode_error = _import_proto()
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ReaderError(f"{name}: cannot read TFDV statistics: {exc.strerror}") from None
    result = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        if name.endswith((".pbtxt", ".txt")):
            text_format.Parse(raw.decode("utf-8"), result)
        elif _is_tfrecord(raw):
            for record in tfrecords(raw, name):
                result.MergeFromString(record)
        else:
            result.ParseFromString(raw)
    except (decode_error, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ReaderError(
            f"{name}: not a TFDV DatasetFeatureStatisticsList "
            f"(binary proto, TFRecord or .pbtxt): {exc}"
        ) from None
    if not result.datasets:
        raise ReaderError(f"{name}: no datasets in the TFDV statistics")
    return result


def tfrecords(data: bytes, name: str = "input") -> Iterator[bytes]:
    """The records of a TFRecord file, checking both CRCs of each.

    Framing: uint64 length, uint32 masked CRC-32C of the length bytes, the data,
    uint32 masked CRC-32C of the data (all little-endian).
    """
    offset = record = 0
    while offset < len(data):
        header = data[offset : offset + 12]
        if len(header) < 12:
            raise ReaderError(f"{name}: TFRecord {record} at byte {offset}: truncated header")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:])
        if masked_crc32c(header[:8]) != length_crc:
            raise ReaderError(f"{name}: TFRecord {record} at byte {offset}: bad length CRC")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            raise ReaderError(
                f"{name}: TFRecord {record} at byte {offset}: truncated "
                f"({length} data bytes announced, file ends first)"
            )
        payload = data[start:end]
        (data_crc,) = struct.unpack("<I", data[end : end + 4])
        if masked_crc32c(payload) != data_crc:
            raise ReaderError(f"{name}: TFRecord {record} at byte {offset}: bad data CRC")
        yield payload
        offset, record = end + 4, record + 1


def _is_tfrecord(data: bytes) -> bool:
    if len(data) < 16:
        return False
    (length_crc,) = struct.unpack("<I", data[8:12])
    return bool(masked_crc32c(data[:8]) == length_crc)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), table-driven in pure Python: fine for statistics files."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _import_proto() -> tuple[Any, Any, Any]:
    try:
        from google.protobuf import text_format
        from google.protobuf.message import DecodeError
        from tensorflow_metadata.proto.v0 import statistics_pb2
    except ImportError:
        raise ReaderError(
            "reading TFDV statistics needs tensorflow-metadata: pip install 'skew-sidecar[tfdv]'"
        ) from None
    return statistics_pb2, text_format, DecodeError


def _pick_dataset(statistics: Any, name: str, wanted: str | None) -> Any:
    datasets = list(statistics.datasets)
    names = [d.name for d in datasets]
    if wanted is not None:
        if wanted not in names:
            raise ReaderError(f"{name}: no dataset {wanted!r}; it has {_listed(names)}")
        return datasets[names.index(wanted)]
    if len(datasets) == 1:
        return datasets[0]
    if DEFAULT_SLICE in names:
        return datasets[names.index(DEFAULT_SLICE)]
    raise ReaderError(f"{name}: {len(datasets)} datasets ({_listed(names)}); pick one by name")


def _listed(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


# -- conversion --------------------------------------------------------------------------


def _counts(common: Any) -> tuple[int, int]:
    """Values present and rows missing; an example with an empty list is missing here."""
    present = int(common.num_non_missing)
    values = int(common.tot_num_values) if common.tot_num_values else present
    values = min(values, present)
    return values, int(common.num_missing) + present - values


def _numeric(
    proto: Any, values: int, missing: int, options: ProfileOptions, where: str
) -> tuple[NumericStats, int]:
    s = proto.num_stats
    histogram = _histogram(s.histograms)
    nan = int(histogram.num_nan) if histogram is not None else 0
    count = max(0, values - nan)
    settings = options.settings
    stats = NumericStats(
        sketch_k=settings.sketch_k,
        discrete_max=settings.discrete_max,
        count=count,
        missing=missing,
        nan=nan,
        integer=proto.type == proto.INT,
        value_counts=None,  # TFDV keeps no exact value counts
    )
    stats._exact = None
    if not count:
        return stats, 0
    low, high = float(s.min), float(s.max)
    if not (np.isfinite([low, high, s.mean, s.std_dev]).all() and low <= high):
        raise ReaderError(f"{where}: min, max, mean and std_dev must be finite, min <= max")
    stats.min, stats.max, stats.mean = low, high, float(s.mean)
    stats.m2 = float(s.std_dev) ** 2 * count
    buckets = list(histogram.buckets) if histogram is not None else []
    stats.bins, stats.grid, stats.grid_cdf = _bins(buckets, low, high, where)
    return stats, len(buckets)


def _histogram(histograms: Any) -> Any:
    """The quantiles histogram, else the equal-width one, else None."""
    by_type = {h.type: h for h in histograms if h.buckets}
    for wanted in (1, 0):  # QUANTILES, STANDARD
        if wanted in by_type:
            return by_type[wanted]
    return next(iter(histograms), None)


def _bins(
    buckets: list[Any], low: float, high: float, where: str
) -> tuple[NumericBins, list[float], list[float]]:
    """Bins (x <= edge[0], ..., > edge[-1]) and the CDF grid from histogram buckets.

    Each bucket's upper bound becomes an edge holding the share of values up to it;
    bounds at or above the maximum are dropped (the last bin ends at the maximum).
    """
    counts = np.array([b.sample_count for b in buckets], dtype=np.float64)
    if not len(buckets) or not np.isfinite(counts).all() or counts.sum() <= 0:
        grid = [high] if low == high else [low, high]
        return NumericBins([1.0], edges=[]), grid, [0.0] * (len(grid) - 1) + [1.0]
    if (counts < 0).any():
        raise ReaderError(f"{where}: histogram bucket with a negative sample_count")
    cumulative = np.cumsum(counts) / counts.sum()
    cdf_at: dict[float, float] = {}
    for bucket, share in zip(buckets, cumulative.tolist(), strict=True):
        bound = float(bucket.high_value)
        if np.isfinite(bound) and low <= bound < high:
            cdf_at[bound] = max(share, cdf_at.get(bound, 0.0))
    edges = sorted(cdf_at)
    below = [cdf_at[e] for e in edges]
    fractions = np.clip(np.diff([0.0, *below, 1.0]), 0.0, None)
    fractions = fractions / fractions.sum()
    cdf_at.setdefault(low, 0.0)  # TFDV keeps no share at the minimum itself
    cdf_at[high] = 1.0
    grid = sorted(cdf_at)
    grid_cdf = np.maximum.accumulate([cdf_at[g] for g in grid])
    return (
        NumericBins([round(v, 12) for v in fractions.tolist()], edges=edges),
        grid,
        [round(float(c), 12) for c in grid_cdf],
    )


def _categorical(
    proto: Any, values: int, missing: int, options: ProfileOptions, where: str
) -> CategoricalStats:
    s = proto.string_stats
    vocabulary: Counter[str] = Counter()
    for top in s.top_values:
        vocabulary[top.value] = max(vocabulary[top.value], round(top.frequency))
    for bucket in s.rank_histogram.buckets:
        vocabulary[bucket.label] = max(vocabulary[bucket.label], round(bucket.sample_count))
    if any(n < 0 for n in vocabulary.values()):
        raise ReaderError(f"{where}: a top value with a negative frequency")
    kept = vocabulary.total()
    if kept > values:
        raise ReaderError(
            f"{where}: top values add up to {kept}, more than the feature's {values} values"
        )
    other = values - kept
    settings = options.settings
    return CategoricalStats(
        vocabulary_cap=max(settings.vocabulary_cap, len(vocabulary)),
        top_k=settings.top_k,
        value_type="number" if proto.type in (proto.INT, proto.FLOAT) else "string",
        count=values,
        missing=missing,
        vocabulary=vocabulary,
        # Complete only when every value is accounted for by a kept category.
        vocabulary_complete=other == 0,
        other_count=other,
    )
