"""TVM targets as users write them, normalised to one canonical dict (pure Python, no TVM).

TVM 0.27 takes targets only as JSON dicts (``{"kind": "llvm", "mcpu": "skylake"}``) and rejects
the flag strings everyone knows (``"llvm -mcpu=skylake"``). Recipes may use either, plus
``native`` for this host's CPU; :func:`canonical_target` turns all of them into one sorted dict,
which is what the ``tvm.*`` step kinds keep in their parameters, so two spellings of the same
target share one cache key and a matrix over targets works.

Three views of a target:

* the **canonical** dict: what the user asked for, normalised; ``native`` stays symbolic
  (``mcpu: native``) and the fingerprint records which host CPU it meant;
* the **effective** dict (:func:`effective_target`): what TVM is given, with ``native`` resolved
  to the LLVM CPU name and ``num-cores`` filled in for host targets (MetaSchedule uses it to
  decide parallel loops);
* the **identity** (:func:`target_identity`): the fields that decide whether a tuning record
  fits a target (kind, CPU, triple, features, cores, CUDA arch, and the remote device records
  were measured on, as the target's ``model``). TVM's database ignores the
  target when queried; buildgraph files and filters records by this identity instead, so
  records tuned for one CPU are never applied to another.
"""

from __future__ import annotations

import json
import os
import platform
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from buildgraph.errors import BuildgraphError

TargetSpec = Union[str, Mapping[str, Any]]

KINDS = ("llvm", "cuda", "c", "rocm", "vulkan", "opencl", "metal")
"""Target kinds accepted in the flag-string form."""

LIST_KEYS = ("mattr", "keys", "libs")
"""Keys whose value is a list (``-mattr=+avx2,+fma``)."""

IDENTITY_KEYS = ("kind", "mcpu", "mtriple", "mattr", "mabi", "num-cores", "arch", "model")
"""The fields of a target that decide whether a tuning record applies to it. ``model`` names
the device records were measured on through a TVM RPC tracker (``rpc-<key>-<fingerprint>``,
see :mod:`buildgraph.backends.tvm.rpc`); targets measured here have none."""

_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64", "i686": "x86",
                 "i386": "x86", "armv7l": "arm", "armv7": "arm"}


class TargetError(BuildgraphError):
    """A target the tvm step kinds cannot use."""


