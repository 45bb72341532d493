"""Find the local source files a Python module depends on, without importing it.

Model code is an input of the action key: editing ``models/resnet.py`` or a helper it imports
must make exactly the steps that use that model stale. Importing the module to find out would
import torch on the planning path, so we read imports with ``ast`` instead and follow the ones
that resolve to files under the search roots (the recipe's directory, the module's own
directory). Installed packages are not followed: their versions belong in fingerprints.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from buildgraph.errors import RecipeError, did_you_mean


def module_file(name: str, roots: Sequence[Path]) -> List[Path]:
    """Files that importing dotted ``name`` executes, for the first root that has it."""
    parts = name.split(".")
    for root in roots:
        found: List[Path] = []
        base = root
        ok = True
        for i, part in enumerate(parts):
            pkg_init = base / part / "__init__.py"
            mod = base / f"{part}.py"
            if pkg_init.is_file():
                found.append(pkg_init)
                base = base / part
            elif mod.is_file() and i == len(parts) - 1:
                found.append(mod)
            elif (base / part).is_dir() and i < len(parts) - 1:  # namespace package
                base = base / part
            else:
                ok = False
                break
        if ok and found:
            return found
    return []


def imports_of(path: Path) -> List[Tuple[int, str, Tuple[str, ...]]]:
    """(level, module, names) for each import statement in ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []  # the step that runs it will report the real error
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((0, alias.name, ()))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
    return found


def local_sources(entry: Path, roots: Iterable[Path]) -> List[Path]:
    """``entry`` and every file under ``roots`` it imports, transitively; sorted, unique."""
    entry = entry.resolve()
    search = [entry.parent] + [Path(r).resolve() for r in roots]
    seen: Dict[Path, None] = {}
    stack = [entry]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen[path] = None
        for level, module, names in imports_of(path):
            if level:
                base = path.parent
                for _ in range(level - 1):
                    base = base.parent
                candidates = module_file(module, [base]) if module else []
                for n in names:
                    candidates += module_file(f"{module}.{n}" if module else n, [base])
            else:
                candidates = module_file(module, search)
                for n in names:
                    candidates += module_file(f"{module}.{n}", search)
            stack.extend(c.resolve() for c in candidates if c.resolve() not in seen)
    return sorted(seen)


def resolve_callable(ref: str, recipe_dir: Path, what: str = "function"
                     ) -> Tuple[Optional[Path], str, str]:
    """Split ``'file.py:fn'`` or ``'pkg.mod:fn'``; return (local file or None, module, attr).

    A ``.py`` path is relative to the recipe's directory and must exist; a dotted module is
    looked up under the recipe's directory first, then left to the import system.
    """
    module, sep, attr = ref.rpartition(":")
    if not sep or not module or not attr:
        raise RecipeError(f"expected 'path/file.py:{what}' or 'package.module:{what}'; got "
                          f"'{ref}'")
    if module.endswith(".py") or "/" in module:
        path = (recipe_dir / module)
        if not path.is_file():
            siblings = [p.name for p in path.parent.glob("*.py")] if path.parent.is_dir() else []
            raise RecipeError(f"source file '{module}' does not exist (looked in {recipe_dir})"
                              f"{did_you_mean(path.name, siblings)}")
        _check_attr(path, attr, what)
        return path.resolve(), path.stem, attr
    files = module_file(module, [recipe_dir])
    if files:
        _check_attr(files[-1], attr, what)
        return files[-1].resolve(), module, attr
    return None, module, attr


def _check_attr(path: Path, attr: str, what: str) -> None:
    """Fail early, with a suggestion, when the file defines no such top-level name."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise RecipeError(f"{path.name} line {exc.lineno}: syntax error: {exc.msg}") from None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if attr not in names:
        raise RecipeError(f"{path.name} defines no {what} '{attr}'{did_you_mean(attr, names)}")
