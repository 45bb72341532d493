"""CUDA targets completed from TVM's target tags, tested from recorded device descriptions
(what ``nvidia-smi`` says on real hosts): no GPU needed. A target missing what MetaSchedule
needs is what made ``tvm.tune`` fail on the H200 (``missing attribute max_threads_per_block``);
the slow test proves the completed target gets past that check in TVM itself."""

from __future__ import annotations

import pytest

from buildgraph.backends.tvm.target import (CudaDevice, TargetError, canonical_target,
                                            complete_cuda_target, tag_candidates)

tvm = pytest.importorskip("tvm", reason="TVM is not installed (pip install buildgraph[tvm])")

# name, compute capability as nvidia-smi --query-gpu=name,compute_cap prints them
H200 = CudaDevice("NVIDIA H200", "9.0")
H100 = CudaDevice("NVIDIA H100 80GB HBM3", "9.0")
A100 = CudaDevice("NVIDIA A100-SXM4-80GB", "8.0")
RTX3090 = CudaDevice("NVIDIA GeForce RTX 3090", "8.6")
T4 = CudaDevice("Tesla T4", "7.5")


@pytest.fixture(scope="module")
def tags():
    from buildgraph.backends.tvm.compile import cuda_tags

    return cuda_tags(tvm)


@pytest.mark.parametrize("name, tag", [
    ("NVIDIA H100 80GB HBM3", "nvidia/nvidia-h100"), ("NVIDIA H100 PCIe", "nvidia/nvidia-h100"),
    ("NVIDIA A100-SXM4-40GB", "nvidia/nvidia-a100"), ("Tesla T4", "nvidia/nvidia-t4"),
    ("NVIDIA GeForce RTX 3090", "nvidia/geforce-rtx-3090"), ("NVIDIA RTX A6000", "nvidia/rtx-a6000"),
    ("Quadro RTX 8000", "nvidia/quadro-rtx-8000"), ("NVIDIA A10G", "nvidia/nvidia-a10g"),
])
def test_gpu_names_map_to_tvm_tags(name, tag, tags):
    assert tag in tags
    assert tag in tag_candidates(name)


@pytest.mark.parametrize("spec", ["cuda", {"kind": "cuda"}])
def test_plain_cuda_is_completed_from_the_tag_of_the_gpu(spec, tags):
    done, how = complete_cuda_target(canonical_target(spec), H100, tags)
    assert how == "TVM tag nvidia/nvidia-h100"
    # the arch is the device's (records and libraries of sm_90 stay one identity)
    assert done["arch"] == "sm_90"
    assert done["max_threads_per_block"] == 1024 and done["thread_warp_size"] == 32
    assert done["max_shared_memory_per_block"] == 49152
    assert done["registers_per_block"] == 65536 and done["max_num_threads"] == 1024
    assert list(done) == sorted(done)
    tvm.target.Target(done)  # TVM takes it as it is


def test_a_gpu_without_a_tag_takes_the_tag_of_its_architecture(tags):
    assert "nvidia/nvidia-h200" not in tags  # if TVM adds one, it is used by name instead
    h200, how = complete_cuda_target(canonical_target("cuda"), H200, tags)
    assert how == "TVM tag nvidia/nvidia-h100" and h200["arch"] == "sm_90"
    # one GPU model, one dict: the key does not depend on the order TVM lists its tags
    assert complete_cuda_target(canonical_target("cuda"), H200, dict(reversed(tags.items()))
                                )[0] == h200


def test_explicit_arch_needs_no_gpu_and_written_values_win(tags):
    done, how = complete_cuda_target(canonical_target("cuda -arch=sm_90"), None, tags)
    assert how == "TVM tag nvidia/nvidia-h100" and done["arch"] == "sm_90"
    mine = canonical_target({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 512})
    done, how = complete_cuda_target(mine, RTX3090, tags)  # another arch: its GPU not used
    assert done["max_threads_per_block"] == 512 and done["arch"] == "sm_80"
    assert how in ("TVM tag nvidia/nvidia-a100", "TVM tag nvidia/nvidia-a30")
    assert complete_cuda_target(canonical_target("cuda"), T4, tags)[1] == "TVM tag nvidia/nvidia-t4"
    assert complete_cuda_target(canonical_target("cuda"), A100, tags)[1] == "TVM tag nvidia/nvidia-a100"


