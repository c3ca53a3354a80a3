"""Which requests to sample: a share of them, at most so many a second, for one
decrement per request.

Flipping a coin per request costs a call and a random number on every request. The
gap between two sampled requests of a coin flip with probability p is geometric, so
the sampler draws the gap once per sample and the serving path only counts it down:

    sampler.countdown -= 1
    if sampler.countdown <= 0 and sampler.take(): ...sample this request...

The cap (`max_per_second`) thins the selection by a ratio re-estimated every second
from the traffic seen, so a capped sampler also costs one decrement per request. A
token bucket behind it is the hard limit for bursts between two estimates. Requests
the rate selected but the cap kept out are counted in `rate_limited`: exactly when
the rate is 1 or the cap does not bind, otherwise drawn from the binomial law the
per-request coin flips would give. That draw is a numpy call, so it is not made per
sample on the serving path: the requests the cap thinned are only added up there, and
drawn in one binomial when the count is read or the law changes (a sum of binomials
with one law is a binomial of the sum).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .compiled import compiled

NEVER = 1 << 62  # the gap for sample_rate 0: no request is ever sampled
GAPS_AHEAD = 256  # geometric gaps drawn in one numpy call
ESTIMATE_SECONDS = 1.0  # how often the thinning is re-estimated
OVERLOAD_ESTIMATE_SECONDS = 0.1  # sooner when the bucket refuses: traffic rose


def take_token(
    tokens: float, filled_at: float, now: float, rate: float, capacity: float
) -> tuple[float, bool]:
    """A token bucket's step: (tokens left, taken) once refilled at `rate` a second
    since `filled_at`, up to `capacity`. (sidecar/_sampling.c does the same in C.)"""
    tokens += (now - filled_at) * rate
    if tokens > capacity:  # not min(): this runs once per sample
        tokens = capacity
    if tokens >= 1.0:
        return tokens - 1.0, True
    return tokens, False


class TokenBucket:
    """At most `rate` takes a second, in bursts of up to a second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = self.tokens = max(1.0, rate)
        self.clock = clock
        self.last = clock()

    def take(self, now: float | None = None) -> bool:
        if now is None:
            now = self.clock()
        self.tokens, taken = take_token(self.tokens, self.last, now, self.rate, self.capacity)
        self.last = now
        return taken


class PythonSampler:
    """Geometric gaps between samples; `take()` runs once per gap, never per request.

    The compiled `Sampler` (sidecar/_sampling.c) has this class as a base and replaces
    `take()` with C; the state below lives in its struct, and the rare steps
    (`_settle`, `_estimate`, `_draw_ahead`) stay here for both."""

    countdown: int
    thinning: float
    max_per_second: float
    clock: Callable[[], float]
    _gap: int
    _drawn: int
    _gaps: list[int]
    _refused: int
    _thinned: int
    _estimated_at: float
    _tokens: float
    _filled_at: float
    _capacity: float

    def __init__(
        self,
        rate: float,
        max_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {rate!r}")
        if not max_per_second > 0:
            raise ValueError(f"max_samples_per_second must be positive, got {max_per_second!r}")
        self.rate = rate
        self.max_per_second = max_per_second
        self.clock = clock
        rng = np.random.default_rng(seed)
        self._geometric = rng.geometric
        self._binomial = rng.binomial
        self.thinning = 1.0  # the share of selected requests the cap lets through
        self._refused = 0  # requests the token bucket refused (each one taken)
        # Requests of ended gaps while the cap thinned, each unselected or selected and
        # refused: added up by take() on the serving thread (its only writer), and drawn
        # into _thinned_refused up to _settled by _settle(), under the lock, from
        # whichever thread reads rate_limited.
        self._thinned = 0
        self._settled = 0
        self._thinned_refused = 0
        self._settle_lock = threading.Lock()
        self._drawn = 0  # requests covered by the gaps drawn so far
        self._gap = 0
        # The cap's token bucket, in the sampler's own fields (the compiled one's struct).
        self._capacity = self._tokens = max(1.0, max_per_second)
        self._estimated_at = self._filled_at = clock()
        self._requests_at_estimate = 0
        self._p = rate  # the gaps' law: a request is selected with probability p
        self._gaps = []  # gaps drawn ahead for p, taken from the end
        self.countdown = self._draw()

    @property
    def seen(self) -> int:
        """Requests counted down so far (every request the serving path offered)."""
        return self._drawn - self.countdown

    @property
    def undecided(self) -> int:
        """Requests of the current gap: taken or counted when the gap ends."""
        return self._gap - self.countdown

    @property
    def rate_limited(self) -> int:
        """Requests the rate selected and the cap refused."""
        self._settle()
        return self._refused + self._thinned_refused

    def take(self) -> bool:
        """The countdown ran out: decide this request, draw the next gap."""
        skipped = self._gap - 1
        if skipped and self.thinning < 1.0:
            self._thinned += skipped
        now = self.clock()
        if now - self._estimated_at >= ESTIMATE_SECONDS:
            self._estimate(now)
        self._tokens, taken = take_token(
            self._tokens, self._filled_at, now, self.max_per_second, self._capacity
        )
        self._filled_at = now
        if not taken:
            self._refused += 1
            if now - self._estimated_at >= OVERLOAD_ESTIMATE_SECONDS:
                self._estimate(now)
        self.countdown = self._draw()
        return taken

    def _settle(self) -> None:
        """Of the requests thinned since the last settling, those the rate selected and
        the cap refused. All were thinned at the current thinning: `_estimate`, the one
        place it changes, settles first, on the serving thread, between two takes."""
        with self._settle_lock:
            thinned = self._thinned
            pending = thinned - self._settled
            if not pending:
                return
            self._settled = thinned
            if self.rate >= 1.0:
                self._thinned_refused += pending
                return
            p, q = self.rate, self.thinning
            refused = p * (1.0 - q) / (1.0 - p * q)  # P(selected, refused | not taken)
            self._thinned_refused += int(self._binomial(pending, refused))

    def _estimate(self, now: float) -> None:
        """Thin to the cap: selected requests a second over the last estimate."""
        self._settle()
        seen = self.seen
        selected = self.rate * (seen - self._requests_at_estimate) / (now - self._estimated_at)
        self.thinning = min(1.0, self.max_per_second / selected) if selected > 0 else 1.0
        self._estimated_at, self._requests_at_estimate = now, seen
        self._set_probability()

    def _set_probability(self) -> None:
        """The gaps' law for the current rate and thinning; gaps drawn ahead for another
        law are dropped."""
        p = self.rate * self.thinning
        if p != self._p:
            self._p = p
            self._gaps = []

    def _draw(self) -> int:
        gaps = self._gaps
        gap = gaps.pop() if gaps else self._draw_ahead()
        self._gap = gap
        self._drawn += gap
        return gap

    def _draw_ahead(self) -> int:
        """The next gap, and GAPS_AHEAD more for later: one numpy call per batch of
        samples instead of a random number, a log and a division in Python per sample.
        Beyond 2**63 (p below about 1e-18) numpy gives 2**63 - 1: never, in effect."""
        p = self._p
        if p <= 0.0:
            return NEVER
        gaps = [1] * GAPS_AHEAD if p >= 1.0 else self._geometric(p, GAPS_AHEAD).tolist()
        gap: int = gaps.pop()
        self._gaps = gaps
        return gap


if TYPE_CHECKING:
    Sampler = PythonSampler
else:
    _core = compiled("_sampling", "SamplerCore")
    Sampler = PythonSampler if _core is None else type("Sampler", (_core, PythonSampler), {})
COMPILED = Sampler is not PythonSampler
