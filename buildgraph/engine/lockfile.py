"""The lock file next to a recipe (``hello.yaml`` -> ``hello.lock.json``), like ``dvc.lock``.

It records, per step: the action key and its parts (params, input digests, tool versions),
output digests and paths, and wall time. It is meant to be committed: keys are sorted and the
format is stable, so a diff shows exactly which steps changed. ``plan`` diffs its parts against
the current ones to explain a miss. The file carries a ``schema`` number; an unknown one is
ignored (we rebuild the record), never a crash. It is written once at the end of a run, via a
temporary file and rename, under a lock, merging with what concurrent runs wrote. The lock
(``.hello.lock``) sits beside the lock file, not in a cache: two runs of one recipe with
different ``--cache-dir`` share the lock file, so they must share its guard too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

LOCK_SCHEMA = 1


def lock_path(recipe_path: Path) -> Path:
    name = recipe_path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return recipe_path.parent / f"{name}.lock.json"


def guard_path(path: Path) -> Path:
    """The inter-process lock serializing writers of the lock file ``path``: a hidden file
    beside it (``hello.lock.json`` -> ``.hello.lock``), whatever cache each writer uses."""
    name = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    if not name.endswith(".lock"):
        name += ".lock"
    return path.parent / f".{name}"


def read_lock(path: Path, warn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Step entries of the lock file, or ``{}`` if it is missing, unreadable or too new."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        if warn:
            warn(f"{path}: unreadable lock file; it will be rewritten")
        return {}
    if not isinstance(data, dict) or data.get("schema") != LOCK_SCHEMA:
        if warn:
            warn(f"{path}: lock file schema {data.get('schema') if isinstance(data, dict) else '?'}"
                 f" is not {LOCK_SCHEMA}; it will be rewritten")
        return {}
    steps = data.get("steps")
    return steps if isinstance(steps, dict) else {}


def write_lock(path: Path, recipe_name: str, updates: Dict[str, Dict[str, Any]],
               keep: Iterable[str]) -> bool:
    """Merge ``updates`` into the lock file; drop steps not in ``keep``. Returns True if written.

    Read-modify-write happens under an inter-process lock (:func:`guard_path`) so that two
    concurrent runs of the same recipe do not lose each other's entries.
    """
    from buildgraph.engine.files import atomic_write

    def render(current: Dict[str, Any]) -> str:
        merged = {sid: entry for sid, entry in current.items() if sid in keep}
        merged.update(updates)
        document = {"schema": LOCK_SCHEMA, "recipe": recipe_name,
                    "steps": dict(sorted(merged.items()))}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    keep = set(keep)
    try:  # the common no-op case: nothing changed, so no lock and no write
        if path.read_text(encoding="utf-8") == render(read_lock(path)):
            return False
    except (OSError, ValueError):
        pass
    from filelock import FileLock

    with FileLock(str(guard_path(path))):
        text = render(read_lock(path))
        try:
            if path.read_text(encoding="utf-8") == text:
                return False
        except (OSError, ValueError):
            pass
        atomic_write(path, text.encode("utf-8"))
        return True
