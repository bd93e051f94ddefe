"""Packed numeric columns of the ingest payload: float64 arrays as base64 strings inside JSON.

Encoding 40,000 features of a 5,000-row batch as JSON numbers costs about 20 ms in
``json.dumps`` and 16 ms in ``json.loads`` (every float goes through its shortest
decimal repr); the same values as one base64 string of little-endian float64 cost
about 1 ms each way and round-trip exactly. The payload stays JSON (a string is a
JSON value), and decoding is ``numpy.frombuffer`` on a fixed dtype: data, never code.

The client packs with the standard library only (``array('d')``), so the trading app
needs no numpy; the ingest step unpacks with numpy.

>>> unpack_f8(pack_f8([1.5, -2.0, float("inf")]))
array([ 1.5, -2. ,  inf])
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Iterable

import numpy as np

from retrain.core.errors import PayloadError

__all__ = ["pack_f8", "unpack_f8", "F8"]

#: The dtype of a packed column: little-endian IEEE-754 double.
F8 = np.dtype("<f8")


def pack_f8(values: Iterable[float] | array[float]) -> str:
    """Base64 of the values as little-endian float64 (NaN is kept as NaN)."""
    a = values if isinstance(values, array) and values.typecode == "d" else array("d", values)
    if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
        a = array("d", a)
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


def unpack_f8(text: str, count: int | None = None) -> np.ndarray:
    """The float64 array packed by :func:`pack_f8`; ``count`` checks its length.

    Raises PayloadError when the text is not base64 of whole float64 values.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"packed column is not valid base64: {exc}") from None
    if len(raw) % F8.itemsize:
        raise PayloadError(f"packed column has {len(raw)} bytes, not a whole number of float64 values")
    out = np.frombuffer(raw, dtype=F8)
    if count is not None and out.size != count:
        raise PayloadError(f"packed column has {out.size} values, expected {count}")
    return out.astype(np.float64, copy=False)
