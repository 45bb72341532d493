"""One-line failure messages from errors raised in user code (factories, forward()).

The step's error is one line naming the user's file and line; the user-code frames go to the
step's log (stderr inside a worker), never a library traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from buildgraph.backends.torch.model_key import rel_label
from buildgraph.errors import short_error  # noqa: F401 - part of this module's interface


def _user_frames(tb: Any, roots: Sequence[Path]) -> List[Tuple[str, int, str, str]]:
    """(file, line, function, code) of the traceback frames in files under ``roots``."""
    import traceback

    frames = []
    for frame in traceback.extract_tb(tb):
        try:
            path = Path(frame.filename).resolve()
        except OSError:
            continue
        for root in roots:
            if path.is_relative_to(Path(root).resolve()):
                frames.append((rel_label(path, Path(roots[0])), frame.lineno or 0, frame.name,
                               (frame.line or "").strip()))
                break
    return frames


def user_frame(tb: Any, roots: Sequence[Path]) -> str:
    """``file:line`` of the innermost traceback frame in a file under ``roots``."""
    frames = _user_frames(tb, roots)
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def log_failure(exc: BaseException, roots: Sequence[Path]) -> None:
    """Write the error and the user-code frames it passed through to stderr (the step's log
    inside a worker): enough to find the line, without a library traceback that the console
    would show as the log's tail."""
    lines = [f"error: {type(exc).__name__}: {exc}".rstrip()]
    for file, line, func, code in _user_frames(exc.__traceback__, roots):
        lines.append(f"  at {file}:{line} in {func}: {code}")
    print("\n".join(lines), file=sys.stderr, flush=True)
