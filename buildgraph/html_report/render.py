"""The report document as one self-contained HTML page, or as Markdown for a CI comment.

The page has no script and loads nothing: styles are inline, figures are inline SVG, and a
Content-Security-Policy forbids every fetch, so a page that tried one would say so in the
browser's console (which the test watches). Each figure carries its JSON path and value
(:mod:`buildgraph.html_report.fmt`).
"""

from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Optional

from buildgraph.html_report import fmt, svg
from buildgraph.html_report.fmt import span

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1f2328;
 margin:0;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d0d7de;
 padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#57606a;font-size:12.5px}
.chips span.chip{display:inline-block;border-radius:10px;padding:1px 9px;margin:6px 6px 0 0;font-size:12.5px;
 border:1px solid #d0d7de;background:#fff}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;margin:10px 0}
.release{border-left:5px solid #2da44e}.release.none{border-left-color:#cf222e}
.release .chosen{font-size:17px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#eafbea}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.skip{color:#8c6d3f}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:8px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts .card{padding:8px}
.legend span{display:inline-block;margin-right:14px;font-size:12.5px}
.legend i{display:inline-block;width:12px;height:12px;border:1px solid #7b8794;margin-right:4px;
 vertical-align:-2px;border-radius:3px}
.tablewrap{overflow-x:auto}
.dagwrap{overflow-x:auto;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:6px}
code{font-size:12px;background:#eff2f5;padding:0 3px;border-radius:3px}
ul.reasons{margin:6px 0 0 0;padding-left:20px}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

ORIGIN_WORDS = {"built": "built", "local": "local cache", "remote": "team cache"}


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _num(path: fmt.Path, value: Optional[float], kind: str, cls: str = "n") -> str:
    """A table cell with a figure."""
    if value is None:
        return f'<td class="{cls}">–</td>'
    if kind == "ms":
        text, unit = fmt.ms(value)
    elif kind == "size":
        text, unit = fmt.size(value)
    elif kind == "err":
        text, unit = fmt.sig(value, 3), ""
    elif kind == "cos":
        text, unit = f"{value:.6f}", ""
    elif kind == "rate":
        text, unit = fmt.sig(value, 4), ""
    elif kind == "pct":
        text, unit = f"{value * 100:.1f}", "%"
    elif kind == "x":
        text, unit = f"{value:.2f}", "×"
    elif kind == "sec":
        text, unit = fmt.seconds(value), "s"
    elif kind == "mib":
        text, unit = f"{value:.0f}", "MiB"
    else:
        text, unit = str(value), ""
    return f'<td class="{cls}">{span(path, value, text, unit)}</td>'


def html_page(doc: Mapping[str, Any]) -> str:
    """The whole report as an HTML document (a string)."""
    out: List[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(doc['recipe'])}: buildgraph report</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_esc(doc['recipe'])}</h1>",
        f'<div class="sub">{_esc(doc["recipe_path"])} · report of the build its lock file '
        f"records · {_esc(doc['generated'])} · {_esc(doc['host'])}</div>",
        _chips(doc),
    ]
    out += [_release(sid, r) for sid, r in doc["releases"].items()]
    if not doc["releases"]:
        out.append('<div class="card release none">No release step has a recorded result.</div>')
    if doc["summary"]["out_of_date"]:
        stale = doc["summary"]["out_of_date"]
        out.append(f'<div class="warn">{len(stale)} step(s) are out of date (the recipe or their '
                   "inputs changed since the recorded build): "
                   + ", ".join(f"<code>{_esc(s)}</code>" for s in stale)
                   + ". Their figures below are from the recorded build.</div>")
    for model, m in doc["models"].items():
        out.append(_model(model, m))
    out.append("<h2>Build graph</h2>")
    out.append('<div class="legend">'
               + "".join(f'<span><i style="background:{svg.ORIGIN_FILL[o]}"></i>{w}</span>'
                         for o, w in ORIGIN_WORDS.items())
               + f'<span><i style="background:{svg.FAILED_FILL}"></i>failed</span>'
               f'<span><i style="border:2px dashed {svg.STALE_STROKE}"></i>out of date</span>'
               "</div>")
    out.append(f'<div class="dagwrap">{svg.dag(doc["steps"])}</div>')
    out.append(_steps_table(doc))
    out.append('<p class="sub">Generated by <code>buildgraph report</code>; '
               "<code>--json</code> prints the data behind every figure on this page, "
               "<code>--markdown</code> a summary.</p>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _chips(doc: Mapping[str, Any]) -> str:
    s = doc["summary"]
    origins = s["origins"]
    chips = [f"{s['steps']} steps"]
    for o, word in ORIGIN_WORDS.items():
        chips.append(f"{span(('summary', 'origins', o), origins.get(o, 0), str(origins.get(o, 0)))}"
                     f" {word}")
    chips.append(f"{len(s['out_of_date'])} out of date")
    chips.append(f"steps' build times add up to "
                 f"{span(('summary', 'build_s'), s['build_s'], fmt.seconds(s['build_s']), 's')}")
    return '<div class="chips">' + "".join(f'<span class="chip">{c}</span>' for c in chips) \
        + "</div>"


def _release(sid: str, r: Mapping[str, Any]) -> str:
    chosen = r.get("chosen")
    head = (f'<div class="chosen">Released: <code>{_esc(chosen)}</code> ({_esc(r.get("kind"))}'
            f', <code>{_esc(r.get("artifact"))}</code>) at p50 '
            + span(("releases", sid, "median_ms"), r.get("median_ms"),
                   fmt.sig(r["median_ms"], 4) if r.get("median_ms") is not None else "–", "ms")
            + "</div>") if chosen else '<div class="chosen">Nothing released</div>'
    reasons = "".join(f"<li>{_esc(x)}</li>" for x in r.get("reasons") or [])
    return (f'<div class="card release"><div class="sub">release step <code>{_esc(sid)}</code>'
            f"</div>{head}<ul class=\"reasons\">{reasons}</ul></div>")


def _model(model: str, m: Mapping[str, Any]) -> str:
    out = [f"<h2>Model <code>{_esc(model)}</code></h2>"]
    bench = m.get("benchmark") or {}
    if bench:
        t = bench.get("threads") or {}
        pol = bench.get("policy") or {}
        out.append(f'<div class="sub">benchmark <code>{_esc(bench["step"])}</code> on '
                   f"{_esc(bench.get('device') or 'cpu')}: "
                   f"{_esc(t.get('intra'))} intra-op / {_esc(t.get('inter'))} inter-op threads "
                   "asked of every runtime (the threads column: what each library reports); windows until two consecutive medians agree within "
                   + (span(("models", model, "benchmark", "policy", "spread"), pol.get("spread"),
                           f"{pol['spread'] * 100:.1f}", "%") if pol.get("spread") is not None
                      else "–")
                   + f" (cap {_esc(pol.get('max_s'))} s per setting)</div>")
        if bench.get("gpu"):
            out.append(f'<div class="sub">{_esc(_gpu_line(bench["gpu"]))}; '
                       f"timing: {_esc(bench.get('timing') or 'host')}</div>")
    arts = m["artifacts"]
    batches = sorted({r["batch"] for a in arts.values()
                      for r in (a.get("benchmark") or {}).get("results") or []
                      if r.get("batch") is not None})
    main_batch = batches[0] if batches else None
    rows = []
    unstable = []
    ref = m.get("reference")
    ordered = sorted(arts.items(), key=lambda kv: _p50(kv[1], main_batch) or float("inf"))
    if ref:
        runtime = ref.get("runtime") or "torch.eager"  # the model's own: not always torch
        label = "eager (reference)" if runtime == "torch.eager" else f"{runtime} (reference)"
        ordered = [(label, {"step": None, "kind": "torch (eager)" if runtime == "torch.eager"
                            else "the model", "runtime": runtime, "precision": "fp32",
                            "benchmark": ref, "verification": None,
                            "size_bytes": None, "_ref": True})] + ordered
    for cand, a in ordered:
        b = a.get("benchmark") or {}
        base = ("models", model, "reference") if a.get("_ref") else \
            ("models", model, "artifacts", cand)
        v = a.get("verification")
        idx, res = _result(b, main_batch)
        rpath = base + (("results", idx) if a.get("_ref") else ("benchmark", "results", idx))
        if a.get("failed_upstream") and v is None:
            vcell = '<td class="bad">failed upstream</td>'
        elif v is None:
            vcell = '<td>reference</td>' if a.get("_ref") else '<td class="skip">not verified</td>'
        elif v.get("skipped"):
            vcell = f'<td class="skip" title="{_esc(v["skipped"])}">skipped</td>'
        else:
            vcell = f'<td class="{"ok" if v["passed"] else "bad"}">{"passed" if v["passed"] else "FAILED"}</td>'
        tpath = base + ("threads",) if a.get("_ref") else base + ("benchmark", "threads")
        cells = [f"<td><code>{_esc(cand)}</code></td>", f"<td>{_esc(_kind_label(a))}</td>",
                 f"<td>{_esc(a.get('runtime') or '')}</td>", _device_cell(a, b),
                 _threads(tpath, b.get("threads")),
                 f"<td>{_esc(a.get('precision') or '')}</td>", vcell,
                 _num(base + ("verification", "max_abs"), (v or {}).get("max_abs"), "err")]
        if res is not None:
            cells += [_num(rpath + ("p50_ms",), res.get("p50_ms"), "ms"),
                      _num(rpath + ("p99_ms",), res.get("p99_ms"), "ms"),
                      _num(rpath + ("items_per_s",), res.get("items_per_s"), "rate"),
                      _num(rpath + ("spread",), res.get("spread"), "pct"),
                      _num(rpath + ("speedup_vs_eager",), res.get("speedup_vs_eager"), "x")
                      if not a.get("_ref") else '<td class="n">1×</td>']
            if not res.get("stable"):
                unstable.append(f"{cand} (batch {res['batch']})")
        else:
            why = b.get("skipped") or ("failed upstream" if a.get("failed_upstream") and not b
                                       else "not benchmarked" if not b
                                       else "no result at this batch")
            cells.append(f'<td colspan="5" class="skip">{_esc(why)}</td>')
        cells += [_num((base + ("peak_rss_mb",)) if a.get("_ref") else
                       base + ("benchmark", "peak_rss_mb"), b.get("peak_rss_mb"), "mib"),
                  _num(base + ("size_bytes",), a.get("size_bytes"), "size"), _cpp_cell(a)]
        rows.append(f'<tr data-artifact="{_esc(cand)}">' + "".join(cells) + "</tr>")
    header = ["artifact", "kind", "runtime", "device", "threads", "precision", "verify",
              "max |err|",
              "p50", "p99", "items/s", "spread", "vs eager", "peak RSS", "size", "C++"]
    where = f" at batch {main_batch}" if main_batch is not None else ""
    out.append(f"<h3>Artifacts{where}</h3>")
    # a wide table (device, C++ columns) scrolls in its own box: the page keeps its width
    out.append('<div class="tablewrap"><table><thead><tr>'
               + "".join(f"<th>{h}</th>" for h in header)
               + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")
    if unstable:
        out.append('<div class="warn">Not stable within the time cap (consecutive windows '
                   "still disagreed): " + ", ".join(_esc(u) for u in unstable)
                   + ". Their figures are the last two windows'.</div>")
    busy = bench.get("busy")
    if busy:
        load, cpus = busy["load"], busy["cpus"]
        out.append('<div class="warn">The machine was busy while this was measured (1-minute '
                   f"load average up to {load:.1f} on {cpus} CPUs): every timing here is slower, "
                   "and may be steadily so, than on an idle machine.</div>")
    out.append(_charts(model, m, batches))
    if len(batches) > 1:
        out.append(_batch_table(model, m, batches))
    return "\n".join(out)


def _kind_label(a: Mapping[str, Any]) -> str:
    """The artifact's step kind, and for an ONNX export the exporter that wrote the file."""
    kind = a.get("kind") or ""
    return f"{kind} ({a['exporter']})" if a.get("exporter") else kind


def _device_cell(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Where the artifact actually ran (benchmark, else verify), its provider as the title."""
    v = a.get("verification") or {}
    device = b.get("device") or v.get("device") or ("" if not (b or v) else "cpu")
    provider = b.get("provider") or v.get("provider") or ""
    math = v.get("math") or ""
    title = "; ".join(x for x in (provider, f"math: {math}" if math else "") if x)
    return f'<td title="{_esc(title)}">{_esc(device)}' + \
        (f' <span class="sub">{_esc(provider)}</span>' if provider and provider not in
         ("torch", "tvm") else "") + "</td>"


def _gpu_line(gpu: Mapping[str, Any]) -> str:
    """``NVIDIA H200: SM 1980/1980 MHz, memory 2619 MHz, 143771 MiB (driver 580...)``."""
    if gpu.get("error"):
        return f"GPU: {gpu['error']}"
    parts = [str(gpu.get("name") or "GPU")]
    if gpu.get("clocks_sm") is not None:
        parts.append(f"SM clock {gpu['clocks_sm']}/{gpu.get('clocks_max_sm')} MHz")
    if gpu.get("clocks_mem") is not None:
        parts.append(f"memory clock {gpu['clocks_mem']} MHz")
    if gpu.get("memory_total") is not None:
        parts.append(f"{gpu['memory_total']} MiB")
    if gpu.get("driver_version"):
        parts.append(f"driver {gpu['driver_version']}")
    return ", ".join(parts)


def _threads(path: fmt.Path, threads: Optional[Mapping[str, Any]]) -> str:
    """``intra / inter`` as the runtime's library reported them (GPU runtimes: none)."""
    if not threads:
        return "<td>–</td>"
    if threads.get("intra") is None:
        return f"<td>{_esc(threads.get('library') or '')} (GPU)</td>"
    return (f'<td class="n" title="intra-op / inter-op threads, as '
            f'{_esc(threads.get("library"))} reports them">'
            + span(path + ("intra",), threads["intra"], str(threads["intra"])) + " / "
            + span(path + ("inter",), threads["inter"], str(threads["inter"])) + "</td>")


def _p50(a: Mapping[str, Any], batch: Optional[int]) -> Optional[float]:
    _, res = _result(a.get("benchmark") or {}, batch)
    return res.get("p50_ms") if res else None


def _result(bench: Mapping[str, Any], batch: Optional[int]):
    for i, r in enumerate(bench.get("results") or []):
        if r["batch"] == batch:
            return i, r
    return None, None


def _charts(model: str, m: Mapping[str, Any], batches: List[int]) -> str:
    lat: List[svg.Bar] = []
    speed: List[svg.Bar] = []
    ref = m.get("reference")
    entries = [("eager", ("models", model, "reference"), ref)] if ref else []
    entries += [(c, ("models", model, "artifacts", c, "benchmark"), a.get("benchmark"))
                for c, a in m["artifacts"].items()]
    for name, base, b in entries:
        for i, r in enumerate((b or {}).get("results") or []):
            if r.get("p50_ms") is None:
                continue
            lat.append(svg.Bar(name, f"batch {r['batch']}", r["p50_ms"],
                               base + ("results", i, "p50_ms"), high=r.get("p99_ms"),
                               high_path=base + ("results", i, "p99_ms")))
            if name != "eager" and r.get("speedup_vs_eager"):
                speed.append(svg.Bar(name, f"batch {r['batch']}", r["speedup_vs_eager"],
                                     base + ("results", i, "speedup_vs_eager"),
                                     label=f"{r['speedup_vs_eager']:.2f}×"))
    charts = []
    if lat:
        charts.append(svg.bars(lat, "Latency by artifact and batch: p50 (bar) to p99 (whisker)",
                               "milliseconds"))
    if speed:
        charts.append(svg.bars(speed, "Speedup over eager PyTorch (p50)", "× eager",
                               reference=1.0, reference_label="eager", log=False))
    if not charts:
        return ""
    return '<div class="charts">' + "".join(f'<div class="card">{c}</div>' for c in charts) \
        + "</div>"


def _batch_table(model: str, m: Mapping[str, Any], batches: List[int]) -> str:
    rows = []
    for cand, a in m["artifacts"].items():
        b = a.get("benchmark") or {}
        cells = [f"<td><code>{_esc(cand)}</code></td>"]
        for batch in batches:
            idx, r = _result(b, batch)
            path = ("models", model, "artifacts", cand, "benchmark", "results", idx)
            cells.append(_num(path + ("p50_ms",), r.get("p50_ms"), "ms") if r
                         else '<td class="n">–</td>')
            cells.append(_num(path + ("items_per_s",), r.get("items_per_s"), "rate") if r
                         else '<td class="n">–</td>')
        sweep = b.get("sweep")
        cells.append(f"<td>{_esc(sweep['stop'] + ': ' + sweep['detail']) if sweep else ''}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<th>artifact</th>" + "".join(f"<th>b{x} p50</th><th>b{x} items/s</th>"
                                         for x in batches) + "<th>sweep</th>"
    return (f"<h3>By batch size</h3><table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _steps_table(doc: Mapping[str, Any]) -> str:
    rows = []
    for sid, s in doc["steps"].items():
        origin = ORIGIN_WORDS.get(s.get("origin") or "", s.get("last_status") or "–")
        state = s["state"] + (": " + "; ".join(s["reasons"][:2]) if s.get("reasons") else "")
        rows.append(f'<tr data-step="{_esc(sid)}"><td><code>{_esc(sid)}</code></td>'
                    f"<td>{_esc(s['kind'])}</td><td>{_esc(state)}</td><td>{_esc(origin)}</td>"
                    + _num(("steps", sid, "wall_s"), s.get("wall_s"), "sec")
                    + f"<td><code>{_esc((s.get('key') or '')[:12])}</code></td></tr>")
    return ("<h3>Steps</h3><table><thead><tr><th>step</th><th>kind</th><th>state</th>"
            "<th>outputs from</th><th>build time</th><th>key</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


# --- Markdown ----------------------------------------------------------------------------------

def _cpp_cell(a: Mapping[str, Any]) -> str:
    """Whether a cpp.check step ran the artifact from C++ (blank when none looked at it)."""
    cpp = a.get("cpp")
    if not cpp:
        return "<td></td>"
    title = f'{cpp.get("api") or ""} (step {cpp.get("step")})'
    return (f'<td class="{"ok" if cpp["runs"] else "skip"}" title="{_esc(title)}">'
            f'{_esc(cpp["text"])}</td>')


def markdown(doc: Mapping[str, Any]) -> str:
    """A short summary for a CI comment: the release, the artifacts table, what was built."""
    s = doc["summary"]
    o = s["origins"]
    lines = [f"### buildgraph report: {doc['recipe']}", "",
             f"{s['steps']} steps: {o.get('built', 0)} built, {o.get('local', 0)} from the local "
             f"cache, {o.get('remote', 0)} from the team cache; {len(s['out_of_date'])} out of "
             f"date. Host: {doc['host']}.", ""]
    for sid, r in doc["releases"].items():
        if r.get("chosen"):
            lines.append(f"**Released** `{r['chosen']}` ({r['kind']}) at p50 "
                         f"{fmt.sig(r['median_ms'], 4)} ms (step `{sid}`).")
        for reason in r.get("reasons", [])[1:]:
            lines.append(f"- {reason}")
        lines.append("")
    for model, m in doc["models"].items():
        arts = m["artifacts"]
        batches = sorted({r["batch"] for a in arts.values()
                          for r in (a.get("benchmark") or {}).get("results") or []})
        batch = batches[0] if batches else None
        lines += [f"**{model}**" + (f" (batch {batch})" if batch is not None else ""), "",
                  "| artifact | verify | max abs err | p50 ms | p99 ms | items/s | vs eager | "
                  "size | C++ |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for cand, a in sorted(arts.items(), key=lambda kv: _p50(kv[1], batch) or float("inf")):
            v = a.get("verification") or {}
            _, r = _result(a.get("benchmark") or {}, batch)
            verdict = "–" if not v else ("skipped" if v.get("skipped") else
                                          ("passed" if v.get("passed") else "**FAILED**"))
            size_text, unit = fmt.size(a.get("size_bytes"))
            lines.append("| " + " | ".join([
                f"`{cand}`", verdict,
                fmt.sig(v["max_abs"], 3) if v.get("max_abs") is not None else "–",
                fmt.sig(r["p50_ms"], 4) if r else "–",
                fmt.sig(r["p99_ms"], 4) if r and r.get("p99_ms") is not None else "–",
                fmt.sig(r["items_per_s"], 4) if r and r.get("items_per_s") else "–",
                f"{r['speedup_vs_eager']:.2f}×" if r and r.get("speedup_vs_eager") else "–",
                f"{size_text} {unit}".strip(),
                (a.get("cpp") or {}).get("text") or "–"]) + " |")
        busy = (m.get("benchmark") or {}).get("busy")
        if busy:
            lines += ["", f"The machine was busy while measuring (load average up to "
                          f"{busy['load']:.1f} on {busy['cpus']} CPUs): timings are slower "
                          "than idle."]
        unstable = [f"`{c}`" for c, a in arts.items()
                    for r in (a.get("benchmark") or {}).get("results") or []
                    if r.get("stable") is False]
        if unstable:
            lines.append("")
            lines.append("Not stable within the time cap: " + ", ".join(unstable))
        lines.append("")
    if s["out_of_date"]:
        lines.append("Out of date: " + ", ".join(f"`{x}`" for x in s["out_of_date"]))
    return "\n".join(lines).rstrip() + "\n"


def step_summary(doc: Mapping[str, Any]) -> Dict[str, int]:
    """Counts of steps per origin (for the CLI's one-line summary)."""
    return dict(doc["summary"]["origins"])
