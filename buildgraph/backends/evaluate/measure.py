"""Timing a call until the measurement is stable: windows of runs, compared in pairs.

One run's time says little on a shared machine; a fixed count of runs says nothing about
whether that count was enough. So :func:`measure` times *windows* of runs (each at least
``runs`` runs and ``window_s`` seconds long) until the medians of two consecutive windows
agree within ``spread`` (relative), or the time cap ``max_s`` is reached. The figures (p50, p90,
p99, mean) come from the last two windows, the pair that agreed, and the result says whether
they did (``stable``), by how much (``spread``) and how long it took. A run that takes longer
than the cap allows gets shorter windows (at least 3 runs each).

``max_s`` is a real cap on one setting, warm-up included: the clock is read after every run,
and once ``max_s`` has passed no further run starts (``stop: "max_s"``, with ``stop_detail``
"stopped at max_s after N runs"); the figures then come from the runs made (the warm-up runs
when not one timed run fitted). A single run that never returns is the runner's watchdog's
job (:mod:`buildgraph.backends.evaluate.bench_runner`).

Pure Python with an injectable clock (tests drive it with a fake one); no numpy, so the
runner's own memory and start-up stay small.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

MIN_WINDOW_RUNS = 3
MAX_WINDOWS = 1000


@dataclass(frozen=True)
class WindowPolicy:
    """When a measurement is good enough, and how long it may take."""

    warmup: int = 3
    """Untimed runs first (at least one run is always made, to size the windows)."""
    runs: int = 20
    """Fewest timed runs in a window."""
    window_s: float = 0.2
    """Shortest window: fast models get more runs per window, so a window outlasts the noise
    of one scheduler tick."""
    spread: float = 0.05
    """Two consecutive windows agree when their medians differ by at most this fraction."""
    min_windows: int = 2
    max_s: float = 30.0
    """Cap on the timed windows of one setting (seconds)."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default method)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def relative_spread(a: float, b: float) -> float:
    """|a - b| relative to the smaller of the two (0 when both are 0)."""
    low = min(a, b)
    if low <= 0:
        return 0.0 if a == b else float("inf")
    return abs(a - b) / low


def measure(fn: Callable[[], Any], policy: WindowPolicy,
            clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Time ``fn()`` under ``policy``; a JSON-ready dict of figures (milliseconds)."""
    first = clock()
    deadline = first + policy.max_s
    est_times: List[float] = []
    for _ in range(max(1, policy.warmup)):
        start = clock()
        fn()
        now = clock()
        est_times.append(now - start)
        if now >= deadline:
            break
    est = max(statistics.median(est_times), 1e-9)
    per_window = max(policy.runs, math.ceil(policy.window_s / est))
    # leave room for min_windows windows in what the warm-up left of the cap
    fits = math.floor((deadline - clock()) / (policy.min_windows * est))
    per_window = max(MIN_WINDOW_RUNS, min(per_window, fits))
    windows: List[List[float]] = []
    began = clock()
    stop = "time cap"
    spread = float("inf")
    capped = clock() >= deadline
    while not capped:
        times: List[float] = []
        for _ in range(per_window):
            start = clock()
            fn()
            now = clock()
            times.append(now - start)
            if now >= deadline:
                capped = True
                break
        windows.append(times)
        if len(windows) >= 2 and not capped:
            spread = relative_spread(statistics.median(windows[-1]),
                                     statistics.median(windows[-2]))
        if len(windows) >= policy.min_windows and spread <= policy.spread:
            stop = "agreed"
            break
        elapsed = clock() - began
        last = sum(times)
        if len(windows) >= policy.min_windows and elapsed + last > policy.max_s \
                or len(windows) >= MAX_WINDOWS:
            break
    elapsed = clock() - began
    timed_runs = sum(len(w) for w in windows)
    detail = ""
    if capped:
        stop = "max_s"
        detail = (f"stopped at max_s ({policy.max_s:g} s) after {len(est_times)} warm-up and "
                  f"{timed_runs} timed runs")
    used = sorted(t for w in windows[-2:] for t in w) or sorted(est_times)
    ms = 1e3
    p50 = percentile(used, 50)
    return {
        "p50_ms": round(p50 * ms, 4),
        "p90_ms": round(percentile(used, 90) * ms, 4),
        "p99_ms": round(percentile(used, 99) * ms, 4),
        "mean_ms": round(statistics.fmean(used) * ms, 4),
        "min_ms": round(used[0] * ms, 4),
        "max_ms": round(used[-1] * ms, 4),
        "samples": len(used),
        "windows": len(windows),
        "runs_per_window": per_window,
        "window_medians_ms": [round(statistics.median(w) * ms, 4) for w in windows],
        "spread": round(spread, 4) if math.isfinite(spread) else None,
        "spread_limit": policy.spread,
        "stable": stop == "agreed",
        "stop": stop,
        **({"stop_detail": detail} if detail else {}),
        "runs": len(est_times) + timed_runs,
        "total_s": round(clock() - first, 3),
        "timed_s": round(elapsed, 3),
        "warmup_runs": len(est_times),
    }
