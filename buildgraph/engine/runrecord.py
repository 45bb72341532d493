"""Where each step's outputs came from in the runs that made the build directory.

The lock file says *what* was built (keys, digests); it does not say whether this machine
built a step or took it from a cache, which is what a reader of ``buildgraph report`` asks
first ("did the release build anything?"). So each run records in ``BUILD_DIR/.run.json``, per
step, its last status (built, cached, restored, failed...), the **origin** of its outputs and
how long its build took. Steps a run did not select keep their entry from an earlier run;
steps no longer in the recipe are dropped. The file is rewritten only when an entry changes
(a repeated no-op run writes nothing), and a run that cannot write it warns and goes on: it is
a record, not an input.

Origins:

* ``built``: executed in that run, on this machine;
* ``local``: served from this machine's cache (``--cache-dir``);
* ``remote``: served from a team cache. Nothing sets it yet: the remote-cache feature marks its
  hits by giving the step's result ``origin = "remote"``
  (:attr:`buildgraph.engine.results.StepResult.origin`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

RECORD_NAME = ".run.json"
RECORD_SCHEMA = 1
ORIGINS = ("built", "local", "remote")


def record_path(build_dir: Path) -> Path:
    return Path(build_dir) / RECORD_NAME


def origin_of(status: str, origin: Optional[str] = None) -> Optional[str]:
    """The origin of a step's outputs from its status (or the one a cache hit named)."""
    if origin:
        return origin
    if status == "built":
        return "built"
    if status in ("cached", "restored"):
        return "local"
    return None


def read_record(build_dir: Path) -> Dict[str, Any]:
    """The record, or an empty one when it is missing, unreadable or of another schema."""
    try:
        data = json.loads(record_path(build_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"schema": RECORD_SCHEMA, "steps": {}}
    if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA or \
            not isinstance(data.get("steps"), dict):
        return {"schema": RECORD_SCHEMA, "steps": {}}
    from buildgraph.engine.names import is_digest

    # a step record whose key is not a key (hand-edited, or from elsewhere) is dropped: keys
    # name cache entries and files
    data["steps"] = {sid: e for sid, e in data["steps"].items()
                     if isinstance(e, dict) and (e.get("key") is None or is_digest(e["key"]))}
    return data


def write_record(build_dir: Path, recipe: str, results: Mapping[str, Any],
                 keep: Iterable[str]) -> bool:
    """Merge this run's step results (:class:`~buildgraph.engine.results.StepResult`) into
    the record; True when the file changed. A cached step's ``wall_s`` is how long its build
    took (from its action entry), a built one's how long it took now."""
    from buildgraph.engine.files import atomic_write

    keep = set(keep)
    path = record_path(build_dir)
    try:
        before = path.read_text(encoding="utf-8")
    except OSError:
        before = ""
    old = read_record(build_dir)
    steps: Dict[str, Any] = {sid: e for sid, e in old["steps"].items() if sid in keep}
    for sid, result in results.items():
        steps[sid] = {
            "status": result.status,
            "origin": origin_of(result.status, getattr(result, "origin", None)),
            "key": result.key,
            "wall_s": round(float(result.wall_s or 0.0), 3) if result.ok else None,
            "message": result.message or None,
        }
    text = json.dumps({"schema": RECORD_SCHEMA, "recipe": recipe,
                       "steps": dict(sorted(steps.items()))}, indent=2, sort_keys=True) + "\n"
    if text == before:
        return False
    atomic_write(path, text)
    return True
