"""Open a page in headless Chromium and talk to it over the DevTools protocol (CDP).

Used by ``report --screenshot`` and by the report's browser test. No library is needed:
Chromium's ``--remote-debugging-pipe`` speaks CDP over two inherited file descriptors (it
reads commands on fd 3 and writes replies and events on fd 4), one JSON message per
NUL-terminated chunk. So nothing listens on a port and nothing from outside can connect.

What a page does wrong is collected as it loads: ``Runtime.exceptionThrown``, console calls of
type error or assert, and ``Log.entryAdded`` entries of level error (blocked or failed loads,
Content-Security-Policy violations).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from buildgraph.errors import BuildgraphError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    """The Chromium (or Chrome) executable: ``$BUILDGRAPH_CHROMIUM``, else the first of the
    usual names on PATH."""
    env = os.environ.get("BUILDGRAPH_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager (it always ends the
    browser process group)."""

    def __init__(self, executable: Optional[str] = None, width: int = 1280, height: int = 900,
                 timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BuildgraphError("no Chromium found (looked for " + ", ".join(CANDIDATES)
                                  + ")", hint="install it (Debian: apt-get install chromium) "
                                              "or set BUILDGRAPH_CHROMIUM")
        self.width, self.height, self.timeout = width, height, timeout
        self.errors: List[str] = []
        self.events: List[Dict[str, Any]] = []
        self._next = 0
        self._buffer = b""
        self._profile = tempfile.mkdtemp(prefix="buildgraph-chromium-")
        self.proc: Optional[subprocess.Popen] = None
        self.session = ""

    def __enter__(self) -> "Browser":
        import fcntl
        import sys

        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        # Chromium reads fd 3 and writes fd 4. Move our ends above 9 first, so that placing
        # one cannot overwrite the other, then let a tiny trampoline put them at 3 and 4.
        high_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(out_w)
        trampoline = [sys.executable, "-c",
                      "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
                      " os.close(int(sys.argv[1])); os.close(int(sys.argv[2]));"
                      " os.execv(sys.argv[3], sys.argv[3:])", str(high_r), str(high_w)]
        argv = [self.executable, "--headless=new", "--remote-debugging-pipe",
                "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--mute-audio", f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with it
        self.proc = subprocess.Popen(trampoline + argv, pass_fds=(high_r, high_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(high_r)
        os.close(high_w)
        self._w, self._r = cmd_w, out_r
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                       "mobile": False}, session=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            try:
                self._send({"id": 10 ** 6, "method": "Browser.close"})
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None
        for fd in (getattr(self, "_w", None), getattr(self, "_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = None  # type: ignore[assignment]
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- protocol ---------------------------------------------------------------------------
    def _send(self, message: Dict[str, Any]) -> None:
        os.write(self._w, json.dumps(message).encode() + b"\0")

    def _read(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BuildgraphError("Chromium did not answer in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise BuildgraphError("Chromium closed the DevTools pipe (it may have "
                                      "crashed)")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message = json.loads(raw)
        if "method" in message:
            self._event(message)
        return message

    def _event(self, message: Dict[str, Any]) -> None:
        self.events.append(message)
        method, params = message["method"], message.get("params") or {}
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails") or {}
            self.errors.append("exception: " + str((d.get("exception") or {}).get(
                "description") or d.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console." + params["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args") or []))
        elif method == "Log.entryAdded":
            entry = params.get("entry") or {}
            if entry.get("level") == "error":
                self.errors.append(f"{entry.get('source')}: {entry.get('text')}"
                                   + (f" ({entry['url']})" if entry.get("url") else ""))

    def call(self, method: str, params: Optional[Dict[str, Any]] = None,
             session: bool = False) -> Dict[str, Any]:
        """Send one command and wait for its reply (events that come first are collected)."""
        self._next += 1
        message: Dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BuildgraphError(f"Chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result") or {}

    def wait_for(self, method: str, seconds: Optional[float] = None) -> Dict[str, Any]:
        """Wait for the next event named ``method``."""
        deadline = time.monotonic() + (seconds or self.timeout)
        seen = len(self.events)
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            self._read(deadline)

    # --- what the report needs ----------------------------------------------------------------
    def open(self, path: Path) -> None:
        """Load a local file and wait for its load event (and a moment for late errors)."""
        self.events.clear()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=True)
        self.wait_for("Page.loadEventFired")
        self.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 100)))",
                      await_promise=True)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True,
                                                "awaitPromise": await_promise}, session=True)
        if result.get("exceptionDetails"):
            raise BuildgraphError("page script failed: "
                                  + str(result["exceptionDetails"].get("text")))
        return (result.get("result") or {}).get("value")

    def screenshot(self, out: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole page height when ``full_page``)."""
        if full_page:
            metrics = self.call("Page.getLayoutMetrics", session=True)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            height = int(size.get("height") or self.height)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": height, "deviceScaleFactor": 1,
                       "mobile": False}, session=True)
        data = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": full_page},
                         session=True)["data"]
        Path(out).write_bytes(base64.b64decode(data))
        return Path(out)
