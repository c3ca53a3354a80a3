"""Hostile and odd request bodies: a seeded corpus for the fuzz tests and bench/soak.py.

`corpus(n, seed)` cycles through every kind in KINDS, each drawn fresh from the seeded
generator, so any prefix of at least len(KINDS) bodies has every kind. A body comes as
the chunks a client sends (split at random points for some kinds) and its headers.
"""

from __future__ import annotations

import gzip
import random
import string
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import orjson

Headers = tuple[tuple[bytes, bytes], ...]
JSON: Headers = ((b"content-type", b"application/json"),)
GZIP: Headers = (*JSON, (b"content-encoding", b"gzip"))


@dataclass(frozen=True)
class Body:
    kind: str
    chunks: tuple[bytes, ...]
    headers: Headers = JSON

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def good_row(rng: random.Random) -> dict[str, object]:
    """A row the test baselines know: x in 0..99, c in a/b/c."""
    return {"x": float(rng.randrange(100)), "c": rng.choice("abc")}


def _good(rng: random.Random) -> bytes:
    rows = [good_row(rng) for _ in range(rng.randint(1, 4))]
    return orjson.dumps(rows[0] if len(rows) == 1 else rows)


def _name(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "._-/ é", k=size))


def _invalid_utf8(rng: random.Random) -> bytes:
    data = bytearray(_good(rng))
    at = data.index(b'"c"') + 1
    data[at:at] = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    return bytes(data)


def _truncated(rng: random.Random) -> bytes:
    data = _good(rng)
    return data[: rng.randrange(1, len(data))]


def _duplicate_keys(rng: random.Random) -> bytes:
    x = rng.randrange(100)
    return f'{{"x": {x}, "c": "a", "x": "{x}", "c": null, "c": "b"}}'.encode()


def _deep_array(rng: random.Random) -> bytes:
    depth = rng.choice([10, 500, 1023, 1025, 100_000])
    return b"[" * depth + b"]" * depth


def _deep_object(rng: random.Random) -> bytes:
    depth = rng.choice([10, 33, 500, 1023, 100_000])
    return b'{"x":' * depth + b"1" + b"}" * depth


def _deep_with_nan(rng: random.Random) -> bytes:
    # NaN sends the body to the fallback parser, which recurses.
    depth = rng.choice([50, 2_000, 100_000])
    return b'{"x": NaN, "v": ' + b"[" * depth + b"NaN" + b"]" * depth + b"}"


def _deep_feature(rng: random.Random) -> bytes:
    depth = rng.choice([2, 64, 900])
    return b'{"x": ' + b"[" * depth + b"1.5" + b"]" * depth + b', "c": "a"}'


def _huge_numbers(rng: random.Random) -> bytes:
    number = rng.choice(
        [b"1e400", b"-1e400", b"1e-400", b"9" * 400, b"-" + b"9" * 5000, b"18446744073709551616"]
    )
    return b'{"x": ' + number + b', "c": "a"}'


def _nan_infinity(rng: random.Random) -> bytes:
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
    return b'[{"x": ' + token + b', "c": "b"}, {"x": 1.0, "c": "a"}]'


def _long_string(rng: random.Random) -> bytes:
    size = rng.choice([1_000, 100_000, 900_000])
    if rng.random() < 0.5:
        return orjson.dumps({"x": 1.0, "c": "a" * size})
    return orjson.dumps({"x": 1.0, "c": "a", "k" * size: 1})


def _many_keys(rng: random.Random) -> bytes:
    n = rng.choice([1_000, 30_000])
    row: dict[str, object] = {f"f{i}": i for i in range(n)}
    row.update(good_row(rng))
    return orjson.dumps(row)


def _unknown_names(rng: random.Random) -> bytes:
    rows = [
        {**good_row(rng), **{_name(rng): rng.random() for _ in range(20)}}
        for _ in range(rng.randint(1, 3))
    ]
    return orjson.dumps(rows)


def _scalars(rng: random.Random) -> bytes:
    return rng.choice([b"null", b"true", b"0", b'"text"', b"[]", b"{}", b"[1, 2, 3]", b"[[]]"])


def _formats(rng: random.Random) -> bytes:
    """Known payload formats with odd contents."""
    return rng.choice(
        [
            b'{"instances": []}',
            b'{"instances": [[1.0, "a"], [2.0]]}',
            b'{"inputs": {"x": [1.0, 2.0], "c": "a"}}',
            b'{"inputs": [{"name": "x", "shape": [1000000000], "data": [1.0]}]}',
            b'{"inputs": [{"name": "x", "shape": [-1], "data": [1.0]}]}',
            b'{"inputs": [{"name": "x", "shape": [2, 2], "data": [[1.0, 2.0], [3.0]]}]}',
            b'{"inputs": [{"name": "x", "shape": ' + b"[1" + b",1" * 70 + b'], "data": [1]}]}',
            b'{"dataframe_split": {"columns": ["x", "c"], "data": [[1.0, "a"], 5, [2.0]]}}',
            b'{"dataframe_split": {"columns": [{"x": 1}], "data": [[1.0]]}}',
            b'{"data": {"names": ["x"], "tensor": {"shape": [3], "values": [1, 2]}}}',
            b'{"data": {"ndarray": "not a list"}}',
            b'{"columns": ["x"], "data": [[1.0], [2.0]], "index": [0, 1]}',
        ]
    )