def canonical_target(spec: TargetSpec) -> Dict[str, Any]:
    """Parse ``spec`` (flag string, JSON string, dict, or ``native``) into the canonical dict.

    >>> canonical_target("llvm -mcpu=skylake -mattr=+fma,+avx2")
    {'kind': 'llvm', 'mattr': ['+avx2', '+fma'], 'mcpu': 'skylake'}
    """
    if isinstance(spec, Mapping):
        raw: Dict[str, Any] = dict(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise TargetError("empty target", hint="write e.g. native, 'llvm -mcpu=skylake' "
                                                   "or 'cuda -arch=sm_90'")
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise TargetError(f"target '{text}' is not valid JSON: {exc}") from None
            if not isinstance(raw, dict):
                raise TargetError(f"target '{text}' must be a JSON object")
        else:
            raw = _parse_flags(text)
    else:
        raise TargetError(f"a target is a string or a mapping; got {type(spec).__name__}")
    return _normalise(raw)


def _parse_flags(text: str) -> Dict[str, Any]:
    words = text.split()
    head = words[0]
    if head == "native":
        raw: Dict[str, Any] = {"kind": "llvm", "mcpu": "native"}
    elif head in KINDS:
        raw = {"kind": head}
    else:
        raise TargetError(f"unknown target kind '{head}' in '{text}'",
                          hint="the kinds are " + ", ".join(("native",) + KINDS)
                               + "; TVM's JSON form ({\"kind\": ...}) is accepted too")
    for word in words[1:]:
        if not word.startswith("-") or word in ("-", "--"):
            raise TargetError(f"cannot read '{word}' in target '{text}'",
                              hint="options are written -name=value, e.g. -mcpu=skylake")
        name, eq, value = word.lstrip("-").partition("=")
        if not name:
            raise TargetError(f"cannot read '{word}' in target '{text}'")
        raw[name] = value if eq else True
    return raw


def _normalise(raw: Dict[str, Any]) -> Dict[str, Any]:
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TargetError("target has no 'kind'", hint="e.g. {kind: llvm, mcpu: skylake}")
    if kind == "native":
        raw = {**raw, "kind": "llvm", "mcpu": raw.get("mcpu", "native")}
        kind = "llvm"
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("tag", "keys") and not value:
            continue  # TVM's export adds empty ones; they carry nothing
        if key == "host" and value is not None:
            value = canonical_target(value)
        elif key in LIST_KEYS:
            items = value.split(",") if isinstance(value, str) else list(value)
            value = sorted({str(v).strip() for v in items if str(v).strip()})
            if not value:
                continue
        elif key == "num-cores" or key == "max_num_threads" or key == "thread_warp_size":
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise TargetError(f"target option {key} must be an integer; got "
                                  f"'{value}'") from None
            if value < 1:
                raise TargetError(f"target option {key} must be at least 1; got {value}")
        elif isinstance(value, str) and re.fullmatch(r"-?\d+", value) and key != "arch":
            value = int(value)
        out[key] = value
    if kind == "cuda" and "arch" in out:
        arch = str(out["arch"])
        if not re.fullmatch(r"sm_\d+[a-z]?", arch):
            raise TargetError(f"CUDA arch '{arch}' is not of the form sm_XY (e.g. sm_90)")
    if "mtriple" in out and not isinstance(out["mtriple"], str):
        raise TargetError("mtriple must be a string such as aarch64-linux-gnu")
    return dict(sorted(out.items()))


def target_text(target: Mapping[str, Any]) -> str:
    """A canonical target in the flag form people read (``llvm -mcpu=skylake``)."""
    if dict(target) == {"kind": "llvm", "mcpu": "native"}:
        return "native"
    parts = [str(target["kind"])]
    for key, value in target.items():
        if key == "kind":
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = target_text(value)
        parts.append(f"-{key}" if value is True else f"-{key}={value}")
    return " ".join(parts)


# --- host ------------------------------------------------------------------------------------

def triple_arch(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return _ARCH_ALIASES.get(arch, arch)


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def host_cores() -> int:
    """This machine's logical CPU count: the default ``num-cores`` of host targets.

    Deliberately not the process's affinity mask: TVM's thread pool pins the calling thread
    when it is configured, which would change the count (and every key) mid-process."""
    return max(1, os.cpu_count() or 1)


def host_cpu_description() -> str:
    """The host CPU's model name and a digest of its feature flags (cheap; no TVM)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and value.strip():
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = value.strip()
                if model and flags and key == "":
                    break
    except OSError:
        pass
    if flags:
        import hashlib

        model += " flags:" + hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return model


def is_host_target(target: Mapping[str, Any]) -> bool:
    """True when code for ``target`` can run on this machine's CPU (as far as the triple and
    kind tell; a -mcpu newer than this CPU is caught when the library is loaded)."""
    if target.get("kind") not in ("llvm", "c"):
        return False
    triple = target.get("mtriple")
    return not triple or triple_arch(str(triple)) == host_arch()


def runnable_here(target: Mapping[str, Any]) -> Tuple[bool, str]:
    """Can a library built for ``target`` run on this machine? Returns (yes, why not)."""
    kind = target.get("kind")
    if kind in ("llvm", "c"):
        if is_host_target(target):
            return True, ""
        return False, (f"cross-compiled for {triple_arch(str(target.get('mtriple')))}; this "
                       f"machine is {host_arch()}")
    if kind == "cuda":
        return True, ""  # checked for a GPU when loaded
    return False, f"no runtime here for target kind '{kind}'"


# --- effective target and identity ------------------------------------------------------------

def is_native(target: Mapping[str, Any]) -> bool:
    return target.get("kind") == "llvm" and target.get("mcpu") == "native"


def effective_target(target: Mapping[str, Any], system_cpu: Optional[str] = None,
                     num_cores: Optional[int] = None) -> Dict[str, Any]:
    """The dict TVM gets: ``native`` resolved (``system_cpu`` is LLVM's name for this CPU,
    from ``tvm.target.codegen.llvm_get_system_cpu()``), ``num-cores`` set for host CPUs."""
    out = dict(target)
    if is_native(out):
        if not system_cpu:
            raise TargetError("target native needs the host CPU's LLVM name")
        out["mcpu"] = system_cpu
    if out.get("kind") == "llvm" and "num-cores" not in out and is_host_target(out):
        out["num-cores"] = num_cores or host_cores()
    if out.get("kind") == "cuda" and "arch" not in out:
        arch = detect_cuda_arch()
        if arch:
            out["arch"] = arch
    if isinstance(out.get("host"), Mapping):
        out["host"] = effective_target(out["host"], system_cpu, num_cores)
    return dict(sorted(out.items()))


def target_identity(target: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields that decide whether a tuning record applies; works on canonical dicts and
    on the target dicts TVM writes into its records (which carry extra keys and features)."""
    norm = canonical_target(dict(target)) if "kind" in target else {}
    ident: Dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        if key in norm:
            value = norm[key]
            if key == "mtriple":
                value = triple_arch(str(value))
            ident[key] = value
    return ident


def identity_digest(target: Mapping[str, Any]) -> str:
    """A short stable name for a target identity (directory names of the shared database)."""
    import hashlib

    ident = target_identity(target)
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    readable = "-".join(str(ident.get(k)) for k in ("kind", "mcpu", "arch", "mtriple")
                        if ident.get(k))
    readable = re.sub(r"[^A-Za-z0-9_.]+", "_", readable)[:40]
    if ident.get("model"):  # the remote device: rpc-<key>-<fingerprint>
        readable += "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(ident["model"]))[:48]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def detect_cuda_arch() -> Optional[str]:
    """``sm_XY`` of the first NVIDIA GPU (``nvidia-smi``; no CUDA libraries loaded), or None."""
    device = detect_cuda_device()
    return device.arch if device is not None else None


def fingerprint(target: Mapping[str, Any]) -> Dict[str, str]:
    """What outside the params changes code built for ``target`` (for step fingerprints)."""
    fp: Dict[str, str] = {"target": json.dumps(dict(target), sort_keys=True)}
    if target.get("kind") == "cuda" and "arch" not in target:
        # TVM builds for the GPU present, completed from its model (complete_cuda_target)
        device = detect_cuda_device()
        fp["cuda_device"] = device.key() if device is not None else "none"
    if is_native(target):
        fp["host_cpu"] = host_cpu_description()
    if target.get("kind") == "llvm" and "num-cores" not in target and is_host_target(target):
        fp["host_cores"] = str(host_cores())
    return fp


def describe_list(items: List[str]) -> str:
    return ", ".join(items)


# --- completing CUDA targets ------------------------------------------------------------------

CUDA_LIMIT_KEYS = ("max_num_threads", "max_threads_per_block", "max_shared_memory_per_block",
                   "thread_warp_size", "registers_per_block", "l2_cache_size_bytes")
"""What TVM's codegen and MetaSchedule read from a CUDA target (MetaSchedule's ``auto_bind``
refuses a target without ``max_threads_per_block``). TVM's target tags carry them."""

_NAME_NOISE = re.compile(r"^(nvidia|tesla|\d+gb|hbm\d*e?|pcie|sxm\d*|nvl|mig.*|\d+c)$")


class CudaDevice:
    """What completing a CUDA target needs to know about a GPU: its name, its compute
    capability, and (optionally) the limits the driver reports. A plain value: the tests
    build it from a recorded description, the run from ``nvidia-smi``."""

    def __init__(self, name: str, compute_capability: str,
                 attributes: Optional[Mapping[str, int]] = None):
        if not re.fullmatch(r"\d+\.\d+", str(compute_capability)):
            raise TargetError(f"compute capability '{compute_capability}' is not of the form "
                              "X.Y (e.g. 9.0)")
        self.name = str(name).strip()
        self.compute_capability = str(compute_capability)
        self.attributes = {k: int(v) for k, v in (attributes or {}).items()}

    @property
    def arch(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def key(self) -> str:
        """The GPU model as keys see it: name and architecture (no driver, clocks, memory
        in use), so keys stay stable per GPU model."""
        return f"{self.name} ({self.arch})"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CudaDevice":
        return cls(str(data["name"]), str(data["compute_capability"]),
                   data.get("attributes") or {})

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability,
                "attributes": dict(sorted(self.attributes.items()))}


def detect_cuda_device() -> Optional[CudaDevice]:
    """The first NVIDIA GPU (``nvidia-smi``: no CUDA library is loaded), or None."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    name, _, cap = first.rpartition(",")
    try:
        return CudaDevice(name.strip(), cap.strip()) if name.strip() else None
    except TargetError:
        return None


def _arch_base(arch: str) -> str:
    """``sm_90a`` -> ``sm_90``: the arch-specific suffix does not change the limits."""
    return re.sub(r"[a-z]$", "", str(arch))


def tag_candidates(name: str) -> List[str]:
    """TVM tag names a GPU called ``name`` may have, best first.

    ``NVIDIA H100 80GB HBM3`` -> nvidia/nvidia-h100; ``NVIDIA A100-SXM4-40GB`` ->
    nvidia/nvidia-a100; ``NVIDIA GeForce RTX 3090`` -> nvidia/geforce-rtx-3090; ``Tesla T4``
    -> nvidia/nvidia-t4 (the memory size, form factor and vendor words are dropped)."""
    words = [w for w in re.split(r"[\s\-_/]+", name.lower()) if w]
    core = [w for w in words if not _NAME_NOISE.match(w)]
    if not core:
        return []
    joined = "-".join(core)
    return [f"nvidia/nvidia-{joined}", f"nvidia/{joined}"]


def cuda_tag_for(arch: str, device_name: Optional[str],
                 tags: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The TVM tag to complete a CUDA target of ``arch`` from: the tag of the GPU by name when
    its architecture matches, else a tag of the same architecture (data-centre parts first,
    then by name: deterministic, so a key never depends on which tag was listed first), else
    None. ``tags`` maps tag names to their exported target dicts."""
    base = _arch_base(arch)
    cuda = {k: v for k, v in tags.items() if v.get("kind") == "cuda" and v.get("arch")}
    if device_name:
        for cand in tag_candidates(device_name):
            if cand in cuda and _arch_base(str(cuda[cand]["arch"])) == base:
                return cand
    same = sorted((k for k, v in cuda.items() if _arch_base(str(v["arch"])) == base),
                  key=lambda k: (not k.startswith("nvidia/nvidia-"), k))
    return same[0] if same else None


def complete_cuda_target(target: Mapping[str, Any], device: Optional[CudaDevice],
                         tags: Mapping[str, Mapping[str, Any]]) -> Tuple[Dict[str, Any], str]:
    """A CUDA target with everything TVM's codegen and MetaSchedule need, and where the values
    came from (one phrase for the log). Pure: ``device`` is the GPU (None: none visible),
    ``tags`` TVM's target tags (``tvm.target.list_tags()``, exported).

    The arch is the target's ``arch``, else the device's. The limits come from the TVM tag of
    the device (by name, same arch), else of another GPU of that arch, else from the limits the
    device reports; values written in the recipe always win. A GPU model therefore always gets
    the same dict, which is what the tuning records and the library are built for."""
    out = dict(target)
    if out.get("kind") != "cuda":
        return dict(sorted(out.items())), ""
    if "arch" not in out:
        if device is None:
            raise TargetError("target cuda: no NVIDIA GPU is visible here to take the "
                              "architecture from", hint="name it: cuda -arch=sm_90")
        out["arch"] = device.arch
    missing = [k for k in CUDA_LIMIT_KEYS if k not in out]
    if not missing:
        return dict(sorted(out.items())), "as written"
    same_gpu = device is not None and _arch_base(device.arch) == _arch_base(str(out["arch"]))
    tag = cuda_tag_for(str(out["arch"]), device.name if same_gpu else None, tags)
    if tag is not None:
        source: Mapping[str, Any] = tags[tag]
        how = f"TVM tag {tag}"
    elif same_gpu and device is not None and device.attributes:
        source, how = device.attributes, f"the limits {device.name} reports"
    else:
        raise TargetError(f"target {target_text(target)}: TVM has no target tag for "
                          f"{out['arch']}" + (" and the GPU's limits are unknown"
                                              if same_gpu else ""),
                          hint="give the limits in the target: max_threads_per_block, "
                               "max_shared_memory_per_block, thread_warp_size")
    for key in missing:
        if key in source:
            out[key] = int(source[key])
    if "max_threads_per_block" not in out:
        raise TargetError(f"target {target_text(target)}: {how} lacks max_threads_per_block",
                          hint="give it in the target")
    return dict(sorted(out.items())), how
