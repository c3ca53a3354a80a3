"""The compiled record reader (sidecar/_records.c via sidecar/records.py): it reads the
usual flat body into the same numbers and category slots the Python path would, leaves
every other body to the Python path, and the worker counts the same either way."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import threading
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar import Baseline, records
from sidecar.compiled import pure_python_requested
from sidecar.engine import Engine
from sidecar.profile import ProfileOptions
from sidecar.records import RecordReader
from sidecar.worker import Monitor, Sample, parse_json
from tests.gil import other_thread_ran_during
from tests.hostile import corpus
from tests.state import assert_same_state, monitor_state

compiled_only = pytest.mark.skipif(
    not records.COMPILED, reason="the compiled reader is not built here"
)
FEATURES = ("x", "y", "z", "c", "d")


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [
        {
            "x": float(i % 100) / 4,
            "y": i % 7,
            "z": (i % 13) * 1e6,
            "c": "abc"[i % 3],
            "d": ["uv", "wé", "x y"][i % 3],
            "score": (i % 10) / 10,
        }
        for i in range(2000)
    ]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def _reader(baseline: Baseline) -> RecordReader:
    reader = RecordReader.for_engine(Engine(baseline, roles=("input",)))
    assert reader is not None
    return reader


def _row(**values: Any) -> dict[str, Any]:
    return {"x": 1.5, "y": 3, "z": 2e6, "c": "a", "d": "uv"} | values


def test_ci_builds_the_compiled_reader() -> None:
    """Where CI runs, a C compiler is there: the tests must cover the compiled reader."""
    if not os.environ.get("CI"):
        pytest.skip("outside CI, a machine without a compiler reads every body in Python")
    assert records.COMPILED or pure_python_requested()


@compiled_only
def test_a_flat_record_is_read_into_numbers_and_the_checkers_slots(baseline: Baseline) -> None:
    reader = _reader(baseline)
    engine = reader.engine
    rows = [_row(), _row(x=-0.25, y=0, z=1.25e-3, c="c", d="x y"), _row(c="never", d="wé")]
    numbers, slots, left = reader.read([orjson.dumps(row) for row in rows])
    assert left == []
    assert numbers.tolist() == [[row[name] for name in engine.numbers] for row in rows]
    index = {name: c.index for name, c in engine.categories.items()}
    unseen = {name: c.unseen_slot for name, c in engine.categories.items()}
    assert slots.tolist() == [
        [index[name].get(row[name], unseen[name]) for name in engine.categories] for row in rows
    ]


@compiled_only
def test_key_order_and_json_whitespace_do_not_matter(baseline: Baseline) -> None:
    reader = _reader(baseline)
    body = b' \n{ "d" : "uv",\t"c":"b" ,\r\n"z":  7 , "y":-1,"x" :0.5e1 }\n '
    numbers, slots, left = reader.read([body, orjson.dumps(_row())])
    assert left == []
    assert numbers[0].tolist() == [5.0, -1.0, 7.0]
    index = {name: c.index for name, c in reader.engine.categories.items()}
    assert slots.tolist() == [
        [index["c"]["b"], index["d"]["uv"]],
        [index["c"]["a"], index["d"]["uv"]],
    ]


def _tokens(seed: int) -> list[bytes]:
    """Number tokens of every shape JSON allows, the fast path's edges included."""
    rng = random.Random(seed)
    out = [
        b"0", b"-0", b"0.0", b"1", b"-1", b"0.1", b"0.3", b"1e22", b"1e23", b"1e-22",
        b"1e-23", b"123456789012345", b"1234567890123456", b"12345678901234567890",
        b"123456789012345678901234567890", b"18446744073709551615", b"9007199254740993",
        b"0.000001234", b"1E+2", b"1e-400", b"2.2250738585072011e-308", b"4.9e-324",
        b"1.7976931348623157e308", b"0.1e1", b"100.05", b"0.30000000000000004",
        b"999999999999999.9", b"8.98846567431158e307",
        b"0." + b"0" * 12344 + b"1e123456",  # an exponent past any cap, leading zeros
        b"0." + b"0" * 9989 + b"1e10000123",  # the scale under its cap, the exponent over
        b"1e" + b"9" * 30, b"1e-" + b"9" * 30, b"0." + b"0" * 20000 + b"5",
        b"1" * 400, b"1." + b"1" * 400 + b"e-400",
        # 16 to 18 digits, where one multiplication or division after rounding the
        # digits to a double rounds twice: a wider fast path reads these wrong.
        b"43591.010316006538", b"31888183.9909643594", b"0.81965659758208196",
        b"792079993.49436247", b"659080.584800146909", b"0.000000000000000012345",
    ]  # fmt: skip
    for _ in range(2000):
        bits = rng.getrandbits(64)
        value = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
        if math.isfinite(value):
            out.append(orjson.dumps(value))
        out.append(repr(round(rng.uniform(-1e4, 1e4), rng.randint(0, 8))).encode())
        out.append(str(rng.randint(-(2**70), 2**70)).encode())
        mantissa, exponent = rng.randint(0, 10 ** rng.randint(1, 17)), rng.randint(-30, 30)
        out.append(f"{mantissa}e{exponent}".encode())
    return out


