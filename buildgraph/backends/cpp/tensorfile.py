"""BGT1: the raw tensor file ``cpp.check`` hands to its C++ loaders and reads back.

Little-endian: ``b"BGT1"``, ``uint32`` count, then per tensor ``uint32`` dtype code, ``uint32``
rank, ``int64`` sizes, ``uint64`` byte count and the bytes in C order. A format this small needs
no library on the C++ side (``templates/tensorio.h`` reads and writes it in 50 lines), which
``.npy``/``.npz`` would.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, List, Sequence

MAGIC = b"BGT1"
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int8", "uint8",
          "bool")
"""dtype code -> numpy name (the code is the index; ``templates/*.h`` use the same order)."""


class TensorFileError(ValueError):
    """A malformed BGT1 file (truncated, wrong magic, unknown dtype)."""


def write_tensors(path: Path, arrays: Sequence[Any]) -> None:
    import numpy as np

    with open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<I", len(arrays)))
        for array in arrays:
            a = np.asarray(array, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
            if a.dtype.name not in DTYPES:
                raise TensorFileError(f"dtype {a.dtype.name} has no BGT1 code "
                                      f"(supported: {', '.join(DTYPES)})")
            fh.write(struct.pack("<II", DTYPES.index(a.dtype.name), a.ndim))
            fh.write(struct.pack(f"<{a.ndim}q", *a.shape))
            data = a.tobytes()
            fh.write(struct.pack("<Q", len(data)))
            fh.write(data)


def read_tensors(path: Path) -> List[Any]:
    import numpy as np

    data = Path(path).read_bytes()
    if data[:4] != MAGIC or len(data) < 8:
        raise TensorFileError(f"{Path(path).name} is not a BGT1 file")
    (count,) = struct.unpack_from("<I", data, 4)
    offset, out = 8, []
    try:
        for _ in range(count):
            code, rank = struct.unpack_from("<II", data, offset)
            offset += 8
            shape = struct.unpack_from(f"<{rank}q", data, offset)
            offset += 8 * rank
            (nbytes,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            if code >= len(DTYPES) or offset + nbytes > len(data):
                raise TensorFileError(f"{Path(path).name}: bad record (dtype code {code}, "
                                      f"{nbytes} bytes)")
            out.append(np.frombuffer(data[offset:offset + nbytes],
                                     dtype=DTYPES[code]).reshape(list(shape)).copy())
            offset += nbytes
    except struct.error:
        raise TensorFileError(f"{Path(path).name} is truncated") from None
    return out
