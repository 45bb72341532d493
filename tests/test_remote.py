"""The team cache against a real S3 server (SeaweedFS on loopback) and a ``file://`` remote:
read-through runs, integrity (a corrupt object on the server), signing, concurrent pushes of
one key, a remote that is down, read-only use, ``remote ls/verify/gc``, ``cache push/pull``,
the project config.

Every "machine" is a directory with its own cache and build directories and the same recipe;
runs are real ``buildgraph`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from buildgraph.engine.store import maintenance
from conftest import REPO
from remote_helpers import Machine, config, open_remote, team

pytest.importorskip("fsspec", reason="the team cache needs fsspec (pip install buildgraph[remote])")
pytest.importorskip("blake3", reason="the team cache needs blake3 (pip install buildgraph[remote])")


# --- read-through ------------------------------------------------------------------------------

def test_a_teammate_pulls_what_another_built(tmp_path, remote):
    a, b = team(tmp_path, remote)
    built = a.run()
    assert {s: e["status"] for s, e in built.items()} == {"write": "built", "upper": "built",
                                                          "tree": "built"}
    assert "pushed 3 results" in a.last.stderr + a.last.stdout
    # b plans pulls, with who built them, then restores all three without running anything
    plan = b.plan()
    assert {s: p["action"] for s, p in plan.items()} == {s: "pull" for s in built}
    assert "in the team cache 'team' (built by " in plan["write"]["reasons"][0]
    pulled = b.run()
    assert {s: e["status"] for s, e in pulled.items()} == {s: "restored" for s in built}
    assert pulled["tree"]["message"].startswith("pulled from the team cache 'team'")
    for step, rel in (("write", "write/txt"), ("upper", "upper/upper.txt"),
                      ("tree", "tree/d/sub/b.txt"), ("tree", "tree/d/a.txt")):
        assert (b.root / "build/team" / rel).read_bytes() == \
            (a.root / "build/team" / rel).read_bytes(), rel
    assert (b.root / "build/team/upper/upper.txt").read_text() == "HELLO FROM ALICE\n"
    # the lock file and a second run treat them as local results
    assert set(json.loads((b.root / "r.lock.json").read_text())["steps"]) == set(built)
    again = b.run()
    assert {e["status"] for e in again.values()} == {"cached"}
    # a change builds, and only the changed steps; the team gets them too
    changed = a.run("--set", "who=bob")
    assert {s: e["status"] for s, e in changed.items()} == {s: "built" for s in built}
    assert {e["status"] for e in b.run("--set", "who=bob").values()} == {"restored"}


def test_cache_push_and_pull(tmp_path, remote):
    a, b, c = team(tmp_path, remote, names=("a", "b", "c"))
    a.run("--remote", "off")  # built without the team cache
    assert not b.plan().get("write", {}).get("action") == "pull"
    out = a.cli("cache", "push", "r.yaml").stdout
    assert "pushed 3 results" in out, out
    again = a.cli("cache", "push").stdout  # every local result: all there already
    assert "pushed 0 results" in again and "3 were there already" in again
    pull = b.cli("cache", "pull", "r.yaml").stdout
    assert "pulled 3 results" in pull, pull
    # a second pull transfers nothing, and makes no request at all
    second = b.cli("cache", "pull", "r.yaml").stdout
    assert "pulled 0 results (0 B); 3 were here already" in second, second
    assert {e["status"] for e in b.run().values()} == {"restored"}
    # steps by name, without a recipe
    assert "↑" not in c.cli("cache", "push", "write").stdout  # nothing built in c


# --- integrity -----------------------------------------------------------------------------------

def _blob_of(remote, machine: Machine, step: str) -> str:
    """The remote path of ``step``'s first output blob."""
    team_cache = open_remote(remote)
    lock = json.loads((machine.root / "r.lock.json").read_text())["steps"][step]
    doc = json.loads(team_cache.rfs.cat(team_cache.entry_path(lock["key"])))
    digest = next(iter(lock["outputs"].values()))["digest"]
    return team_cache.blob_path(doc["blobs"][digest]["b3"])


