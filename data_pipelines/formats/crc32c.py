"""CRC-32C (Castagnoli) and the TFRecord mask, table-driven (no TensorFlow).

Uses the C `crc32c` / `google_crc32c` packages when installed (much faster on real DROID
episodes of ~10 MB); the pure-Python table is the fallback and the reference.
"""
from __future__ import annotations

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # optional accelerators
    from google_crc32c import value as crc32c  # type: ignore
except ImportError:
    try:
        from crc32c import crc32c  # type: ignore
    except ImportError:
        crc32c = crc32c_py


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