def _float(value: float) -> float:
    """As the engine takes a number: an int too large for a double is infinite."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


@compiled_only
def test_numbers_are_the_doubles_python_reads(baseline: Baseline) -> None:
    reader = _reader(baseline)
    tokens = _tokens(seed=5)
    bodies = [b'{"x":%s,"y":1,"z":2,"c":"a","d":"uv"}' % token for token in tokens]
    numbers, _, left = reader.read(bodies)
    python = [_float(parse_json(token)) for token in tokens]
    finite = [i for i, v in enumerate(python) if math.isfinite(v)]
    assert left == [i for i in range(len(tokens)) if i not in set(finite)]  # inf: Python's
    # == on purpose: the token -0 reads as -0.0 here and as the int 0 in Python, which no
    # count tells apart (the same comparisons, the same bucket, the same deviations).
    assert numbers[:, 0].tolist() == [python[i] for i in finite]


BAD_BODIES = [
    b'{"x":1.5,"y":3,"z":2,"c":"a"}',  # a feature missing
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv","w":1}',  # an unknown key
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv","score":0.5}',  # a prediction key
    b'{"x":1.5,"x":2,"y":3,"z":2,"c":"a","d":"uv"}',  # a repeated key
    b'{"x":1.5,"x":2,"z":2,"c":"a","d":"uv"}',  # repeated, and five keys in all
    b'{"x":null,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":true,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":"1.5","y":3,"z":2,"c":"a","d":"uv"}',  # a number as a string
    b'{"x":1.5,"y":3,"z":2,"c":7,"d":"uv"}',  # a category as a number
    b'{"x":[1.5],"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":{"v":1},"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":NaN,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":-Infinity,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1e400,"y":3,"z":2,"c":"a","d":"uv"}',  # overflows to inf
    b'{"x":01,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1.,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":.5,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":+1,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":-,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1e,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":0x10,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv",}',  # a trailing comma
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"} x',  # garbage after the object
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}{}',
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"',  # cut short
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"u',
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}\x00',
    b'{"x":1.5,"y":3,"z":2,"c":"a\x00","d":"uv"}',
    b'{"x":1.5,"y":3,"z":2,"c":"a\n","d":"uv"}',  # a raw control character
    b'{"x":1.5,"y":3,"z":2,"c":"\\u0061","d":"uv"}',  # an escape: Python decodes it
    b'{"\\u0078":1.5,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"\xff"}',  # not UTF-8
    b'{"x":1.5,"y":3,"z":2,"c":"a","d":"\xed\xa0\x80"}',  # a UTF-8 surrogate
    b'{"x" 1.5,"y":3,"z":2,"c":"a","d":"uv"}',
    b'{"x":1.5;"y":3,"z":2,"c":"a","d":"uv"}',
    b'{x:1.5,"y":3,"z":2,"c":"a","d":"uv"}',
    b"{'x':1.5,'y':3,'z':2,'c':'a','d':'uv'}",
    b"[]",  # no rows: the Python path counts it
    b'[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"},1]',
    b'[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"},{"x":1.5,"y":3,"z":2,"c":"a"}]',
    b'[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"},]',
    b'[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}',
    b'[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}]]',
    b'[[1.5,3,2,"a","uv"]]',  # positional: named by the Python path
    b'{"instances":[]}',
    b'{"instances":{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}}',
    b'{"instances":[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}],"signature_name":"s"}',
    b'{"signature_name":"s","instances":[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}]}',
    b'{"instances":[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}]',
    b'{"inputs":[{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}]}',  # MLflow: Python's
    b"[" + b",".join([b'{"x":1.5,"y":3,"z":2,"c":"a","d":"uv"}'] * 65) + b"]",  # over 64
    b"{}",
    b"",
    b"   ",
    b"null",
]


@compiled_only
@pytest.mark.parametrize("body", BAD_BODIES)
def test_bodies_it_does_not_fully_understand_are_left_to_python(
    baseline: Baseline, body: bytes
) -> None:
    numbers, slots, left = _reader(baseline).read([body, orjson.dumps(_row())])
    assert left == [0]
    assert len(numbers) == len(slots) == 1  # the good body after it still read, in row 0


@compiled_only
def test_lists_of_records_and_instances_are_read_row_by_row(baseline: Baseline) -> None:
    reader = _reader(baseline)
    rows = [_row(x=float(i), c="abc"[i % 3]) for i in range(64)]
    bodies = [
        orjson.dumps(rows[:3]),
        orjson.dumps(rows[3]),
        b' {\n "instances" : [ ' + b" , ".join(map(orjson.dumps, rows[4:6])) + b" ] } ",
        orjson.dumps({"instances": rows}),  # 64 records: the most one body may hold
    ]
    numbers, slots, left = reader.read(bodies)
    assert left == []
    assert numbers[:, 0].tolist() == [row["x"] for row in rows[:6] + rows]
    index = reader.engine.categories["c"].index
    assert slots[:, 0].tolist() == [index[row["c"]] for row in rows[:6] + rows]


@compiled_only
def test_a_body_that_is_not_bytes_is_left_to_python(baseline: Baseline) -> None:
    body = orjson.dumps(_row())
    _, _, left = _reader(baseline).read([bytearray(body), memoryview(body), body])  # type: ignore[list-item]
    assert left == [0, 1]


@compiled_only
def test_reading_keeps_no_reference_and_scales_past_one_chunk(baseline: Baseline) -> None:
    reader = _reader(baseline)
    bodies = [orjson.dumps(_row(x=float(i))) for i in range(3 * records.CHUNK_BYTES // 50)]
    assert sum(map(len, bodies)) > 2 * records.CHUNK_BYTES
    bodies[40] = b"{not json"
    before = [sys.getrefcount(b) for b in bodies]
    numbers, _, left = reader.read(bodies)
    assert left == [40]
    assert numbers[:, 0].tolist() == [float(i) for i in range(len(bodies)) if i != 40]
    assert [sys.getrefcount(b) for b in bodies] == before


def _features(**kinds: Any) -> Baseline:
    rows = [
        {"a": float(i), "b": float(i % 5), "c": "pq"[i % 2], "d": "rs"[i % 2], "e": i} | kinds
        for i in range(300)
    ]
    return Baseline.from_records(rows)


@compiled_only
@pytest.mark.parametrize(
    "extra",
    [
        {"when": "2026-01-01T00:00:00Z"},  # a timestamp
        {"v": [1.0, 2.0]},  # a list
        {"flag": True},  # a boolean category
        {"n": {"inner": 1.0}},  # nested: flattened names
    ],
)
def test_features_the_reader_does_not_take_leave_every_body_to_python(
    extra: dict[str, Any],
) -> None:
    assert RecordReader.for_engine(Engine(_features(**extra), roles=("input",))) is None


@compiled_only
def test_an_envelope_sized_record_is_left_to_the_payload_detection() -> None:
    """Four features fit in an envelope (Seldon: data, meta, status, jsonData): the
    Python path decides what such a body is, so there is no reader."""
    rows = [{"a": float(i), "b": float(i), "c": "pq"[i % 2], "d": 1.0} for i in range(100)]
    assert RecordReader.for_engine(Engine(Baseline.from_records(rows))) is None
    assert RecordReader.for_engine(Engine(_features(), roles=("input",))) is not None


@compiled_only
def test_the_layout_refuses_bad_arguments() -> None:
    layout_type = type(_reader(_features()).layout)
    with pytest.raises(ValueError, match="named twice"):
        layout_type([("a", None, 0), ("a", None, 0)])
    with pytest.raises(TypeError, match="must be a dict"):
        layout_type([("a", ["x"], 0)])
    with pytest.raises(TypeError):
        layout_type([("a",)])
    with pytest.raises(ValueError, match="not an int"):
        layout_type([("a", {"x": 1.0}, 2)])  # not an exact int: no code runs in reading
    with pytest.raises(ValueError, match="not an int"):
        layout_type([("a", {"x": -1}, 2)])
    with pytest.raises(ValueError, match="unseen slot"):
        layout_type([("a", {"x": 0}, -1)])
    with pytest.raises(TypeError, match="not initialised"):
        layout_type.__new__(layout_type).read([], np.empty((0, 0)), np.empty((0, 0), np.int64))
    half = layout_type.__new__(layout_type)
    with pytest.raises(TypeError, match="must be a dict"):
        half.__init__([("a", None, 0), ("b", 5, 0)])  # type: ignore[misc]
    with pytest.raises(TypeError, match="not initialised"):
        half.read([b'{"a":1}'], np.empty((1, 1)), np.empty((1, 0), np.int64))
    layout = layout_type([("a", None, 0), ("b", {"x": 0}, 1)])
    body = [b'{"a":1,"b":"x"}']
    with pytest.raises(TypeError, match="float64"):
        layout.read(body, np.empty((1, 1), dtype=np.float32), np.empty((1, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="int64"):
        layout.read(body, np.empty((1, 1)), np.empty((1, 1), dtype=np.int32))
    with pytest.raises(ValueError):  # not C-contiguous
        layout.read(body, np.empty((2, 2))[:, :1], np.empty((2, 1), dtype=np.int64))
    one = np.empty((1, 1)), np.empty((1, 1), dtype=np.int64)
    assert layout.read(body * 2, *one) == (2, 1, [1])  # no room for the second: left
    assert layout.read([b'[{"a":1,"b":"x"},{"a":2,"b":"x"}]', body[0]], *one) == (2, 1, [0])
    # From `start`, until `budget` bytes were read (at least one body).
    assert layout.read(body * 5, *one, 3) == (5, 1, [4])
    assert layout.read(body * 5, *one, 1, 1) == (2, 1, [])
    assert layout.read(body * 5, *one, 1, len(body[0]) + 1) == (3, 1, [2])
    with pytest.raises(ValueError, match="start"):
        layout.read(body, *one, -1)
    with pytest.raises(TypeError):
        layout.read(body, np.empty((1, 1)))


# -- the worker counts the same with and without the reader ------------------------------


def _both(baseline: Baseline, samples: list[Sample], **options: Any) -> int:
    """Counts of `samples` with and without the reader are the same; returns how many
    bodies the reader read."""
    read = Monitor(baseline, registry=None, queue_size=100_000, **options)
    python = Monitor(baseline, registry=None, queue_size=100_000, **options)
    python._reader = None
    reader = read._reader
    assert reader is not None
    bodies = 0

    def counted(*args: Any) -> Any:
        nonlocal bodies
        out = RecordReader.read(reader, *args)
        bodies += len(args[0]) - len(out[2])
        return out

    reader.read = counted  # type: ignore[method-assign]
    for monitor in (read, python):
        for sample in samples:
            monitor.submit(sample)
        assert monitor.process_pending() == len(samples)
    assert_same_state(monitor_state(read), monitor_state(python))
    return bodies


# Finite floats stay clear of the largest double: a sum of two values near it overflows
# in one grouping (rows read into columns) and not in another (rows as dicts).
_value = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(-1e300, 1e300)
    | st.sampled_from([math.inf, -math.inf, math.nan])
    | st.sampled_from(["a", "b", "uv", "wé", "x y", "zz", "7", "a\\b", 'q"'])
)
_record = st.fixed_dictionaries(
    {
        "x": st.floats(-1e3, 1e3) | _value,
        "y": st.integers(-10, 10) | _value,
        "z": st.floats(-1e300, 1e300),  # finite, clear of the largest double (above)
        "c": st.sampled_from(["a", "b", "c", "d"]) | _value,
        "d": st.sampled_from(["uv", "wé", "x y", "new"]) | _value,
    },
    optional={"extra": _value, "score": _value},
)


def _encode(record: dict[str, Any], mangle: int) -> bytes:
    # json, not orjson: NaN and Infinity tokens (as TF Serving clients send), big ints.
    data = json.dumps(record, ensure_ascii=mangle != 4).encode()
    if mangle == 1:
        data = data.replace(b",", b" ,\n ", 2)
    elif mangle == 2:
        data = data[: len(data) // 2]
    elif mangle == 3:
        data = data.replace(b'"x"', b'"y"', 1)  # a repeated key, one missing
    return data


@st.composite
def _samples(draw: st.DrawFn) -> Sample:
    body = _encode(draw(_record), draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4])))
    response = orjson.dumps({"predictions": [draw(st.floats(0, 1))]})
    return Sample([body], [response], 200, [], [])


@compiled_only
@settings(max_examples=150, deadline=None)
@given(st.lists(_samples(), max_size=40))
def test_the_worker_counts_the_same_with_and_without_the_reader(
    baseline: Baseline, samples: list[Sample]
) -> None:
    _both(baseline, samples)


@compiled_only
@pytest.mark.parametrize(
    "options", [{}, {"batch_samples": 50, "batch_rows": 7}, {"batch_samples": 1}]
)
def test_mixed_traffic_is_counted_the_same_with_and_without_the_reader(
    baseline: Baseline, options: dict[str, int]
) -> None:
    """Mostly good bodies with random values, unseen categories and out-of-range numbers,
    a third of them broken in each of the ways the reader leaves to Python."""
    rng = random.Random(9)
    bad = BAD_BODIES
    samples = []
    for _ in range(3000):
        if rng.random() < 0.33:
            body = rng.choice(bad)
        else:
            row = _row(
                x=rng.choice([rng.uniform(-50, 50), rng.randint(-5, 40), 1e300]),
                y=rng.randint(-3, 9),
                z=rng.lognormvariate(10, 3),
                c=rng.choice("abcde"),
                d=rng.choice(["uv", "wé", "x y", "new", ""]),
            )
            body = orjson.dumps(row)
            if rng.random() < 0.2:
                many = [row] * rng.randint(1, 70)
                body = orjson.dumps(many if rng.random() < 0.5 else {"instances": many})
        samples.append(Sample([body], [b'{"predictions":[0.5]}'], 200, [], []))
    assert _both(baseline, samples, **options) >= 1800


@compiled_only
def test_the_hostile_corpus_is_counted_the_same_with_and_without_the_reader(
    baseline: Baseline,
) -> None:
    samples = [
        Sample(list(body.chunks), [b'{"predictions":[0.1]}'], 200, body.headers, [])
        for body in corpus(300, seed=4)
    ]
    samples += [Sample([orjson.dumps(_row(x=i / 7))]) for i in range(300)]
    assert _both(baseline, samples) >= 300


@compiled_only
def test_the_usual_body_is_read_without_python_parsing_it(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = Monitor(baseline, registry=None)
    parsed: list[Any] = []
    monkeypatch.setattr(monitor, "_plain_request", lambda *args: parsed.append(args) or "")
    for i in range(200):
        monitor.submit(Sample([orjson.dumps(_row(x=i % 25))], [b'{"predictions":[0.5]}']))
    monitor.process_pending()
    assert parsed == []
    assert monitor.counts.checked == 200
    window = monitor.requests.window
    assert window.rows == 200
    assert window.features["x"].values == 200
    assert window.features["c"].values == 200
    assert window.unknown_features == 0


@compiled_only
def test_a_failing_reader_is_counted_and_python_reads_its_bodies(baseline: Baseline) -> None:
    monitor = Monitor(baseline, registry=None)
    reader = monitor._reader
    assert reader is not None

    def broken(*args: Any) -> Any:
        raise MemoryError("no room")

    reader.read = broken  # type: ignore[method-assign]
    for i in range(50):
        monitor.submit(Sample([orjson.dumps(_row(x=float(i)))]))
    monitor.process_pending()
    assert monitor.counts.errors == {"extract": 1}
    assert monitor.counts.checked == 50
    assert monitor.requests.window.features["x"].values == 50


@compiled_only
def test_with_a_reader_the_worker_offers_the_gil_every_eight_usual_samples(
    baseline: Baseline,
) -> None:
    """Bodies the reader takes cost a couple of µs each before the bulk read in the
    Python loop: one look at the clock per eight. The compiled queue sorts them in C
    (about 0.1 µs each) after one look. One the Python path parses (here invalid JSON)
    gets its own."""
    offers: list[float] = []
    monitor = Monitor(baseline, registry=None, gil_slice_seconds=0.0)
    monitor.pacer.sleep = offers.append
    for _ in range(256):
        monitor.submit(Sample([orjson.dumps(_row())]))
    monitor._extract_batch(256, [], [], [])
    assert 2 <= len(offers) < 256 // 8  # before the sorting, and the reader's per chunk
    offers.clear()
    monitor._triaged = False  # the Python loop
    for _ in range(256):
        monitor.submit(Sample([orjson.dumps(_row())]))
    monitor._extract_batch(256, [], [], [])
    assert 256 // 8 <= len(offers) < 256 // 2
    offers.clear()
    for _ in range(16):
        monitor.submit(Sample([b"{not json"]))
    monitor._extract_batch(16, [], [], [])
    assert len(offers) >= 16


@compiled_only
@pytest.mark.parametrize(
    "names",
    [
        ["n", "n1", "é", "n10", "m"],
        ["n", 'q"uote', "back\\slash", "tab\tname", "n1"],
        ["n", "back\\slash", "m", "p", "q"],
    ],
    ids=["plain", "escaped", "backslash"],
)
def test_keys_are_matched_exactly_whatever_the_names_hold(names: list[str]) -> None:
    """The reader compares the key it expects next in place, for names with no quote,
    backslash or control character; any other key is looked up after a scan. Keys that
    extend, cut short or escape a name are not that name (and escapes are left to the
    Python path: a name that JSON must escape is never read by the reader)."""
    rows = [{name: float((i + j) % 5) for j, name in enumerate(names)} for i in range(300)]
    baseline = Baseline.from_records(rows)
    good = {name: 1.0 for name in names}
    escaped = {"n1": "\\u006e1", "é": "\\u00e9"}
    bodies = [
        orjson.dumps(good),  # escaped where JSON must escape
        orjson.dumps(dict(reversed(good.items()))),
        orjson.dumps({name: 2.0 for name in names if name != names[1]}),
        b"{" + b", ".join(b'"%s": 1' % escaped.get(n, n).encode() for n in good) + b"}",
        b'{"n1x": 1}',
        b'{"n": 1, "n": 2}',
        b'{"n": 1, "back\\slash": 2, "m": 3}',  # not JSON: an escape \s
        b'{"n',
        b'{"',
    ]
    samples = [Sample([body], [], 200, [], []) for body in bodies for _ in range(3)]
    read = _both(baseline, samples)
    assert read == (6 if names[1] == "n1" else 0)  # the first two bodies, three times each


# -- responses: `{"predictions": [x]}` into the prediction column ---------------------


def _read_predictions(bodies: list[Any], headers: list[Any] | None = None) -> list[Any]:
    """What read_predictions makes of each body: its value, or None (left to Python)."""
    assert records.read_predictions is not None
    out = np.full((len(bodies), 1), np.nan)
    rows, left = records.read_predictions(bodies, headers or [()] * len(bodies), out)
    values = iter(out[:rows, 0].tolist())
    return [None if i in left else next(values) for i in range(len(bodies))]


def _python_prediction(body: bytes) -> float | None:
    """The value the worker's Python path puts into the prediction column, or None."""
    try:
        out = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not (type(out) is dict and list(out) == ["predictions"]):
        return None
    values = out["predictions"]
    if type(values) is not list or len(values) != 1:
        return None
    value = values[0]
    if type(value) is float or (type(value) is int and abs(value) <= 2**53):
        return float(value)
    return None


_spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
_number_text = (
    st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.integers(-(2**64), 2**64).map(str)
    | st.sampled_from(["-0", "0", "1e400", "-1e400", "1E5", "2.5e-3", "1e-400", "NaN", "01"])
    | st.sampled_from(["1.", ".5", "+1", "123456789012345", "1234567890123456", "true"])
)


@st.composite
def _prediction_body(draw: st.DrawFn) -> bytes:
    s = [draw(_spaces) for _ in range(8)]
    number = draw(_number_text)
    tail = draw(st.sampled_from(["", "", "", ', "model": "m"', ", 2"]))
    text = f'{s[0]}{{{s[1]}"predictions"{s[2]}:{s[3]}[{s[4]}{number}{s[5]}{tail}]{s[6]}}}{s[7]}'
    return text.encode()


@compiled_only
@settings(max_examples=500, deadline=None)
@given(st.lists(_prediction_body(), min_size=1, max_size=20))
def test_a_prediction_read_in_c_is_the_value_python_puts_in_the_column(
    bodies: list[bytes],
) -> None:
    for body, value in zip(bodies, _read_predictions(bodies), strict=True):
        expected = _python_prediction(body)
        if value is not None:
            assert value == expected and math.copysign(1, value) == math.copysign(1, expected)
        elif expected is not None:  # left although Python takes it: integers of 16 digits
            number = body.decode().split("[")[1].split("]")[0].strip().lstrip("-")
            assert number.isdigit() and len(number) >= 16  # or more: orjson's float


