"""How numbers are written on the page, and how a page's number is tied to the JSON's.

Every figure the report shows is an element with ``data-path`` (where the value sits in the
``report --json`` document, dotted) and ``data-value`` (the value itself), so that a test, or a
reader's script, can check the page against the data. Shown text keeps only the significant
digits a reader needs; it is the value rounded, never another computation.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Optional, Sequence, Tuple, Union

Path = Sequence[Union[str, int]]


def dotted(path: Path) -> str:
    """``("models", "resnet18", "artifacts", "onnx", ...)`` -> ``models.resnet18.artifacts...``;
    a key holding a dot or a backslash is escaped with a backslash."""
    return ".".join(str(p).replace("\\", "\\\\").replace(".", "\\.") for p in path)


def sig(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, in plain notation between 1e-3 and 1e6
    (``12.35``, ``0.004321``, ``1235``), else scientific (``2.38e-07``)."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    mag = math.floor(math.log10(abs(value)))
    if -3 <= mag < 6:
        decimals = max(0, digits - 1 - mag)
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def seconds(value: float) -> str:
    """Seconds for people: 2 decimals below 10 s, 1 below 100 s, none above."""
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def ms(value: Optional[float]) -> Tuple[str, str]:
    return ("–", "") if value is None else (sig(value, 4), "ms")


def size(value: Optional[int]) -> Tuple[str, str]:
    if value is None:
        return ("–", "")
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return (f"{value / factor:.1f}", unit)
    return (str(value), "B")


def span(path: Path, value: Any, text: str, unit: str = "", cls: str = "",
         tag: str = "span") -> str:
    """An element holding one figure, tied to its place in the JSON document."""
    attrs = f' data-path="{html.escape(dotted(path))}" data-value="{html.escape(json.dumps(value))}"'
    if unit:
        attrs += f' data-unit="{html.escape(unit)}"'
    if cls:
        attrs += f' class="{cls}"'
    shown = html.escape(text) + (f"\u00a0{html.escape(unit)}" if unit and text != "–" else "")
    return f"<{tag}{attrs}>{shown}</{tag}>"
