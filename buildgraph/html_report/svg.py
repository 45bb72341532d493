"""Inline SVG for the report: the DAG and the bar charts. Hand-written so that the page needs
no script, no font and no network: a layered layout (longest path from the sources, then a
few barycentre sweeps so edges cross less), and horizontal bars with value labels.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.html_report.fmt import Path, dotted, seconds, sig

ORIGIN_FILL = {"built": "#cfe0fc", "local": "#d6efd6", "remote": "#e6dcfb", None: "#eeeeee"}
FAILED_FILL = "#fbd3d3"
STALE_STROKE = "#d48806"
PALETTE = ["#3b6fb6", "#e08a2c", "#4f9d58", "#b7494b", "#7d5ba6", "#8c6d3f", "#d26fae",
           "#6b6b6b"]


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start",
          path: Optional[Path] = None, value: Any = None, size: float = 12,
          weight: str = "normal", fill: str = "#222") -> str:
    import json

    attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"'
    if weight != "normal":
        attrs += f' font-weight="{weight}"'
    if cls:
        attrs += f' class="{cls}"'
    if path is not None:
        attrs += f' data-path="{_esc(dotted(path))}" data-value="{_esc(json.dumps(value))}"'
    return f"<text {attrs}>{_esc(text)}</text>"


def _tspan(text: str, path: Path, value: Any, fill: str = "") -> str:
    colour = f' fill="{fill}"' if fill else ""
    return (f'<tspan data-path="{_esc(dotted(path))}" data-value="{_esc(json.dumps(value))}"'
            f'{colour}>{_esc(text)}</tspan>')


# --- the DAG ------------------------------------------------------------------------------------

def layers(steps: Mapping[str, Mapping[str, Any]]) -> List[List[str]]:
    """Steps in columns: a step's column is its longest path from a source; within a column,
    steps are ordered by the mean row of their upstream steps (a few sweeps)."""
    depth: Dict[str, int] = {}
    for sid in steps:  # steps come in topological order
        ups = [u for u in steps[sid]["upstream"] if u in depth]
        depth[sid] = 1 + max((depth[u] for u in ups), default=-1)
    cols: List[List[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for sid, d in depth.items():
        cols[d].append(sid)
    down: Dict[str, List[str]] = {sid: [] for sid in steps}
    for sid, s in steps.items():
        for u in s["upstream"]:
            if u in down:
                down[u].append(sid)
    def reorder(col: List[str], near: List[str], links: Mapping[str, Sequence[str]]) -> None:
        pos = {s: n for n, s in enumerate(near)}
        here = {s: n for n, s in enumerate(col)}
        col.sort(key=lambda s: (_mean([pos[u] for u in links[s] if u in pos], here[s]),
                                here[s]))

    ups = {sid: list(s["upstream"]) for sid, s in steps.items()}
    for _ in range(4):
        for i in range(1, len(cols)):
            reorder(cols[i], cols[i - 1], ups)
        for i in range(len(cols) - 2, -1, -1):
            reorder(cols[i], cols[i + 1], down)
    return cols


def _mean(values: Sequence[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def dag(steps: Mapping[str, Mapping[str, Any]]) -> str:
    """The recipe's DAG: one box per step, filled by origin, a dashed amber border when out of
    date, red when its last run failed."""
    w, h, gx, gy, pad = 158, 52, 34, 12, 8
    cols = layers(steps)
    rows = max((len(c) for c in cols), default=0)
    width = pad * 2 + len(cols) * w + max(0, len(cols) - 1) * gx
    height = pad * 2 + rows * h + max(0, rows - 1) * gy
    where: Dict[str, Tuple[float, float]] = {}
    for i, col in enumerate(cols):
        offset = (rows - len(col)) * (h + gy) / 2
        for j, sid in enumerate(col):
            where[sid] = (pad + i * (w + gx), pad + offset + j * (h + gy))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'style="max-width:100%;height:auto" '
             f'aria-label="the recipe\'s steps and their dependencies">']
    for sid, s in steps.items():
        x2, y2 = where[sid]
        for u in s["upstream"]:
            if u not in where:
                continue
            x1, y1 = where[u]
            x1, y1, y2c = x1 + w, y1 + h / 2, y2 + h / 2
            mid = (x1 + x2) / 2
            parts.append(f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2c:.1f} '
                         f'{x2:.1f},{y2c:.1f}" fill="none" stroke="#9aa3ad" stroke-width="1.2"/>')
    for sid, s in steps.items():
        x, y = where[sid]
        failed = s.get("last_status") in ("failed", "cancelled")
        fill = FAILED_FILL if failed else ORIGIN_FILL.get(s.get("origin"), "#eeeeee")
        stale = s["state"] not in ("up to date", "up to date (build directory copy to restore)")
        stroke = f'stroke="{STALE_STROKE}" stroke-width="2" stroke-dasharray="5,3"' if stale \
            else 'stroke="#7b8794" stroke-width="1"'
        title = f"{sid} ({s['kind']}): {s['state']}"
        if s.get("reasons"):
            title += " — " + "; ".join(s["reasons"][:3])
        if s.get("message"):
            title += f" — {s['message']}"
        parts.append(f'<g class="step" data-step="{_esc(sid)}"><title>{_esc(title)}</title>'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="6" '
                     f'fill="{fill}" {stroke}/>')
        label = sid if len(sid) <= 21 else sid[:20] + "…"
        parts.append(_text(x + 8, y + 16, label, size=12.5, weight="bold"))
        parts.append(_text(x + 8, y + 30, s["kind"], size=10.5, fill="#57606a"))
        origin = {"built": "built", "local": "local cache", "remote": "team cache"}.get(
            s.get("origin") or "", s.get("last_status") or "origin unknown")
        parts.append(f'<text x="{x + 8:.1f}" y="{y + 44:.1f}" font-size="10.5" fill="#333">'
                     + (f'<tspan data-path="{_esc(dotted(("steps", sid, "wall_s")))}" '
                        f'data-value="{_esc(json.dumps(s["wall_s"]))}">{seconds(s["wall_s"])}'
                        f'\u00a0s</tspan> · ' if s.get("wall_s") is not None else "")
                     + f'{_esc(origin)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


# --- bar charts --------------------------------------------------------------------------------

class Bar:
    """One bar: a value (with an optional whisker to ``high``) and where it sits in the JSON."""

    def __init__(self, group: str, series: str, value: float, path: Path,
                 high: Optional[float] = None, high_path: Optional[Path] = None,
                 label: Optional[str] = None):
        self.group, self.series, self.value, self.path = group, series, value, path
        self.high, self.high_path, self.label = high, high_path, label


def bars(items: Sequence[Bar], title: str, unit: str, reference: Optional[float] = None,
         reference_label: str = "", log: Optional[bool] = None, width: int = 560) -> str:
    """Horizontal bars grouped by ``group`` (one row of bars per group, a colour per series);
    value labels at the bar ends; a vertical line at ``reference``. A log axis when the values
    span more than 30x (unless ``log`` says otherwise)."""
    if not items:
        return ""
    groups: List[str] = []
    series: List[str] = []
    for b in items:
        if b.group not in groups:
            groups.append(b.group)
        if b.series not in series:
            series.append(b.series)
    values = [b.value for b in items if b.value and b.value > 0] + \
             [b.high for b in items if b.high] + ([reference] if reference else [])
    lo, hi = min(values), max(values)
    if log is None:
        log = hi / lo > 30
    left, right, top, bar_h, gap = 150, 78, 46, 14, 10
    plot_w = width - left - right
    per_group = len(series) * bar_h + gap
    height = top + len(groups) * per_group + 34 + (16 * ((len(series) + 3) // 4)
                                                     if len(series) > 1 else 0)
    if log:
        lo_l = math.floor(math.log10(lo)) if lo > 0 else 0
        hi_l = math.ceil(math.log10(hi)) if hi > 0 else 1
        if hi_l == lo_l:
            hi_l += 1

        def scale(v: float) -> float:
            v = max(v, 10 ** lo_l)
            return left + (math.log10(v) - lo_l) / (hi_l - lo_l) * plot_w
        ticks = [10.0 ** e for e in range(lo_l, hi_l + 1)]
    else:
        step = _nice(hi * 1.05 / 4, (1, 2, 2.5, 5, 10))
        top_v = math.ceil(hi * 1.05 / step) * step

        def scale(v: float) -> float:
            return left + v / top_v * plot_w
        ticks = [step * i for i in range(int(round(top_v / step)) + 1)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_esc(title)}">',
             _text(8, 18, title, size=13, weight="bold")]
    axis_y = top + len(groups) * per_group
    for t in ticks:
        x = scale(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" '
                     f'stroke="#e3e6ea" stroke-width="1"/>')
        parts.append(_text(x, axis_y + 14, f"{t:g}", anchor="middle", size=10,
                           fill="#666"))
    parts.append(_text(left + plot_w / 2, axis_y + 28, unit + (" (log scale)" if log else ""),
                       anchor="middle", size=10.5, fill="#666"))
    for gi, g in enumerate(groups):
        gy = top + gi * per_group
        parts.append(_text(left - 8, gy + len(series) * bar_h / 2 + 4, g if len(g) <= 22
                           else g[:21] + "…", anchor="end", size=11.5))
        for b in items:
            if b.group != g:
                continue
            si = series.index(b.series)
            y = gy + si * bar_h
            colour = PALETTE[si % len(PALETTE)]
            x1 = scale(b.value) if b.value > 0 else left
            parts.append(f'<rect x="{left}" y="{y + 1:.1f}" width="{max(1.0, x1 - left):.1f}" '
                         f'height="{bar_h - 3}" fill="{colour}" opacity="0.85"/>')
            end = x1
            if b.high is not None and b.high > b.value:
                x2 = scale(b.high)
                yc = y + (bar_h - 1) / 2
                parts.append(f'<line x1="{x1:.1f}" y1="{yc:.1f}" x2="{x2:.1f}" y2="{yc:.1f}" '
                             f'stroke="#333" stroke-width="1"/><line x1="{x2:.1f}" '
                             f'y1="{yc - 4:.1f}" x2="{x2:.1f}" y2="{yc + 4:.1f}" '
                             f'stroke="#333" stroke-width="1"/>')
                end = x2
            label = _tspan(b.label or sig(b.value, 4), b.path, b.value)
            if b.high is not None and b.high_path is not None:
                label += (f'<tspan fill="#666"> · p99 </tspan>'
                          + _tspan(sig(b.high, 4), b.high_path, b.high, fill="#666"))
            parts.append(f'<text x="{end + 4:.1f}" y="{y + bar_h - 3.5:.1f}" font-size="10.5" '
                         f'fill="#222">{label}</text>')
    if reference:
        x = scale(reference)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{axis_y}" '
                     f'stroke="#b7494b" stroke-width="1.5" stroke-dasharray="4,3"/>')
        parts.append(_text(x + 3, top - 10, reference_label, size=10.5, fill="#b7494b"))
    parts.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{axis_y}" stroke="#888"/>')
    if len(series) > 1:
        ly = axis_y + 44
        for si, name in enumerate(series):
            lx = left + (si % 4) * 100
            yy = ly + (si // 4) * 16
            parts.append(f'<rect x="{lx}" y="{yy - 9}" width="10" height="10" '
                         f'fill="{PALETTE[si % len(PALETTE)]}"/>')
            parts.append(_text(lx + 14, yy, name, size=10.5))
    parts.append("</svg>")
    return "".join(parts)


def _nice(value: float, steps: Sequence[float] = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
          ) -> float:
    """The smallest ``step x 10^k`` at or above ``value``."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in steps:
        if m * 10 ** exp >= value:
            return m * 10 ** exp
    return 10 ** (exp + 1)
