"""Model-serving payloads -> rows (dicts of feature values), for requests and responses.

Reads parsed JSON bodies in the common formats: TF Serving and KServe v1
(`instances`, columnar `inputs`, `predictions`), KServe v2 / Open Inference Protocol
(`inputs`/`outputs` tensors), MLflow (`dataframe_split`, `dataframe_records`) and
plain records. Nested dicts are left as they are: the engine flattens them. This runs
for every sampled request, so it is plain Python over lists, bounded by the size of
the body and MAX_ROWS, never recursive, and raises on no JSON value: what cannot
become a row is counted in `Extracted.rejected`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "FORMATS",
    "MAX_ROWS",
    "Extracted",
    "extract_request",
    "extract_response",
    "rows_from_body",
]

MAX_ROWS = 100_000  # per body; the rest is truncated and counted as rejected
MAX_RANK = 64  # numpy's limit; also bounds the reshape work to rank x elements

# "unknown" is never returned here (no known format is None): it is for callers' labels.
FORMATS = (
    "records",
    "instances",
    "inputs_columnar",
    "v2",
    "dataframe_split",
    "predictions",
    "v2_outputs",
    "seldon",
    "unknown",
)

_SPLIT_KEYS = frozenset({"columns", "data", "index"})
_SELDON_KEYS = frozenset({"data", "jsonData", "meta", "status"})
# An object wider than this is neither a pandas split nor a Seldon message.
_WIDEST_ENVELOPE = max(len(_SPLIT_KEYS), len(_SELDON_KEYS))


class Extracted(NamedTuple):
    """The rows of one body, the format they were read as, and what was left out.

    A named tuple: built for every sampled body, several times cheaper than a frozen
    dataclass."""

    rows: list[dict[str, Any]]  # may be the body's own dicts: do not mutate
    format: str  # one of FORMATS
    rejected: int = 0  # items that could not become rows, tensors that did not fit


def extract_request(body: Any, *, names: Sequence[str] | None = None) -> Extracted | None:
    """Feature rows of a request body, or None when it is in no known format.

    Tried in order: `instances`, columnar `inputs` (an object), v2 `inputs` (a list),
    `dataframe_split` / `dataframe_records` / a top-level pandas split, then records
    (an object is one row, a list of objects many). A key whose value has the wrong
    type for its format does not count: such an object is one record.

    Where a row is expected but a list is found (positional features), the list is
    rejected, unless `names` is given and the list has exactly that many values: then
    they are named in order. A length mismatch is rejected rather than misaligned.
    """
    if type(body) is list:
        return _records(body, "records", names)
    if type(body) is not dict:
        return None
    instances = body.get("instances")
    if type(instances) is list:
        return _records(instances, "instances", names)
    inputs = body.get("inputs")
    if type(inputs) is dict:
        return _columnar(inputs, "inputs_columnar")
    if type(inputs) is list:
        if any(_is_tensor(item) for item in inputs):
            return _tensors(inputs, "v2")
        if any(type(item) is dict for item in inputs):
            return _records(inputs, "records", names)  # MLflow `inputs` as records
        # TF Serving's single unnamed input (`{"inputs": [[1, 2], ...]}`): positional rows.
        return _records(inputs, "inputs_columnar", names)
    split = body.get("dataframe_split")
    if type(split) is dict and (extracted := _split(split)) is not None:
        return extracted
    records = body.get("dataframe_records")
    if type(records) is list:
        return _records(records, "records", names)
    # Only an object with nothing but split keys, so a record with a "data" feature stays one.
    if "columns" in body and "data" in body and body.keys() <= _SPLIT_KEYS:
        if (extracted := _split(body)) is not None:
            return extracted
    if (extracted := _seldon(body, names, None)) is not None:
        return extracted
    return Extracted([body], "records")


def is_plain_record(body: Any) -> bool:
    """Whether `extract_request` reads `body` as exactly one record, `[body]`: an object
    wider than any envelope (pandas split, Seldon) with none of the keys that make it
    another format. The worker's fast path for the usual body."""
    return (
        type(body) is dict
        and len(body) > _WIDEST_ENVELOPE
        and "instances" not in body
        and "inputs" not in body
        and "dataframe_split" not in body
        and "dataframe_records" not in body
    )


