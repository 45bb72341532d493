"""TVM targets: flag strings, TVM's JSON form and ``native`` normalise to one canonical dict
(pure Python: these tests import no TVM)."""

from __future__ import annotations

import json
import sys

import pytest

from buildgraph.backends.tvm import target as tvmtarget
from buildgraph.backends.tvm.target import TargetError, canonical_target, effective_target, identity_digest, runnable_here, target_identity, target_text


@pytest.mark.parametrize("spec, expected", [
    ("llvm -mcpu=skylake", {"kind": "llvm", "mcpu": "skylake"}),
    ({"kind": "llvm", "mcpu": "skylake"}, {"kind": "llvm", "mcpu": "skylake"}),
    ('{"kind": "llvm", "mcpu": "skylake"}', {"kind": "llvm", "mcpu": "skylake"}),
    ("llvm -mtriple=aarch64-linux-gnu", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}),
    ("cuda -arch=sm_90", {"kind": "cuda", "arch": "sm_90"}),
    ({"kind": "cuda", "arch": "sm_90"}, {"kind": "cuda", "arch": "sm_90"}),
    ("native", {"kind": "llvm", "mcpu": "native"}),
    ("llvm -mcpu=native", {"kind": "llvm", "mcpu": "native"}),
    ({"kind": "native"}, {"kind": "llvm", "mcpu": "native"}),
    ("llvm -mattr=+fma,+avx2 -mcpu=haswell", {"kind": "llvm", "mattr": ["+avx2", "+fma"],
                                              "mcpu": "haswell"}),
    ({"kind": "llvm", "mattr": ["+fma", "+avx2", "+fma"], "mcpu": "haswell"},
     {"kind": "llvm", "mattr": ["+avx2", "+fma"], "mcpu": "haswell"}),
    ("llvm -num-cores=4", {"kind": "llvm", "num-cores": 4}),
    ({"kind": "llvm", "num-cores": "4", "tag": "", "keys": []}, {"kind": "llvm", "num-cores": 4}),
])
def test_all_spellings_normalise_to_one_dict(spec, expected):
    assert canonical_target(spec) == expected
    assert list(canonical_target(spec)) == sorted(expected)  # sorted keys: stable JSON


def test_canonical_is_idempotent_and_round_trips_through_text():
    for spec in ("llvm -mcpu=skylake -mattr=+avx512f", "cuda -arch=sm_80", "native",
                 "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76"):
        canon = canonical_target(spec)
        assert canonical_target(canon) == canon
        assert canonical_target(target_text(canon)) == canon
    assert target_text(canonical_target("native")) == "native"
    assert target_text(canonical_target("llvm -mattr=+b,+a")) == "llvm -mattr=+a,+b"


@pytest.mark.parametrize("spec, message", [
    ("llvmm -mcpu=x", "unknown target kind 'llvmm'"),
    ("llvm mcpu=x", "cannot read 'mcpu=x'"),
    ("", "empty target"),
    ("{not json", "is not valid JSON"),
    ({"mcpu": "skylake"}, "target has no 'kind'"),
    ("cuda -arch=90", "is not of the form sm_XY"),
    ("llvm -num-cores=zero", "num-cores must be an integer"),
    ("llvm -num-cores=0", "must be at least 1"),
    (42, "a target is a string or a mapping"),
])
def test_bad_targets_say_what_is_wrong(spec, message):
    with pytest.raises(TargetError) as info:
        canonical_target(spec)
    assert message in info.value.message


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(TargetError) as info:
        canonical_target("gpu")
    assert "native" in info.value.hint and "cuda" in info.value.hint


def test_identity_ignores_what_tvm_adds_to_its_records():
    record_target = {"keys": ["cpu"], "kind": "llvm", "mcpu": "znver4", "num-cores": 2, "tag": ""}
    ours = effective_target(canonical_target("native"), system_cpu="znver4", num_cores=2)
    assert target_identity(record_target) == target_identity(ours) == {
        "kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    aarch64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "keys": ["arm_cpu", "cpu"],
               "feature.has_asimd": True, "feature.is_aarch64": True}
    assert target_identity(aarch64) == {"kind": "llvm", "mtriple": "aarch64"}
    assert identity_digest(record_target) == identity_digest(ours)


