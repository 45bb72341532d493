"""Run events → the console (rich live view or plain lines) or JSON lines for CI.

The scheduler calls plain hook methods (doit's reporter); it never formats text itself. rich is
imported only once a step actually executes, so a fully cached run stays fast.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

STATUS_MARK = {"built": "✓", "cached": "·", "restored": "↺", "failed": "✗", "skipped": "-",
               "cancelled": "!"}


class Reporter:
    """Silent reporter: the base of the others, and what the Python API uses by default."""

    def start(self, graph: Any, selected: Sequence[str], jobs: int) -> None: ...
    def step_started(self, step_id: str, reasons: Sequence[str]) -> None: ...
    def step_finished(self, result: Any) -> None: ...
    def waiting(self, step_id: str) -> None: ...
    def transfer(self, step_id: str, done: int, total: int) -> None: ...
    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def tick(self) -> None: ...
    def finish(self, result: Any) -> None: ...


def summary_line(result: Any, timed: bool = True) -> str:
    parts = []
    for status in ("built", "cached", "restored", "failed", "skipped", "cancelled"):
        n = result.count(status)
        if n or status in ("built", "cached"):
            parts.append(f"{n} {status}")
    head = "interrupted" if result.interrupted else ("ok" if result.ok else "FAILED")
    return (f"{head}: {result.recipe}: {len(result.steps)} steps: " + ", ".join(parts)
            + (f" in {result.wall_s:.2f} s" if timed else ""))


class ConsoleReporter(Reporter):
    """Human output. On a terminal: a live panel of running steps; elsewhere: one line each."""

    def __init__(self, stream: IO[str] = sys.stderr, verbose: bool = False,
                 live: Optional[bool] = None):
        self.stream = stream
        self.verbose = verbose
        self.live_enabled = stream.isatty() if live is None else live
        self._running: Dict[str, float] = {}
        self._transfers: Dict[str, Tuple[int, int]] = {}
        self._live: Any = None
        self._lock = threading.Lock()
        self._total = 0
        self._finished = 0
        self._hits = 0
        self.warned = False
        """A warning or note was printed: a no-op stamp must not silence it next time."""

    def start(self, graph: Any, selected: Sequence[str], jobs: int) -> None:
        self._total = len(selected)

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def _ensure_live(self) -> None:
        if self._live is not None or not self.live_enabled:
            return
        from rich.console import Console
        from rich.live import Live

        reporter = self

        class _Panel:
            def __rich__(self) -> Any:
                # Cells are styled Text, never markup strings: the panel is re-rendered inside
                # whatever print call happens to refresh it, and ours pass markup=False (step
                # ids and log lines are not markup), which would show "[dim]...[/]" verbatim.
                # Step ids are Text too, so a '[' in one is never taken for a tag.
                from rich.table import Table
                from rich.text import Text

                table = Table.grid(padding=(0, 1))
                now = time.monotonic()
                for sid, since in list(reporter._running.items()):
                    moved = reporter._transfers.get(sid)
                    if moved is not None and moved[1]:
                        from buildgraph.engine.sizes import format_size

                        label = Text(f"{sid}  pulling {moved[0] * 100 // moved[1]:3d}% of "
                                     f"{format_size(moved[1])}")
                    else:
                        label = Text(sid)
                    table.add_row(Text("⠿", style="cyan"), label,
                                  Text(f"{now - since:5.1f}s"))
                table.add_row(Text(""), Text(f"{reporter._finished}/{reporter._total} done, "
                                             f"{reporter._hits} from the cache", style="dim"),
                              Text(""))
                return table

        self._live = Live(_Panel(), console=Console(file=self.stream), refresh_per_second=8,
                          transient=True)
        self._live.start()

    def step_started(self, step_id: str, reasons: Sequence[str]) -> None:
        with self._lock:
            self._running[step_id] = time.monotonic()
            self._ensure_live()
            shown = list(reasons[:3]) + ([f"+{len(reasons) - 3} more"] if len(reasons) > 3 else [])
            why = f"  ({'; '.join(shown)})" if reasons else ""
            if self._live is None or self.verbose:
                self._print(f"▶ {step_id}{why}")

    def waiting(self, step_id: str) -> None:
        self._print(f"… {step_id}: another buildgraph process is building it; waiting")

    def transfer(self, step_id: str, done: int, total: int) -> None:
        self._transfers[step_id] = (done, total)

    def info(self, message: str) -> None:
        self.warned = True
        self._print(message)

    def step_finished(self, result: Any) -> None:
        with self._lock:
            self._running.pop(result.step_id, None)
            self._transfers.pop(result.step_id, None)
            self._finished += 1
            self._hits += result.status in ("cached", "restored")
            mark = STATUS_MARK.get(result.status, "?")
            if result.status == "cached" and not self.verbose:
                return
            line = f"{mark} {result.status:<9} {result.step_id}"
            if result.status in ("built",):
                line += f"  {result.wall_s:.2f}s"
            if result.message and result.status != "built":
                line += f": {result.message}"
            self._print(line)
            if result.status == "failed":
                if result.log_tail:
                    self._print("    " + result.log_tail.replace("\n", "\n    "))
                if result.log_path:
                    self._print(f"    log: {result.log_path}")

    def warning(self, message: str) -> None:
        self.warned = True
        self._print(f"warning: {message}")

    def finish(self, result: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._print(summary_line(result))


class JsonReporter(Reporter):
    """One JSON object per line: machine-readable events for CI (``--json``)."""

    def __init__(self, stream: IO[str] = sys.stdout):
        self.stream = stream
        self._lock = threading.Lock()

    def _emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"event": event, "time": round(time.time(), 3),
                                          **fields}, default=str) + "\n")
            self.stream.flush()

    def start(self, graph: Any, selected: Sequence[str], jobs: int) -> None:
        self._emit("start", recipe=graph.name, steps=list(selected), jobs=jobs)

    def step_started(self, step_id: str, reasons: Sequence[str]) -> None:
        self._emit("step_started", step=step_id, reasons=list(reasons))

    def step_finished(self, result: Any) -> None:
        self._emit("step_finished", step=result.step_id, status=result.status, key=result.key,
                   wall_s=round(result.wall_s, 3), message=result.message,
                   reasons=list(result.reasons),
                   log=str(result.log_path) if result.log_path else None,
                   outputs={k: str(v) for k, v in result.outputs.items()},
                   meta={k: v for k, v in result.meta.items() if not k.startswith("_")})

    def waiting(self, step_id: str) -> None:
        self._emit("waiting", step=step_id)

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def warning(self, message: str) -> None:
        self._emit("warning", message=message)

    def finish(self, result: Any) -> None:
        self._emit("finish", ok=result.ok, wall_s=round(result.wall_s, 3),
                   counts={s: result.count(s) for s in STATUS_MARK}, interrupted=result.interrupted)
