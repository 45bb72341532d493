"""Answer a repeated no-op ``run`` from one file of stat signatures, as ninja answers from its
log: without loading the graph, keying a step or opening a database.

A no-op run decides, for every step, that its key (a function of the recipe, the Python
environment, the files the steps read and their parameters) names a cache entry whose outputs
already sit in the build directory. Everything that decision read is a file whose content the
engine already trusts by its stat signature (the stat cache, the resolved-recipe cache and the
environment token do). So once a run of a command line has found every step cached, the
scheduler writes a **stamp**: the command line, the environment it ran in, and the signature
(size, mtime, inode, ctime) of every path the decision looked at:

* the recipe and the step's declared inputs, the project's config file candidates;
* what makes the environment token: site-packages directories and buildgraph's sources;
* every file the stat cache was asked about (the files descriptions named, the outputs in the
  build directory), the build directory's output folders, the lock file and the run record;
* the cache entries of the steps' keys (their existence: a cache hit touches them).

The next identical command compares those signatures and, when all match, prints the same
summary a full no-op prints and exits, having imported nothing but ``os``, ``sys`` and
``marshal``. Any difference (an edited file, an installed package, another flag or
``BUILDGRAPH_*`` variable, a removed cache entry, a racy mtime) falls through to the full
run, which decides as always and writes a new stamp when it is again a no-op. No stamp is
written for a run that built, restored, warned, or holds a step whose description is volatile.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
import zlib

STAMP_FORMAT = 1
RACY_SECONDS = 2.0  # as the stat cache: an mtime this recent may still change unseen


def signature(path: str):
    """(size, mtime_ns, inode, ctime_ns) of ``path`` (not following a final symlink's target
    for a dangling link), or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def presence(path: str):
    """(size, inode) of ``path``, or None: what a cache entry keeps when a hit touches it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_ino)


def command_key(argv, cache_dir: str) -> tuple:
    """What must be the same for a stamp to answer: the command line, where it runs, the
    interpreter, the ``BUILDGRAPH_*`` variables, whether the output is a terminal, and the host
    (a cache directory may be shared between machines)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("BUILDGRAPH_")))
    host = tuple(os.uname()) if hasattr(os, "uname") else ()
    return (STAMP_FORMAT, tuple(argv), os.getcwd(), os.path.abspath(cache_dir), sys.executable,
            sys.version, env, sys.stderr.isatty(), host, os.cpu_count())


def stamp_path(cache_dir: str, key: tuple) -> str:
    return os.path.join(cache_dir, "noop", "%08x.stamp" % zlib.crc32(repr(key).encode()))


def answer(argv, cache_dir: str) -> bool:
    """Print a no-op run's summary and return True if the stamp of this exact command still
    holds; False to run normally."""
    start = time.monotonic()
    key = command_key(argv, cache_dir)
    try:
        with open(stamp_path(cache_dir, key), "rb") as fh:
            stamp = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return False
    try:  # a stamp of another shape (damaged, or written by another version) decides nothing
        if not isinstance(stamp, dict) or stamp.get("key") != key:
            return False
        if any(signature(p) != s for p, s in stamp["files"]):
            return False
        if any(presence(p) != s for p, s in stamp["entries"]):
            return False
        if any(os.environ.get(v) != value for v, value in stamp["variables"]):
            return False
        summary = str(stamp["summary"])
    except (KeyError, TypeError, ValueError):
        return False
    for path, _ in stamp["entries"]:  # a cache hit records its use, for `cache gc` (LRU)
        try:
            os.utime(path)
        except OSError:
            pass
    print(f"{summary} in {time.monotonic() - start:.2f} s", file=sys.stderr, flush=True)
    return True


def write_stamp(argv, cache_dir: str, summary: str, inputs, products, entries,
                variables=()) -> bool:
    """Record a no-op run of ``argv``: ``inputs`` and ``products`` (paths whose signature must
    not change), ``entries`` (cache entries that must still exist) and ``variables``
    (environment variables a volatile description read). False, writing nothing,
    when an input's mtime is too recent to trust: a file written twice within the file
    system's timestamp granularity can keep its signature. Products (the build directory, the
    lock file, the run record, cache objects) are written by runs, atomically or as links to
    read-only objects, so their age does not matter; a run that rewrote the run record is
    stamped at once."""
    now = time.time()
    signed = []
    for path in sorted(set(inputs)):
        sig = signature(path)
        if sig is not None and now - sig[1] / 1e9 < RACY_SECONDS:
            return False
        signed.append((path, sig))
    signed += [(path, signature(path)) for path in sorted(set(products) - set(inputs))]
    key = command_key(argv, cache_dir)
    data = marshal.dumps({"key": key, "summary": summary, "files": signed,
                          "entries": [(p, presence(p)) for p in sorted(set(entries))],
                          "variables": [(v, os.environ.get(v)) for v in sorted(set(variables))]})
    from pathlib import Path

    from buildgraph.engine.files import atomic_write

    try:
        atomic_write(Path(stamp_path(cache_dir, key)), data)
    except OSError:
        return False
    return True



def watch(run, planner, selected, steps, lock_file):
    """What an all-cached run's decisions read, for :func:`write_stamp`: (inputs, products,
    cache entries, environment variables), or None when one of them must be asked again next
    time (a volatile description that does not name what it read). ``run`` is the
    ``engine.execution.runner.RunContext``, ``steps`` the run's step results."""
    from pathlib import Path

    from buildgraph.engine.environment import environment_paths
    from buildgraph.engine.team.config import CONFIG_FILE, PYPROJECT
    from buildgraph.engine.runrecord import record_path

    graph, store, build_dir = run.graph, run.store, run.build_dir
    watched = []
    for sid in selected:
        description = planner.describe(graph.steps[sid])
        if description.volatile:
            if not description.watch:
                return None  # it must be asked again: only the full decision can
            watched.extend(description.watch)
    products = [str(lock_file.absolute()), str(build_dir), str(record_path(build_dir))]
    for sid in selected:  # outputs in place: every folder of them (a file added or gone)
        step_dir = build_dir / sid
        products.append(str(step_dir))
        for name in graph.steps[sid].outputs.values():
            out = step_dir / name
            products.append(str(out))
            if out.is_dir() and not out.is_symlink():
                products += [root for root, _, _ in os.walk(out)]
    made = (str(build_dir), str(store.root.absolute()))
    inputs = [str(graph.recipe_path.absolute())]
    inputs += [str(Path(p).absolute()) for step in graph.steps.values()
               for p in step.inputs.values()]
    inputs += environment_paths()
    here = Path(graph.recipe_dir).absolute()
    for directory in (here, *here.parents):
        inputs += [str(directory / CONFIG_FILE), str(directory / PYPROJECT)]
    for path in store.stat_cache.consulted:  # read by descriptions, or checked outputs
        absolute = os.path.abspath(path)
        (products if absolute.startswith(made) else inputs).append(absolute)
    inputs += [os.path.abspath(w) for w in watched if not w.startswith("$")]
    variables = sorted({w[1:] for w in watched if w.startswith("$")})
    entries = [str(store.action_path(r.key or "")) for r in steps.values()]
    return inputs, products, entries, variables
