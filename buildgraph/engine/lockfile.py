"""The lock file next to a recipe (``hello.yaml`` -> ``hello.lock.json``), like ``dvc.lock``.

It records, per step: the action key and its parts (params, input digests, tool versions), and
each output's digest, size and path (relative to the build directory). It is the release
contract, meant to be committed like ``Cargo.lock``: keys are sorted, one value per line, and
nothing in it changes unless a key or an output does (no wall times, no paths that depend on
where the build directory is), so a review diff shows exactly which steps changed and why.
``plan`` diffs its parts against the current ones to explain a miss; ``run --frozen`` refuses
to build what differs from it, and ``run --locked`` fails when a build would change it
(:func:`lock_changes`). The file carries a ``schema`` number; an unknown one is
ignored (we rebuild the record), never a crash. It is written once at the end of a run, via a
temporary file and rename, under a lock, merging with what concurrent runs wrote. The lock
(``.hello.lock``) sits beside the lock file, not in a cache: two runs of one recipe with
different ``--cache-dir`` share the lock file, so they must share its guard too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

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
    if not isinstance(steps, dict):
        return {}
    kept = {}
    for sid, entry in steps.items():
        why = entry_problem(entry)
        if why:
            if warn:
                warn(f"{path}: step {str(sid)[:60]!r} ignored: {why}")
            continue
        kept[sid] = entry
    return kept


def entry_problem(entry: Any) -> str:
    """Why a lock file step entry cannot be used ("" when it can): a lock file comes with a
    ``git pull``, so its key and digests are names from outside (see ``engine.names``)."""
    from buildgraph.engine.names import InvalidName, check_digest, check_rel_path

    if not isinstance(entry, dict):
        return "not a mapping"
    try:
        if entry.get("key") is not None:
            check_digest(entry["key"], "xxh3", "key")
        outputs = entry.get("outputs") or {}
        if not isinstance(outputs, dict):
            return "its outputs are not a mapping"
        for name, out in outputs.items():
            if not isinstance(out, dict):
                return f"output {str(name)[:40]!r} is not a mapping"
            if out.get("digest") is not None:
                check_digest(out["digest"], "xxh3", f"digest of output {str(name)[:40]!r}")
            if out.get("path") is not None:
                check_rel_path(out["path"], f"path of output {str(name)[:40]!r}")
    except InvalidName as exc:
        return str(exc)
    return ""


def merge_lock(current: Dict[str, Any], updates: Dict[str, Dict[str, Any]],
               keep: Iterable[str]) -> Dict[str, Any]:
    """The step entries after a run: ``current`` less the steps not in ``keep`` (gone from
    the recipe), with ``updates`` (the steps this run built or found cached) on top."""
    keep = set(keep)
    merged = {sid: entry for sid, entry in current.items() if sid in keep}
    merged.update(updates)
    return dict(sorted(merged.items()))


def render_lock(recipe_name: str, steps: Dict[str, Any]) -> str:
    """The lock file's text: sorted keys, two-space indent, a final newline."""
    document = {"schema": LOCK_SCHEMA, "recipe": recipe_name, "steps": dict(sorted(steps.items()))}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def lock_changes(current: Dict[str, Any], updates: Dict[str, Dict[str, Any]],
                 keep: Iterable[str], labels: Optional[Callable[[str], Dict[str, str]]] = None
                 ) -> List[str]:
    """What writing ``updates`` would change in a lock holding ``current``, one line per
    change, as ``plan`` words it (``onnx: torch 2.12.0→2.13.0``); [] when nothing would.
    ``labels(step)`` names a step's input files as a person reads them."""
    from buildgraph.engine.keys import explain_difference

    merged = merge_lock(current, updates, keep)
    lines: List[str] = []
    for sid in sorted(set(current) | set(merged)):
        old, new = current.get(sid), merged.get(sid)
        if old == new:
            continue
        if new is None:
            lines.append(f"{sid}: no longer in the recipe (its entry would be removed)")
            continue
        if not isinstance(old, dict) or not old.get("parts"):
            lines.append(f"{sid}: not in the lock file")
            continue
        if old.get("key") != new.get("key"):
            why = explain_difference(old.get("parts"), new.get("parts") or {},
                                     labels(sid) if labels else None)
            lines.append(f"{sid}: key {str(old.get('key'))[:12]}→{str(new.get('key'))[:12]} ("
                         + "; ".join(why) + ")")
            continue
        old_out, new_out = old.get("outputs") or {}, new.get("outputs") or {}
        changed = [name for name in sorted(set(old_out) | set(new_out))
                   if (old_out.get(name) or {}).get("digest") != (new_out.get(name) or {}).get("digest")]
        if changed:
            lines.append(f"{sid}: same key, different output " + ", ".join(
                f"{n} ({str((old_out.get(n) or {}).get('digest'))[:12]}→"
                f"{str((new_out.get(n) or {}).get('digest'))[:12]})" for n in changed)
                + ": the step is not reproducible (see 'buildgraph repro')")
        else:
            lines.append(f"{sid}: entry would be rewritten (same key and outputs; recorded paths "
                         "or format differ)")
    return lines


