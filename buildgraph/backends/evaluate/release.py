"""``release``: ship what passed verification, as a bundle a deployment team can take as is.

It reads a benchmark report and the verification reports, ranks the candidates that passed
verification by their latency (at one batch size), and selects:

* ``best`` (default): the fastest one;
* ``best_per_runtime``: the fastest of each runtime (an ONNX model for onnxruntime beside a
  TensorRT engine, a TorchScript module, a TVM library...);
* ``all_passed``: every candidate that passed.

Outputs: ``artifact/`` (the fastest artifact, as before), ``release.json`` (what was chosen and
why), the bundle directory ``bundle/`` and the same bundle as ``bundle.tar.gz``. The bundle
holds the selected artifacts, ``manifest.json`` (IO signature, precision, verification errors
and the tolerance each passed, benchmark figures, provenance), a loader snippet per runtime and
a ``README.md`` generated from the manifest (:mod:`buildgraph.backends.evaluate.bundle`).

Same inputs, same bytes: the manifest is sorted JSON of keyed data only (the reports, the
model's IO settings, and the provenance record the planner keys, ``Description.provenance``),
and the archive has sorted entries, a fixed mtime, owner and modes, and a gzip header without
time or name. One exception, as in Bazel's ``--stamp``: the git commit and dirty flag are read
when the step runs and are not keyed (a commit would otherwise change the key the committed lock
file records), so a cached bundle keeps the commit it was built at; ``stamp: false`` leaves
them out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

from pydantic import Field

from buildgraph.errors import RecipeError, StepFailed, did_you_mean
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task, artifact_of
from buildgraph.engine.hashing import path_digest
from buildgraph.engine.params import StrictParams

MANIFEST_SCHEMA = 1


class ReleaseParams(StrictParams):
    select: Literal["best", "best_per_runtime", "all_passed"] = Field(
        "best", description="what the bundle ships: the fastest candidate, the fastest per "
                            "runtime, or every candidate that passed verification")
    batch: Optional[int] = Field(None, description="compare at this batch size (default: the "
                                                   "first one measured)")
    require_verified: bool = Field(True, description="only candidates that a verify step "
                                                     "passed can be released")
    model: Optional[str] = Field(None, description="the model whose inputs the manifest "
                                                   "describes (default: the recipe's only one)")
    name: Optional[str] = Field(None, description="the bundle's name, the top folder of the "
                                                  "archive (default: the model's name)")
    stamp: bool = Field(True, description="record the git commit and dirty flag (read when the "
                                          "step runs, not keyed: see the module's doc)")
    required: List[str] = Field(default_factory=list, description="candidates that must not "
                                "have failed upstream (with --keep-going)")


class ReleaseExecutor(Executor):
    """Ship the fastest verified artifact(s): a manifest, loaders and a deterministic .tar.gz."""

    kind = "release"
    version = "3"  # 3: release.json names the device and the failed upstream steps
    Params = ReleaseParams
    outputs = {"artifact": "artifact", "manifest": "release.json", "bundle": "bundle",
               "archive": "bundle.tar.gz"}
    isolation = "worker"  # reads ONNX signatures and compresses hundreds of MB
    tolerates_failed_upstream = True

    def describe(self, params: ReleaseParams, ctx: DescribeContext) -> Description:
        """The model's IO settings (names, shapes, dims), this host (the benchmark it ships
        from measured it), and the provenance of everything it depends on."""
        from buildgraph import __version__
        from buildgraph.engine.environment import host_cpu, python_version

        data: Dict[str, Any] = {}
        name = params.model
        if name is None and len(ctx.models) == 1:
            name = next(iter(ctx.models))
        if name is not None:
            spec = ctx.models.get(name)
            if spec is None:
                raise RecipeError(f"model: no model named '{name}'"
                                  f"{did_you_mean(name, sorted(ctx.models))}",
                                  hint="models: " + (", ".join(sorted(ctx.models)) or "none"))
            spec = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
            data["model"] = {"name": name, "source": spec.get("source"),
                             "kwargs": spec.get("kwargs") or {},
                             "inputs": [[k, v] for k, v in (spec.get("inputs") or {}).items()],
                             "dims": spec.get("dims") or {}}
        return Description(data=data, env={"host": host_cpu(), "python": python_version(),
                                           "buildgraph": __version__}, provenance=True)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        from buildgraph.backends.evaluate import bundle

        from buildgraph.backends.evaluate.upstream import check_required, failed_upstream

        p = ReleaseParams.model_validate(task.params)
        failed = failed_upstream(task)
        check_required(p.required, list(task.upstream), failed)
        failed_checks = [up for up in failed if task.upstream_kinds.get(up) == "verify"]
        if failed_checks and p.require_verified:
            # a failed verify step leaves no report: what it checked is not known to be correct
            raise StepFailed(f"verify step '{failed_checks[0]}' failed upstream: nothing it "
                             "checked is known to be correct (fix it, or set "
                             "require_verified: false)")
        bench_step, report = self._benchmark(task, failed)
        verify_reports = {up: json.loads(Path(task.upstream[up]["report"]).read_text())
                          for up, kind in sorted(task.upstream_kinds.items())
                          if kind == "verify" and up in task.upstream}
        verified: Dict[str, bool] = {}
        for vrep in verify_reports.values():
            for cand, entry in vrep["candidates"].items():
                ok = bool(entry.get("passed")) and not entry.get("skipped")
                verified[cand] = verified.get(cand, True) and ok
        if p.require_verified and not verified:
            raise StepFailed("no verify step under 'from:': nothing is known to be correct "
                             "(or set require_verified: false)")
        ranking, reasons = self._rank(report, verified, p)
        for cand in failed:
            if task.upstream_kinds.get(cand) not in ("verify", "benchmark"):
                reasons[cand] = "failed upstream"
        if not ranking:
            raise StepFailed("no candidate both passed verification and was benchmarked"
                             + (f" at batch {p.batch}" if p.batch is not None else "")
                             + (" on " + str(report.get("device")) if report.get("device")
                                not in (None, "cpu") else "")
                             + (f" ({len(reasons)} not eligible: see the log)" if reasons
                                else ""))
        for cand, why in sorted(reasons.items()):
            task.log(f"{cand}: not ranked: {why}")
        selected = self._select(ranking, p.select)
        best_ms, best, best_entry = ranking[0]
        sources: Dict[str, Path] = {}
        for _, cand, entry in selected:
            source = _artifact_path(task, cand)
            if path_digest(source).digest != entry["digest"]:
                raise StepFailed(f"{cand}'s artifact changed since it was benchmarked")
            sources[cand] = source

        dest = task.outputs["artifact"]
        dest.mkdir()
        source = sources[best]
        if source.is_dir():
            shutil.copytree(source, dest / source.name)
        else:
            shutil.copyfile(source, dest / source.name)
        decision = {"chosen": best, "kind": best_entry["kind"], "artifact": source.name,
                    "digest": best_entry["digest"], "median_ms": best_ms, "mode": p.select,
                    "selected": [c for _, c, _ in selected],
                    "ranking": [{"step": c, "median_ms": ms,
                                 "runtime": e.get("runtime")} for ms, c, e in ranking],
                    "not_eligible": sorted(reasons), "not_eligible_reasons": reasons,
                    "device": report.get("device", "cpu"), "failed_upstream": failed,
                    "verified_against": {up: dict(rep.get("reference") or {})
                                         for up, rep in verify_reports.items()}}
        task.outputs["manifest"].write_text(json.dumps(decision, indent=2) + "\n")

        model = task.data.get("model") or {}
        name = p.name or model.get("name") or "release"
        manifest = bundle.build_manifest(
            task, name=name, mode=p.select, batch=p.batch, selected=selected, ranking=ranking,
            reasons=reasons, sources=sources, bench_step=bench_step, bench_report=report,
            verify_reports=verify_reports, model=model, stamp=p.stamp)
        bundle.write_bundle(task.outputs["bundle"], manifest, sources, task)
        bundle.write_archive(task.outputs["bundle"], task.outputs["archive"], top=name)
        task.log(f"released {', '.join(c for _, c, _ in selected)} ({p.select}); ranking: "
                 + ", ".join(f"{c} {ms} ms" for ms, c, _ in ranking))
        return {"chosen": best, "median_ms": best_ms, "selected": [c for _, c, _ in selected],
                "archive_bytes": task.outputs["archive"].stat().st_size}

    @staticmethod
    def _benchmark(task: Task, failed: Sequence[str] = ()) -> Tuple[str, Dict[str, Any]]:
        bench = [u for u, k in task.upstream_kinds.items() if k == "benchmark"]
        if len(bench) == 1 and bench[0] in failed:
            raise StepFailed(f"the benchmark step '{bench[0]}' failed upstream: nothing is "
                             "measured to rank")
        if len(bench) != 1:
            raise StepFailed("release needs exactly one benchmark step under 'from:'; got "
                             + (", ".join(bench) or "none"))
        return bench[0], json.loads(Path(task.upstream[bench[0]]["report"]).read_text())

    @staticmethod
    def _rank(report: Dict[str, Any], verified: Dict[str, bool], p: ReleaseParams
              ) -> Tuple[List[Tuple[float, str, Dict[str, Any]]], Dict[str, str]]:
        """Eligible candidates, fastest first (ties by name), and why the others are not."""
        ranking = []
        reasons: Dict[str, str] = {}
        bench_device = device_class(str(report.get("device") or "cpu"))
        for cand in report.get("failed_upstream") or []:
            reasons[cand] = "failed upstream (not benchmarked)"
        for cand, entry in sorted(report["candidates"].items()):
            results = entry.get("results") or []
            if p.batch is not None:
                results = [r for r in results if r.get("batch") == p.batch]
            latency = _latency(results[0]) if results else None
            ran_on = device_class(str(entry.get("device") or report.get("device") or "cpu"))
            if entry.get("skipped"):
                reasons[cand] = f"not benchmarked: {entry['skipped']}"
            elif ran_on != bench_device:
                reasons[cand] = (f"measured on {entry.get('device')}, not on the benchmark's "
                                 f"device {report.get('device')}: not ranked against the "
                                 "others")
            elif latency is None:
                reasons[cand] = "not benchmarked" + (f" at batch {p.batch}"
                                                     if p.batch is not None else "")
            elif p.require_verified and cand not in verified:
                reasons[cand] = "no verify step checked it"
            elif p.require_verified and not verified[cand]:
                reasons[cand] = "failed or skipped verification"
            else:
                ranking.append((latency, cand, entry))
        ranking.sort(key=lambda r: (r[0], r[1]))
        return ranking, reasons

    @staticmethod
    def _select(ranking: List[Tuple[float, str, Dict[str, Any]]], mode: str
                ) -> List[Tuple[float, str, Dict[str, Any]]]:
        if mode == "all_passed":
            return list(ranking)
        if mode == "best":
            return ranking[:1]
        seen = set()
        chosen = []
        for row in ranking:
            runtime = row[2].get("runtime") or row[2].get("kind")
            if runtime not in seen:
                seen.add(runtime)
                chosen.append(row)
        return chosen


def device_class(device: str) -> str:
    """``cpu`` or ``cuda:N`` of a device as a report names it (``cuda``, ``cuda:0 NVIDIA
    H200``): what two timings must share to be ranked against each other."""
    head = device.split()[0] if device.split() else "cpu"
    if head == "cuda":
        return "cuda:0"
    return head


def _latency(result: Dict[str, Any]) -> Optional[float]:
    """The latency a ranking compares: the median (``p50_ms`` where a benchmark names it so)."""
    for key in ("median_ms", "p50_ms"):
        if isinstance(result.get(key), (int, float)):
            return float(result[key])
    return None


def _artifact_path(task: Task, step: str) -> Path:
    """Where the benchmarked artifact of ``step`` is: it must be an upstream of the release."""
    if step not in task.upstream:
        raise StepFailed(f"the candidate '{step}' is not under this step's 'from:'; list the "
                         "candidates' steps too, so the release is keyed on them")
    return artifact_of(task, step)
