"""TensorRT's messages: the one ``ILogger`` a process hands TensorRT, and where it writes.

Apart from :mod:`buildgraph.backends.tensorrt.builder` because the timing-cache store
(:mod:`~buildgraph.backends.tensorrt.timing_cache`) and the runtime need the logger too, and
the builder needs the timing cache: here, neither side imports the other.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple


SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
"""TensorRT's severities, most severe first."""

Sink = List[Tuple[str, str]]


@dataclass
class _Route:
    sink: Sink
    limit: int


class _Routing:
    """Where this process's TensorRT messages go now.

    TensorRT keeps a single logger pointer while any Builder, Runtime or Refitter exists and
    ignores a new one meanwhile (NVIDIA/TensorRT issue 1475), so a worker that serves several
    steps must hand TensorRT one logger for its whole life and switch where that logger writes:
    to the step that holds the current :func:`capture`. Messages from the thread that opened
    the capture go to it; messages from TensorRT's own threads go to the most recent capture;
    messages outside every capture are kept in ``stray`` (the last 200)."""

    def __init__(self) -> None:
        import collections
        import threading

        self.lock = threading.Lock()
        self.local = threading.local()
        self.latest: Optional[_Route] = None
        self.stray: Any = collections.deque(maxlen=200)
        self.loggers: Dict[int, Tuple[Any, Any]] = {}

    def route(self) -> Optional[_Route]:
        stack = getattr(self.local, "stack", None)
        return stack[-1] if stack else self.latest

    def write(self, severity: str, msg: str) -> None:
        with self.lock:
            route = self.route()
            if route is None:
                self.stray.append((severity, msg))
            elif severity in SEVERITIES and SEVERITIES.index(severity) <= route.limit:
                route.sink.append((severity, msg))


_ROUTING = _Routing()


def worker_logger(trt: Any) -> Any:
    """This process's one ``ILogger`` for the ``trt`` module (made on first use)."""
    held = _ROUTING.loggers.get(id(trt))
    if held is not None and held[0] is trt.ILogger:  # (a reloaded module has a new class)
        return held[1]

    class RoutingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: Any, msg: str) -> None:
            _ROUTING.write(getattr(sev, "name", str(sev)).split(".")[-1], str(msg))

    logger = RoutingLogger()
    _ROUTING.loggers[id(trt)] = (trt.ILogger, logger)
    return logger


@contextmanager
def capture(trt: Any, severity: str, sink: Sink) -> Iterator[Any]:
    """Route TensorRT's messages at ``severity`` or worse into ``sink`` while the block runs;
    yields the process's logger (:func:`worker_logger`), the only one to hand TensorRT."""
    logger = worker_logger(trt)
    route = _Route(sink, SEVERITIES.index(severity))
    stack = getattr(_ROUTING.local, "stack", None)
    if stack is None:
        stack = _ROUTING.local.stack = []
    with _ROUTING.lock:
        stack.append(route)
        previous, _ROUTING.latest = _ROUTING.latest, route
    try:
        yield logger
    finally:
        with _ROUTING.lock:
            stack.pop()
            if _ROUTING.latest is route:
                _ROUTING.latest = previous


def errors_in(sink: Sink) -> List[str]:
    return [m for s, m in sink if s in ("ERROR", "INTERNAL_ERROR")]
