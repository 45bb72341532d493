"""The benchmark's stability rule (windows until two consecutive medians agree, under a cap),
driven by a fake clock: each call of the timed function advances it by a scripted duration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from buildgraph.backends.evaluate.measure import WindowPolicy, measure, percentile


class FakeClock:
    """``fn`` advances time by the next scripted duration; ``clock()`` reads it."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


def test_steady_timings_stop_after_two_windows_and_report_their_percentiles():
    clock = FakeClock(itertools.repeat(0.010))
    out = measure(clock.fn, WindowPolicy(warmup=2, runs=5, window_s=0.0, spread=0.05),
                  clock=clock.clock)
    assert out["stable"] and out["stop"] == "agreed"
    assert out["windows"] == 2 and out["runs_per_window"] == 5
    assert out["samples"] == 10 and out["spread"] == 0.0
    assert out["p50_ms"] == out["p99_ms"] == 10.0
    assert clock.calls == 2 + 10  # warm-up runs are not timed into the windows


def test_a_drifting_timing_runs_until_two_windows_agree():
    # windows of 4 runs: 20 ms, 15 ms, 12 ms, 11.9 ms (the last two agree within 5 %)
    script = [0.02] * 1 + [0.02] * 4 + [0.015] * 4 + [0.012] * 4 + [0.0119] * 4
    clock = FakeClock(script)
    out = measure(clock.fn, WindowPolicy(warmup=1, runs=4, window_s=0.0, spread=0.05),
                  clock=clock.clock)
    assert out["window_medians_ms"] == [20.0, 15.0, 12.0, 11.9]
    assert out["stable"] and out["windows"] == 4
    assert out["spread"] == pytest.approx(0.1 / 11.9, abs=1e-4)
    # figures from the agreeing pair only, not the slow first windows
    assert out["max_ms"] == 12.0 and out["min_ms"] == 11.9


def test_noise_that_never_settles_stops_at_the_cap_and_says_so():
    # alternating windows of 10 ms and 20 ms never agree within 5 %
    def script():
        yield 0.01
        for i in itertools.count():
            yield from [0.01 if i % 2 == 0 else 0.02] * 5

    clock = FakeClock(script())
    out = measure(clock.fn, WindowPolicy(warmup=1, runs=5, window_s=0.0, spread=0.05,
                                         max_s=1.0), clock=clock.clock)
    assert not out["stable"] and out["stop"] == "time cap"
    assert out["timed_s"] <= 1.0 + 1e-9  # no window started that would overrun the cap
    assert out["spread"] == pytest.approx(1.0)


def test_windows_grow_to_the_minimum_window_time_and_shrink_to_fit_the_cap():
    fast = FakeClock(itertools.repeat(0.001))
    out = measure(fast.fn, WindowPolicy(warmup=1, runs=5, window_s=0.2), clock=fast.clock)
    assert out["runs_per_window"] == 200  # 0.2 s of 1 ms runs
    slow = FakeClock(itertools.repeat(2.0))
    out = measure(slow.fn, WindowPolicy(warmup=1, runs=20, window_s=0.2, max_s=20.0),
                  clock=slow.clock)
    assert out["runs_per_window"] == 4  # two windows of 2 s runs fit in the 18 s warm-up left
    assert out["total_s"] <= 20.0  # the cap holds warm-up included


def test_percentiles_match_numpy():
    values = sorted(np.random.default_rng(0).exponential(size=137).tolist())
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_max_s_is_a_real_cap_when_single_runs_are_slow():
    # 3 s runs, cap 4 s: one warm-up run, one timed run, then no run starts after the cap
    slow = FakeClock(itertools.repeat(3.0))
    out = measure(slow.fn, WindowPolicy(warmup=3, runs=20, window_s=0.2, max_s=4.0),
                  clock=slow.clock)
    assert out["stop"] == "max_s" and not out["stable"]
    assert out["stop_detail"] == "stopped at max_s (4 s) after 2 warm-up and 0 timed runs"
    assert slow.calls == 2 and out["runs"] == 2
    assert out["p50_ms"] == 3000.0  # figures from the runs made (here the warm-up ones)
    # a cap reached inside the windows stops there too, with the timed runs' figures
    mid = FakeClock(itertools.repeat(1.0))
    out = measure(mid.fn, WindowPolicy(warmup=1, runs=20, window_s=0.0, max_s=5.0,
                                       spread=0.0), clock=mid.clock)
    assert out["stop"] == "max_s" and mid.calls == 5 and out["total_s"] == 5.0
    assert out["stop_detail"].endswith("after 1 warm-up and 4 timed runs")