def test_identity_tells_cpus_apart():
    a = target_identity({"kind": "llvm", "mcpu": "skylake", "num-cores": 2})
    b = target_identity({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    c = target_identity({"kind": "llvm", "mcpu": "skylake", "num-cores": 8})
    d = target_identity({"kind": "llvm", "mcpu": "skylake", "num-cores": 2,
                         "mattr": ["+avx512f"]})
    assert len({json.dumps(x, sort_keys=True) for x in (a, b, c, d)}) == 4
    assert len({identity_digest(x) for x in (a, b, c, d)}) == 4


def test_effective_target_resolves_native_and_fills_cores():
    eff = effective_target(canonical_target("native"), system_cpu="skylake", num_cores=6)
    assert eff == {"kind": "llvm", "mcpu": "skylake", "num-cores": 6}
    # a cross target gets no host core count, and a given one is kept
    cross = effective_target(canonical_target("llvm -mtriple=aarch64-linux-gnu"))
    assert "num-cores" not in cross
    given = effective_target(canonical_target("llvm -mcpu=skylake -num-cores=3"))
    assert given["num-cores"] == 3
    with pytest.raises(TargetError):
        effective_target(canonical_target("native"))


def test_runnable_here(monkeypatch):
    monkeypatch.setattr(tvmtarget, "host_arch", lambda: "x86_64")
    assert runnable_here(canonical_target("native")) == (True, "")
    assert runnable_here(canonical_target("llvm -mtriple=x86_64-linux-gnu"))[0]
    ok, why = runnable_here(canonical_target("llvm -mtriple=aarch64-linux-gnu"))
    assert not ok and "cross-compiled for aarch64; this machine is x86_64" in why
    assert runnable_here(canonical_target("llvm -mtriple=arm64-apple-darwin"))[1].startswith(
        "cross-compiled for aarch64")


def test_fingerprint_records_the_host_for_native_only():
    native = tvmtarget.fingerprint(canonical_target("native"))
    assert json.loads(native["target"]) == {"kind": "llvm", "mcpu": "native"}
    assert native["host_cpu"] and "host_cores" in native
    fixed = tvmtarget.fingerprint(canonical_target("llvm -mcpu=skylake -num-cores=4"))
    assert set(fixed) == {"target"}
    cross = tvmtarget.fingerprint(canonical_target("llvm -mtriple=aarch64-linux-gnu"))
    assert set(cross) == {"target"}


def test_parsing_imports_no_tvm():
    import subprocess

    code = ("import sys; from buildgraph.backends.tvm import target as tvmtarget, records as tunedb; "
            "tvmtarget.canonical_target('llvm -mcpu=skylake'); "
            "from buildgraph.engine.executor import load_executor; "
            "from buildgraph.engine.executor import DescribeContext; "
            "ctx = DescribeContext(recipe_dir=__import__('pathlib').Path('.')); "
            "[load_executor(k)().describe(load_executor(k).Params.model_validate("
            "{'target': {'kind': 'llvm', 'mcpu': 'native'}}), ctx) "
            "for k in ('tvm.compile', 'tvm.tune')]; "
            "print(sorted(m for m in ('tvm', 'torch', 'onnx', 'tvm_ffi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_cuda_without_arch_keys_on_the_gpu_present(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    # what nvidia-smi answers on the H200 host (name, compute capability)
    fake.write_text('#!/bin/sh\ncase "$*" in *name,compute_cap*) echo "NVIDIA H200, 9.0";; '
                    '*) exit 6;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    cuda = canonical_target("cuda")
    assert tvmtarget.fingerprint(cuda)["cuda_device"] == "NVIDIA H200 (sm_90)"
    assert effective_target(cuda)["arch"] == "sm_90"
    assert "cuda_device" not in tvmtarget.fingerprint(canonical_target("cuda -arch=sm_80"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert tvmtarget.fingerprint(cuda)["cuda_device"] == "none"
