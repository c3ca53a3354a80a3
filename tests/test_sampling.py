from __future__ import annotations

import sys
import threading

import pytest
from scipy import stats

from sidecar.sampling import COMPILED, PythonSampler, Sampler
from tests.clock import Clock

# Every test runs on the Python sampler and, where it was built, the compiled one.
KINDS = [PythonSampler, Sampler] if COMPILED else [PythonSampler]


Make = type[PythonSampler]


@pytest.fixture(params=KINDS, ids=lambda kind: "python" if kind is PythonSampler else "compiled")
def make(request: pytest.FixtureRequest) -> Make:
    kind: Make = request.param
    return kind


def offer(sampler: PythonSampler, n: int, clock: Clock | None = None, per_second: float = 0) -> int:
    """The serving path's loop: one decrement per request, take() when it runs out."""
    taken = 0
    for _ in range(n):
        if clock is not None:
            clock.now += 1.0 / per_second
        sampler.countdown -= 1
        if sampler.countdown <= 0 and sampler.take():
            taken += 1
    return taken


@pytest.mark.parametrize("rate", [0.001, 0.05, 0.1, 0.5, 0.9])
def test_the_share_sampled_is_the_sample_rate(rate: float, make: Make) -> None:
    n = 200_000
    taken = offer(make(rate, 1e12, seed=1), n)
    # A two-sided binomial test at 1e-4: a correct sampler fails it 1 time in 10,000.
    assert stats.binomtest(taken, n, rate).pvalue > 1e-4


def test_gaps_between_samples_are_geometric_like_a_coin_flip_per_request(make: Make) -> None:
    sampler = make(0.2, 1e12, seed=2)
    gaps = []
    last = 0
    for i in range(1, 100_001):
        sampler.countdown -= 1
        if sampler.countdown <= 0 and sampler.take():
            gaps.append(i - last)
            last = i
    # Chi-square goodness of fit against the geometric law: gaps 1..15 and 16+.
    observed = [gaps.count(k) for k in range(1, 16)] + [sum(g >= 16 for g in gaps)]
    law = stats.geom(0.2)
    expected = [law.pmf(k) * len(gaps) for k in range(1, 16)] + [law.sf(15) * len(gaps)]
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_every_request_is_counted_as_seen(make: Make) -> None:
    sampler = make(0.3, 1e12, seed=3)
    offer(sampler, 12_345)
    assert sampler.seen == 12_345


def test_sample_rate_zero_never_samples_and_still_counts_requests(make: Make) -> None:
    sampler = make(0.0, 100.0, seed=4)
    assert offer(sampler, 10_000) == 0
    assert sampler.seen == 10_000
    assert sampler.rate_limited == 0


def test_the_cap_holds_under_traffic_far_above_it_and_counts_every_refused_request(
    make: Make,
) -> None:
    clock = Clock()
    sampler = make(1.0, 100.0, clock=clock, seed=5)
    taken = offer(sampler, 50_000, clock, per_second=5_000)  # 10 s at 50x the cap
    assert 900 <= taken <= 1_100 + 100  # 100/s for 10 s, plus the first second's burst
    # At rate 1 the count is exact; the current gap is decided when it ends.
    assert taken + sampler.rate_limited + sampler.undecided == 50_000


def test_the_cap_thins_requests_instead_of_checking_the_clock_per_request(make: Make) -> None:
    calls = 0
    clock = Clock()

    def counting_clock() -> float:
        nonlocal calls
        calls += 1
        return clock.now

    sampler = make(1.0, 100.0, clock=counting_clock, seed=6)
    offer(sampler, 50_000, clock, per_second=5_000)
    assert calls < 2_000  # about one per sample, not one per request


def test_refused_requests_at_a_lower_rate_are_counted_in_proportion(make: Make) -> None:
    clock = Clock()
    sampler = make(0.5, 100.0, clock=clock, seed=7)
    taken = offer(sampler, 200_000, clock, per_second=10_000)  # 20 s, 5,000 selected/s
    selected = taken + sampler.rate_limited
    assert stats.binomtest(selected, 200_000, 0.5).pvalue > 1e-4
    assert 1_900 <= taken <= 2_200


def test_after_traffic_drops_the_cap_stops_thinning(make: Make) -> None:
    clock = Clock()
    sampler = make(1.0, 100.0, clock=clock, seed=8)
    offer(sampler, 20_000, clock, per_second=10_000)
    assert sampler.thinning < 0.05
    offer(sampler, 500, clock, per_second=50)  # 10 s below the cap
    assert sampler.thinning == 1.0
    assert offer(sampler, 100, clock, per_second=50) == 100


def test_the_gaps_follow_a_new_thinning_at_once_not_after_those_drawn_ahead(make: Make) -> None:
    """Gaps are drawn 256 at a time; when the cap starts thinning, those drawn for the
    old law (every request, here) are dropped."""
    clock = Clock()
    sampler = make(1.0, 100.0, clock=clock, seed=3)

    def take_calls(n: int) -> int:
        calls = 0
        for _ in range(n):
            clock.now += 0.001  # 1,000 requests a second: ten times the cap
            sampler.countdown -= 1
            if sampler.countdown <= 0:
                calls += 1
                sampler.take()
        return calls

    while sampler.thinning == 1.0:  # every request, until the bucket runs dry
        assert take_calls(1) == 1
    assert sampler.thinning == pytest.approx(0.1, rel=0.2)
    # About a tenth of the next requests, from the first.
    assert take_calls(30) <= 10


@pytest.mark.parametrize(("rate", "cap"), [(-0.1, 10.0), (1.5, 10.0), (0.5, 0.0), (0.5, -1.0)])
def test_bad_settings_are_rejected_naming_the_option(rate: float, cap: float, make: Make) -> None:
    with pytest.raises(ValueError, match="sample_rate|max_samples_per_second"):
        make(rate, cap)


def test_requests_the_cap_thins_are_drawn_when_read_not_per_sample(make: Make) -> None:
    """The binomial draw is a numpy call: the serving path only adds up what the cap
    thinned, and one draw covers them all when the count is read."""
    clock = Clock()
    sampler = make(0.5, 100.0, clock=clock, seed=9)
    sizes: list[int] = []
    draw = sampler._binomial

    def counting_binomial(n: int, p: float) -> int:
        sizes.append(n)
        return int(draw(n, p))

    sampler._binomial = counting_binomial  # type: ignore[assignment]
    offer(sampler, 30_000, clock, per_second=10_000)  # 3 s at 50 times the cap
    assert sampler.thinning < 0.1
    estimates = len(sizes)  # one draw per re-estimate while the cap thinned, at most
    assert estimates <= 3 / 0.1 + 1
    limited = sampler.rate_limited
    assert len(sizes) == estimates + 1
    assert sampler.rate_limited == limited  # nothing new to draw: no call, same count
    assert len(sizes) == estimates + 1
    assert sum(sizes) == sampler._thinned


def test_rate_limited_read_from_another_thread_loses_no_request(make: Make) -> None:
    """At rate 1 every thinned request is refused, so the count is exact: reading it
    from a second thread while the serving thread counts must lose none."""
    clock = Clock()
    sampler = make(1.0, 100.0, clock=clock, seed=10)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            _ = sampler.rate_limited

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as it can
    reader.start()
    try:
        taken = offer(sampler, 200_000, clock, per_second=200)  # thinned by half
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert taken + sampler.rate_limited + sampler.undecided == 200_000
