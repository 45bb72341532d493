"""What a GPU benchmark reports about the GPU it ran on: name, clocks, memory, driver.

Read with ``nvidia-smi`` (no CUDA library loaded, works for every runtime's runner) before and
after the timed windows: clocks that fell between the two (thermal or power throttling) are
visible in the report. Where ``nvidia-smi`` is missing, torch's device properties give the name
and memory when torch is already loaded in the runner."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

FIELDS = ("index", "name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem",
          "clocks.max.mem", "memory.total", "memory.used", "temperature.gpu", "power.draw",
          "pstate")
"""``nvidia-smi --query-gpu`` fields, in order; clocks in MHz, memory in MiB."""

BASIC_FIELDS = ("index", "name", "driver_version", "memory.total")
"""What every driver answers: the query again with these when one field above is unknown to
this driver (nvidia-smi then refuses the whole query)."""


def parse_query(text: str, fields: Sequence[str] = FIELDS) -> List[Dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(fields):
            continue
        row: Dict[str, Any] = {}
        for name, cell in zip(fields, cells):
            key = name.replace(".", "_")
            try:
                row[key] = cell if name in ("name", "driver_version", "pstate") else \
                    (int(cell) if cell.isdigit() else float(cell))
            except ValueError:  # "[N/A]", "[Not Supported]"
                row[key] = None
        rows.append(row)
    return rows


def gpu_facts(index: int = 0, timeout: float = 10.0) -> Dict[str, Any]:
    """Name, clocks, memory, temperature and power of GPU ``index`` now; ``{"error": ...}``
    when nothing can tell."""
    smi = shutil.which("nvidia-smi")
    for fields in ((FIELDS, BASIC_FIELDS) if smi is not None else ()):
        try:
            proc = subprocess.run([smi, f"--query-gpu={','.join(fields)}",
                                   "--format=csv,noheader,nounits", f"--id={index}"],
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            break
        rows = parse_query(proc.stdout, fields)
        if rows:
            return rows[0]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        return {"index": index, "name": props.name,
                "memory_total": round(props.total_memory / 2 ** 20),
                "multiprocessors": props.multi_processor_count}
    return {"error": "nvidia-smi not found and no CUDA torch loaded"}


def peak_memory_mb(index: int = 0) -> Optional[float]:
    """torch's peak CUDA allocation in this process (torch runtimes only), in MiB."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated(index) / 2 ** 20, 1)
