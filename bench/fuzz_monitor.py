"""Coverage-guided fuzzing (atheris, libFuzzer) of what a client controls: the sampled
body as the worker sees it (bytes, how they were chunked, a Content-Encoding), and the
datagrams the sidecar's tap receiver reads.

Each input is one sample for a Monitor with evidence on: it must be checked or dropped
under a reason, with no monitor error, and the counts must add up; a datagram must be
decoded or refused with TapFormatError. Any other outcome is a crash that libFuzzer
reports with the input that caused it. The seed corpus is tests/hostile.py's.

    pip install atheris
    python bench/fuzz_monitor.py -runs=200000            # samples
    python bench/fuzz_monitor.py --datagrams -runs=200000
    (any libFuzzer flag works: -max_total_time=60, -max_len=65536, a corpus directory)
"""

from __future__ import annotations

import os
import sys
import tempfile
import zlib

import atheris

with atheris.instrument_imports():
    from sidecar import Baseline, EvidenceOptions
    from sidecar.profile import ProfileOptions
    from sidecar.tap import _COUNTS, _SAMPLE, MAGIC, TapFormatError, decode
    from sidecar.worker import Monitor, Sample

ENCODINGS = (b"", b"gzip", b"deflate", b"br", b"GZIP", b"gzip, deflate")


def build_monitor() -> Monitor:
    rows = [
        {"x": float(i % 100), "c": "abc"[i % 3], "score": (i % 10) / 10, "v": [1.0, 2.0]}
        for i in range(2000)
    ]
    baseline = Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))
    return Monitor(baseline, registry=None, evidence=EvidenceOptions(per_feature=4))


MONITOR = build_monitor()


def one_sample(data: bytes) -> None:
    """Input layout: encoding index, compress flag, number of cuts (0-4), two bytes per
    cut position, then the body."""
    head, data = data[:3].ljust(3, b"\0"), data[3:]
    encoding = ENCODINGS[head[0] % len(ENCODINGS)]
    ncuts = head[2] % 5
    cuts = sorted(int.from_bytes(data[2 * i : 2 * i + 2], "big") for i in range(ncuts))
    body = data[2 * ncuts :]
    if head[1] & 1 and encoding in (b"gzip", b"GZIP"):
        body = _gzip(body)
    elif head[1] & 1 and encoding == b"deflate":
        body = zlib.compress(body)
    bounds = [0, *(c % (len(body) + 1) for c in cuts), len(body)]
    chunks = [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a] or [b""]
    headers = [(b"content-type", b"application/json")]
    if encoding:
        headers.append((b"content-encoding", encoding))
    counts = MONITOR.counts
    before = counts.checked + sum(counts.rejected.values())
    MONITOR.submit(Sample(chunks, headers=headers))
    MONITOR.process_pending()
    if counts.errors:
        raise AssertionError(f"monitor error {dict(counts.errors)} for body {body[:200]!r}")
    after = counts.checked + sum(counts.rejected.values())
    if after != before + 1:
        raise AssertionError(f"sample counted {after - before} times: {body[:200]!r}")


def one_datagram(data: bytes) -> None:
    try:
        decode(data)
    except TapFormatError:
        pass


def _gzip(body: bytes) -> bytes:
    packer = zlib.compressobj(wbits=31)
    return packer.compress(body) + packer.flush()


def seed_corpus(directory: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.hostile import corpus  # the hand-written hostile kinds

    # The heavy kinds (100k-deep nesting, bombs) would set libFuzzer's input size.
    for i, item in enumerate(corpus(300, seed=0, heavy_every=1000)):
        with open(os.path.join(directory, f"seed-{i}"), "wb") as f:
            # Encoding byte 0 (none), no compression, no cuts: the body as the corpus has it.
            f.write(b"\x00\x00\x00" + item.data)


def seed_datagrams(directory: str) -> None:
    """A sample and a counts datagram as DatagramSink writes them."""
    body, encoding, model = b'{"x": 1.0, "c": "a"}', b"gzip", b"m"
    sample = _SAMPLE.pack(MAGIC, b"S", b"8 bytes!", 200, len(model), len(encoding), 0, len(body))
    counts = _COUNTS.pack(MAGIC, b"C", b"8 bytes!", len(model))
    seeds = {
        "sample": sample + model + encoding + body + b'{"predictions": [0.5]}',
        "counts": counts + model + b'{"seen": 3, "sent": 2, "dropped": {"sink_busy": 1}}',
    }
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def main() -> None:
    datagrams = "--datagrams" in sys.argv
    argv = [a for a in sys.argv if a != "--datagrams"]
    target = one_datagram if datagrams else one_sample
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as seeds:
        if not any(not a.startswith("-") for a in argv[1:]):
            (seed_datagrams if datagrams else seed_corpus)(seeds)
            argv.append(seeds)
        atheris.Setup(argv, target)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
