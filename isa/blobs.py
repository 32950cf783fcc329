"""Encoding of data blobs: raw little-endian bytes, zlib-compressed, base64, with a CRC-32.

Decoding is bounded by the declared type: the payload may be no longer, and no shorter, than
a zlib stream of that many bytes can be, and decompression inflates into a buffer of the
declared size and stops one byte past it, so a blob that claims a few bytes but inflates to
gigabytes costs at most its declared size (plus one ``CHUNK``).
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from .errors import IsaError
from .limits import tensor_bytes
from .program import DTYPES, TensorType

PROBE = 1 << 16  # bytes compressed to decide whether compressing a blob pays


def _level(raw: bytes) -> int:
    """zlib level 1, or 0 (stored blocks: a copy) for data that does not compress, as float
    weights mostly do not: probed on the first ``PROBE`` bytes, 10 % smaller or stored."""
    head = raw[:PROBE]
    return 1 if len(zlib.compress(head, 1)) < 0.9 * len(head) else 0


def encode(data: np.ndarray) -> tuple[str, str]:
    """Return (crc32 hex of the raw bytes, base64 text of the zlib stream of them)."""
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    payload = zlib.compress(raw, _level(raw))
    return f"{zlib.crc32(raw):08x}", base64.b64encode(payload).decode("ascii")


def max_payload_chars(raw_bytes: int) -> int:
    """The longest base64 text of a zlib stream of ``raw_bytes`` bytes: zlib's compressBound
    (stored blocks at worst), with slack for a header and a few empty blocks."""
    bound = raw_bytes + (raw_bytes >> 12) + (raw_bytes >> 14) + (raw_bytes >> 25) + 13 + 64
    return 4 * -(-bound // 3)


def min_payload_bytes(raw_bytes: int) -> int:
    """The shortest zlib stream of ``raw_bytes`` bytes: deflate codes at most 258 bytes in a
    match of at least 2 bits, 1032:1 at best (less a little slack)."""
    return raw_bytes // 1032 - 64


CHUNK = 1 << 20  # bytes inflated per step


def _inflate(data: bytes, size: int, where: str) -> tuple[bytearray, int]:
    """The stream's content, which must be exactly ``size`` bytes, and its CRC-32. Inflates in
    steps of ``CHUNK`` into one buffer of the declared size: at most size + CHUNK bytes live."""
    out, filled, crc = bytearray(size), 0, 0
    stream, pending = zlib.decompressobj(), data
    try:
        while not stream.eof:
            piece = stream.decompress(pending, min(CHUNK, size - filled + 1))
            if filled + len(piece) > size:
                raise IsaError(f"{where}: blob payload inflates to more than its declared "
                               f"{size} bytes (a corrupted or malicious file)")
            if not piece and not stream.unconsumed_tail:
                break
            out[filled:filled + len(piece)] = piece
            filled, crc, pending = filled + len(piece), zlib.crc32(piece, crc), \
                stream.unconsumed_tail
    except zlib.error as exc:
        raise IsaError(f"{where}: blob payload is corrupt ({exc})") from None
    if not stream.eof or stream.unused_data:
        raise IsaError(f"{where}: blob payload is corrupt (the zlib stream is "
                       f"{'truncated' if not stream.eof else 'followed by extra data'})")
    if filled != size:
        raise IsaError(f"{where}: blob holds {filled} bytes, its type needs {size}")
    return out, crc


def decode(payload: str | memoryview, ttype: TensorType, crc: str, where: str) -> np.ndarray:
    """Inverse of ``encode`` for a blob declared as ``ttype`` (already within limits); raises
    IsaError naming ``where`` on any corruption, never allocating beyond the declared size."""
    size = tensor_bytes(ttype)
    if len(payload) > max_payload_chars(size):
        raise IsaError(f"{where}: blob payload of {len(payload)} characters is longer than "
                       f"any encoding of its declared {ttype} ({size} bytes)")
    try:  # strictly, as base64.b64decode(validate=True), without copying a bytes view
        data = binascii.a2b_base64(payload, strict_mode=True)
    except ValueError as exc:  # binascii.Error; non-ASCII text
        raise IsaError(f"{where}: blob payload is corrupt ({exc})") from None
    if len(data) < min_payload_bytes(size):
        raise IsaError(f"{where}: blob payload of {len(data)} bytes is too short for any zlib "
                       f"stream of its declared {ttype} ({size} bytes)")
    raw, raw_crc = _inflate(data, size, where)
    if f"{raw_crc:08x}" != crc:
        raise IsaError(f"{where}: blob checksum mismatch (the program file is corrupted)")
    np_dtype = np.dtype(DTYPES[ttype.dtype]).newbyteorder("<")
    # frombuffer over the bytearray: writable, and no copy on a little-endian machine
    array = np.frombuffer(raw, dtype=np_dtype).astype(DTYPES[ttype.dtype], copy=False)
    return array.reshape(ttype.shape)