def is_plain_prediction(body: Any) -> bool:
    """Whether `extract_response` reads `body` as `{"predictions": [x]}` with x not an
    object: one row, `{output_name: x}`. The worker's fast path for the usual response."""
    if type(body) is not dict:
        return False
    predictions = body.get("predictions")
    return type(predictions) is list and len(predictions) == 1 and type(predictions[0]) is not dict


def extract_response(body: Any, *, output_name: str = "prediction") -> Extracted | None:
    """Output rows of a response body, or None when it has no usable output.

    `{"predictions": [...]}` and TF Serving's columnar `{"outputs": ...}` give
    "predictions"; v2 `{"outputs": [tensor, ...]}` gives "v2_outputs"; a list, an
    object or a scalar give "records". Unnamed outputs (scalars, lists) become
    `{output_name: value}`; objects are rows as they are.
    """
    if type(body) is dict:
        predictions = body.get("predictions")
        if type(predictions) is list:
            return _outputs(predictions, output_name, "predictions")
        outputs = body.get("outputs")
        if type(outputs) is list:
            if any(type(tensor) is dict for tensor in outputs):
                return _tensors(outputs, "v2_outputs")
            return _outputs(outputs, output_name, "predictions")
        if type(outputs) is dict:
            return _columnar(outputs, "predictions")
        if (extracted := _seldon(body, None, output_name)) is not None:
            return extracted
        return Extracted([body], "records")
    if type(body) is list:
        return _outputs(body, output_name, "records")
    if body is None:
        return None
    return Extracted([{output_name: body}], "records")


def rows_from_body(body: Any) -> list[Any] | None:
    """Request rows of a parsed body followed by one None per rejected item, or None
    when the body is in no known format.

    The placeholders let a caller that hands the whole list to `Engine.check` (the
    offline check) see rejected items counted as the engine's rejected rows.
    """
    extracted = extract_request(body)
    if extracted is None:
        return None
    if not extracted.rejected:
        return extracted.rows
    return [*extracted.rows, *[None] * extracted.rejected]


def _records(items: list[Any], format: str, names: Sequence[str] | None) -> Extracted:
    kinds = set(map(type, items))
    if kinds <= {dict}:
        rows = items[:MAX_ROWS]
    elif names is None or list not in kinds:
        rows = [item for item in items if type(item) is dict]
    else:
        width = len(names)
        rows = [
            item if type(item) is dict else dict(zip(names, item, strict=True))
            for item in items
            if type(item) is dict or (type(item) is list and len(item) == width)
        ]
    rejected = len(items) - len(rows)
    if len(rows) > MAX_ROWS:
        del rows[MAX_ROWS:]
    return Extracted(rows, format, rejected)


def _seldon(
    body: dict[str, Any], names: Sequence[str] | None, output: str | None
) -> Extracted | None:
    """Seldon Core v1: `{"data": {"names": [...], "ndarray": [[...], ...]}}`, or a
    `tensor` with `shape` and flat `values`; `{"jsonData": {...}}` is one record.
    Only an object with nothing but Seldon keys, so a record with a "data" feature stays one."""
    if not body.keys() <= _SELDON_KEYS:
        return None
    json_data = body.get("jsonData")
    if type(json_data) is dict:
        return Extracted([json_data], "seldon")
    data = body.get("data")
    if type(data) is not dict:
        return None
    rows = data.get("ndarray")
    tensor = data.get("tensor")
    if type(rows) is not list and type(tensor) is dict:
        rows = _seldon_tensor(tensor)
    if type(rows) is not list:
        return None
    given = data.get("names")
    if type(given) is list and given and all(type(n) is str for n in given):
        names = given
    if output is not None and (names is None or not all(type(r) is list for r in rows)):
        return _outputs(rows, names[0] if names and len(names) == 1 else output, "seldon")
    return _records(rows, "seldon", names)


def _is_tensor(item: Any) -> bool:
    return type(item) is dict and "name" in item and "data" in item