def test_no_tag_for_the_arch_uses_the_limits_the_device_reports(tags):
    future = CudaDevice("NVIDIA X9", "99.0", {"max_threads_per_block": 1024,
                                              "max_shared_memory_per_block": 65536,
                                              "thread_warp_size": 32})
    done, how = complete_cuda_target(canonical_target("cuda"), future, tags)
    assert how == "the limits NVIDIA X9 reports" and done["arch"] == "sm_990"
    assert done["max_shared_memory_per_block"] == 65536
    with pytest.raises(TargetError, match="no target tag for sm_990"):
        complete_cuda_target(canonical_target("cuda"), CudaDevice("NVIDIA X9", "99.0"), tags)
    with pytest.raises(TargetError, match="no NVIDIA GPU is visible"):
        complete_cuda_target(canonical_target("cuda"), None, tags)
    with pytest.raises(TargetError, match="X.Y"):
        CudaDevice("odd", "9")


def test_device_descriptions_round_trip_and_key_on_the_model_only():
    d = CudaDevice.from_json({"name": "NVIDIA H200", "compute_capability": "9.0",
                              "attributes": {"max_threads_per_block": 1024}})
    assert CudaDevice.from_json(d.to_json()).to_json() == d.to_json()
    assert d.key() == "NVIDIA H200 (sm_90)"


@pytest.mark.slow
def test_metaschedule_accepts_the_completed_target_and_refuses_the_bare_one(tags):
    """TVM's own check (auto_bind) that failed the tune on the H200, run on this CPU."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    a = te.placeholder((64, 64), name="A")
    b = te.placeholder((64, 64), name="B")
    k = te.reduce_axis((0, 64), name="k")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})

    def spaces(target):
        return ms.TuneContext(mod=mod, target=tvm.target.Target(target),
                              space_generator="post-order-apply",
                              search_strategy="replay-trace", num_threads=1
                              ).generate_design_space()

    done, _ = complete_cuda_target(canonical_target("cuda"), H200, tags)
    assert len(spaces(done)) >= 1
    with pytest.raises(Exception, match="max_threads_per_block"):
        spaces({"kind": "cuda", "arch": "sm_90"})


def test_a_cuda_design_space_needs_no_tensor_intrinsic(tags, tmp_path):
    """A CUDA tune uses the plain cuda rules: its design space is generated without importing
    ``tvm.s_tir.tensor_intrin.cuda`` (40-48 s of import, measured on an H200 host, before a
    tune's first batch). The default (tensor-core) rules on the same target need it: the
    probe checks that difference too, so it fails if the space were left at the default."""
    import subprocess
    import sys
    import textwrap

    done, _ = complete_cuda_target(canonical_target("cuda"), H200, tags)
    probe = textwrap.dedent(f"""
        import sys, tvm
        from tvm import te
        from tvm.s_tir import meta_schedule as ms
        from buildgraph.backends.tvm.tune import _space, light_tensor_intrin
        target = {dict(done)!r}
        light_tensor_intrin(target)
        a = te.placeholder((64, 64), name="A"); b = te.placeholder((64, 64), name="B")
        k = te.reduce_axis((0, 64), name="k")
        c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
        mod = tvm.IRModule({{"main": te.create_prim_func([a, b, c])}})
        def spaces(space):
            return ms.TuneContext(mod=mod, target=tvm.target.Target(target),
                                  space_generator=space, search_strategy="replay-trace",
                                  num_threads=1).generate_design_space()
        print("plain", len(spaces(_space(ms, target))))
        print("cuda intrinsics imported", "tvm.s_tir.tensor_intrin.cuda" in sys.modules)
        try:
            spaces("post-order-apply")
            print("default ok")
        except Exception as exc:
            print("default refused", "is not registered" in str(exc))
        """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert "plain " in out.stdout, out.stderr[-2000:]
    assert int(out.stdout.split("plain ")[1].split()[0]) >= 1
    assert "cuda intrinsics imported False" in out.stdout
    assert "default refused True" in out.stdout