def test_a_corrupt_object_on_the_server_is_rejected_reported_and_never_used(tmp_path, remote):
    a, b = team(tmp_path, remote)
    a.run()
    # replace the bytes of upper's output on the server: same size, other content
    team_cache = open_remote(remote)
    path = _blob_of(remote, a, "upper")
    team_cache.rfs.put_bytes(path, b"HELLO FROM MALLO\n")
    results = b.run()
    assert results["write"]["status"] == "restored"
    assert results["upper"]["status"] == "built"  # rejected: built here instead
    assert (b.root / "build/team/upper/upper.txt").read_text() == "HELLO FROM ALICE\n"
    # upper's entry names the replaced blob (so may tree's, whose a.txt has the same bytes,
    # when both are pulled at once): each rejection says so, once
    warnings = [w for w in b.warnings() if "unauthenticated" not in w]
    rejected = [w for w in warnings if "rejected" in w]
    assert "rejected the entry of upper" in rejected[0], warnings
    assert all("does not match its name" in w for w in rejected) and len(rejected) <= 2
    from buildgraph.engine.store.cache import Store

    store = Store(b.cache)
    assert maintenance.verify(store).ok  # nothing corrupt reached the local cache
    assert all(b"MALLO" not in p.read_bytes() for _, p in store.iter_blobs())
    # b rebuilt upper and pushed the good bytes back (issue 19: heal): the next teammate
    # restores it without a rejection
    assert any("replaced the corrupt entry of upper" in w for w in warnings), warnings
    assert team_cache.rfs.cat(path) == b"HELLO FROM ALICE\n"
    assert "ok" in b.cli("remote", "verify", "--all").stdout
    # remote verify finds a corrupt object (exit 1), --repair removes it and its entries
    team_cache.rfs.put_bytes(path, b"HELLO FROM MALLO\n")
    check = b.cli("remote", "verify", "--all", check=1).stdout
    assert "content hashes to" in check and "1 problems" in check, check
    b.cli("remote", "verify", "--all", "--repair")
    assert "ok" in b.cli("remote", "verify", "--all").stdout


def test_an_entry_whose_parts_do_not_hash_to_its_key_is_ignored(tmp_path):
    remote = (f"file://{tmp_path / 'shared'}", {}, {})
    (tmp_path / "shared").mkdir()
    a, b = team(tmp_path, remote)
    a.run()
    team_cache = open_remote(remote)
    key = json.loads((a.root / "r.lock.json").read_text())["steps"]["write"]["key"]
    doc = json.loads(team_cache.rfs.cat(team_cache.entry_path(key)))
    doc["entry"]["parts"]["params"]["cmd"] = "echo something else > out"
    team_cache.rfs.put_bytes(team_cache.entry_path(key), json.dumps(doc).encode())
    plan = b.plan()
    assert plan["write"]["action"] == "run"
    assert any("do not hash to its key" in r for r in plan["write"]["reasons"])


# --- signing -------------------------------------------------------------------------------------

def test_signing_unsigned_and_unknown_keys_are_ignored_with_a_reason(tmp_path, s3_remote):
    keys = tmp_path / "keys"
    a, b = team(tmp_path, s3_remote)
    for who in ("alice", "mallory"):
        out = a.cli("trust", "keygen", "--out", str(keys / who), "--comment", who).stdout
        assert "key id: SHA256:" in out
    b.cli("trust", "add", str(keys / "alice.pub"))
    assert "alice" in b.cli("trust", "ls").stdout
    # unsigned push
    a.run()
    reasons = b.plan()["write"]["reasons"]
    assert b.plan()["write"]["action"] == "run"
    assert any("is not signed, and this project trusts only signed entries" in r
               for r in reasons), reasons
    # signed by a key b does not trust
    a.run("--set", "who=m", env={"BUILDGRAPH_SIGNING_KEY": str(keys / "mallory")})
    reasons = b.plan("--set", "who=m")["write"]["reasons"]
    assert any("signed by a key this project does not trust (SHA256:" in r for r in reasons)
    assert {e["status"] for e in b.run("--set", "who=m").values()} == {"built"}
    # signed by alice: pulled; tampering with it afterwards breaks the signature
    a.run("--set", "who=al", env={"BUILDGRAPH_SIGNING_KEY": str(keys / "alice")})
    plan = b.plan("--set", "who=al")
    assert plan["write"]["action"] == "pull"
    assert "signed by alice (SHA256:" in plan["write"]["reasons"][0]
    team_cache = open_remote(s3_remote)
    key = json.loads((a.root / "r.lock.json").read_text())["steps"]["upper"]["key"]
    doc = json.loads(team_cache.rfs.cat(team_cache.entry_path(key)))
    doc["producer"]["user"] = "someone-else"
    team_cache.rfs.put_bytes(team_cache.entry_path(key), json.dumps(doc).encode())
    results = b.run("--set", "who=al")
    assert results["write"]["status"] == "restored" and results["upper"]["status"] == "built"
    assert any("does not verify" in r for r in results["upper"]["reasons"])


# --- concurrency ---------------------------------------------------------------------------------

BIG = """\
name: team
steps:
  big:
    uses: shell
    with: {cmd: "head -c 48000000 /dev/urandom > ${out.bin}"}
    outputs: [bin]
"""