def _seldon_tensor(tensor: dict[str, Any]) -> list[Any] | None:
    """A Seldon `tensor` is a v2 tensor under other key names."""
    split = _tensor_rows({"name": "", "shape": tensor.get("shape"), "data": tensor.get("values")})
    return None if split is None else split[2]


def _outputs(items: list[Any], name: str, format: str) -> Extracted:
    kept = items[:MAX_ROWS]
    kinds = set(map(type, kept))
    if kinds <= {dict}:
        rows = kept
    elif dict not in kinds:
        rows = [{name: value} for value in kept]
    else:
        rows = [value if type(value) is dict else {name: value} for value in kept]
    return Extracted(rows, format, len(items) - len(kept))


def _columnar(columns: dict[str, Any], format: str) -> Extracted:
    batched = [(name, value) for name, value in columns.items() if type(value) is list]
    if not batched:
        return Extracted([dict(columns)] if columns else [], format)
    # A scalar beside batched columns belongs to no row in particular.
    rejected = len(columns) - len(batched)
    return _zip(batched, max(len(column) for _, column in batched), format, rejected)


def _tensors(tensors: list[Any], format: str) -> Extracted:
    columns: list[tuple[str, list[Any]]] = []
    rejected = 0
    n = 0
    for tensor in tensors:
        split = _tensor_rows(tensor) if type(tensor) is dict else None
        if split is None:
            rejected += 1
            continue
        columns.append((split[0], split[2]))
        n = max(n, split[1])
    return _zip(columns, n, format, rejected)


def _tensor_rows(tensor: dict[str, Any]) -> tuple[str, int, list[Any]] | None:
    """(name, first dimension, up to MAX_ROWS row values), or None if the tensor is
    malformed, its data does not fill its shape, or its rows would be empty."""
    name, shape, data = tensor.get("name"), tensor.get("shape"), tensor.get("data")
    if type(name) is not str or type(shape) is not list or type(data) is not list:
        return None
    if not 0 < len(shape) <= MAX_RANK or not all(type(d) is int and d >= 0 for d in shape):
        return None
    flat = _flat(data)
    n, inner = shape[0], shape[1:]
    size = 1
    for d in inner:
        size *= d
    if size == 0 or n * size != len(flat):
        return None
    take = min(n, MAX_ROWS)
    if size == 1 and len(inner) <= 1:  # [N] and [N, 1]: one scalar a row
        return name, n, flat[:take]
    nested = flat[: take * size]
    for d in reversed(inner):  # row-major, innermost dimension first
        nested = [nested[i : i + d] for i in range(0, len(nested), d)]
    return name, n, nested


def _flat(data: list[Any]) -> list[Any]:
    if list not in set(map(type, data)):
        return data
    # An explicit stack: hostile nesting cannot exhaust the interpreter stack.
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _split(frame: dict[str, Any]) -> Extracted | None:
    """Rows of a pandas "split" frame, or None if it is not one. Integer column
    names (a default RangeIndex) become strings; short rows lack the last keys."""
    columns, data = frame.get("columns"), frame.get("data")
    if type(columns) is not list or type(data) is not list:
        return None
    names: list[str] = []
    for column in columns:
        if type(column) is str:
            names.append(column)
        elif type(column) is int:
            names.append(str(column))
        else:
            return None
    kept = data[:MAX_ROWS]
    rows = [dict(zip(names, values, strict=False)) for values in kept if type(values) is list]
    return Extracted(rows, "dataframe_split", len(data) - len(rows))


def _zip(columns: list[tuple[str, list[Any]]], n: int, format: str, rejected: int) -> Extracted:
    """Rows 0..n-1 of named columns (capped at MAX_ROWS); a column shorter than n
    leaves its key absent from the rows it does not reach."""
    if n > MAX_ROWS:
        rejected += n - MAX_ROWS
        n = MAX_ROWS
    if not columns:
        return Extracted([], format, rejected)
    names = [name for name, _ in columns]
    if all(len(column) >= n for _, column in columns):
        values = zip(*(column[:n] for _, column in columns), strict=True)
        return Extracted([dict(zip(names, row, strict=True)) for row in values], format, rejected)
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, column in columns:
        for row, value in zip(rows, column, strict=False):
            row[name] = value
    return Extracted(rows, format, rejected)