def write_lock(path: Path, recipe_name: str, updates: Dict[str, Dict[str, Any]],
               keep: Iterable[str]) -> bool:
    """Merge ``updates`` into the lock file; drop steps not in ``keep``. Returns True if written.

    Read-modify-write happens under an inter-process lock (:func:`guard_path`) so that two
    concurrent runs of the same recipe do not lose each other's entries.
    """
    from buildgraph.engine.files import atomic_write

    keep = set(keep)

    def render(current: Dict[str, Any]) -> str:
        return render_lock(recipe_name, merge_lock(current, updates, keep))

    try:  # the common no-op case: nothing changed, so no lock and no write. Compared as data:
        # rendering with an indent runs json's pure-Python encoder (~3 ms of a no-op run)
        document = json.loads(path.read_text(encoding="utf-8"))
        steps = document.get("steps") if isinstance(document, dict) else None
        if isinstance(steps, dict) and document == {
                "schema": LOCK_SCHEMA, "recipe": recipe_name,
                "steps": merge_lock(steps, updates, keep)}:
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


def entries_digest(steps: Mapping[str, Mapping[str, Any]]) -> str:
    """The digest of some steps' keys and output digests, from lock file entries (outputs as
    records) or from a provenance record (outputs as digests): a release manifest holds it, so
    a lock file can be checked against the bundle it describes."""
    from buildgraph.engine.hashing import digest_json

    canonical = {}
    for sid, entry in steps.items():
        outputs = {name: (out.get("digest") if isinstance(out, Mapping) else out)
                   for name, out in (entry.get("outputs") or {}).items()}
        canonical[sid] = {"key": entry.get("key"), "outputs": outputs}
    return digest_json(canonical)


# --- what a run checks against the lock file, and what it writes ---------------------------------

def lock_label(path: Path) -> str:
    """``path`` as a user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_frozen(planner: Any, selected: List[str], path: Path) -> None:
    """``--frozen``: before anything runs, every selected step's key, computed as if its
    upstream outputs were those the lock records, must be the lock's key (else LockMismatch,
    whose text is the plan's diff)."""
    differences = planner.lock_differences(selected)
    if not differences:
        return
    from buildgraph.errors import LockMismatch

    lines = []
    for sid, reasons in differences.items():
        lines.append(f"run     {sid}  ({planner.graph.steps[sid].kind})")
        lines.extend(f"          - {r}" for r in reasons)
    raise LockMismatch(
        f"--frozen: {len(differences)} of {len(selected)} steps differ from "
        f"{lock_label(path)}; nothing was built\n" + "\n".join(lines),
        hint="run without --frozen to build and update the lock file, review its diff "
             "and commit it")


def frozen_refusal(planner: Any, step: Any, decision: Any, path: Path) -> Optional[str]:
    """``--frozen``: why a step whose key, now that its upstream ran, is not the lock's (an
    upstream rebuilt to other bytes) is not built; None when it is the lock's."""
    from buildgraph.engine.keys import explain_difference

    entry = planner.lock.get(step.id)
    locked = entry.get("key") if isinstance(entry, dict) else None
    if decision.key is None or decision.key == locked:
        return None
    previous = entry.get("parts") if isinstance(entry, dict) else None
    reasons = explain_difference(previous, decision.parts or {}, planner.labels(step))
    return (f"--frozen: key differs from {lock_label(path)} (" + "; ".join(reasons)
            + "); not built")


def lock_updates(store: Any, steps: Mapping[str, Any], results: Mapping[str, Any]
                 ) -> Dict[str, Dict[str, Any]]:
    """The lock entries of a run's successful steps (``results``: step id -> StepResult)."""
    updates: Dict[str, Dict[str, Any]] = {}
    for sid, result in results.items():
        if not result.ok or not result.key:
            continue
        entry = store.get_action(result.key)
        if entry is None:
            continue
        step = steps[sid]
        # no wall time and no path outside the build directory: a lock changes only
        # when a key or an output does
        updates[sid] = {
            "uses": step.kind, "key": result.key, "parts": entry.get("parts"),
            "inputs": dict(sorted(step.input_labels.items())),
            "outputs": {n: {"path": f"{sid}/{step.outputs[n]}",
                            "type": o["type"], "digest": o["digest"], "size": o["size"]}
                        for n, o in entry["outputs"].items() if n in step.outputs},
        }
    return updates
