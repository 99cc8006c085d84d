"""`tf.train.Example` protobuf wire format by hand (feature.proto / example.proto).

Example{1: Features}; Features{1: repeated MapEntry{1: key, 2: Feature}};
Feature{1: BytesList{1: repeated bytes} | 2: FloatList{1: packed float} | 3: Int64List{1: packed int64}}.
The parser accepts packed and unpacked repeated scalars.
"""
from __future__ import annotations

import struct

import numpy as np

from data_pipelines.errors import CorruptRecordError


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_feature(value) -> bytes:
    """bytes/str list -> BytesList; float array -> FloatList; int/bool array -> Int64List."""
    if isinstance(value, (bytes, str)) or (isinstance(value, list) and value and isinstance(value[0], (bytes, str))):
        items = [value] if isinstance(value, (bytes, str)) else value
        items = [v.encode() if isinstance(v, str) else v for v in items]
        return _field(1, b"".join(_field(1, v) for v in items))
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind == "f":
        return _field(2, _field(1, arr.astype("<f4").tobytes()))
    if arr.dtype.kind in "iub":
        return _field(3, _field(1, b"".join(_varint(int(v)) for v in arr)))
    if isinstance(value, list) and not value:
        return _field(1, b"")  # empty list: BytesList with no entries
    raise TypeError(f"cannot encode feature of dtype {arr.dtype}")


def encode_example(features: dict) -> bytes:
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, encode_feature(v)))
                       for k, v in features.items())
    return _field(1, entries)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past end of message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) where value is bytes (wt 2/5) or int (wt 0)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("length-delimited field runs past end of message")
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes):
    for kind, _, payload in _fields(buf):
        if kind == 1:
            return [v for n, wt, v in _fields(payload) if n == 1]
        if kind == 2:
            parts = [np.frombuffer(v, "<f4") if wt == 2 else np.frombuffer(v, "<f4")
                     for n, wt, v in _fields(payload) if n == 1]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if kind == 3:
            vals = []
            for n, wt, v in _fields(payload):
                if n != 1:
                    continue
                if wt == 2:
                    p = 0
                    while p < len(v):
                        x, p = _read_varint(v, p)
                        vals.append(_signed64(x))
                else:
                    vals.append(_signed64(v))
            return np.array(vals, np.int64)
    return []  # Feature with no kind set: treat as empty


def parse_example(data: bytes, *, path=None, record=None) -> dict:
    """-> {key: list[bytes] | float32 array | int64 array}."""
    try:
        out = {}
        for num, _, features in _fields(data):
            if num != 1:
                continue
            for n, _, entry in _fields(features):
                if n != 1:
                    continue
                key, value = None, b""
                for m, _, v in _fields(entry):
                    if m == 1:
                        key = v.decode()
                    elif m == 2:
                        value = v
                out[key] = _decode_feature(value)
        return out
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise CorruptRecordError(f"malformed tf.train.Example: {e}", path=path, episode=record) from e