def test_two_machines_pushing_one_key_leave_one_valid_entry(tmp_path, s3_remote):
    a, b, c = team(tmp_path, s3_remote, names=("a", "b", "c"))
    for m in (a, b, c):
        m.write("r.yaml", BIG)
    a.run("--remote", "off")
    b.run("--remote", "off")  # same key, other bytes (the command is not deterministic)
    key = json.loads((a.root / "r.lock.json").read_text())["steps"]["big"]["key"]
    assert key == json.loads((b.root / "r.lock.json").read_text())["steps"]["big"]["key"]
    env = dict(os.environ, **a.env, PYTHONPATH=str(REPO) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "buildgraph", "cache", "push", "r.yaml"],
                              cwd=m.root, env=dict(env, BUILDGRAPH_CACHE_DIR=str(m.cache)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for m in (a, b)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    team_cache = open_remote(s3_remote)
    assert list(team_cache.entry_paths()) == [key]
    found = team_cache.read_docs([key])[key]
    assert found.entry is not None, found.reason
    assert "ok" in c.cli("remote", "verify", "--all").stdout
    assert c.run()["big"]["status"] == "restored"
    got = (c.root / "build/team/big/bin").read_bytes()
    assert got in ((a.root / "build/team/big/bin").read_bytes(),
                   (b.root / "build/team/big/bin").read_bytes())


# --- failures ------------------------------------------------------------------------------------

def test_a_remote_that_is_down_warns_once_and_the_build_goes_on(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    from seaweed import SeaweedS3

    env = SeaweedS3(tmp_path).env()
    (a,) = team(tmp_path, ("s3://bgtest/x", {"endpoint_url": f"http://127.0.0.1:{port}"}, env),
                names=("a",))
    start = time.monotonic()
    results = a.run()
    assert {e["status"] for e in results.values()} == {"built"}
    warnings = a.warnings()
    assert len(warnings) == 1 and "team cache 'team' is unavailable" in warnings[0] \
        and "cannot reach" in warnings[0], warnings
    assert time.monotonic() - start < 60
    # a missing share: one line too, and commands that need the remote exit 2 with it
    a.write("buildgraph.toml", config(f"file://{tmp_path}/not-mounted"))
    assert {e["status"] for e in a.run("--force", "write").values()} >= {"built"}
    proc = a.cli("remote", "ls", "team", check=2)
    assert proc.stderr.startswith("error: file://") and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_permission_denied_and_a_missing_bucket_are_one_line(tmp_path, s3_server):
    (a,) = team(tmp_path, (s3_server.url(), s3_server.options(), s3_server.env()), names=("a",))
    proc = a.cli("remote", "ls", "team", env={"AWS_SECRET_ACCESS_KEY": "wrong"}, check=2)
    assert "permission denied" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2  # the error and its hint
    a.write("buildgraph.toml", config("s3://no-such-bucket/x", s3_server.options()))
    proc = a.cli("remote", "ls", "team", check=2)
    assert "the bucket does not exist" in proc.stderr and "Traceback" not in proc.stderr
    results = a.run()  # a run goes on without it
    assert {e["status"] for e in results.values()} == {"built"}
    assert len(a.warnings()) == 1 and "bucket does not exist" in a.warnings()[0]


def test_read_only_reads_and_never_writes(tmp_path):
    remote = (f"file://{tmp_path / 'shared'}", {}, {})
    (tmp_path / "shared").mkdir()
    a, b = team(tmp_path, remote)
    b.run("--remote-read-only")
    team_cache = open_remote(remote)
    assert team_cache.entry_paths() == {}
    a.run()
    results = b.run("--remote-read-only", "--set", "who=x")
    assert {e["status"] for e in results.values()} == {"built"}
    assert len(team_cache.entry_paths()) == 3  # only a's
    b.run("--remote-read-only", "--force", "write", "--set", "who=y")
    assert len(team_cache.entry_paths()) == 3
    b.write("buildgraph.toml", config(remote[0], remote[1]).replace(
        "[remotes.team]\n", "[remotes.team]\nread_only = true\n"))
    proc = b.cli("cache", "push", check=2)
    assert "is read-only" in proc.stderr


# --- maintenance ---------------------------------------------------------------------------------

def test_remote_ls_and_gc(tmp_path, remote):
    a, b = team(tmp_path, remote)
    a.run()
    a.run("--set", "who=bob")
    listing = a.cli("remote", "ls", "team").stdout
    assert "6 entries" in listing and "team/write (shell) by " in listing
    rows = json.loads(a.cli("remote", "ls", "team", "--json").stdout)
    assert len(rows) == 6 and all(r["usable"] for r in rows)
    configured = a.cli("remote", "ls").stdout
    assert configured.startswith("team ") and "(default)" in configured
    # bob's results are in the lock file; alice's are not any more
    out = a.cli("remote", "gc", "--keep-lock", "r.lock.json", "--max-age", "0s",
                "--grace", "0s").stdout
    assert "removed 3 entries and 6 objects" in out, out  # outputs, manifest, logs
    assert "kept 3 entries (3 named by lock files)" in out
    assert {e["status"] for e in b.run("--set", "who=bob").values()} == {"restored"}
    assert {e["status"] for e in b.run().values()} == {"built"}
    assert "ok" in b.cli("remote", "verify").stdout
    proc = a.cli("remote", "gc", "--max-age", "ninety", check=2)
    assert "'ninety' is not an age" in proc.stderr


# --- configuration -------------------------------------------------------------------------------

def test_config_errors_and_sources(tmp_path, monkeypatch):
    from buildgraph.engine.team.config import RemoteConfigError, load_config, resolve

    (tmp_path / "buildgraph.toml").write_text(
        'default_remote = "teem"\n[remotes.team]\nurl = "s3://b/p"\n')
    with pytest.raises(RemoteConfigError) as err:
        load_config(tmp_path)
    assert err.value.message.endswith("buildgraph.toml: default_remote: no remote named 'teem' "
                                      "(did you mean 'team'?)")
    (tmp_path / "buildgraph.toml").write_text(
        '[remotes.team]\nurl = "s3://b/p"\noptions = {secret = "x"}\n')
    with pytest.raises(RemoteConfigError) as err:
        load_config(tmp_path)
    assert "remotes.team.options.secret: credentials are not read from the project's files" \
        in err.value.message
    # pyproject.toml's [tool.buildgraph], found from a recipe directory below it
    (tmp_path / "buildgraph.toml").unlink()
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.buildgraph.remotes.team]\nurl = "gs://b/p"\n'
        'read_only = true\n')
    (tmp_path / "recipes").mkdir()
    spec = resolve(tmp_path / "recipes")
    assert spec is not None and spec.url == "gs://b/p" and spec.read_only
    monkeypatch.setenv("BUILDGRAPH_REMOTE", "off")
    assert resolve(tmp_path / "recipes") is None
    monkeypatch.setenv("BUILDGRAPH_REMOTE", str(tmp_path / "share"))
    assert resolve(tmp_path).url == f"file://{tmp_path / 'share'}"
    monkeypatch.setenv("BUILDGRAPH_REMOTE", "nope")
    with pytest.raises(RemoteConfigError, match="no remote named 'nope'"):
        resolve(tmp_path)