def _content_type(rng: random.Random) -> Body:
    kind = rng.choice([b"text/plain", b"application/xml", b"application/x-www-form-urlencoded"])
    data = rng.choice([_good(rng), b"<x>1</x>", b"x=1&c=a"])
    return Body("wrong_content_type", (data,), ((b"content-type", kind),))


def _multipart(rng: random.Random) -> Body:
    boundary = b"b0undary"
    data = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="json"\r\n'
        b"Content-Type: application/json\r\n\r\n" + _good(rng) + b"\r\n--" + boundary + b"--\r\n"
    )
    return Body(
        "multipart", (data,), ((b"content-type", b"multipart/form-data; boundary=b0undary"),)
    )


def _gzip(rng: random.Random) -> Body:
    data = _good(rng)
    encoding, packed = rng.choice(
        [
            (b"gzip", gzip.compress(data)),
            (b"x-gzip", gzip.compress(data)),
            (b"GZIP ", gzip.compress(data)),
            (b"deflate", zlib.compress(data)),
            (b"gzip", gzip.compress(data)[:-9]),  # truncated stream
            (b"gzip", data),  # says gzip, is not
            (b"deflate", gzip.compress(data)),  # the wrong wrapper
            (b"br", data),
            (b"gzip, gzip", gzip.compress(gzip.compress(data))),
        ]
    )
    return Body("gzip", (packed,), (*JSON, (b"content-encoding", encoding)))


@cache
def _bomb() -> bytes:
    """12 MiB of JSON in about 12 KiB: over the monitor's 8 MiB decompression cap."""
    return gzip.compress(b'{"c": "' + b"a" * (12 << 20) + b'"}', 9)


def _gzip_bomb(rng: random.Random) -> Body:
    return Body("gzip_bomb", (_bomb(),), GZIP)


def _empty(rng: random.Random) -> Body:
    return Body("empty", rng.choice([(b"",), (b"", b""), (b"", b"", b"")]))


def _chunked(rng: random.Random) -> Body:
    data = _good(rng)
    if rng.random() < 0.3:
        return Body("chunked", tuple(data[i : i + 1] for i in range(len(data))))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    bounds = [0, *cuts, len(data)]
    chunks = tuple(data[a:b] for a, b in zip(bounds, bounds[1:], strict=False))
    # Empty chunks between the others, as some servers send them.
    return Body("chunked", chunks if rng.random() < 0.5 else (b"", *chunks, b""))


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, 300))


def _bom(rng: random.Random) -> bytes:
    return b"\xef\xbb\xbf" + _good(rng)


BodyMaker = Callable[[random.Random], bytes]
Maker = Callable[[random.Random], Body]


def _plain(kind: str, make: BodyMaker) -> Maker:
    return lambda rng: Body(kind, (make(rng),))


MAKERS: dict[str, Maker] = {
    "good": _plain("good", _good),
    "invalid_utf8": _plain("invalid_utf8", _invalid_utf8),
    "truncated": _plain("truncated", _truncated),
    "duplicate_keys": _plain("duplicate_keys", _duplicate_keys),
    "deep_array": _plain("deep_array", _deep_array),
    "deep_object": _plain("deep_object", _deep_object),
    "deep_with_nan": _plain("deep_with_nan", _deep_with_nan),
    "deep_feature": _plain("deep_feature", _deep_feature),
    "huge_numbers": _plain("huge_numbers", _huge_numbers),
    "nan_infinity": _plain("nan_infinity", _nan_infinity),
    "long_string": _plain("long_string", _long_string),
    "many_keys": _plain("many_keys", _many_keys),
    "unknown_names": _plain("unknown_names", _unknown_names),
    "scalars": _plain("scalars", _scalars),
    "formats": _plain("formats", _formats),
    "wrong_content_type": _content_type,
    "multipart": _multipart,
    "gzip": _gzip,
    "gzip_bomb": _gzip_bomb,
    "empty": _empty,
    "chunked": _chunked,
    "random_bytes": _plain("random_bytes", _random_bytes),
    "bom": _plain("bom", _bom),
}
KINDS = tuple(MAKERS)
# Kinds that cost the worker most (large bodies): thinned in the big corpus run so it
# stays a few seconds; every one still appears in every block of len(KINDS) bodies.
HEAVY = frozenset({"long_string", "many_keys", "gzip_bomb", "deep_array", "deep_object"})


def corpus(n: int, seed: int = 0, heavy_every: int = 1) -> Iterator[Body]:
    """n bodies cycling through KINDS; a heavy kind only every `heavy_every`-th cycle
    (a good body stands in for it otherwise)."""
    rng = random.Random(seed)
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind in HEAVY and (i // len(KINDS)) % heavy_every:
            kind = "good"
        yield MAKERS[kind](rng)
