"""The team cache's figures (issue 12), against a real S3 server (SeaweedFS on loopback):

1. **Pull throughput.** A 1 GiB artifact pulled from the server into an empty cache (entry read,
   parallel ranged GETs, BLAKE3 and xxh3 checked as the bytes arrive, placed in the store)
   against ``boto3``'s ``download_file`` of the same object (its default: 8 MiB parts, 10
   threads), alternating, ``--repeat`` times each; medians, and their ratio (target >= 0.9x
   boto3's throughput). Also the pull's peak RSS in a process of its own.
2. **A fully remote-cached run** of the default recipe (recipes/resnet_cpu.yaml) on an empty
   local cache against building it cold (target < 10 % of the cold time). One run each.
3. **Bytes on a second pull**: ``cache pull`` of the same recipe again (target 0).
4. **A no-op run with a remote configured** and every step cached locally: network requests
   (target +0) and wall time against the same run with ``--remote off`` (medians of 5).

Traffic for 2-4 goes through a counting TCP proxy in front of the server, so requests and bytes
are counted on the wire, not by buildgraph.

Usage: python benchmarks/bench_remote.py [--size-mib 1024] [--repeat 3] [--skip-recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


class CountingProxy:
    """A TCP proxy to ``upstream_port`` on loopback that counts connections, requests (HTTP
    request lines) and bytes in each direction."""

    REQUEST = re.compile(rb"(?:^|\r\n)(?:GET|PUT|HEAD|POST|DELETE) [^ ]+ HTTP/1\.1\r\n")

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.connections = self.requests = self.bytes_up = self.bytes_down = 0

    def counts(self) -> Dict[str, int]:
        with self.lock:
            return {"connections": self.connections, "requests": self.requests,
                    "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                with self.lock:
                    if up:
                        self.bytes_up += len(data)
                        self.requests += len(self.REQUEST.findall(data))
                    else:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def config(url: str, endpoint: str) -> str:
    return (f'default_remote = "team"\n[remotes.team]\nurl = "{url}"\n'
            f'options = {{endpoint_url = "{endpoint}"}}\n')


def bg(args: List[str], cwd: Path, cache: Path, check: bool = True,
       extra: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(extra or {}))
    proc = subprocess.run([PY, "-m", "buildgraph", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"buildgraph {' '.join(args)} failed:\n{proc.stderr[-3000:]}\n"
                         f"{proc.stdout[-2000:]}")
    return proc


def statuses(proc: subprocess.CompletedProcess) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            ev = json.loads(line)
            if ev.get("event") == "step_finished":
                counts[ev["status"]] = counts.get(ev["status"], 0) + 1
    return counts


def mib_s(size: int, seconds: float) -> str:
    return f"{size / seconds / (1 << 20):.0f} MiB/s"


# --- 1. pull throughput ---------------------------------------------------------------------------

def bench_pull(s3, work: Path, size_mib: int, repeat: int) -> Dict[str, float]:
    import boto3

    from buildgraph.engine.team.remote import TeamCache
    from buildgraph.engine.team.config import RemoteSpec
    from buildgraph.engine.store.cache import Store

    project = work / "big"
    project.mkdir()
    url = s3.url("bench-big")
    (project / "buildgraph.toml").write_text(config(url, s3.endpoint))
    (project / "big.yaml").write_text(
        "name: big\nsteps:\n  big:\n    uses: shell\n    with: {cmd: \"head -c "
        f"{size_mib << 20} /dev/urandom > ${{out.bin}}\"}}\n    outputs: [bin]\n")
    start = time.perf_counter()
    bg(["run", "big.yaml"], project, project / ".cache")
    push_s = time.perf_counter() - start
    key = json.loads((project / "big.lock.json").read_text())["steps"]["big"]["key"]
    team = TeamCache(RemoteSpec("team", url, True, s3.options()), strict=True)
    found = team.lookup(key)
    assert found.entry is not None, found.reason
    (digest, ref), = [(d, r) for d, r in found.doc["blobs"].items() if r["size"] >= size_mib << 20]
    blob = team.blob_path(ref["b3"])
    bucket, _, object_key = blob.partition("/")
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    size = ref["size"]
    ours: List[float] = []
    theirs: List[float] = []
    cpu_ours: List[float] = []
    cpu_theirs: List[float] = []
    for _ in range(repeat):
        dest = work / "boto3.bin"
        cpu, start = time.process_time(), time.perf_counter()
        client.download_file(bucket, object_key, str(dest))
        theirs.append(time.perf_counter() - start)
        cpu_theirs.append(time.process_time() - cpu)
        dest.unlink()
        store = Store(work / "pull-cache")
        team._found.clear()
        cpu, start = time.process_time(), time.perf_counter()
        entry = team.fetch(key, store)
        ours.append(time.perf_counter() - start)
        cpu_ours.append(time.process_time() - cpu)
        assert entry is not None and store.check_blob(digest)
        store.close()
        shutil.rmtree(work / "pull-cache")
    # peak RSS of a pull in a process of its own (the interpreter and libraries included)
    code = ("import resource, sys\nfrom buildgraph.cli import run_cli\n"
            "code = run_cli(['cache', 'pull', 'big.yaml'])\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)")
    rss_dir = work / "rss"
    rss_dir.mkdir()
    shutil.copy(project / "big.yaml", rss_dir)
    shutil.copy(project / "buildgraph.toml", rss_dir)
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(rss_dir / ".cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([PY, "-c", code], cwd=rss_dir, env=env, capture_output=True,
                          text=True, check=True)
    rss_kib = int([ln for ln in proc.stdout.splitlines() if ln.startswith("RSS")][0].split()[1])
    shutil.rmtree(rss_dir)
    pull, boto = statistics.median(ours), statistics.median(theirs)
    pairs = statistics.median(b / o for b, o in zip(theirs, ours))
    print(f"1. pull of a {size / (1 << 30):.2f} GiB artifact, medians of {repeat} alternating:")
    print(f"   buildgraph (entry, ranged GETs, BLAKE3 + xxh3 checked, placed): {pull:.2f} s "
          f"= {mib_s(size, pull)}, CPU {statistics.median(cpu_ours):.2f} s   "
          f"runs: {', '.join(f'{t:.2f}' for t in ours)}")
    print(f"   boto3 download_file (nothing checked):                 {boto:.2f} s "
          f"= {mib_s(size, boto)}, CPU {statistics.median(cpu_theirs):.2f} s   "
          f"runs: {', '.join(f'{t:.2f}' for t in theirs)}")
    print(f"   throughput ratio: {boto / pull:.2f}x boto3's (median of the pairs' ratios "
          f"{pairs:.2f}x; target >= 0.9x); peak RSS of a `cache pull` process: "
          f"{rss_kib / 1024:.0f} MiB; (push of it, in the run that built it: {push_s:.1f} s "
          "including the build)")
    return {"pull_s": pull, "boto3_s": boto, "ratio": boto / pull, "rss_mib": rss_kib / 1024}


# --- 2-4. the default recipe ------------------------------------------------------------------------

def bench_recipe(s3, proxy: CountingProxy, work: Path) -> Dict[str, float]:
    url = s3.url("bench-recipe")
    machines = {}
    for name in ("a", "b"):
        root = work / name
        shutil.copytree(REPO / "recipes", root, ignore=shutil.ignore_patterns("*.lock.json"))
        (root / "buildgraph.toml").write_text(config(url, f"http://127.0.0.1:{proxy.port}"))
        machines[name] = root
    a, b = machines["a"], machines["b"]
    recipe = "resnet_cpu.yaml"
    start = time.perf_counter()
    cold = bg(["run", recipe, "--json", "--remote", "off"], a, a / ".cache")
    cold_s = time.perf_counter() - start
    print(f"2. cold build of {recipe} (no remote): {cold_s:.1f} s  {statuses(cold)}")
    proxy.reset()
    start = time.perf_counter()
    push = bg(["cache", "push", recipe], a, a / ".cache")
    push_s = time.perf_counter() - start
    print(f"   cache push: {push_s:.1f} s, {proxy.counts()['bytes_up'] / (1 << 20):.0f} MiB up; "
          + push.stdout.strip().splitlines()[-1])
    proxy.reset()
    start = time.perf_counter()
    pulled = bg(["run", recipe, "--json"], b, b / ".cache")
    remote_s = time.perf_counter() - start
    first = proxy.counts()
    print(f"   fully remote-cached run on an empty cache: {remote_s:.1f} s  {statuses(pulled)}; "
          f"{first['requests']} requests, {first['bytes_down'] / (1 << 20):.0f} MiB down")
    print(f"   ratio: {remote_s / cold_s * 100:.1f} % of the cold build (target < 10 %)")
    proxy.reset()
    second = bg(["cache", "pull", recipe], b, b / ".cache")
    again = proxy.counts()
    print(f"3. second `cache pull`: {again['bytes_down'] + again['bytes_up']} bytes, "
          f"{again['requests']} requests, {again['connections']} connections (target 0 bytes); "
          + second.stdout.strip().splitlines()[-1])
    with_remote: List[float] = []
    without: List[float] = []
    requests = 0
    for _ in range(5):
        proxy.reset()
        start = time.perf_counter()
        bg(["run", recipe], b, b / ".cache")
        with_remote.append(time.perf_counter() - start)
        requests += proxy.counts()["requests"] + proxy.counts()["connections"]
        start = time.perf_counter()
        bg(["run", recipe, "--remote", "off"], b, b / ".cache")
        without.append(time.perf_counter() - start)
    w, wo = statistics.median(with_remote), statistics.median(without)
    print(f"4. no-op run, every step cached locally: {requests} network requests/connections "
          f"with the remote configured (target +0); {w * 1000:.0f} ms vs {wo * 1000:.0f} ms "
          "with --remote off (medians of 5, process start included)")
    return {"cold_s": cold_s, "remote_s": remote_s, "ratio": remote_s / cold_s,
            "second_pull_bytes": again["bytes_down"] + again["bytes_up"],
            "noop_requests": requests, "noop_ms": w * 1000, "noop_off_ms": wo * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-recipe", action="store_true",
                        help="only the pull throughput (the default recipe takes minutes)")
    parser.add_argument("--skip-pull", action="store_true")
    args = parser.parse_args()
    from seaweed import SeaweedS3

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        work = Path(tmp)
        with SeaweedS3(work / "s3") as s3:
            os.environ.update(s3.env())
            print(f"SeaweedFS S3 on {s3.endpoint}; {os.cpu_count()} cores; Python "
                  f"{sys.version.split()[0]}")
            if not args.skip_pull:
                bench_pull(s3, work, args.size_mib, args.repeat)
            if not args.skip_recipe:
                bench_recipe(s3, CountingProxy(s3.port), work)


if __name__ == "__main__":
    main()
