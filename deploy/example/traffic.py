"""Replay request rows (JSON lines) against a KServe v1 endpoint, for deploy/compose.yaml.

    python traffic.py http://localhost:8080/v1/models/churn:predict serving.jsonl

Posts --batch rows per request, --rate requests a second, for --seconds, cycling
through the file; a failed request is reported and the replay goes on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("rows", help="JSON lines file, one request row per line")
    parser.add_argument("--batch", type=int, default=4, help="rows per request")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args = parser.parse_args(argv)
    with open(args.rows, encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    if not rows:
        print(f"traffic: no rows in {args.rows}", file=sys.stderr)
        return 2
    cycle = itertools.cycle(rows)
    sent = failed = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        body = json.dumps({"instances": [next(cycle) for _ in range(args.batch)]}).encode()
        request = urllib.request.Request(
            args.url, data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
            sent += 1
        except (urllib.error.URLError, OSError) as exc:  # the server may still be starting
            failed += 1
            if failed == 1 or failed % 100 == 0:
                print(f"traffic: {args.url}: {exc} ({failed} failed)", file=sys.stderr)
        time.sleep(1.0 / args.rate)
    print(f"traffic: {sent} requests sent, {failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