@compiled_only
def test_the_usual_responses_are_read_and_the_rest_left_to_python() -> None:
    bodies = [
        b'{"predictions":[0.5]}',
        b' {\n "predictions" : [ -0 ] }\r\n',  # Python's int 0
        b'{"predictions":[123456789012345]}',
        b'{"predictions":[1e400]}',  # orjson refuses it; the fallback counts inf
        b'{"predictions":[NaN]}',
        b'{"predictions":[0.5],"model":"m"}',
        b'{"predictions":[0.5, 0.1]}',
        b'{"predictions":[[0.5]]}',
        b'{"predictions":["0.5"]}',
        b'{"predictions":[0.5]} x',
        b'{"predictions":[0.5]}\x00',
        b'{"outputs":[0.5]}',
        b"",
    ]
    assert _read_predictions(bodies) == [0.5, 0.0, 123456789012345.0] + [None] * 10
    assert math.copysign(1, _read_predictions(bodies[1:2])[0]) == 1.0


@compiled_only
@pytest.mark.parametrize(
    ("headers", "read"),
    [
        ([(b"content-type", b"application/json")], True),
        (((b"Content-Encoding", b""),), True),  # empty: as it is
        ([(b"CONTENT-ENCODING", b"gzip")], False),
        ([(b"content-encoding", b"identity")], False),  # the Python path decides
        ([(b"content-encoding", bytearray(b""))], False),
        ([[b"content-encoding", b"gzip"]], False),  # not a tuple: Python's
        ([(b"content-encoding",)], False),
        ("content-encoding", False),
    ],
)
def test_a_response_with_a_content_encoding_is_left_to_python(headers: Any, read: bool) -> None:
    body = b'{"predictions":[0.25]}'
    assert _read_predictions([body], [headers]) == [0.25 if read else None]


