import sidecar


def test_public_api_is_exactly_the_intended_names() -> None:
    assert sorted(sidecar.__all__) == sorted(
        [
            "Baseline",
            "BaselineError",
            "DriftRule",
            "Engine",
            "EvidenceOptions",
            "FeatureReport",
            "ProfileOptions",
            "ProfileSettings",
            "SkewMiddleware",
            "WindowReport",
            "__version__",
            "build_report",
            "metrics_app",
            "multiprocess_registry",
            "skew_app",
        ]
    )
    for name in sidecar.__all__:
        assert getattr(sidecar, name) is not None


def test_readme_example_runs_as_written() -> None:
    from sidecar import Baseline, Engine, build_report

    training = [{"x": float(i % 50), "c": "ab"[i % 2]} for i in range(1000)]
    baseline = Baseline.from_records(training)
    engine = Engine(baseline)
    engine.check([{"x": 1000.0, "c": "z"}] * 200)
    report = build_report(engine.close_window(), engine.baseline)
    worst = report.by_severity()[0]
    assert worst.drifted is True
