"""The ``Timed`` mixin: a step kind's time in library calls, by phase."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator


class Timed:
    """Mixin for executors: records the time of library calls by phase (see ``seconds``), so
    a benchmark can tell buildgraph's overhead from the tools' own time."""

    @property
    def seconds(self) -> Dict[str, float]:
        """Time spent in library calls, by phase (returned as metadata ``seconds``): the step's
        wall time minus their sum is buildgraph's overhead."""
        if not hasattr(self, "_seconds"):
            self._seconds: Dict[str, float] = {}
        return self._seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0)
                                        + time.perf_counter() - start, 4)