@compiled_only
def test_read_predictions_refuses_bad_arguments() -> None:
    read = records.read_predictions
    assert read is not None
    with pytest.raises(TypeError, match="out must be a C-contiguous float64"):
        read([b"{}"], [()], np.empty((1, 1), np.int64))
    with pytest.raises(TypeError, match="out must be"):
        read([b"{}"], [()], np.empty((1, 2)))
    with pytest.raises(ValueError, match="one headers entry and one row of out per body"):
        read([b"{}", b"{}"], [()], np.empty((2, 1)))
    with pytest.raises(ValueError, match="one headers entry and one row of out per body"):
        read([b"{}", b"{}"], [(), ()], np.empty((1, 1)))
    with pytest.raises(TypeError, match="bodies must be a sequence"):
        read(None, [], np.empty((0, 1)))


@compiled_only
def test_the_worker_counts_responses_the_same_with_and_without_the_compiled_read(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    responses = [
        b'{"predictions":[0.5]}', b'{"predictions":[7]}', b'{"predictions":[1e400]}',
        b'{"predictions":[NaN]}', b'{"predictions":["x"]}', b'{"predictions":[0.5, 0.1]}',
        b'{"predictions":[9007199254740993]}', b"[0.3]", b"{bad", b'{"predictions":[-0.0]}',
    ]  # fmt: skip
    samples = []
    for i in range(2000):
        body = rng.choice(responses) if i % 3 else orjson.dumps({"predictions": [rng.random()]})
        headers = [(b"content-encoding", b"br")] if i % 17 == 0 else []
        status = 500 if i % 23 == 0 else 200
        samples.append(Sample([orjson.dumps(_row())], [body], status, [], headers))
    compiled = Monitor(baseline, registry=None, queue_size=100_000)
    monkeypatch.setattr("sidecar.worker.read_predictions", None)
    python = Monitor(baseline, registry=None, queue_size=100_000)
    monkeypatch.undo()
    calls = 0

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        assert records.read_predictions is not None
        return records.read_predictions(*args)

    for monitor, reader in ((compiled, counted), (python, None)):
        monkeypatch.setattr("sidecar.worker.read_predictions", reader)
        for sample in samples:
            monitor.submit(sample)
        assert monitor.process_pending() == len(samples)
        monkeypatch.undo()
    assert calls > 0
    assert compiled.responses.window.rows > 1500
    assert_same_state(monitor_state(compiled), monitor_state(python))


_FINALIZER_RACE = """
import gc
import numpy as np
from sidecar import Baseline, records
from sidecar.engine import Engine

n = 2000
state = {"call": False}


class Emptier:
    def __del__(self):
        if state["call"]:
            state["bodies"].clear()
            state["headers"].clear()


def attempt(read, body, delta):
    # A cycle with a finalizer, and the GC due within the call's first allocations
    # (the tuple of bodies held, the list of those left, an error object).
    bodies = state["bodies"] = [body % i for i in range(n)]
    headers = state["headers"] = [()] * n
    e = Emptier()
    e.me = e
    del e
    keep = [[] for _ in range(200)]  # the list free list drained: PyList_New allocates
    gc.set_threshold(gc.get_count()[0] + delta)
    state["call"] = True
    try:
        return read(bodies, headers)
    except ValueError as error:  # the headers emptied between the two copies
        assert "one headers entry" in str(error)
    finally:
        state["call"] = False
        gc.set_threshold(700)
        gc.collect()


out = np.empty((n, 1))
for delta in range(-1, 6):
    attempt(lambda b, h: records.read_predictions(b, h, out), b'{"predictions":[%d]}', delta)
rows = [{"x": 1.0, "y": 2, "z": 3.0, "c": "a", "d": "uv"}] * 50
layout = records.RecordReader(Engine(Baseline.from_records(rows), roles=("input",))).layout
numbers, slots = np.empty((n, 3)), np.empty((n, 2), np.int64)
body = b'{"x":1.5,"y":3,"z":2,"c":"a","d":"\\xff%d"}'  # not UTF-8: an error object each
for delta in range(-1, 6):
    attempt(lambda b, h: layout.read(b, numbers, slots), body, delta)
print("held")
"""


@compiled_only
def test_a_finalizer_that_empties_the_lists_mid_read_cannot_crash_the_reader() -> None:
    """Each read holds the bodies in a tuple of its own: the cyclic GC may run during
    the call (its allocations trigger it) and a finalizer may empty the caller's list
    (before, a segfault)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _FINALIZER_RACE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "held"


@compiled_only
def test_an_integer_minus_zero_reads_as_python_s_zero_and_a_float_keeps_its_sign(
    baseline: Baseline,
) -> None:
    reader = _reader(baseline)
    tokens = [b"-0", b"-0.0", b"-0e0", b"0", b"-0E+3"]
    bodies = [b'{"x":%s,"y":1,"z":2,"c":"a","d":"uv"}' % t for t in tokens]
    numbers, _, left = reader.read(bodies)
    assert left == []
    signs = [math.copysign(1, v) for v in numbers[:, 0]]
    assert signs == [math.copysign(1, _float(parse_json(t))) for t in tokens]
    assert signs == [1, -1, -1, 1, -1]
    assert _read_predictions([b'{"predictions":[-0]}', b'{"predictions":[-0.0]}']) == [0.0, -0.0]
    assert math.copysign(1, _read_predictions([b'{"predictions":[-0.0]}'])[0]) == -1


@compiled_only
def test_the_reader_lets_other_threads_run_while_it_parses(baseline: Baseline) -> None:
    """The serving thread is not kept waiting on the parse: it runs meanwhile."""
    reader = _reader(baseline)
    bodies = [orjson.dumps(_row())] * 1_000_000
    numbers, slots = reader.empty(len(bodies))
    results: list[Any] = []
    assert other_thread_ran_during(
        lambda: results.append(reader.layout.read(bodies, numbers, slots, 0, -1))
    )
    assert results[0][:2] == (len(bodies), len(bodies))
    assert numbers[-1].tolist() == [_row()[name] for name in reader.engine.numbers]


@compiled_only
def test_a_second_read_of_a_layout_while_one_runs_in_another_thread_is_refused(
    baseline: Baseline,
) -> None:
    """The layout's state is the running read's while the GIL is released."""
    reader = _reader(baseline)
    bodies = [orjson.dumps(_row())] * 1_000_000
    numbers, slots = reader.empty(len(bodies))
    results: list[Any] = []

    def read_all() -> None:
        while not results:  # this thread's read may be the one refused, at the start
            try:
                results.append(reader.layout.read(bodies, numbers, slots, 0, -1))
            except RuntimeError:
                pass

    thread = threading.Thread(target=read_all)
    small = reader.empty(1)
    refusals = 0
    thread.start()
    while thread.is_alive():
        try:
            reader.layout.read(bodies[:1], *small)
        except RuntimeError as error:
            assert "already reading in another thread" in str(error)
            refusals += 1
    thread.join()
    assert refusals > 0
    assert results[0][:2] == (len(bodies), len(bodies))


@compiled_only
def test_numbers_read_once_the_gil_is_back_land_in_the_rows_of_their_bodies(
    baseline: Baseline,
) -> None:
    """Past 15 digits a number is read by CPython's strtod, which needs the GIL: noted
    while it is released and converted after, or its body read again holding it (a
    huge exponent). A body left to Python takes its notes back, whose row the next body
    then fills."""
    long, huge, wide = b"0.12345678901234567", b"1.7976931348623157e308", b"1" * 30
    bodies = [
        b'{"x":%s,"y":1,"z":2,"c":"a","d":"uv","w":1}' % long,  # an unknown key: left
        b'{"x":1.5,"y":1,"z":2,"c":"a","d":"uv"}',
        b'{"x":%s,"y":%s,"z":2,"c":"a","d":"uv"}' % (huge, long),
        b'{"x":1e400,"y":%s,"z":2,"c":"a","d":"uv"}' % long,  # infinite: left
        b'{"x":%s,"y":1,"z":%s,"c":"a","d":"uv"}' % (long, wide),
    ]
    reader = _reader(baseline)
    numbers, _, left = reader.read(bodies)
    assert left == [0, 3]
    expected = [json.loads(bodies[i]) for i in (1, 2, 4)]
    assert numbers.tolist() == [
        [float(r[name]) for name in reader.engine.numbers] for r in expected
    ]


# Sequences built around UTF-8's edges: a lead byte (or a stray one) and up to three
# bytes after it, each on either side of the range a well-formed sequence allows there.
_LEADS = [0x41, 0x80, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
_FOLLOWERS = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]
_utf8_unit = st.tuples(st.sampled_from(_LEADS), st.lists(st.sampled_from(_FOLLOWERS), max_size=3))


@compiled_only
@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.lists(_utf8_unit.map(lambda unit: bytes([unit[0], *unit[1]])), max_size=3).map(b"".join),
        # Text Python can encode: no surrogates (the bytes above cover those).
        st.text(
            st.characters(min_codepoint=0x20, exclude_characters='"\\', exclude_categories=("Cs",)),
            max_size=6,
        ).map(str.encode),
    )
)
@example(text=b"\xed\x9f\xbf")  # U+D7FF, the last before the surrogates
@example(text=b"\xed\xa0\x80")  # a surrogate
@example(text=b"\xe0\xa0\x80")  # U+0800, the first of three bytes
@example(text=b"\xe0\x9f\xbf")  # overlong
@example(text=b"\xc1\xbf")  # overlong
@example(text=b"\xf0\x90\x80\x80")  # U+10000
@example(text=b"\xf0\x8f\xbf\xbf")  # overlong
@example(text=b"\xf4\x8f\xbf\xbf")  # U+10FFFF, the last code point
@example(text=b"\xf4\x90\x80\x80")  # past it
@example(text=b"\xe2\x82")  # cut short before the quote
@example(text=b"\xe2\x82\x41")  # cut short by an ASCII byte
def test_a_category_is_read_exactly_when_its_bytes_are_utf8_python_decodes(
    baseline: Baseline, text: bytes
) -> None:
    """The reader checks UTF-8 itself (the GIL released): it must agree with CPython's
    strict decoder, which the Python path's JSON parsing applies."""
    reader = _reader(baseline)
    numbers, slots, left = reader.read([b'{"x":1.5,"y":3,"z":2,"c":"a","d":"%s"}' % text])
    try:
        value = text.decode("utf-8")
    except UnicodeDecodeError:
        assert left == [0]
        return
    assert left == []
    d = reader.engine.categories["d"]
    assert slots[0, list(reader.engine.categories).index("d")] == d.index.get(value, d.unseen_slot)