def test_remote_add_writes_the_config_and_keeps_the_rest(tmp_path):
    m = Machine(tmp_path, {})
    m.write("buildgraph.toml", "# our team's settings\n[other]\nx = 1\n")
    (tmp_path / "share").mkdir()
    out = m.cli("remote", "add", "nfs", "share").stdout
    assert "reachable, 0 entries" in out and "as the default" in out
    text = (tmp_path / "buildgraph.toml").read_text()
    assert text.startswith("# our team's settings\n") and "x = 1" in text
    assert f'url = "file://{tmp_path / "share"}"' in text
    proc = m.cli("remote", "add", "s3", "s3://b/p", "-o", "secret=abc", "--no-check", check=2)
    assert "credentials are not read from the project's files" in proc.stderr


def test_streamed_pull_keeps_memory_flat(tmp_path, s3_remote):
    """A 256 MiB artifact moves through a pull with far less than its size in memory."""
    a, b = team(tmp_path, s3_remote)
    for m in (a, b):
        m.write("r.yaml", BIG.replace("48000000", str(256 << 20)))
    a.run()
    code = ("import resource, sys\nfrom buildgraph.cli import run_cli\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "code = run_cli(['cache', 'pull', 'r.yaml'])\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print('RSS', before, after)\nsys.exit(code)")
    env = dict(os.environ, **b.env, BUILDGRAPH_CACHE_DIR=str(b.cache),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=b.root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS")][0]
    _, before, after = line.split()
    grown_mib = (int(after) - int(before)) / 1024
    print(f"peak RSS grew by {grown_mib:.0f} MiB pulling 256 MiB")
    assert grown_mib < 160, f"peak RSS grew by {grown_mib:.0f} MiB pulling 256 MiB"
    assert "pulled 1 results (256.0 MiB)" in proc.stdout, proc.stdout
    from buildgraph.engine.store.cache import Store

    digest = json.loads((a.root / "r.lock.json").read_text())["steps"]["big"]["outputs"]
    assert Store(b.cache).check_blob(digest["bin"]["digest"])
