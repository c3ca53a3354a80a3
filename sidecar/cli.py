"""skew-sidecar profile | profile merge | check | diff | serve | demo."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import __version__
from .baseline import Baseline, BaselineError, ProfileSettings
from .check import InputProblems, check_file
from .diff import diff_baselines
from .profile import ProfileOptions, profile_files
from .readers import ReaderError
from .render import format_baseline, format_diff, format_report
from .report import DriftRule

EXIT_CHANGED = 1
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _names(values: list[str] | None) -> frozenset[str]:
    """Column lists may be given repeatedly and/or comma-separated."""
    return frozenset(n.strip() for v in values or [] for n in v.split(",") if n.strip())


class Progress:
    """Progress on stderr for long inputs: quiet for the first two seconds."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.started < 2 or now - self.last < 1:
            return
        self.last = now
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        rate = done / (now - self.started) / 1e6
        print(
            f"profiling: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB{pct}, {rate:.0f} MB/s",
            file=sys.stderr,
            flush=True,
        )


def _profile_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile",
        help="build a baseline from training data",
        description="Build a baseline from training files (CSV, TSV, JSON lines, "
        "Parquet; optionally .gz). `skew-sidecar profile merge A B -o C` merges "
        "baselines built on partitions of the same data.",
    )
    p.add_argument("train", nargs="*", help="training files")
    p.add_argument("-o", "--output", required=True, help="baseline JSON to write")
    p.add_argument(
        "--from-tfdv",
        metavar="STATS",
        help="import TFDV statistics (DatasetFeatureStatisticsList: binary .pb, TFRecord or "
        ".pbtxt) instead of profiling files (needs the [tfdv] extra)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "dask"),
        default="local",
        help="dask: profile one Parquet dataset (a directory, glob or fsspec URL such as "
        "s3://bucket/train/) file by file on a Dask cluster, each file read as the local "
        "engine reads it ([dask] extra)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="--engine dask: local worker processes (default: one per core)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="--engine dask: use the running cluster at this scheduler address instead",
    )
    p.add_argument(
        "--tfdv-dataset",
        metavar="NAME",
        help="which dataset (slice) of the statistics to import "
        "(default: the only one, else 'All Examples')",
    )
    for kind in ("categorical", "numeric", "timestamp"):
        p.add_argument(
            f"--{kind}",
            action="append",
            metavar="COL",
            help=f"treat these columns as {kind} (comma-separated, repeatable)",
        )
    p.add_argument("--exclude", action="append", metavar="COL", help="columns to leave out")
    p.add_argument(
        "--prediction-column",
        action="append",
        metavar="COL",
        help="columns holding model outputs (checked against responses)",
    )
    defaults = ProfileSettings()
    p.add_argument("--bins", type=int, default=defaults.bins, help="equal-frequency bins")
    p.add_argument("--top-k", type=int, default=defaults.top_k, help="categorical bins")
    p.add_argument("--vocabulary-cap", type=int, default=defaults.vocabulary_cap)
    p.add_argument(
        "--discrete-max",
        type=int,
        default=defaults.discrete_max,
        help="numerics with at most this many distinct values get a bin per value",
    )
    p.add_argument("--sketch-k", type=int, default=defaults.sketch_k, help="KLL sketch size")
    p.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk (memory bound)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary or progress")


def _merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skew-sidecar profile merge",
        description="Merge baselines built on partitions of one data set.",
    )
    p.add_argument("baselines", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _check_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="check a file of request bodies against a baseline",
        description="Check request bodies (one JSON body per line: an object or "
        "a list of objects) against a baseline.",
    )
    p.add_argument("requests", help="JSON lines file of request bodies (.gz ok)")
    p.add_argument("-b", "--baseline", required=True)
    p.add_argument("--json", action="store_true", help="one JSON object per window")
    p.add_argument("--window-rows", type=int, help="split the file into windows of N rows")
    rule = DriftRule()
    p.add_argument(
        "--min-rows",
        type=int,
        default=rule.min_rows,
        help="no verdict for windows or features with fewer values",
    )
    p.add_argument("--alpha", type=float, default=rule.alpha, help="G-test significance level")
    p.add_argument(
        "--psi-floor",
        type=float,
        default=rule.psi_floor,
        help="smallest PSI that can count as drift",
    )
    p.add_argument(
        "--predictions",
        action="store_true",
        help="also check prediction columns (when the rows carry model outputs)",
    )
    p.add_argument("--strict", action="store_true", help="exit 2 if any line is unusable")


