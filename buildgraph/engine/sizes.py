"""Sizes as people write them (``5G``, ``512 MiB``, ``2GB``) and as we print them.

One reader for every place that takes a size (``cache gc --max-size``, TensorRT memory pools), so
they accept the same spellings: ``K/M/G/T`` and ``KB..TB`` are decimal, ``KiB..TiB`` binary, a
bare number is bytes.
"""

from __future__ import annotations

import re
from typing import Union

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(i?)(B?)|(B))?\s*", re.IGNORECASE)
_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(value: Union[int, str]) -> int:
    """``"5GiB"`` -> 5368709120; ``"5G"``/``"5GB"`` -> 5000000000; an int is taken as bytes.

    Raises ValueError with the accepted spellings."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB, 512MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"expected a size such as 4GiB, 512MiB, 5G or a number of bytes; "
                         f"got {value!r}")
    number = float(match.group(1))
    prefix = (match.group(2) or "").upper()
    if not prefix:
        return int(number)
    base = 1024 if match.group(3) else 1000
    return int(number * base ** _POWERS[prefix])


def format_size(n: float) -> str:
    """Bytes in binary units, one decimal: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
