"""Encoding of data blobs: raw little-endian bytes, zlib-compressed, base64, with a CRC-32."""

from __future__ import annotations

import base64
import zlib

import numpy as np

from .errors import IsaError
from .program import DTYPES


def encode(data: np.ndarray) -> tuple[str, str]:
    """Return (crc32 hex of the raw bytes, base64 text of the compressed bytes)."""
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    return f"{zlib.crc32(raw):08x}", base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


def decode(payload: str, dtype: str, shape: tuple[int, ...], crc: str, where: str) -> np.ndarray:
    """Inverse of ``encode``; raises IsaError naming ``where`` on any corruption."""
    try:
        raw = zlib.decompress(base64.b64decode(payload, validate=True))
    except Exception as exc:  # binascii.Error, zlib.error
        raise IsaError(f"{where}: blob payload is corrupt ({exc})") from None
    if f"{zlib.crc32(raw):08x}" != crc:
        raise IsaError(f"{where}: blob checksum mismatch (the program file is corrupted)")
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * np_dtype.itemsize:
        raise IsaError(f"{where}: blob holds {len(raw)} bytes, its type needs "
                       f"{count * np_dtype.itemsize}")
    return np.frombuffer(raw, dtype=np_dtype).astype(DTYPES[dtype]).reshape(shape)