def _diff_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two baselines: how the training data moved",
        description="Compare the baseline of a retrained model's data (NEW) with the "
        "one it replaces (OLD): per feature, the serving-skew measures of NEW's data in "
        "OLD's bins, missing and type-mismatch rates, added, removed and retyped "
        "features. Exit status: 0 nothing changed beyond the thresholds, 1 something "
        "did, 2 bad input.",
    )
    p.add_argument("old", help="baseline JSON of the data the current model was trained on")
    p.add_argument("new", help="baseline JSON of the new training data")
    p.add_argument("--json", action="store_true", help="one JSON object")
    rule = DriftRule()
    p.add_argument(
        "--psi-floor",
        type=float,
        default=rule.psi_floor,
        help="smallest PSI that counts as a changed distribution",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=rule.alpha,
        help="G-test significance level for distributions and rates",
    )
    p.add_argument(
        "--rate-change",
        type=float,
        default=0.05,
        help="smallest change of a missing or type-mismatch rate that counts (0.05 = 5 points)",
    )
    p.add_argument(
        "--min-rows",
        type=int,
        default=rule.min_rows,
        help="no verdict for features with fewer values on either side",
    )


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import ENV_PREFIX, ServeSettings

    p = sub.add_parser(
        "serve",
        help="run the sidecar process: mirrored requests and payload-logger CloudEvents",
        description="Receive mirrored inference requests (nginx mirror, Envoy/Istio "
        "mirroring) and KServe/Seldon payload-logger CloudEvents on any path, check "
        "them against one baseline per model, and serve /metrics, /healthz, /readyz and "
        "the debug page /skew (/skew.json). "
        f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. "
        f"{ENV_PREFIX}MAX_BODY_BYTES); a flag wins over the variable.",
    )
    defaults = ServeSettings()
    p.add_argument(
        "-b",
        "--baseline",
        action="append",
        metavar="[NAME=]PATH",
        help="baseline of model NAME (repeatable); an unnamed one is model 'default' and "
        f"takes samples not named for another model ({ENV_PREFIX}BASELINE: comma-separated)",
    )
    p.add_argument(
        "--tap",
        action="append",
        metavar="ADDRESS",
        help="also receive samples from in-app taps (SkewMiddleware(sink=...)) on this "
        "datagram address: unix:///run/skew/tap.sock or udp://127.0.0.1:9009 "
        f"(repeatable; {ENV_PREFIX}TAP: comma-separated)",
    )
    for flag, what in (
        ("redact-fields", "never keep the values of these fields in evidence"),
        ("hash-fields", "keep only a keyed BLAKE2b digest of these fields' values"),
    ):
        p.add_argument(
            f"--{flag}",
            action="append",
            metavar="FIELD[,FIELD...]",
            help=f"{what} (repeatable; {ENV_PREFIX}{flag.upper().replace('-', '_')}: "
            "comma-separated)",
        )
    options: list[tuple[str, type, str]] = [
        ("host", str, "address to listen on"),
        ("port", int, "port to listen on"),
        ("sample-rate", float, "share of requests checked"),
        ("max-samples-per-second", float, "cap on checked samples per model"),
        ("max-body-bytes", int, "larger bodies are answered 413 and counted as too_large"),
        ("window-seconds", float, "a window closes this often"),
        ("min-window-rows", int, "a shorter window is extended; no verdict on fewer rows"),
        ("queue-size", int, "samples waiting per model; beyond, dropped as queue_full"),
        ("join-wait-seconds", float, "how long a CloudEvent waits for its other half"),
        ("max-pending", int, "CloudEvent exchanges waiting at once; the oldest goes alone"),
        ("max-pending-bytes", int, "body bytes those exchanges may hold, the same way"),
        ("log-level", str, "critical, error, warning, info or debug"),
        (
            "upstream",
            str,
            "reverse proxy: forward every request to this model server URL and "
            "check sampled POSTs on the way (needs the [proxy] extra)",
        ),
        ("upstream-timeout", float, "seconds to wait for the upstream's response"),
        (
            "evidence",
            int,
            "keep this many recent offending values per feature for /skew and exemplars (0: off)",
        ),
        ("evidence-total", int, "at most this many offending values per model"),
        (
            "redaction-key",
            str,
            f"key for --hash-fields digests; prefer {ENV_PREFIX}REDACTION_KEY (flags show in "
            "ps); empty: random per process",
        ),
        ("request-id-header", str, "header whose value identifies a request in evidence"),
        (
            "baseline-poll-seconds",
            float,
            "look for a new version of each baseline file this often (0: only on SIGHUP "
            "and POST /admin/reload); a new baseline applies from the next window",
        ),
        (
            "admin-port",
            int,
            "serve /metrics, /skew and /admin/reload on this port only (0: on --port)",
        ),
        ("admin-host", str, "address of the admin port"),
        (
            "admin-token",
            str,
            f"require Authorization: Bearer TOKEN on /metrics, /skew and /admin/reload; "
            f"prefer {ENV_PREFIX}ADMIN_TOKEN (flags show in ps)",
        ),
        ("max-connections", int, "concurrent connections and requests; beyond, 503"),
    ]
    for flag, kind, text in options:
        default = getattr(defaults, flag.replace("-", "_"))
        p.add_argument(f"--{flag}", type=kind, help=f"{text} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skew-sidecar", description="Catch training/serving skew in production."
    )
    parser.add_argument("--version", action="version", version=f"skew-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _profile_parser(sub)
    _check_parser(sub)
    _diff_parser(sub)
    _serve_parser(sub)
    _demo_parser(sub)
    return parser


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .livedemo import LiveOptions

    defaults = LiveOptions()
    p = sub.add_parser(
        "demo",
        help="watch classic serving bugs get named, live, on a local model server",
        description="Serve the embedded demo churn model with SkewMiddleware on localhost "
        "(needs the [serve] extra), replay a serving stream to it over HTTP, clean at "
        "first, then with one more classic bug every few seconds, and print each bug as "
        "it is named; /metrics and the debug page /skew are up while it runs. Exit "
        "status 1 if an injected bug was not named (0 on Ctrl-C). --offline: profile and "
        "check the embedded data set in-process instead, writing the files.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=defaults.duration,
        help=f"seconds of replay (default: {defaults.duration:g}; at least 8)",
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--offline", action="store_true", help="no server: profile and check files")
    p.add_argument("--dir", help="--offline: where to write the files (default: a temp dir)")
    p.add_argument("--rows", type=int, default=defaults.training_rows, help="training rows")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:2] == ["profile", "merge"]:
            return _merge(_merge_parser().parse_args(args_list[2:]))
        args = build_parser().parse_args(args_list)
        if args.command == "profile":
            return _profile(args)
        if args.command == "check":
            return _check(args)
        if args.command == "diff":
            return _diff(args)
        if args.command == "serve":
            return _serve(args)
        return _demo(args)
    except (UsageError, BaselineError, ReaderError, ValueError, OSError) as exc:
        print(f"skew-sidecar: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _profile(args: argparse.Namespace) -> int:
    try:
        settings = ProfileSettings(
            bins=args.bins,
            top_k=args.top_k,
            vocabulary_cap=args.vocabulary_cap,
            discrete_max=args.discrete_max,
            sketch_k=args.sketch_k,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = ProfileOptions(
        settings=settings,
        categorical=_names(args.categorical),
        numeric=_names(args.numeric),
        timestamp=_names(args.timestamp),
        exclude=_names(args.exclude),
        prediction=_names(args.prediction_column),
        chunk_rows=args.chunk_rows,
        progress=Progress(not args.quiet),
    )
    if args.from_tfdv:
        baseline = _from_tfdv(args, options)
    elif args.engine == "dask":
        baseline = _from_dask(args, options)
    elif not args.train:
        raise UsageError("profile: give training files (or --from-tfdv STATS)")
    else:
        baseline = profile_files(args.train, options)
    if not baseline.rows:
        source = args.from_tfdv or ", ".join(args.train)
        raise UsageError(f"no rows in {source}: nothing to profile")
    baseline.save(args.output)
    if not args.quiet:
        print(format_baseline(baseline))
        _warn_empty(baseline)
        _warn_unknown_names(baseline, options)
        print(f"wrote {args.output}")
    return 0


def _from_tfdv(args: argparse.Namespace, options: ProfileOptions) -> Baseline:
    from .tfdv import profile_tfdv

    if args.train or args.engine != "local":
        raise UsageError("--from-tfdv takes no training files and no --engine: it reads no data")
    if options.categorical or options.numeric or options.timestamp:
        raise UsageError(
            "--categorical/--numeric/--timestamp do not apply to --from-tfdv: "
            "TFDV's statistics fix each feature's kind"
        )
    imported = profile_tfdv(args.from_tfdv, options, args.tfdv_dataset)
    for name, reason in imported.skipped.items():
        print(f"warning: {args.from_tfdv}: feature {name!r} skipped: {reason}", file=sys.stderr)
    return imported.baseline


def _from_dask(args: argparse.Namespace, options: ProfileOptions) -> Baseline:
    from .dask_profile import profile_parquet_dataset

    if len(args.train) != 1:
        raise UsageError("--engine dask takes one Parquet dataset (a directory, glob or URL)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    return profile_parquet_dataset(
        args.train[0], options, workers=args.workers, scheduler=args.scheduler
    )


def _warn_unknown_names(baseline: Baseline, options: ProfileOptions) -> None:
    named = options.categorical | options.numeric | options.timestamp | options.prediction
    for name in sorted(named - baseline.features.keys()):
        print(
            f"warning: column {name!r} named in an option is not in the training data",
            file=sys.stderr,
        )


def _warn_empty(baseline: Baseline) -> None:
    for name, feat in baseline.features.items():
        if not feat.count:
            print(
                f"warning: feature {name!r} has no values in training (all missing); "
                "only its missing rate will be checked",
                file=sys.stderr,
            )


def _merge(args: argparse.Namespace) -> int:
    merged = Baseline.load(args.baselines[0])
    for path in args.baselines[1:]:
        try:
            merged = merged.merge(Baseline.load(path))
        except BaselineError as exc:
            raise UsageError(f"cannot merge {path} into {args.baselines[0]}: {exc}") from None
    merged.save(args.output)
    if not args.quiet:
        print(format_baseline(merged))
        print(f"wrote {args.output}")
    return 0


def _check(args: argparse.Namespace) -> int:
    baseline = Baseline.load(args.baseline)
    if not Path(args.requests).is_file():
        raise UsageError(f"{args.requests}: no such file")
    rule = DriftRule(min_rows=args.min_rows, alpha=args.alpha, psi_floor=args.psi_floor)
    problems = InputProblems()
    roles = ("input", "prediction") if args.predictions else ("input",)
    first = True
    for report in check_file(
        baseline,
        args.requests,
        rule=rule,
        window_rows=args.window_rows,
        problems=problems,
        roles=roles,
    ):
        if args.json:
            sys.stdout.buffer.write(
                orjson.dumps(report.to_json(), option=orjson.OPT_APPEND_NEWLINE)
            )
        else:
            if not first:
                print()
            print(format_report(report))
        first = False
    sys.stdout.flush()
    if problems.total:
        print(
            f"warning: {problems.total} unusable lines in {args.requests} "
            f"({problems.invalid_json} invalid JSON, {problems.not_rows} not rows); first: "
            + "; ".join(problems.first_lines),
            file=sys.stderr,
        )
        if args.strict:
            return EXIT_BAD_INPUT
    return 0


def _diff(args: argparse.Namespace) -> int:
    try:
        rule = DriftRule(min_rows=args.min_rows, alpha=args.alpha, psi_floor=args.psi_floor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    diff = diff_baselines(
        Baseline.load(args.old), Baseline.load(args.new), rule, rate_change=args.rate_change
    )
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(diff.to_json(), option=orjson.OPT_APPEND_NEWLINE))
        sys.stdout.flush()
    else:
        print(format_diff(diff))
    return EXIT_CHANGED if diff.changed else 0


def _serve(args: argparse.Namespace) -> int:
    from . import serve

    settings = serve.ServeSettings.resolve(vars(args))
    return serve.run(settings)


def _demo(args: argparse.Namespace) -> int:
    if args.rows < 1:
        raise UsageError(f"--rows must be at least 1, got {args.rows}")
    if args.offline:
        return _offline_demo(args)
    if not _uvicorn_installed():
        print(
            "note: the live demo needs uvicorn (pip install 'skew-sidecar[serve]'); "
            "running the offline demo instead",
            file=sys.stderr,
        )
        return _offline_demo(args)
    if args.dir is not None:
        raise UsageError("--dir is for --offline (the live demo writes no files)")
    from .livedemo import LiveOptions, run_live

    try:
        options = LiveOptions(duration=args.duration, port=args.port, training_rows=args.rows)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run_live(options)


def _uvicorn_installed() -> bool:
    return importlib.util.find_spec("uvicorn") is not None


def _offline_demo(args: argparse.Namespace) -> int:
    from . import demo

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="skew-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    train, serving, baseline_path = (
        folder / n for n in ("train.jsonl", "serving.jsonl", "baseline.json")
    )
    _write_jsonl(train, demo.training_rows(args.rows))
    _write_jsonl(serving, demo.serving_rows())
    print(f"1. profile: {train}")
    baseline = profile_files([train], ProfileOptions(prediction=frozenset({"churn_score"})))
    baseline.save(baseline_path)
    print(format_baseline(baseline))
    print(f"\n2. check: {serving} against {baseline_path}")
    for report in check_file(Baseline.load(baseline_path), serving):
        print(format_report(report))
    print("\nwhat the demo's serving path got wrong:")
    for name, what in demo.INJECTED_SKEW.items():
        print(f"  {name}: {what}")
    print(f"\nfiles are in {folder}; try: skew-sidecar check -b {baseline_path} {serving} --json")
    return 0


def _write_jsonl(path: Path, rows: object) -> None:
    with open(path, "wb") as out:
        for row in rows:  # type: ignore[attr-defined]
            out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))


if __name__ == "__main__":
    sys.exit(main())
