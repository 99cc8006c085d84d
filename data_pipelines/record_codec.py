"""Self-describing binary record: a JSON header followed by raw buffers.

Safer than pickle for shards that travel between labs, and decodes with zero copies.
Values: numpy arrays, bytes, str, int, float, bool, and lists of bytes.
"""
from __future__ import annotations

import json
import struct

import numpy as np


def encode_record(d: dict) -> bytes:
    header, chunks, offset = {}, [], 0
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            buf = np.ascontiguousarray(v).tobytes()
            header[k] = ["a", v.dtype.str, list(v.shape), offset, len(buf)]
        elif isinstance(v, (bytes, bytearray)):
            buf = bytes(v)
            header[k] = ["b", offset, len(buf)]
        elif isinstance(v, list) and all(isinstance(x, bytes) for x in v):
            buf = b"".join(v)
            header[k] = ["l", offset, [len(x) for x in v]]
        elif isinstance(v, (str, int, float, bool, np.integer, np.floating)) or v is None:
            header[k] = ["j", v.item() if isinstance(v, np.generic) else v]
            continue
        else:
            raise TypeError(f"record field {k!r}: unsupported type {type(v).__name__}")
        chunks.append(buf)
        offset += len(buf)
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(h)) + h + b"".join(chunks)


def decode_record(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data)
    header = json.loads(data[4:4 + n])
    body = memoryview(data)[4 + n:]
    out = {}
    for k, spec in header.items():
        kind = spec[0]
        if kind == "a":
            _, dtype, shape, off, size = spec
            out[k] = np.frombuffer(body[off:off + size], dtype=dtype).reshape(shape)
        elif kind == "b":
            out[k] = bytes(body[spec[1]:spec[1] + spec[2]])
        elif kind == "l":
            off, items = spec[1], []
            for size in spec[2]:
                items.append(bytes(body[off:off + size]))
                off += size
            out[k] = items
        else:
            out[k] = spec[1]
    return out
