"""A versioned baseline: per-feature training statistics, saved as diffable JSON."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__
from . import _fields as f
from ._fields import BaselineError
from .categorical import CategoricalStats
from .numeric import NumericStats
from .sequences import ListStats
from .timestamps import TimestampStats

if TYPE_CHECKING:
    from .profile import ProfileOptions

SCHEMA_VERSION = 1
KINDS = ("numeric", "categorical", "list", "timestamp")
ROLES = ("input", "prediction")

Stats = NumericStats | CategoricalStats | ListStats | TimestampStats
_STATS_TYPES: dict[str, Any] = {
    "numeric": NumericStats,
    "categorical": CategoricalStats,
    "list": ListStats,
    "timestamp": TimestampStats,
}

__all__ = ["Baseline", "BaselineError", "Feature", "ProfileSettings", "Source"]


@dataclass(frozen=True)
class ProfileSettings:
    """How statistics are binned; two baselines merge only when these agree."""

    bins: int = 10
    top_k: int = 20
    vocabulary_cap: int = 10_000
    discrete_max: int = 20
    sketch_k: int = 400

    def __post_init__(self) -> None:
        limits = {"bins": 2, "top_k": 1, "vocabulary_cap": 1, "discrete_max": 1, "sketch_k": 8}
        for name, low in limits.items():
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def to_json(self) -> dict[str, int]:
        return {
            "bins": self.bins,
            "top_k": self.top_k,
            "vocabulary_cap": self.vocabulary_cap,
            "discrete_max": self.discrete_max,
            "sketch_k": self.sketch_k,
        }


@dataclass
class Feature:
    """One profiled column: its kind, its role and its statistics."""

    name: str
    kind: str
    stats: Stats
    role: str = "input"
    # What the training values were, e.g. {"number": 990, "string": 10}.
    types: dict[str, int] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.stats.missing

    @property
    def count(self) -> int:
        return self.stats.count

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "types": self.types, **self.stats.to_json()}


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "rows": self.rows}


@dataclass
class Baseline:
    """Training-time statistics per feature.

    Build one with `Baseline.from_records`, `from_columns`, `from_dataframe`,
    `from_dask` or `from_files`; `save`/`load` the JSON file; `merge` baselines of partitions.
    """

    features: dict[str, Feature]
    rows: int
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    sources: list[Source] = field(default_factory=list)
    created_at: str = ""

    # -- building ---------------------------------------------------------------

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], options: ProfileOptions | None = None
    ) -> Baseline:
        from .profile import profile_records

        return profile_records(records, options)

    @classmethod
    def from_columns(
        cls, columns: Mapping[str, Sequence[Any]], options: ProfileOptions | None = None
    ) -> Baseline:
        from .profile import profile_columns

        return profile_columns(columns, options)

    @classmethod
    def from_dataframe(cls, df: Any, options: ProfileOptions | None = None) -> Baseline:
        from .profile import profile_dataframe

        return profile_dataframe(df, options)

    @classmethod
    def from_dask(cls, ddf: Any, options: ProfileOptions | None = None) -> Baseline:
        """Profile a Dask DataFrame's partitions in parallel and merge them ([dask] extra)."""
        from .dask_profile import profile_dask

        return profile_dask(ddf, options)

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike[str]], options: ProfileOptions | None = None
    ) -> Baseline:
        from .profile import profile_files

        return profile_files(paths, options)

    # -- identity ---------------------------------------------------------------

    def statistics_json(self) -> dict[str, Any]:
        """The part of the file the content hash covers (not times or paths)."""
        return {
            "rows": self.rows,
            "settings": self.settings.to_json(),
            "features": {name: feat.to_json() for name, feat in self.features.items()},
        }

    @property
    def baseline_hash(self) -> str:
        return content_hash(self.statistics_json())

    def to_json(self) -> dict[str, Any]:
        stats = self.statistics_json()
        return {
            "schema_version": SCHEMA_VERSION,
            "baseline_hash": content_hash(stats),
            "created_at": self.created_at,
            "tool": f"skew-sidecar {__version__}",
            "sources": [s.to_json() for s in self.sources],
            **stats,
        }

    # -- files ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically, so a reader never sees half a baseline."""
        data = orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        name = os.fspath(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise BaselineError(f"{name}: cannot read baseline: {exc.strerror}") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BaselineError(f"{name}: not valid JSON: {exc}") from None
        return cls.from_json(data, name)

    @classmethod
    def from_json(cls, data: Any, where: str = "baseline") -> Baseline:
        if not isinstance(data, Mapping):
            raise BaselineError(f"{where}: expected a JSON object at the top level")
        version = f.field(data, "schema_version", where)
        if version != SCHEMA_VERSION:
            raise BaselineError(
                f"{where}.schema_version: this skew-sidecar reads version {SCHEMA_VERSION}, "
                f"the file has {version!r}; rebuild it with `skew-sidecar profile`"
            )
        settings_data = f.obj(data, "settings", where)
        try:
            settings = ProfileSettings(**{k: settings_data[k] for k in settings_data})
        except (TypeError, ValueError) as exc:
            raise BaselineError(f"{where}.settings: {exc}") from None
        features = {
            name: _feature_from_json(name, fd, f"{where}: features.{name}")
            for name, fd in f.obj(data, "features", where).items()
        }
        stats = {
            "rows": f.count(data, "rows", where),
            "settings": settings_data,
            "features": data["features"],
        }
        stored = f.string(data, "baseline_hash", where)
        computed = content_hash(stats)
        if stored != computed:
            raise BaselineError(
                f"{where}.baseline_hash: stored {stored} but the statistics hash to {computed}; "
                "the file was edited or damaged after profiling"
            )
        sources = []
        for i, s in enumerate(data.get("sources") or []):
            sw = f"{where}.sources[{i}]"
            if not isinstance(s, Mapping):
                raise BaselineError(f"{sw}: expected an object")
            sources.append(
                Source(f.string(s, "path", sw), f.string(s, "format", sw), f.count(s, "rows", sw))
            )
        created = data.get("created_at")
        return cls(
            features=features,
            rows=stats["rows"],
            settings=settings,
            sources=sources,
            created_at=created if isinstance(created, str) else "",
        )

    # -- merging ----------------------------------------------------------------

    def merge(self, *others: Baseline) -> Baseline:
        """A baseline of the union of the partitions these baselines were built on."""
        result = Baseline.from_json(self.to_json())
        for other in others:
            if other.settings != result.settings:
                raise BaselineError(
                    f"cannot merge baselines built with different settings: "
                    f"{result.settings.to_json()} vs {other.settings.to_json()}"
                )
            for name in result.features.keys() - other.features.keys():
                result.features[name].stats.missing += other.rows
            for name, feat in other.features.items():
                incoming = _copy_feature(feat)
                if name not in result.features:
                    incoming.stats.missing += result.rows
                    result.features[name] = incoming
                else:
                    _merge_feature(result.features[name], incoming)
            result.rows += other.rows
            result.sources.extend(other.sources)
        for feat in result.features.values():
            derive(feat, result.settings)
        result.created_at = now_iso()
        return result


def derive(feat: Feature, settings: ProfileSettings) -> None:
    stats = feat.stats
    if isinstance(stats, (NumericStats, ListStats)):
        stats.derive(settings.bins)
    else:
        stats.derive()


def _merge_feature(into: Feature, other: Feature) -> None:
    if into.kind != other.kind and other.count and into.count:
        raise BaselineError(
            f"feature {into.name!r} is {into.kind} in one baseline and {other.kind} in "
            f"another; rebuild both with --{into.kind} {into.name} (or --{other.kind})"
        )
    for key, n in other.types.items():
        into.types[key] = into.types.get(key, 0) + n
    if into.kind != other.kind:
        # One side has no values: the other side's kind wins, missing counts add up.
        if not other.count:
            into.stats.missing += other.stats.missing
            into.stats.type_mismatch += other.stats.type_mismatch
        else:
            into.kind, into.stats = other.kind, _absorb_missing(other, into.stats.missing)
        return
    try:
        into.stats.merge(other.stats)  # type: ignore[arg-type]
    except BaselineError as exc:
        raise BaselineError(f"feature {into.name!r}: {exc}") from None


def _absorb_missing(feat: Feature, missing: int) -> Stats:
    feat.stats.missing += missing
    return feat.stats


def _copy_feature(feat: Feature) -> Feature:
    data = feat.to_json()
    return _feature_from_json(feat.name, data, f"feature {feat.name!r}")


def _feature_from_json(name: str, data: Any, where: str) -> Feature:
    if not isinstance(data, Mapping):
        raise BaselineError(f"{where}: expected an object")
    kind = f.string(data, "kind", where, KINDS)
    role = f.string(data, "role", where, ROLES)
    types = f.counts_map(data, "types", where)
    stats = _STATS_TYPES[kind].from_json(data, where)
    return Feature(name=name, kind=kind, stats=stats, role=role, types=types)


def content_hash(statistics: Mapping[str, Any]) -> str:
    """Hash of the statistics the checks use.

    Sketch blobs are merge state, not statistics, and KLL compaction is random,
    so they are left out: rebuilding a small baseline gives the same hash.
    """
    features = {
        name: _without_sketches(data) for name, data in statistics.get("features", {}).items()
    }
    canonical = orjson.dumps({**statistics, "features": features}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def _without_sketches(feature: Any) -> Any:
    """A feature's JSON without its sketch blobs (numeric, and a list's lengths)."""
    if not isinstance(feature, Mapping):
        return feature
    out = {k: v for k, v in feature.items() if k != "sketch"}
    length = out.get("length")
    if isinstance(length, Mapping):
        out["length"] = {k: v for k, v in length.items() if k != "sketch"}
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
