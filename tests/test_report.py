"""``buildgraph report``: the data (--json), the Markdown, the comparison of two builds, the run
record behind each step's origin, and the HTML page in a real headless Chromium (no console
errors; every figure on the page equals the JSON's)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from buildgraph.cli import run_cli  # noqa: E402
from conftest import REPO  # noqa: E402
from torch_helpers import write_models, write_recipe  # noqa: E402

STEPS = """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
static: {uses: onnx.export, with: {model: tiny, exporter: legacy, dynamic: {}}}
verify: {uses: verify, from: [onnx, ts, static], with: {model: tiny, random: 2}}
bench:
  uses: benchmark
  from: [onnx, ts, static]
  with: {model: tiny, dims: {batch: [1, 4]}, warmup: 2, runs: 5, window_s: 0.02, max_s: 2}
ship: {uses: release, from: [bench, verify, onnx, ts, static]}
"""


class Built:
    """A built recipe and the ``report`` command pointed at its cache and build directory."""

    def __init__(self, root: Path):
        self.root = root
        self.recipe = root / "r.yaml"
        self.cache = root / "c"
        self.build = root / "b"

    def run(self, *targets, **kw):
        result = buildgraph.run(self.recipe, list(targets), cache_dir=self.cache,
                                build_dir=self.build, **kw)
        assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
        return result

    def report(self, capsys, *args, recipe=None):
        code = run_cli(["report", str(recipe or self.recipe), "--cache-dir", str(self.cache),
                        "--build-dir", str(self.build), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    def json(self, capsys, *args):
        code, out, err = self.report(capsys, "--json", *args)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_models(root)
    write_recipe(root, STEPS)
    b = Built(root)
    b.run()
    return b


# --- the data ----------------------------------------------------------------------------------

def test_json_holds_steps_artifacts_figures_and_the_release(built, capsys):
    doc = built.json(capsys)
    bench = json.loads((built.build / "bench" / "benchmark.json").read_text())
    verify = json.loads((built.build / "verify" / "report.json").read_text())
    release = json.loads((built.build / "ship" / "release.json").read_text())
    assert list(doc["steps"]) == ["onnx", "ts", "static", "verify", "bench", "ship"]
    assert {s["origin"] for s in doc["steps"].values()} == {"built"}
    assert doc["steps"]["bench"]["upstream"] == ["onnx", "ts", "static"]
    assert all(s["state"] == "up to date" for s in doc["steps"].values())
    arts = doc["models"]["tiny"]["artifacts"]
    assert set(arts) == {"onnx", "ts", "static"}
    for cand, a in arts.items():
        assert a["verification"]["passed"] is True
        assert a["verification"]["max_abs"] == max(
            o["max_abs"] for o in verify["candidates"][cand]["outputs"].values())
        lock = json.loads((built.root / "r.lock.json").read_text())
        assert a["size_bytes"] == lock["steps"][cand]["outputs"]["model"]["size"]
    ref = {r["batch"]: r["p50_ms"] for r in bench["reference"]["results"]}
    for r, src in zip(arts["onnx"]["benchmark"]["results"], bench["candidates"]["onnx"]["results"]):
        assert (r["p50_ms"], r["p99_ms"], r["items_per_s"]) == \
            (src["p50_ms"], src["p99_ms"], src["items_per_s"])
        assert r["speedup_vs_eager"] == pytest.approx(ref[r["batch"]] / r["p50_ms"], abs=1e-3)
    # a static (batch 1) export is timed at batch 1 only; batch 4 is skipped with the reason
    assert [r["batch"] for r in arts["static"]["benchmark"]["results"]] == [1]
    assert "built for batch=1" in arts["static"]["benchmark"]["skipped_settings"][0]["reason"]
    rel = doc["releases"]["ship"]
    assert rel["chosen"] == release["chosen"] and rel["median_ms"] == release["median_ms"]
    assert rel["reasons"][0].startswith(f"{release['chosen']} (")
    assert len(rel["reasons"]) >= len(release["ranking"])
    assert doc["steps"]["ship"]["remote_origin"] is None  # the team cache's field, unset


def test_origins_follow_the_last_run_and_a_no_op_run_leaves_the_record_alone(built, capsys):
    built.run()  # all cached now
    doc = built.json(capsys)
    assert {s["origin"] for s in doc["steps"].values()} == {"local"}
    record = built.build / ".run.json"
    stamp = record.stat().st_mtime_ns
    built.run()
    assert record.stat().st_mtime_ns == stamp  # nothing changed: nothing written
    built.run("ship", force=["ship"])
    doc = built.json(capsys)
    assert doc["steps"]["ship"]["origin"] == "built"
    assert doc["steps"]["onnx"]["origin"] == "local"


def test_an_edited_recipe_shows_which_steps_are_out_of_date(built, capsys):
    edited = built.root / "edited.yaml"
    edited.write_text(built.recipe.read_text().replace("mode: trace", "mode: script"))
    shutil.copy(built.root / "r.lock.json", built.root / "edited.lock.json")
    code, out, err = built.report(capsys, "--json", recipe=edited)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["steps"]["onnx"]["state"] == "up to date"
    assert doc["steps"]["ts"]["state"] == "out of date"
    assert any("mode" in r for r in doc["steps"]["ts"]["reasons"])
    assert set(doc["summary"]["out_of_date"]) == {"ts", "verify", "bench", "ship"}
    # the figures are still the recorded build's
    assert doc["models"]["tiny"]["artifacts"]["ts"]["benchmark"]["results"]


def test_a_busy_machine_is_named_when_the_load_exceeded_the_cpus():
    from buildgraph.html_report.collect import _busy

    def model(before, after, during):
        return {"benchmark": {"host_load": {"cpus": 2, "before": before, "after": after}},
                "artifacts": {"a": {"benchmark": {"results": [{"load_1m": during}]}}},
                "reference": None}

    assert _busy(model(0.5, 1.0, 1.9)) is None
    assert _busy(model(0.5, 1.0, 7.5)) == {"load": 7.5, "cpus": 2}
    assert _busy(model(3.0, None, None)) == {"load": 3.0, "cpus": 2}


def test_markdown_summary(built, capsys):
    code, out, err = built.report(capsys, "--markdown")
    assert code == 0, err
    doc = built.json(capsys)
    rel = doc["releases"]["ship"]
    assert f"**Released** `{rel['chosen']}`" in out
    for cand in ("onnx", "ts", "static"):
        assert re.search(rf"^\| `{cand}` \| passed \|", out, re.M), out
    assert "| artifact | verify | max abs err | p50 ms |" in out


def test_html_is_one_self_contained_file(built, capsys, tmp_path):
    out = tmp_path / "r.html"
    code, _, err = built.report(capsys, "-o", str(out))
    assert code == 0, err
    page = out.read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page
    assert page.count("<svg") == 3  # the DAG, latency, speedup
    # the default place is the build directory
    code, _, err = built.report(capsys)
    assert code == 0 and (built.build / "report.html").is_file(), err


# --- --compare --------------------------------------------------------------------------------

def test_compare_with_the_same_build_changes_nothing(built, capsys):
    code, out, err = built.report(capsys, "--compare", str(built.root / "r.lock.json"))
    assert code == 0, err
    assert "steps: 6 same key, 0 changed" in out and "no regressions" in out
    assert re.search(r"onnx +batch 1 .* \+0\.0%", out)


def test_compare_flags_a_slowdown_over_the_threshold_and_sets_the_exit_code(built, capsys,
                                                                             tmp_path):
    doc = built.json(capsys)
    old = copy.deepcopy(doc)
    ts = old["models"]["tiny"]["artifacts"]["ts"]["benchmark"]["results"][0]
    ts["p50_ms"] = ts["p50_ms"] / 2  # the other build was twice as fast
    old["lock"]["onnx"]["key"] = "0" * 32
    old["lock"]["onnx"]["outputs"]["model"] = "f" * 32
    other = tmp_path / "main.report.json"
    other.write_text(json.dumps(old))
    code, out, err = built.report(capsys, "--compare", str(other))
    assert code == 1, (out, err)
    assert re.search(r"^  ts +batch 1 .*\+100\.0%  REGRESSION$", out, re.M), out
    assert re.search(r"^  key changed +onnx +key 00000000 -> \w{8}; model ffffffff -> \w{8}$",
                     out, re.M), out
    assert "1 regression(s)" in out
    code, out, _ = built.report(capsys, "--compare", str(other), "--threshold", "150%")
    assert code == 0 and "no regressions" in out
    code, out, _ = built.report(capsys, "--compare", str(other), "--markdown")
    assert code == 1 and "**1 regression(s)** over +10%" in out
    code, out, _ = built.report(capsys, "--compare", str(other), "--json")
    data = json.loads(out)["compare"]
    assert data["regressions"] == 1 and data["counts"]["key changed"] == 1


def test_compare_reads_another_lock_files_figures_from_the_cache(built, capsys, tmp_path):
    """A lock file holds digests only: the other build's benchmark report comes from the
    store by digest."""
    lock = json.loads((built.root / "r.lock.json").read_text())
    other = tmp_path / "elsewhere" / "main.lock.json"
    other.parent.mkdir()
    other.write_text(json.dumps(lock))
    code, out, err = built.report(capsys, "--compare", str(other))
    assert code == 0, err
    assert "latency (p50)" in out and "no figures" not in out
    lock["steps"]["bench"]["outputs"]["report"]["digest"] = "e" * 32  # not in this cache
    other.write_text(json.dumps(lock))
    code, out, err = built.report(capsys, "--compare", str(other))
    assert code == 0 and "no figures of the other build for model 'tiny'" in out


def test_bad_input_is_one_line(built, capsys, tmp_path):
    for args, text in [(["--compare", str(tmp_path / "nope.json")], "no such file"),
                       (["--threshold", "fast"], "--threshold: expected a percentage"),
                       (["--lock", str(tmp_path / "x.lock.json")], "--lock"),
                       (["--screenshot", "x.png", "--json"], "does not go with")]:
        code, out, err = built.report(capsys, *args)
        assert code == 2 and text in err and "Traceback" not in err, (args, err)
    (tmp_path / "garbage.json").write_text("{}")
    code, _, err = built.report(capsys, "--compare", str(tmp_path / "garbage.json"))
    assert code == 2 and "neither a lock file nor" in err
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(built.recipe.read_text())
    shutil.copytree(built.root / "models", tmp_path / "models")
    code, _, err = built.report(capsys, recipe=fresh)
    assert code == 2 and "no recorded build" in err and "hint: run" in err


def test_report_imports_no_ml_library(built):
    code = ("import sys\nfrom buildgraph.cli import run_cli\n"
            f"assert run_cli(['report', {str(built.recipe)!r}, '--cache-dir', "
            f"{str(built.cache)!r}, '--build-dir', {str(built.build)!r}, '-o', "
            f"{str(built.root / 'x.html')!r}]) == 0\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tvm', 'tensorrt', 'numpy')"
            " if m in sys.modules]\nprint(heavy)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=built.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --- the page in Chromium ---------------------------------------------------------------------

def _chromium():
    from buildgraph.html_report.browser import find_chromium

    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run "
                    "installs it): the HTML report is not opened in a browser")
    return exe


FIGURES_JS = """Array.from(document.querySelectorAll('[data-path]')).map(e => ({
  path: e.dataset.path, value: JSON.parse(e.dataset.value), text: e.textContent,
  unit: e.dataset.unit || null}))"""

# shown unit -> factor to the JSON's unit, per kind of field (by the path's last key)
UNITS = {"size_bytes": {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30},
         "spread": {"%": 0.01}}


def _at(doc, dotted_path):
    node = doc
    for part in re.split(r"(?<!\\)\.", dotted_path):
        part = part.replace("\\.", ".").replace("\\\\", "\\")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def check_figures(figures, doc):
    """Every figure on the page is the JSON's value at its path, shown to the precision of
    its text. Returns the list of mismatches."""
    bad = []
    for f in figures:
        try:
            expected = _at(doc, f["path"])
        except (KeyError, IndexError, ValueError, TypeError):
            bad.append(f"{f['path']}: not in the JSON")
            continue
        if f["value"] != expected:
            bad.append(f"{f['path']}: data-value {f['value']!r} != JSON {expected!r}")
            continue
        match = re.match(r"\s*([-+]?\d[\d.]*(?:e[-+]?\d+)?)\s*(\S*)", f["text"].replace("\u00a0",
                                                                                       " "))
        if not match:
            bad.append(f"{f['path']}: shows {f['text']!r}, no number")
            continue
        shown, unit = match.group(1), match.group(2) or f["unit"] or ""
        leaf = f["path"].rsplit(".", 1)[-1]
        factor = UNITS.get(leaf, {}).get(unit, 1)
        mantissa = shown.split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        exp = int(shown.split("e")[1]) if "e" in shown else 0
        half_unit = 0.5 * 10 ** (exp - decimals) * factor
        if not math.isclose(float(shown) * factor, float(expected), abs_tol=half_unit * 1.0001):
            bad.append(f"{f['path']}: shows {f['text']!r}, JSON {expected!r}")
    return bad


def test_the_page_renders_in_chromium_without_errors_and_its_figures_are_the_jsons(
        built, capsys, tmp_path):
    exe = _chromium()
    from buildgraph.html_report.browser import Browser

    page = tmp_path / "report.html"
    code, _, err = built.report(capsys, "-o", str(page))
    assert code == 0, err
    doc = built.json(capsys)
    with Browser(exe) as browser:
        browser.open(page)
        assert browser.errors == []
        figures = browser.evaluate(FIGURES_JS)
        assert browser.evaluate("document.querySelectorAll('svg').length") == 3
        boxes = browser.evaluate("Array.from(document.querySelectorAll('g.step'))"
                                 ".map(g => g.dataset.step)")
    assert sorted(boxes) == sorted(doc["steps"])
    assert check_figures(figures, doc) == []
    shown = {f["path"] for f in figures}
    # the table shows every benchmarked artifact's p50, p99, throughput and size
    for cand, a in doc["models"]["tiny"]["artifacts"].items():
        base = f"models.tiny.artifacts.{cand}"
        assert {f"{base}.benchmark.results.0.p50_ms", f"{base}.benchmark.results.0.p99_ms",
                f"{base}.benchmark.results.0.items_per_s", f"{base}.size_bytes",
                f"{base}.verification.max_abs"} <= shown, cand
    assert "releases.ship.median_ms" in shown


def test_the_checks_catch_a_wrong_figure_and_a_page_that_reaches_out(built, capsys, tmp_path):
    """The two checks above can fail: a figure edited on the page, and a page that loads a
    remote image (the report's Content-Security-Policy blocks it, and says so)."""
    exe = _chromium()
    from buildgraph.html_report.browser import Browser

    page = tmp_path / "report.html"
    assert built.report(capsys, "-o", str(page))[0] == 0
    doc = built.json(capsys)
    html = page.read_text()
    target = 'data-path="models.tiny.artifacts.onnx.benchmark.results.0.p50_ms"'
    assert target in html
    cell = re.search(re.escape(target) + r'[^>]*>([^<]+)<', html)
    wrong = html.replace(cell.group(0), cell.group(0).replace(cell.group(1), "999.9\u00a0ms"), 1)
    wrong = wrong.replace("</main>", '<img src="https://example.com/pixel.png"></main>')
    page.write_text(wrong)
    with Browser(exe) as browser:
        browser.open(page)
        errors = list(browser.errors)
        figures = browser.evaluate(FIGURES_JS)
    assert any("example.com/pixel.png" in e and "Content Security Policy" in e for e in errors)
    assert [b.split(":")[0] for b in check_figures(figures, doc)] == \
        ["models.tiny.artifacts.onnx.benchmark.results.0.p50_ms"]


def test_screenshot(built, capsys, tmp_path):
    _chromium()
    png = tmp_path / "shot.png"
    code, _, err = built.report(capsys, "-o", str(tmp_path / "r.html"), "--screenshot", str(png))
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 900  # the whole page, not the first screen
