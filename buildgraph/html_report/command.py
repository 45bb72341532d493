"""``buildgraph report RECIPE``: the implementation behind the CLI command (imported only when
the command runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from buildgraph.errors import BuildgraphError


def parse_threshold(text: str) -> float:
    """``10%``, ``10`` (percent) or ``0.1`` -> 0.1."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            return float(raw[:-1]) / 100.0
        value = float(raw)
    except ValueError:
        raise BuildgraphError(f"--threshold: expected a percentage such as 10% or 0.1; got "
                              f"'{text}'") from None
    if value < 0:
        raise BuildgraphError(f"--threshold: must not be negative; got '{text}'")
    return value / 100.0 if value >= 1 else value


def run(args: Any) -> int:
    """Write the report; with ``--compare``, print the comparison and return 1 on a
    regression."""
    from buildgraph.engine.scheduler import default_build_dir
    from buildgraph.html_report import render
    from buildgraph.html_report.collect import build

    threshold = parse_threshold(args.threshold)
    if args.screenshot and (args.json or args.markdown):
        raise BuildgraphError("--screenshot takes a picture of the HTML report; it does not go "
                              "with --json or --markdown")
    lock_file = Path(args.lock) if args.lock else None
    if lock_file is not None and not lock_file.is_file():
        raise BuildgraphError(f"--lock: {lock_file}: no such file")
    doc, graph = build(args.recipe, args.overrides, args.cache_dir, args.build_dir, lock_file)
    if not doc["lock"]:
        raise BuildgraphError(f"{graph.name} has no recorded build (no lock file entries)",
                              hint=f"run 'buildgraph run {args.recipe}' first")
    diff: Optional[dict] = None
    if args.compare:
        from buildgraph.engine.store.cache import Store
        from buildgraph.html_report.compare import compare, load_other

        store = Store(Path(args.cache_dir) if args.cache_dir else None)
        try:
            other, _ = load_other(Path(args.compare), graph, store)
        finally:
            store.close()
        diff = compare(doc, other, threshold)
        doc = {**doc, "compare": {"other": str(args.compare), **diff}}
    if args.json:
        _emit(json.dumps(doc, indent=2) + "\n", args.output)
    elif args.markdown:
        text = render.markdown(doc)
        if diff is not None:
            from buildgraph.html_report.compare import markdown as compare_md

            text += "\n" + compare_md(diff, graph.name, str(args.compare))
        _emit(text, args.output)
    else:
        out = Path(args.output) if args.output else \
            (Path(args.build_dir) if args.build_dir else default_build_dir(graph)) / "report.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render.html_page(doc), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
        if args.screenshot:
            from buildgraph.html_report.browser import Browser

            with Browser(width=args.width) as browser:
                browser.open(out)
                if browser.errors:
                    raise BuildgraphError("the report shows errors in Chromium: "
                                          + "; ".join(browser.errors[:3]))
                browser.screenshot(Path(args.screenshot))
            print(f"wrote {args.screenshot}", file=sys.stderr)
        if diff is not None:
            from buildgraph.html_report.compare import text

            sys.stdout.write(text(diff, graph.name, str(args.compare)))
    if diff is not None and diff["regressions"]:
        return 1
    return 0


def _emit(text: str, output: Optional[str]) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
